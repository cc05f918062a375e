#!/usr/bin/env python3
"""Predicted vs measured step time of several layouts, in one run.

For each rank count N (default 4 and 8) on this machine:
  1. emit a Mixtral-shaped layer (E=8, top-2, SwiGLU, capacity factor 2,
     8 token groups) and seeded weights and inputs;
  2. calibrate: ``mpirun -np N moe-run --calibrate`` on a mesh with every axis
     of more than one rank, under the network emulation ``--net``;
  3. ``moe-plan --cluster CAL --devices N --json`` (every layout);
  4. compile and run the planner's first choice and a fixed set of other
     layouts (different ep/tp/dp, DTD, overlap degrees, one training step)
     under the same ``--net``, ``--warmup 1 --repeat R``;
  5. print predicted and measured time side by side, the error of each, and
     where the planner's first choice lands among the measured times.

Usage: bench/plan/validate.py [--quick] [--ranks 4,8] [--out DIR]
The machine is shared: timings vary; read the spread before the error.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("MOE_BUILD_DIR", ROOT / "build"))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           PYTHONPATH=str(ROOT / "python"))
NET = "ep:alpha=200us,bw=40MB/s;tp:alpha=100us,bw=200MB/s;dp:alpha=100us,bw=200MB/s"

# Layouts measured besides the first choice: (mesh, dtd, expert-tp, degree, train).
FIXED = {
    4: [("dp=1,ep=4,tp=1", False, False, 1, False),
        ("dp=1,ep=4,tp=1", False, False, 4, False),
        ("dp=1,ep=2,tp=2", False, False, 1, False),
        ("dp=1,ep=2,tp=2", True, False, 1, False),
        ("dp=2,ep=2,tp=1", False, False, 2, False),
        ("dp=4,ep=1,tp=1", False, False, 1, False),
        ("dp=1,ep=4,tp=1", False, False, 1, True)],
    8: [("dp=1,ep=8,tp=1", False, False, 1, False),
        ("dp=1,ep=8,tp=1", False, False, 4, False),
        ("dp=1,ep=4,tp=2", True, False, 1, False),
        ("dp=1,ep=4,tp=2", False, False, 1, False),
        ("dp=2,ep=4,tp=1", False, False, 2, False),
        ("dp=1,ep=2,tp=4", True, True, 1, False),
        ("dp=2,ep=4,tp=1", False, False, 1, True)],
}


def net_for(mesh):
    """The parts of NET for the axes of `mesh` with more than one rank."""
    sizes = dict(part.split("=") for part in mesh.split(","))
    parts = [p for p in NET.split(";") if int(sizes.get(p.split(":")[0], 1)) > 1]
    return ";".join(parts)


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], env=ENV, capture_output=True,
                       text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n"
                 f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def key(p):
    return (p["mesh"], p["dtd"], p["expert_tp"], p["overlap_degree"])


def mpirun(n):
    return ["mpirun", "--oversubscribe", "-np", n]


def layout_name(layout):
    mesh, dtd, etp, degree, train = layout
    return f"{mesh.replace(',', '_').replace('=', '')}{'_dtd' if dtd else ''}" \
           f"{'_etp' if etp else ''}_d{degree}{'_train' if train else ''}"


def phases(predicted, stats, runs):
    """Per phase of the compute track: predicted vs measured (rank 0, per run)."""
    pred = {}
    for e in json.loads(predicted.read_text()):
        if e.get("ph") == "X" and e["pid"] == 0 and e["tid"] == 0:
            pred[e["name"]] = pred.get(e["name"], 0) + e["dur"] / 1e3
    meas = {p["name"]: p["seconds"] * 1e3 / runs
            for p in json.loads(stats.read_text())[0]["phases"]}
    names = sorted(set(pred) | set(meas), key=lambda k: -max(pred.get(k, 0),
                                                             meas.get(k, 0)))
    print("    first choice, per phase (ms per step): " + ", ".join(
        f"{k} {pred.get(k, 0):.1f} / {meas.get(k, 0):.1f}" for k in names[:5])
        + "  (predicted / measured)")


def measure(trace, n, layout, work, args, model):
    mesh, dtd, etp, degree, train = layout
    name = layout_name(layout)
    mod = work / name
    cmd = [BUILD / "bin/moe-compile", model, "-o", mod, "--mesh", mesh]
    cmd += ["--dtd"] * dtd + ["--expert-tp"] * etp + ["--train"] * train
    cmd += ["--overlap-degree", degree] if degree > 1 else []
    run(cmd)
    stats = work / f"{name}.stats.json"
    net = net_for(mesh)
    common = (["--net", net] if net else []) + ["--stats", stats, "--quiet"]
    common += ["--trace", trace] if trace else []
    if train:
        r = [BUILD / "bin/moe-run", mod, "--train", "--steps",
             args.repeat + 1, "--weights", work / "w.safetensors",
             "--inputs", work / "x.safetensors", "--targets",
             work / "t.safetensors", "--json"]
        run(mpirun(n) + r + common)
        steps = args.repeat + 1
    else:
        r = [BUILD / "bin/moe-run", mod, "--weights", work / "w.safetensors",
             "--inputs", work / "x.safetensors", "--output",
             work / "y.safetensors", "--warmup", 1, "--repeat", args.repeat]
        run(mpirun(n) + r + common)
        steps = args.repeat
    ranks = json.loads(stats.read_text())
    return max(rk["run_seconds"] for rk in ranks) / steps


def predict(work, cal, n, model, layout, trace=None):
    mesh, dtd, etp, degree, train = layout
    out = work / "one.json"
    cmd = [BUILD / "bin/moe-plan", model, "--cluster", cal, "--mesh", mesh,
           "--dtd", "on" if dtd else "off",
           "--expert-tp", "on" if etp else "off", "--zero1", "off",
           "--overlap-degrees", degree, "--json", out]
    cmd += ["--train"] * train
    cmd += ["--simulate", trace] if trace else []
    run(cmd)
    plans = json.loads(out.read_text())["plans"]
    return plans[0]["step_s"] if plans else float("nan")


def overlay(measured, predicted, out, runs):
    """One file: the last measured run of every rank (shifted to start at 0)
    and the predicted step (pid + 1000)."""
    m = json.loads(measured.read_text())
    p = json.loads(predicted.read_text())
    x = [e for e in m if e.get("ph") == "X"]
    events = [e for e in m if e.get("ph") == "M"]
    for pid in sorted({e["pid"] for e in x}):
        mine = sorted((e for e in x if e["pid"] == pid), key=lambda e: e["ts"])
        last = mine[-max(1, len(mine) // runs):]
        t0 = last[0]["ts"]
        events += [dict(e, ts=e["ts"] - t0) for e in last]
        events.append({"name": "process_name", "ph": "M", "pid": pid,
                       "args": {"name": f"rank {pid} (measured, last run)"}})
    for e in p:
        events.append(dict(e, pid=e["pid"] + 1000))
    out.write_text(json.dumps(events))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ranks", default="4,8")
    ap.add_argument("--out", default=str(ROOT / "out/bench-plan"))
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=1792)
    args = ap.parse_args()
    args.repeat = 2 if args.quick else 3
    if args.quick:
        args.tokens, args.hidden, args.ffn = 256, 256, 512
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "config.json"
    cfg.write_text(json.dumps({
        "model_type": "mixtral", "hidden_size": args.hidden,
        "intermediate_size": args.ffn, "num_hidden_layers": 1,
        "num_attention_heads": 8, "num_key_value_heads": 8,
        "num_local_experts": 8, "num_experts_per_tok": 2,
        "hidden_act": "silu", "rms_norm_eps": 1e-05, "vocab_size": 32000}))
    mc = [sys.executable, "-m", "moe_compiler"]
    model = work / "model.mlir"
    run(mc + ["emit", "--hf-config", cfg, "--tokens", args.tokens,
              "--capacity-factor", "2", "--token-groups", "8", "-o", model])
    run(mc + ["init-weights", "--hf-config", cfg, "--seed", "1", "-o", work / "w.safetensors"])
    run(mc + ["init-inputs", "--hf-config", cfg, "--tokens", args.tokens, "--seed", "2",
              "-o", work / "x.safetensors"])
    run(mc + ["init-inputs", "--hf-config", cfg, "--tokens", args.tokens, "--seed", "3",
              "-o", work / "t.safetensors"])
    print(f"layer: T={args.tokens} D={args.hidden} F={args.ffn} E=8 top-2, "
          f"capacity factor 2, 8 token groups; --net '{NET}'")
    summary = []
    for n in [int(x) for x in args.ranks.split(",")]:
        cal = work / f"cal{n}.json"
        cal_mesh = "ep=2,tp=2" if n == 4 else "dp=2,ep=2,tp=2"
        run(mpirun(n) + [BUILD / "bin/moe-run", "--calibrate", cal, "--mesh",
                         cal_mesh, "--net", net_for(cal_mesh)])
        plan = work / f"plan{n}.json"
        run([BUILD / "bin/moe-plan", model, "--cluster", cal, "--devices", n,
             "--json", plan, "--top", "0"])
        plans = json.loads(plan.read_text())["plans"]
        first = plans[0]
        layouts = [(first["mesh"], first["dtd"], first["expert_tp"],
                    first["overlap_degree"], False)]
        for lay in FIXED[n]:
            if lay not in layouts:
                layouts.append(lay)
        rows = []
        for i, lay in enumerate(layouts):
            # The first choice: predicted and measured time lines in one
            # Chrome trace (measured ranks as pid r, predicted as 1000 + r).
            ptrace = work / f"predicted{n}.json" if i == 0 else None
            mtrace = work / f"measured{n}.json" if i == 0 else None
            pred = predict(work, cal, n, model, lay, ptrace)
            meas = measure(mtrace, n, lay, work, args, model)
            if i == 0:
                overlay(mtrace, ptrace, work / f"overlay{n}.json", args.repeat + 1)
                phases(ptrace, work / f"{layout_name(lay)}.stats.json",
                       args.repeat)
            load = os.getloadavg()[0]
            rows.append((lay, pred, meas, load))
            print(f"  N={n} {lay[0]:16s} dtd={int(lay[1])} etp={int(lay[2])} "
                  f"deg={lay[3]} {'train' if lay[4] else 'infer'}: predicted "
                  f"{pred * 1e3:8.2f} ms  measured {meas * 1e3:8.2f} ms  "
                  f"error {100 * (pred - meas) / meas:+6.1f}%  "
                  f"(load {load:.1f} on {os.cpu_count()} cores)", flush=True)
        infer = [r for r in rows if not r[0][4]]
        best = min(r[2] for r in infer)
        gap = 100 * (rows[0][2] - best) / best
        summary.append((n, first["mesh"], gap, rows))
        print(f"N={n}: first choice {first['mesh']} dtd={first['dtd']} "
              f"degree={first['overlap_degree']}: measured {gap:+.1f}% vs the "
              f"measured fastest inference layout\n", flush=True)
    (work / "validate.json").write_text(json.dumps([
        {"ranks": n, "first_choice": m, "first_vs_fastest_pct": g,
         "rows": [{"layout": list(r[0]), "predicted_s": r[1],
                   "measured_s": r[2], "load_average": r[3]} for r in rows]}
        for n, m, g, rows in summary], indent=1))


if __name__ == "__main__":
    main()
