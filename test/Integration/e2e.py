#!/usr/bin/env python3
"""End-to-end driver of the integration tests: compiled programs vs the numpy reference.

For one model config and one set of routing options it
  1. emits the model graph, draws seeded weights and inputs and runs the float64
     reference once (in this process, through ``moe_compiler.cli``);
  2. compiles the graph for one rank (``--single``) and for every ``--mesh``;
  3. runs each module with ``moe-run --check REF --rtol 1e-4`` (under mpirun for
     several ranks), and re-checks the written outputs here with numpy;
  4. for every DTD mesh, checks from ``--stats`` that each rank's all-to-all bytes of
     the token exchange over ``ep`` (``all_to_all_v`` dropless, ``all_to_all`` with
     capacity) are exactly 1/tp of the same mesh without ``--dtd``;
  5. for every run, checks each rank's ``--stats`` collectives against the manifest's
     ``collectives`` (what the compiler predicts from CollectiveOpInterface): the
     same kinds, axes and calls, the same bytes (at most them for all_to_all_v);
  6. for every mesh, checks that the weight elements each rank loads (the local
     shapes of the manifest's weight arguments) are what ``info`` says
     (``moe_compiler.info.graph_weights_per_rank``).

Output, one line per run (FileCheck reads them):
  IR <family> %N = moe.layer ... {attributes}        (with --show-ir; also moe.mlp
                                                    and moe.layernorm)
  PASS <family> <mesh> max_rel_err=<e> collectives=<n> outputs=<names>
  DTD <family> <mesh> <op> bytes/rank=<b> nodtd=<b0> ratio=1/<tp>
  OVERLAP <family> <mesh> bitwise=<baseline mesh>   (outputs byte for byte equal)
  OVERLAP <family> <mesh> rounding=<baseline mesh> max_rel_diff=<e>   (equal to rtol)
  HIER <family> <mesh> bitwise=<flat mesh> node_messages/call=<m> flat_messages/call=<f>
       node_bytes/rank=<b> flat_internode_bytes/rank=<b0>   (2D hierarchical all-to-all:
       outputs byte for byte those of the flat exchange; messages and bytes per rank
       over ep_node against the flat exchange's over ep, all-to-alls of the token
       buffers; the bytes only for capacity layers, whose flat inter-node bytes are
       (ep - L)/(ep - 1) of the flat bytes)
  WEIGHTS <family> <mesh> elements/rank=<n> single=<n1> info=<n>
  DROPS <family> dropped=<n> of <m> assignments (capacity <c> per group)
  FAIL <family> <mesh> <why>                       (and exit status 1)

``max_rel_err`` = max |y - ref| / (|ref| + atol/rtol): the error relative to the
reference with moe-run's absolute floor, so it is <= rtol exactly when moe-run's
criterion ``|y - ref| <= atol + rtol |ref|`` holds everywhere.

A mesh is ``dp=..,ep=..,tp=..`` optionally followed by ``+dtd``, ``+expert-tp``
``+overlap=N`` and ``+hier=R`` (the moe-compile flags; ``overlap=N`` is
``--overlap-degree N``, ``maxrecv=N`` is ``--max-recv-tokens N``, ``hier=R`` is
``--hierarchical-a2a --ranks-per-node R``, ``cluster=FILE`` is ``--cluster FILE``
for ``overlap=auto``, and its
run is compared byte for byte with the same mesh's without it;
and its run's outputs are compared with the same mesh's without it: byte for byte
with ``--overlap-bitwise``, else to rtol 1e-4). Arguments after ``--`` are routing options
given to both ``emit`` and ``reference`` (``--capacity-factor``, ``--token-groups``,
``--losses``, ``--norm``, ...).

  e2e.py --config examples/configs/tiny-mixtral.json --family mixtral --single \
         --mesh ep=2 --mesh ep=2,tp=2 --mesh ep=2,tp=2+dtd -- --losses

Needs python3 with numpy, the repository's python/ on PYTHONPATH (or found next to
this file), moe-compile and moe-run on PATH (else $MOE_BUILD_DIR/bin, else
build/bin), and for meshes an MPI launcher (``--mpirun``, default ``mpiexec``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
if os.path.join(SRC, "python") not in sys.path:
    sys.path.insert(0, os.path.join(SRC, "python"))

from moe_compiler import cli  # noqa: E402
from moe_compiler.configs import Mesh, MoEConfig, parse_layers  # noqa: E402
from moe_compiler.info import graph_weights_per_rank  # noqa: E402
from moe_compiler.layout import sublayers  # noqa: E402
from moe_compiler.reference import (  # noqa: E402
    capacity_for,
    kept_mask,
    prenorm,
    route,
    sublayer_apply,
    sublayer_weights,
)
from moe_compiler.safetensors import SafetensorsFile, load  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
RUN_TIMEOUT = 300  # seconds per moe-run; more means a hang


class Failure(Exception):
    pass


def find_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in (os.path.join(os.environ.get("MOE_BUILD_DIR", ""), "bin"),
              os.path.join(SRC, "build", "bin")):
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise Failure(f"{name}: not found on PATH, in $MOE_BUILD_DIR/bin or {SRC}/build/bin")


def run(cmd: list[str], what: str, timeout: float = RUN_TIMEOUT) -> str:
    """Run ``cmd``; its combined output, or Failure naming ``what`` with the tail."""
    env = dict(os.environ)
    # OpenMPI refuses root without these (lit sets them too); one thread per rank.
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        raise Failure(f"{what}: timed out after {timeout}s: {shlex.join(cmd)}\n"
                      f"{out[-3000:]}") from None
    except OSError as e:
        raise Failure(f"{what}: cannot run {cmd[0]}: {e.strerror}") from None
    if p.returncode != 0:
        raise Failure(f"{what}: exit {p.returncode}: {shlex.join(cmd)}\n{p.stdout[-3000:]}")
    return p.stdout


def frontend(argv: list[str]) -> None:
    """``python3 -m moe_compiler ARGV`` in this process (saves an interpreter start)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(argv)
    if rc != 0:
        raise Failure(f"moe_compiler {shlex.join(argv)}: exit {rc}: {err.getvalue().strip()}")


# -- meshes -------------------------------------------------------------------------------

class MeshRun:
    def __init__(self, spec: str) -> None:
        self.label = spec
        parts = spec.split("+")
        self.mesh = parts[0]
        self.flags = parts[1:]
        self.overlap = None
        self.hier = None
        for f in self.flags:
            if f.startswith("overlap="):
                self.overlap = f.partition("=")[2]
            elif f.startswith("hier="):
                self.hier = f.partition("=")[2]
            elif f.startswith(("maxrecv=", "cluster=")):
                pass
            elif f not in ("dtd", "expert-tp"):
                raise Failure(f"mesh {spec!r}: unknown flag +{f} (dtd, expert-tp, "
                              "overlap=N, hier=R, maxrecv=N or cluster=FILE)")
        self.axes = {"dp": 1, "ep": 1, "tp": 1}
        if self.mesh != "single":
            for part in self.mesh.split(","):
                k, _, v = part.partition("=")
                if k not in self.axes or not v.isdigit() or int(v) < 1:
                    raise Failure(f"mesh {spec!r}: {part!r} is not dp=N, ep=N or tp=N")
                self.axes[k] = int(v)
        self.ranks = math.prod(self.axes.values())
        self.dtd = "dtd" in self.flags

    def compile_flags(self) -> list[str]:
        if self.mesh == "single":
            return []
        flags = [f"--mesh={self.mesh}"]
        for f in self.flags:
            if f.startswith("overlap="):
                flags.append(f"--overlap-degree={self.overlap}")
            elif f.startswith("hier="):
                flags += ["--hierarchical-a2a", f"--ranks-per-node={self.hier}"]
            elif f.startswith("maxrecv="):
                flags.append(f"--max-recv-tokens={f.partition('=')[2]}")
            elif f.startswith("cluster="):
                flags.append(f"--cluster={f.partition('=')[2]}")
            else:
                flags.append(f"--{f}")
        return flags

    def without_dtd(self) -> str:
        return "+".join([self.mesh] + [f for f in self.flags if f != "dtd"])

    def without_hier(self) -> str:
        return "+".join([self.mesh] + [f for f in self.flags if not f.startswith("hier=")])

    def without_overlap(self) -> str:
        return "+".join([self.mesh] + [f for f in self.flags
                                       if not f.startswith(("overlap=", "cluster="))])


# -- checks -------------------------------------------------------------------------------

def compare(out_path: str, ref: dict[str, np.ndarray]) -> tuple[float, list[str]]:
    """Independent numpy check of every reference tensor: (max_rel_err, names).

    ``ref`` is the reference file read once (float64) for all meshes.
    """
    worst, names = 0.0, []
    with SafetensorsFile(out_path) as out:
        for name, r in ref.items():
            if name not in out:
                raise Failure(f"output {name!r} missing from {out_path}")
            y = out.get(name).astype(np.float64)
            if r.shape != y.shape:
                raise Failure(f"output {name!r}: shape {list(y.shape)} != {list(r.shape)}")
            if not np.all(np.isfinite(y)):
                raise Failure(f"output {name!r}: non-finite values")
            rel = np.abs(y - r) / (np.abs(r) + ATOL / RTOL)
            e = float(rel.max()) if rel.size else 0.0
            if e > RTOL:
                raise Failure(f"output {name!r}: max_rel_err {e:.3e} > {RTOL}")
            worst = max(worst, e)
            names.append(name)
    return worst, names


def a2a_bytes(stats_path: str, op: str, axes: tuple[str, ...] = ("ep", "ep_node",
                                                                  "ep_local"),
              field: str = "bytes_sent") -> list[int]:
    """Per rank (in rank order): ``field`` of ``op`` over the mesh axes ``axes``
    (default: ep, or its two parts after the hierarchical rewrite)."""
    with open(stats_path, encoding="utf-8") as fh:
        stats = json.load(fh)
    out = []
    for r in sorted(stats, key=lambda s: s["rank"]):
        out.append(sum(c[field] for c in r.get("collectives", [])
                       if c["op"] == op and c["axis"] in axes))
    return out


def check_collectives(module_dir: str, stats_path: str) -> int:
    """Each rank's measured collectives (``--stats``) against what the compiler
    predicts per call (the manifest's ``collectives``, from CollectiveOpInterface):
    the same (op, axes) pairs and calls, and the same bytes, or at most the
    predicted bytes where the count depends on the data (all_to_all_v)."""
    with open(os.path.join(module_dir, "manifest.json"), encoding="utf-8") as fh:
        entry = next(e for e in json.load(fh)["entries"] if e["name"] == "forward")
    want = {(c["op"], c["axis"]): c for c in entry["collectives"]}
    with open(stats_path, encoding="utf-8") as fh:
        ranks = json.load(fh)
    for r in ranks:
        got = {(c["op"], c["axis"]): c for c in r.get("collectives", [])}
        if set(got) != set(want):
            raise Failure(f"rank {r['rank']} ran collectives {sorted(got)}, the "
                          f"compiler predicted {sorted(want)}")
        for key, c in want.items():
            g = got[key]
            exact = not c["upper_bound"]
            if g["calls"] != c["calls"] or (g["bytes_sent"] != c["bytes_sent"] if exact
                                            else g["bytes_sent"] > c["bytes_sent"]):
                raise Failure(f"rank {r['rank']} {key}: {g['calls']} calls, "
                              f"{g['bytes_sent']} bytes; predicted {c['calls']} calls, "
                              f"{'' if exact else 'at most '}{c['bytes_sent']} bytes")
    return len(want)


def weight_elements(module_dir: str) -> int:
    """Elements of every weight argument one rank holds (the manifest's local shapes)."""
    with open(os.path.join(module_dir, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    return sum(math.prod(arg["local_shape"]) for entry in manifest["entries"]
               for arg in entry["args"] if arg["role"] == "weight")


def check_weights(family: str, m: MeshRun, mod: str, cfg: MoEConfig, layers: range) -> None:
    """The WEIGHTS line: what each rank loads is what info says it holds."""
    held = weight_elements(mod)
    info = graph_weights_per_rank(cfg, Mesh(**m.axes), layers,
                                  expert_tp="expert-tp" in m.flags)
    single = graph_weights_per_rank(cfg, Mesh(), layers)
    if held != info:
        raise Failure(f"each rank holds {held} weight elements, info says {info}")
    print(f"WEIGHTS {family} {m.label} elements/rank={held} single={single} info={info}",
          flush=True)


def count_drops(cfg: MoEConfig, layers: range, weights: str,
                inputs: str) -> tuple[int, int, list[int]]:
    """Assignments the reference drops for capacity: (dropped, total, capacities).

    Replays the reference sublayer by sublayer, routing each MoE one's input again;
    every weight is read once.
    """
    dropped = total = 0
    caps = []
    with SafetensorsFile(inputs) as xf:
        h = xf.get("hidden_states").astype(np.float64)
    with SafetensorsFile(weights) as wf:
        for sub in sublayers(cfg, layers):
            w = sublayer_weights(sub, wf.get)
            if sub.kind == "moe":
                n = prenorm(cfg, h, w["norm"])
                r = route(n, w["router"], cfg, sub.num_experts, w.get("bias"))
                kept = kept_mask(r.idx, cfg, sub.num_experts)
                dropped += int((~kept).sum())
                total += kept.size
                caps.append(capacity_for(cfg, h.shape[0] // cfg.token_groups,
                                         sub.num_experts))
            h, _, _ = sublayer_apply(cfg, sub, h, w)
    return dropped, total, caps


# -- main ---------------------------------------------------------------------------------

def main() -> int:
    argv = sys.argv[1:]
    routing: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, routing = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True,
                   help="config.json (a relative path not found here: from the repo root)")
    p.add_argument("--family", required=True, help="label printed on every line")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--layers", help="layer range A:B (default: all)")
    p.add_argument("--seed", type=int, default=1, help="weights seed (inputs: seed + 1)")
    p.add_argument("--single", action="store_true", help="run the single-rank module")
    p.add_argument("--mesh", action="append", default=[], metavar="SPEC",
                   help="dp=..,ep=..,tp=..[+dtd][+expert-tp]; repeatable")
    p.add_argument("--expect-drops", action="store_true",
                   help="print DROPS and fail unless the reference drops assignments")
    p.add_argument("--expect-outputs", default="hidden_states",
                   help="comma-separated output names the reference must have")
    p.add_argument("--overlap-bitwise", action="store_true",
                   help="an +overlap=N run must write the same bytes as its run "
                   "without overlap (default: equal up to rounding, rtol 1e-4; the "
                   "CPU backend's OpenBLAS GEMMs round a row differently with the "
                   "number of rows in the call)")
    p.add_argument("--show-ir", action="store_true",
                   help="print the emitted moe.layer / moe.mlp / moe.layernorm ops (IR lines)")
    p.add_argument("--reference-only", action="append", default=[], metavar="ARG",
                   help="an extra routing argument for the reference alone (the harness's "
                   "own negative test: emit and reference then disagree)")
    p.add_argument("--mpirun", default=os.environ.get("MOE_MPIRUN", "mpiexec --oversubscribe"),
                   help="MPI launcher command (default: mpiexec --oversubscribe)")
    p.add_argument("--workdir", help="keep the files here (emptied first; default: a "
                   "temporary directory, removed at the end)")
    p.add_argument("--verbose", action="store_true", help="print tool output and timings")
    a = p.parse_args(argv)

    config = a.config
    if not os.path.exists(config) and not os.path.isabs(config):
        config = os.path.join(SRC, config)
    runs = (["single"] if a.single else []) + a.mesh
    if not runs:
        p.error("nothing to run: give --single and/or --mesh")
    try:
        meshes = [MeshRun(s) for s in runs]
    except Failure as e:
        p.error(str(e))
    labels = {m.label for m in meshes}
    for m in list(meshes):  # every DTD run needs its baseline without --dtd
        if m.dtd and m.without_dtd() not in labels:
            meshes.insert(meshes.index(m), MeshRun(m.without_dtd()))
            labels.add(m.without_dtd())
    for m in list(meshes):  # every hierarchical run is compared with the flat one
        if m.hier and m.without_hier() not in labels:
            meshes.insert(meshes.index(m), MeshRun(m.without_hier()))
            labels.add(m.without_hier())
    for m in list(meshes):  # every overlap run is compared with its baseline
        if m.overlap and m.without_overlap() not in labels:
            meshes.insert(meshes.index(m), MeshRun(m.without_overlap()))
            labels.add(m.without_overlap())

    work = a.workdir or tempfile.mkdtemp(prefix="moe-e2e-")
    if a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    failed = False
    try:
        failed = not drive(a, config, routing, meshes, work)
    except Failure as e:
        print(f"FAIL {a.family} {e}", flush=True)
        failed = True
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def drive(a: argparse.Namespace, config: str, routing: list[str], meshes: list[MeshRun],
          work: str) -> bool:
    t0 = time.time()
    model = ["--hf-config", config] + (["--layers", a.layers] if a.layers else [])
    mlir, w, x, ref = (os.path.join(work, f) for f in
                       ("model.mlir", "w.safetensors", "x.safetensors", "ref.safetensors"))
    frontend(["emit", *model, "--tokens", str(a.tokens), *routing, "-o", mlir])
    frontend(["init-weights", *model, "--seed", str(a.seed), "-o", w])
    frontend(["init-inputs", "--hf-config", config, "--tokens", str(a.tokens),
              "--seed", str(a.seed + 1), "-o", x])
    frontend(["reference", *model, "--weights", w, "--inputs", x, *routing,
              *a.reference_only, "-o", ref])
    if a.show_ir:
        with open(mlir, encoding="utf-8") as fh:
            for line in fh:
                if re.search(r"= moe\.(layer|mlp|layernorm) ", line):
                    print(f"IR {a.family} {line.strip().split(' : (')[0]}", flush=True)

    # The config exactly as emit / reference saw it (with the routing overrides).
    ns, _ = cli.build_parser().parse_known_args(["reference", *model, "--weights", w,
                                                 "--inputs", x, *routing,
                                                 *a.reference_only, "-o", ref])
    cfg = cli._routed(ns)
    layers = parse_layers(a.layers, cfg.num_layers)
    capacity = cfg.capacity > 0 or cfg.capacity_factor > 0
    # Read once: every mesh's outputs are compared with it.
    ref_tensors = {k: v.astype(np.float64) for k, v in load(ref).items()}
    ref_names = set(ref_tensors)
    want = set(filter(None, a.expect_outputs.split(",")))
    if not want <= ref_names:
        raise Failure(f"reference has outputs {sorted(ref_names)}, expected "
                      f"{sorted(want)}")
    if a.expect_drops:
        if not capacity:
            raise Failure("--expect-drops on a dropless config")
        dropped, total, caps = count_drops(cfg, layers, w, x)
        print(f"DROPS {a.family} dropped={dropped} of {total} assignments "
              f"(capacity {','.join(map(str, caps))} per group, "
              f"{cfg.token_groups} groups)", flush=True)
        if dropped == 0:
            raise Failure("the reference drops no assignment; --expect-drops wants some")
    if a.verbose:
        print(f"# reference ready in {time.time() - t0:.1f}s", flush=True)

    compile_bin, run_bin = find_tool("moe-compile"), find_tool("moe-run")
    stats: dict[str, str] = {}
    outputs: dict[str, str] = {}
    ok = True
    for i, m in enumerate(meshes):
        t1 = time.time()
        try:
            mod = os.path.join(work, f"mod{i}")
            out = os.path.join(work, f"y{i}.safetensors")
            st = os.path.join(work, f"stats{i}.json")
            log = run([compile_bin, mlir, "-o", mod, *m.compile_flags()],
                      f"moe-compile {m.label}")
            if m.ranks > 1:
                check_weights(a.family, m, mod, cfg, layers)
            cmd = [run_bin, mod, "--weights", w, "--inputs", x, "--output", out,
                   "--check", ref, "--rtol", str(RTOL), "--atol", str(ATOL),
                   "--stats", st, "--quiet"]
            if m.ranks > 1:
                cmd = shlex.split(a.mpirun) + ["-np", str(m.ranks)] + cmd
            log += run(cmd, f"moe-run {m.label}")
            checked = set(re.findall(r"^check (\S+) .* ok$", log, re.M))
            if checked != ref_names:
                raise Failure(f"moe-run checked {sorted(checked)}, the reference has "
                              f"{sorted(ref_names)}")
            err, names = compare(out, ref_tensors)
            stats[m.label] = st
            outputs[m.label] = out
            kinds = check_collectives(mod, st)
            print(f"PASS {a.family} {m.label} max_rel_err={err:.2e} "
                  f"collectives={kinds} outputs={','.join(names)}", flush=True)
            if a.verbose:
                print(f"# {m.label}: {time.time() - t1:.1f}s\n{log}", flush=True)
        except Failure as e:
            print(f"FAIL {a.family} {m.label} {e}", flush=True)
            ok = False

    for m in meshes:
        if not m.dtd or m.label not in stats or m.without_dtd() not in stats:
            continue
        op = "all_to_all" if capacity else "all_to_all_v"
        with_dtd = a2a_bytes(stats[m.label], op)
        base = a2a_bytes(stats[m.without_dtd()], op)
        tp = m.axes["tp"]
        good = (len(with_dtd) == len(base) == m.ranks and all(b > 0 for b in base)
                and all(d * tp == b for d, b in zip(with_dtd, base)))
        uniq = sorted(set(with_dtd)), sorted(set(base))
        show = lambda v: "/".join(map(str, v))  # noqa: E731
        line = (f"{a.family} {m.label} {op} bytes/rank={show(uniq[0])} "
                f"nodtd={show(uniq[1])} ratio=1/{tp}")
        if good:
            print(f"DTD {line}", flush=True)
        else:
            print(f"FAIL {a.family} {m.label} DTD bytes are not 1/tp of the run without "
                  f"--dtd: per rank {with_dtd} vs {base} ({op}, tp={tp})", flush=True)
            ok = False
    for m in meshes:
        base = m.without_overlap()
        if not m.overlap or m.label not in outputs or base not in outputs:
            continue
        with open(outputs[m.label], "rb") as f1, open(outputs[base], "rb") as f2:
            same = f1.read() == f2.read()
        diff = 0.0
        if not same:
            y, y0 = load(outputs[m.label]), load(outputs[base])
            for name, v in y0.items():
                v = v.astype(np.float64)
                rel = np.abs(y[name].astype(np.float64) - v) / (np.abs(v) + ATOL / RTOL)
                diff = max(diff, float(rel.max()) if rel.size else 0.0)
        if same:
            print(f"OVERLAP {a.family} {m.label} bitwise={base}", flush=True)
        elif not a.overlap_bitwise and diff <= RTOL:
            print(f"OVERLAP {a.family} {m.label} rounding={base} max_rel_diff={diff:.2e}",
                  flush=True)
        else:
            print(f"FAIL {a.family} {m.label} the output differs from {base}'s "
                  f"(max_rel_diff={diff:.2e}; overlap must not change "
                  f"{'a bit' if a.overlap_bitwise else 'more than rounding'})", flush=True)
            ok = False
    for m in meshes:
        base = m.without_hier()
        if not m.hier or m.label not in outputs or base not in outputs:
            continue
        ok = check_hier(a.family, m, base, outputs, stats, capacity) and ok
    if a.verbose:
        print(f"# total {time.time() - t0:.1f}s", flush=True)
    return ok


def check_hier(family: str, m: MeshRun, base: str, outputs: dict[str, str],
               stats: dict[str, str], capacity: bool) -> bool:
    """The HIER line: bitwise equal outputs; over ep_node, ep/L - 1 messages a call
    instead of the flat ep - 1, and (capacity) the flat exchange's inter-node bytes."""
    with open(outputs[m.label], "rb") as f1, open(outputs[base], "rb") as f2:
        same = f1.read() == f2.read()
    ep, tp = m.axes["ep"], m.axes["tp"]
    local = int(m.hier) // tp
    nodes = ep // local
    if local <= 1 or nodes <= 1:  # the pass leaves such a mesh as it is
        print(f"{'HIER' if same else 'FAIL'} {family} {m.label} "
              f"{'bitwise' if same else 'differs from'}={base} unsplit "
              f"(nodes={nodes} local={local})", flush=True)
        return same
    op = "all_to_all" if capacity else "all_to_all_v"
    calls = a2a_bytes(stats[m.label], op, ("ep_node",), "calls")
    msgs = a2a_bytes(stats[m.label], op, ("ep_node",), "messages")
    flat_calls = a2a_bytes(stats[base], op, ("ep",), "calls")
    flat_msgs = a2a_bytes(stats[base], op, ("ep",), "messages")
    node_bytes = a2a_bytes(stats[m.label], op, ("ep_node",))
    flat_bytes = a2a_bytes(stats[base], op, ("ep",))
    why = []
    if not same:
        why.append(f"the output differs from {base}'s")
    if not (calls == flat_calls and all(c > 0 for c in calls)):
        why.append(f"calls over ep_node {calls} != calls over ep {flat_calls}")
    if msgs != [c * (nodes - 1) for c in calls] or \
            flat_msgs != [c * (ep - 1) for c in flat_calls]:
        why.append(f"messages over ep_node {msgs} (flat over ep: {flat_msgs}) are not "
                   f"{nodes - 1} and {ep - 1} a call")
    inter = [b * (ep - local) // (ep - 1) for b in flat_bytes]
    if capacity and node_bytes != inter:
        why.append(f"bytes over ep_node {node_bytes} != the flat exchange's inter-node "
                   f"bytes {inter}")
    if why:
        print(f"FAIL {family} {m.label} {'; '.join(why)}", flush=True)
        return False
    per = lambda v, c: "/".join(map(str, sorted({x // max(y, 1) for x, y in zip(v, c)})))  # noqa: E731
    line = (f"HIER {family} {m.label} bitwise={base} "
            f"node_messages/call={per(msgs, calls)} flat_messages/call={per(flat_msgs, flat_calls)}")
    if capacity:
        line += (f" node_bytes/rank={'/'.join(map(str, sorted(set(node_bytes))))} "
                 f"flat_internode_bytes/rank={'/'.join(map(str, sorted(set(inter))))}")
    print(line, flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
