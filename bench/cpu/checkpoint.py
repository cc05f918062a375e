#!/usr/bin/env python3
"""Activation checkpointing benchmark: one training step per policy, side by side.

The Mixtral-shaped MoE sublayer of bench/cpu/train.sh (D=1024, F=3584, E=8,
top-2, SwiGLU, dropless, f32; default T=512 tokens here, so that 4 ranks on a
small machine finish in minutes) on 4 ranks, ep=2 x tp=2 with DTD. For each
policy (none, full, cac, auto with a budget halfway between cac and none) it
compiles ``moe-compile --train --checkpoint P`` and records the plan (saved
bytes held from forward_train to backward, peak bytes, recomputed
collectives); then, in each round and in rotating order, runs ``mpirun -np 4
moe-run --train`` for warmup + repeat AdamW steps on a plain link and under
``--net`` (an emulated slow ep link), and reads each step's time (moe-run
--json) and, from --stats, the all-to-all calls of forward_train, the
backward's recomputation and the backward. From the trace of a cac run under
--net it takes the mean time of one token all-to-all on rank 0, so that the
table can compare full - cac with the time of two all-to-alls per layer.

  bench/cpu/checkpoint.py [--tokens T] [--rounds R] [--warmup W] [--repeat N]
                          [--net SPEC] [--out FILE] [--keep-work]

Prints a table and writes bench/cpu/results/checkpoint-<UTC stamp>.json.
Environment: MOE_BUILD_DIR (default <repo>/build), MPIEXEC (default mpirun).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
POLICIES = ["none", "full", "cac", "auto"]


def run(cmd: list[str], **kw) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "python")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    if p.returncode != 0:
        sys.exit(f"checkpoint.py: {' '.join(cmd)} failed ({p.returncode}):\n"
                 f"{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return p.stdout


def config(tokens: int) -> dict:
    return {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
            "hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 1,
            "num_attention_heads": 8, "num_key_value_heads": 8,
            "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_act": "silu",
            "rms_norm_eps": 1e-05, "vocab_size": 32000, "tie_word_embeddings": False,
            "router_aux_loss_coef": 0.02}


def a2a_calls(stats_path: str) -> dict:
    """Rank 0's all-to-all calls per step: tokens (all_to_all_v) and counts
    (all_to_all), by entry (forward_train, recompute, backward)."""
    with open(stats_path) as f:
        ranks = json.load(f)
    rank0 = ranks["ranks"][0] if isinstance(ranks, dict) else ranks[0]
    out = {}
    for e in rank0["entries"]:
        runs = max(e.get("runs", 1), 1)
        calls = {c["op"]: c["calls"] / runs for c in e["collectives"]
                 if c["op"] in ("all_to_all", "all_to_all_v")}
        out[e["name"]] = calls
    return out


def a2a_seconds(trace_path: str) -> float:
    """Mean duration (s) of a token all-to-all (all_to_all_v) on rank 0."""
    with open(trace_path) as f:
        text = f.read().strip()
    events = json.loads(text if text.startswith("[") else "[" + text + "]")
    if isinstance(events, dict):
        events = events.get("traceEvents", [])
    durs = [e["dur"] for e in events
            if e.get("name") == "all_to_all_v" and e.get("pid", 0) == 0 and "dur" in e]
    return statistics.mean(durs) * 1e-6 if durs else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--net", default="ep:alpha=1ms,bw=100MB/s",
                   help="moe-run --net of the slow-link runs")
    p.add_argument("--out")
    p.add_argument("--keep-work", action="store_true")
    a = p.parse_args()
    build = os.environ.get("MOE_BUILD_DIR", os.path.join(ROOT, "build"))
    mpiexec = os.environ.get("MPIEXEC", "mpirun")
    work = tempfile.mkdtemp(prefix="moe-bench-ckpt.")
    t0 = time.time()

    def step(msg: str) -> None:
        print(f"[{time.time() - t0:5.0f} s] {msg}", flush=True)

    cfg = os.path.join(work, "config.json")
    with open(cfg, "w") as f:
        json.dump(config(a.tokens), f)
    mc = [sys.executable, "-m", "moe_compiler"]
    files = {k: os.path.join(work, f"{k}.safetensors") for k in ("w", "x", "t")}
    step(f"T={a.tokens} D=1024 F=3584 E=8 top-2, 4 ranks ep=2,tp=2 DTD, work {work}")
    run(mc + ["emit", "--hf-config", cfg, "--tokens", str(a.tokens), "-o",
              os.path.join(work, "model.mlir")])
    run(mc + ["init-weights", "--hf-config", cfg, "--seed", "1", "-o", files["w"]])
    run(mc + ["init-inputs", "--hf-config", cfg, "--tokens", str(a.tokens), "--seed", "2",
              "-o", files["x"]])
    run(mc + ["init-targets", "--hf-config", cfg, "--tokens", str(a.tokens), "--seed", "3",
              "-o", files["t"]])

    plans = {}
    for policy in POLICIES:
        flags = ["--checkpoint", policy]
        if policy == "auto":
            budget = (plans["none"]["saved_bytes"] + plans["cac"]["saved_bytes"]) // 2
            flags += ["--checkpoint-budget", str(budget)]
        step(f"moe-compile --train {' '.join(flags)}")
        moddir = os.path.join(work, policy)
        run([os.path.join(build, "bin", "moe-compile"), os.path.join(work, "model.mlir"),
             "-o", moddir, "--train", "--mesh", "ep=2,tp=2", "--dtd", *flags])
        with open(os.path.join(moddir, "manifest.json")) as f:
            plans[policy] = json.load(f)["checkpoint"]

    steps = a.warmup + a.repeat
    times = {(p_, net): [] for p_ in POLICIES for net in (False, True)}
    calls, a2a_s = {}, float("nan")
    order = list(POLICIES)
    for r in range(1, a.rounds + 1):
        for net in (False, True):
            for policy in order:
                step(f"round {r}/{a.rounds}: {policy}{' --net ' + a.net if net else ''}")
                tag = f"{policy}-{'net' if net else 'plain'}-r{r}"
                cmd = [mpiexec, "--oversubscribe", "-np", "4",
                       os.path.join(build, "bin", "moe-run"), os.path.join(work, policy),
                       "--train", "--steps", str(steps), "--weights", files["w"],
                       "--inputs", files["x"], "--targets", files["t"], "--json",
                       "--stats", os.path.join(work, tag + ".stats.json")]
                if net:
                    cmd += ["--net", a.net, "--trace", os.path.join(work, tag + ".trace.json")]
                out = json.loads(run(cmd))
                times[(policy, net)] += [s["ms"] for s in out["steps"][a.warmup:]]
                if r == 1 and not net:
                    calls[policy] = a2a_calls(os.path.join(work, tag + ".stats.json"))
                if r == 1 and net and policy == "cac":
                    a2a_s = a2a_seconds(os.path.join(work, tag + ".trace.json"))
            order = order[1:] + order[:1]

    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    print(f"\nMixtral-shaped layer, T={a.tokens}, 4 ranks ep=2,tp=2 DTD, "
          f"{a.rounds} rounds x {a.repeat} steps (median ms per step)")
    print(f"  {'policy':7} {'saved B/rank':>13} {'peak B/rank':>12} {'rec.coll':>8} "
          f"{'a2a/layer/step':>15} {'step ms':>9} {'vs none':>8} "
          f"{'step ms --net':>14} {'vs none':>8}")
    for policy in POLICIES:
        pl, c = plans[policy], calls[policy]
        tok = sum(e.get("all_to_all_v", 0) for e in c.values())
        cnt = sum(e.get("all_to_all", 0) for e in c.values())
        plain, slow = med[(policy, False)], med[(policy, True)]
        rows.append({"policy": policy, "plan": pl, "a2a_calls": c, "token_a2a_per_step": tok,
                     "count_a2a_per_step": cnt, "step_ms": plain, "step_ms_net": slow,
                     "steps_ms": times[(policy, False)], "steps_ms_net": times[(policy, True)]})
        print(f"  {policy:7} {pl['saved_bytes']:>13} {pl['peak_bytes']:>12} "
              f"{pl['recompute_collectives']:>8} {f'{tok:g} (+{cnt:g} counts)':>15} "
              f"{plain:>9.1f} {plain / med[('none', False)]:>8.3f} "
              f"{slow:>14.1f} {slow / med[('none', True)]:>8.3f}")
    gap = med[("full", True)] - med[("cac", True)]
    print(f"\n--net {a.net}: full - cac = {gap:.1f} ms per step; one token all-to-all "
          f"(rank 0, cac run) {a2a_s * 1e3:.1f} ms, two: {2 * a2a_s * 1e3:.1f} ms "
          f"(ratio {gap / (2 * a2a_s * 1e3):.2f})")
    result = {"bench": "checkpoint", "tokens": a.tokens, "mesh": "ep=2,tp=2 dtd",
              "rounds": a.rounds, "warmup": a.warmup, "repeat": a.repeat, "net": a.net,
              "rows": rows, "full_minus_cac_ms_net": gap,
              "token_a2a_ms_net": a2a_s * 1e3, "cmdline": " ".join(sys.argv),
              "loadavg": open("/proc/loadavg").read().split()[:3]}
    out = a.out or os.path.join(HERE, "results",
                                time.strftime("checkpoint-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")
    if not a.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
