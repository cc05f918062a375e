#!/usr/bin/env python3
"""The 2D hierarchical all-to-all against the flat one, measured and predicted.

8 ranks as 2 emulated nodes of 4: ``moe-run --net`` gives the node axis
(``ep_node``) a slow link and the local axis (``ep_local``) a fast one, per peer
(docs/runtime.md, "Network emulation"). One MoE layer (Mixtral-shaped at the tiny
config's width: D=32, F=64, E=8, top-2, capacity factor 1) is compiled for
``--mesh ep=8`` twice:

  flat   ``--hierarchical-a2a=mesh --ranks-per-node 4``: ep split into
         ep_node x ep_local, the exchanges flat over both (each rank sends 3
         messages over the local link and 4 over the node link per exchange);
  hier   ``--hierarchical-a2a --ranks-per-node 4``: 3 local messages, then 1
         node message.

For each token count, each module runs ``--repeat`` times under mpirun; the
exchange time per forward is the sum of the all-to-all and re-layout phases
(``all_to_all``, ``copy`` of the reshapes) of the slowest rank. Beside each
measurement: the cost model's prediction for the same ops (``moe-opt
--moe-print-costs`` over the per-rank program, with a cluster file that
describes the emulated links), and the flat/hier ratios of both.

  bench/comm/hier.py [--tokens 64,16384] [--repeat 5] [--node alpha=1ms,bw=100MB/s]
                     [--local alpha=20us,bw=1GB/s] [--work out/bench-hier]

Needs the project built (build/, or $MOE_BUILD_DIR) and mpirun. Run it on an idle
machine: the emulated link times are sleeps, but the copies and the compute are
not, and an overloaded machine stretches them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("MOE_BUILD_DIR", os.path.join(SRC, "build"))
CONFIG = os.path.join(SRC, "examples", "configs", "tiny-mixtral.json")
UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "B/s": 1.0, "KB/s": 1e3, "MB/s": 1e6,
         "GB/s": 1e9}


def run(cmd: list[str], env: dict | None = None) -> str:
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env=env)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {shlex.join(cmd)}\n{p.stdout[-3000:]}")
    return p.stdout


def link(spec: str) -> tuple[float, float]:
    """'alpha=1ms,bw=100MB/s' -> (seconds, bytes per second)."""
    out = {}
    for part in spec.split(","):
        k, _, v = part.partition("=")
        m = re.fullmatch(r"([0-9.eE+-]+)(.*)", v)
        if k not in ("alpha", "bw") or not m or m.group(2) not in UNITS:
            sys.exit(f"bad link {spec!r}: expected alpha=TIME,bw=RATE (s/ms/us, B/s..GB/s)")
        out[k] = float(m.group(1)) * UNITS[m.group(2)]
    return out["alpha"], out["bw"]


def predicted(mlir: str, mode: str, cluster: str) -> float:
    """Seconds the cost model gives the exchange ops of the per-rank forward."""
    cmd = [os.path.join(BUILD, "bin", "moe-opt"), mlir, "-moe-decompose", "-canonicalize",
           "-moe-shard=mesh=ep=8", "-canonicalize", "-cse",
           f"-moe-hierarchical-a2a=ranks-per-node=4 mode={mode}",
           f"--moe-print-costs=cluster={cluster}", "-o", os.devnull]
    total = 0.0
    for line in run(cmd).splitlines():
        m = re.search(r"remark: moe\.(all_to_all\w*|reshape|regroup) cost: ([0-9.eE+-]+) s",
                      line)
        if m:
            total += float(m.group(2))
    return total


def measured(stats_path: str, repeat: int) -> float:
    """Seconds per forward of the exchange phases on the slowest rank."""
    with open(stats_path, encoding="utf-8") as fh:
        ranks = json.load(fh)
    worst = 0.0
    for r in ranks:
        phases = r.get("phases", [])
        t = sum(p["seconds"] for p in phases
                if p["name"].startswith("all_to_all") or p["name"] in ("copy", "regroup"))
        worst = max(worst, t / repeat)
    return worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="64,16384", help="token counts, comma-separated")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--node", default="alpha=1ms,bw=100MB/s", help="the node link")
    p.add_argument("--local", default="alpha=20us,bw=1GB/s", help="the local link")
    p.add_argument("--copy-rate", type=float, default=2e9,
                   help="the cluster file's copy rate, B/s (the re-layouts)")
    p.add_argument("--work", default=os.path.join(SRC, "out", "bench-hier"))
    p.add_argument("--mpirun", default="mpirun --oversubscribe")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(SRC, "python") + (
        ":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    (na, nb), (la, lb) = link(a.node), link(a.local)
    cluster = os.path.join(a.work, "cluster.json")
    with open(cluster, "w", encoding="utf-8") as fh:
        json.dump({"version": 1, "name": "2 emulated nodes of 4", "nodes": 2,
                   "devices_per_node": 4,
                   "device": {"gemm_flop_per_s": 1e10, "gemm_latency_s": 1e-5,
                              "copy_bytes_per_s": a.copy_rate, "memory_bytes": 1e10},
                   "links": {"intra_node": {"alpha_s": la, "bandwidth_bytes_per_s": lb},
                             "inter_node": {"alpha_s": na, "bandwidth_bytes_per_s": nb}}},
                  fh)
    net = f"ep_node:{a.node};ep_local:{a.local}"
    mc = [sys.executable, "-m", "moe_compiler"]
    rows = []
    for tokens in [int(t) for t in a.tokens.split(",")]:
        d = os.path.join(a.work, f"t{tokens}")
        os.makedirs(d, exist_ok=True)
        mlir, w, x = (os.path.join(d, f) for f in ("model.mlir", "w.safetensors",
                                                   "x.safetensors"))
        route = ["--capacity-factor", "1", "--token-groups", "8"]
        run(mc + ["emit", "--hf-config", CONFIG, "--layers", "0:1", "--tokens", str(tokens),
                  *route, "-o", mlir], env)
        run(mc + ["init-weights", "--hf-config", CONFIG, "--layers", "0:1", "--seed", "1",
                  "-o", w], env)
        run(mc + ["init-inputs", "--hf-config", CONFIG, "--tokens", str(tokens), "--seed",
                  "2", "-o", x], env)
        result = {}
        for name, mode in (("flat", "mesh"), ("hier", "on")):
            mod = os.path.join(d, name)
            run([os.path.join(BUILD, "bin", "moe-compile"), mlir, "-o", mod, "--mesh", "ep=8",
                 f"--hierarchical-a2a={mode}", "--ranks-per-node", "4"], env)
            st = os.path.join(d, f"{name}.json")
            run(shlex.split(a.mpirun) + ["-np", "8", os.path.join(BUILD, "bin", "moe-run"),
                                         mod, "--weights", w, "--inputs", x, "--output",
                                         os.path.join(d, f"{name}.safetensors"), "--stats",
                                         st, "--net", net, "--warmup", "1", "--repeat",
                                         str(a.repeat), "--threads", "1", "--quiet"], env)
            result[name] = (measured(st, a.repeat), predicted(mlir, mode, cluster))
        with open(os.path.join(d, "flat.safetensors"), "rb") as f1, \
                open(os.path.join(d, "hier.safetensors"), "rb") as f2:
            same = f1.read() == f2.read()
        rows.append((tokens, result, same))

    print(f"8 ranks = 2 emulated nodes of 4; node link {a.node}, local link {a.local}; "
          f"one MoE layer (D=32, E=8, top-2, capacity factor 1), --mesh ep=8; "
          f"exchange time per forward (2 exchanges), slowest rank, {a.repeat} runs")
    print(f"{'tokens':>7} {'flat meas ms':>13} {'flat pred ms':>13} {'hier meas ms':>13} "
          f"{'hier pred ms':>13} {'meas flat/hier':>15} {'pred flat/hier':>15} bitwise")
    for tokens, r, same in rows:
        (fm, fp), (hm, hp) = r["flat"], r["hier"]
        print(f"{tokens:>7} {fm * 1e3:>13.3f} {fp * 1e3:>13.3f} {hm * 1e3:>13.3f} "
              f"{hp * 1e3:>13.3f} {fm / hm:>15.2f} {fp / hp:>15.2f} {'yes' if same else 'NO'}")
    return 0 if all(same for _, _, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
