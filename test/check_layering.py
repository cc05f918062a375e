#!/usr/bin/env python3
"""Checks the include layering of moe-compiler's C++ sources.

Reads the ``#include`` lines of every C++/CUDA file under runtime/, lib/,
include/ and tools/, resolves each to a file of the tree (or to MLIR/LLVM)
and fails, naming the files, when

* a file includes a header of a layer above its own (PROJECT_LAYERS below:
  the runtime knows nothing of the compiler or of MLIR/LLVM; the dialect
  nothing of the conversion, the pipeline or the tools; ...);
* a runtime directory includes one that RUNTIME_LAYERS does not list among
  its dependencies, or runtime/ has a directory RUNTIME_LAYERS does not know;
* the runtime's directories include each other in a cycle;
* a tool includes runtime internals: tools see only the runtime's public
  surface (TOOL_VISIBLE_RUNTIME), or another tool's files.

The layer order is written here once; docs/runtime.md describes it.

Usage: check_layering.py [--root DIR]   (DIR: the repository, by default the
parent of this script's directory). Exit status 0 when the tree is layered,
1 with one line per violation otherwise.
"""

import argparse
import os
import re
import sys

# The compiler's layers, lowest first. A file may include headers of its own
# layer and of the layers before it. Paths map to layers by PROJECT_LAYER_OF.
PROJECT_LAYERS = [
    "runtime",     # runtime/**: libmoert, its C ABI and the driver support
    "mlir",        # MLIR and LLVM headers (external)
    "dialect",     # lib/Dialect/*/IR, include/moe/Dialect/*/IR (the IR)
    "analysis",    # lib/Analysis, include/moe/Analysis (the cost model)
    "transforms",  # the rest of lib/Dialect/**, include/moe/Dialect/**
    "conversion",  # lib/Conversion/**, include/moe/Conversion/**
    "pipeline",    # every other lib/X, include/moe/X (the compile pipeline)
    "tools",       # tools/**
]

# The runtime's directories and the directories each may include (its own
# always). Lowest first: the C ABI, the base layer, the communicators, the
# context, the backends; the driver support sits on the base layer only.
RUNTIME_LAYERS = {
    "include": [],                               # moert/moert.h, the C ABI
    "base": ["include"],                         # Status, dtypes, CUDA checks
    "comm": ["base", "include"],                 # communicators
    "core": ["comm", "base", "include"],         # context, C ABI entry points
    "cpu": ["core", "base", "include"],          # CPU backend
    "cuda": ["core", "base", "include"],         # CUDA backend
    "support": ["base", "include"],              # JSON, safetensors, manifest
}

# What a tool may include of the runtime: the C ABI and the support library
# (with the header-only base layer it is built on).
TOOL_VISIBLE_RUNTIME = ["include", "base", "support"]

SOURCE_DIRS = ["runtime", "lib", "include", "tools"]
SUFFIXES = (".h", ".hpp", ".cpp", ".cc", ".c", ".cu", ".cuh", ".def", ".inc")
MLIR_PREFIXES = ("mlir/", "llvm/", "mlir-c/", "llvm-c/")
# The libraries the runtime wraps: tools reach them only through the C ABI.
DEVICE_LIBRARY_HEADERS = ("mpi.h", "nccl.h", "cuda.h", "cuda_runtime.h",
                          "cuda_runtime_api.h", "cublas_v2.h", "cblas.h")
# Where a quoted or bracketed include is looked up, after the including
# file's own directory (the include paths of the CMake targets).
INCLUDE_ROOTS = ["runtime", "runtime/include", "include"]

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]')


def project_layer_of(path):
    """Layer of a repository-relative path (or 'mlir'), None if unlayered."""
    if path == "mlir":
        return "mlir"
    parts = path.split("/")
    if parts[0] == "runtime":
        return "runtime"
    if parts[0] == "tools":
        return "tools"
    if parts[0] == "lib" and len(parts) > 2:
        component, rest = parts[1], parts[2:]
    elif parts[:2] == ["include", "moe"] and len(parts) > 3:
        component, rest = parts[2], parts[3:]
    else:
        return None
    if component == "Dialect":
        # <Dialect>/IR/... is the IR; passes may use the analyses on it.
        return "dialect" if len(rest) > 2 and rest[1] == "IR" else "transforms"
    if component == "Analysis":
        return "analysis"
    if component == "Conversion":
        return "conversion"
    return "pipeline"


def runtime_dir_of(path):
    """'core' for runtime/core/Context.h; None outside runtime/<dir>/."""
    parts = path.split("/")
    if parts[0] == "runtime" and len(parts) > 2:
        return parts[1]
    return None


def tool_of(path):
    parts = path.split("/")
    if parts[0] == "tools" and len(parts) > 2:
        return parts[1]
    return None


def resolve(root, includer, kind, name):
    """Repository-relative path of an include, 'mlir', or None (external)."""
    candidates = []
    if kind == '"':
        candidates.append(os.path.join(os.path.dirname(includer), name))
    candidates += [os.path.join(r, name) for r in INCLUDE_ROOTS]
    for c in candidates:
        c = os.path.normpath(c)
        if not c.startswith("..") and os.path.isfile(os.path.join(root, c)):
            return c.replace(os.sep, "/")
    if name.startswith(MLIR_PREFIXES):
        return "mlir"
    if name in DEVICE_LIBRARY_HEADERS:
        return "library:" + name
    if name.startswith("moe/"):  # generated by TableGen into the build tree
        return "include/" + name
    return None


def scan(root):
    """Yields (file, line number, included path) for every resolved include."""
    for top in SOURCE_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames.sort()
            for f in sorted(filenames):
                if not f.endswith(SUFFIXES):
                    continue
                full = os.path.join(dirpath, f)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                with open(full, encoding="utf-8", errors="replace") as fh:
                    for number, line in enumerate(fh, 1):
                        m = INCLUDE_RE.match(line)
                        if not m:
                            continue
                        target = resolve(root, rel, m.group(1), m.group(2))
                        if target is not None:
                            yield rel, number, target


def check_include(src, number, target):
    """The violations of one include line (strings)."""
    where = "%s:%d" % (src, number)
    errors = []
    src_layer, dst_layer = project_layer_of(src), project_layer_of(target)
    if src_layer and dst_layer and (PROJECT_LAYERS.index(dst_layer) >
                                    PROJECT_LAYERS.index(src_layer)):
        what = "an MLIR/LLVM header" if target == "mlir" else target
        errors.append("%s: includes %s (layer %s), above its layer %s"
                      % (where, what, dst_layer, src_layer))
    src_dir, dst_dir = runtime_dir_of(src), runtime_dir_of(target)
    if src_dir in RUNTIME_LAYERS and dst_dir in RUNTIME_LAYERS:
        if dst_dir != src_dir and dst_dir not in RUNTIME_LAYERS[src_dir]:
            errors.append("%s: includes %s: runtime/%s may include only %s"
                          % (where, target, src_dir,
                             ", ".join(RUNTIME_LAYERS[src_dir]) or
                             "its own headers"))
    if tool_of(src):
        if target.startswith("library:"):
            errors.append("%s: includes <%s>: tools reach MPI, CUDA, NCCL and "
                          "BLAS only through the runtime's C ABI"
                          % (where, target[len("library:"):]))
        if dst_dir and dst_dir not in TOOL_VISIBLE_RUNTIME:
            errors.append("%s: includes %s: tools see only the runtime's "
                          "%s" % (where, target, ", ".join(
                              "runtime/%s" % d for d in TOOL_VISIBLE_RUNTIME)))
        if tool_of(target) and tool_of(target) != tool_of(src):
            errors.append("%s: includes %s, a file of another tool"
                          % (where, target))
    return errors


def find_cycles(edges):
    """Strongly connected components of more than one node, as sorted lists.

    `edges`: {node: set of nodes}."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return result


def check(root):
    """All violations of the tree at `root`, and the number of includes."""
    errors, count = [], 0
    edges, witness = {}, {}
    unknown = set()
    for src, number, target in scan(root):
        count += 1
        errors += check_include(src, number, target)
        src_dir, dst_dir = runtime_dir_of(src), runtime_dir_of(target)
        for d, path in ((src_dir, src), (dst_dir, target)):
            if d is not None and d not in RUNTIME_LAYERS and d not in unknown:
                unknown.add(d)
                errors.append("%s: runtime/%s is not in the layer order "
                              "(RUNTIME_LAYERS of check_layering.py)"
                              % (path, d))
        if src_dir and dst_dir and src_dir != dst_dir:
            edges.setdefault(src_dir, set()).add(dst_dir)
            witness.setdefault((src_dir, dst_dir),
                               "%s:%d includes %s" % (src, number, target))
    for component in find_cycles(edges):
        members = set(component)
        lines = ["  " + witness[(a, b)] for a in component
                 for b in sorted(edges[a]) if b in members]
        errors.append("include cycle between the runtime directories %s:\n%s"
                      % (", ".join(component), "\n".join(lines)))
    return errors, count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--root", default=default_root,
                        help="repository to check (default: %(default)s)")
    args = parser.parse_args(argv)
    errors, count = check(args.root)
    for e in errors:
        print("check_layering: " + e)
    if errors:
        print("check_layering: %d violation(s); the layers are described in "
              "docs/runtime.md" % len(errors))
        return 1
    print("check_layering: ok (%d includes)" % count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
