#!/usr/bin/env python3
"""Checks libmoert's kernel definitions against moert_kernels.def.

The compiler checks the parameter *types* of every definition against its
prototype (libmoert builds with -Werror=missing-declarations); this checks
what it cannot: that every kernel of the list is defined exactly once under
runtime/, with the list's parameter names in the list's order, so that two
parameters of the same type cannot trade places on one side only.

usage: check_kernel_definitions.py SRC_ROOT [--def FILE]
"""
import argparse
import os
import re
import sys

ENTRY = re.compile(r"MOERT_KERNEL\(([^,]+),\s*(\w+)\)(.*?)MOERT_END", re.S)
ARG = re.compile(r"MOERT_ARG\(([^,]+),\s*(\w+)\)")
DEFINITION = re.compile(r"^([A-Za-z_][\w \t]*?[\s*])(moert_\w+)\s*\(([^)]*)\)\s*\{",
                        re.M)


def tokens(text):
    return re.findall(r"\w+|\*", text)


def read_list(path):
    text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
    kernels = {}
    for ret, name, body in ENTRY.findall(text):
        params = [(tokens("moert_ctx *"), "ctx")]
        params += [(tokens(t), n) for t, n in ARG.findall(body)]
        kernels[name] = (tokens(ret), params)
    return kernels


def read_definitions(runtime_dir):
    found = {}
    for root, _, files in os.walk(runtime_dir):
        if os.path.basename(root) == "include":
            continue
        for f in sorted(files):
            if not f.endswith((".cpp", ".cu", ".c")):
                continue
            path = os.path.join(root, f)
            text = open(path).read()
            for m in DEFINITION.finditer(text):
                params = []
                for p in m.group(3).split(","):
                    t = tokens(p)
                    params.append((t[:-1], t[-1]) if t else ([], ""))
                line = text.count("\n", 0, m.start()) + 1
                found.setdefault(m.group(2), []).append(
                    (f"{path}:{line}", tokens(m.group(1)), params))
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src_root")
    ap.add_argument("--def", dest="def_file")
    a = ap.parse_args()
    def_file = a.def_file or os.path.join(
        a.src_root, "runtime", "include", "moert", "moert_kernels.def")
    kernels = read_list(def_file)
    defs = read_definitions(os.path.join(a.src_root, "runtime"))
    problems = []
    for name, (ret, params) in kernels.items():
        where = defs.get(name, [])
        if len(where) != 1:
            problems.append(f"{name}: {len(where)} definitions under runtime/ "
                            "(expected 1)")
            continue
        loc, dret, dparams = where[0]
        want = [" ".join(t) + " " + n for t, n in params]
        got = [" ".join(t) + " " + n for t, n in dparams]
        if dret != ret or want != got:
            problems.append(
                f"{loc}: {name} is defined as ({', '.join(got)}) but "
                f"moert_kernels.def lists ({', '.join(want)})")
    for p in problems:
        print("error: " + p)
    print(f"{len(kernels)} kernels checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
