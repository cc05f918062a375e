"""Helpers of bench/cpu/train.sh: routing counts, meta data and the report.

  train_bench.py prep   --config C --weights W --inputs X --work DIR
      Routes the tokens with the float64 reference (moe_compiler.reference, the
      spec) and writes DIR/counts.txt (rows per expert, read by gemm_floor) and
      DIR/prep.json.

  train_bench.py meta   --out META.json
      Writes the run's meta data from the BM_* environment train.sh sets.

  train_bench.py report --work DIR --meta META.json --out RESULT.json
      Reads what the contenders wrote in DIR (module_rI.trace.json / .stats.json
      / .losses.json, torch_rI.json, floor_rI.json, reference.json, the first
      step's gradients), prints the table and writes the result JSON. Exits 1
      when a loss or a gradient does not match the reference.

Run with the same python as the rest of the benchmark (default /usr/bin/python3);
python/ must be importable (train.sh sets PYTHONPATH).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

from moe_compiler.configs import load_hf_config  # noqa: E402
from moe_compiler.layout import sublayers  # noqa: E402
from moe_compiler.reference import prenorm, route, sublayer_weights  # noqa: E402
from moe_compiler.safetensors import SafetensorsFile, load  # noqa: E402

ENTRIES = ("forward_train", "backward", "step_adamw")
# A tensor (or loss) counts as wrong past this fraction of its scale (the largest
# magnitude of the reference's tensor). f32 against float64 is ~1e-6 here; a
# wrong kernel or a flipped top-2 choice is O(1).
BAD = 1e-3


def cmd_prep(a: argparse.Namespace) -> int:
    cfg = load_hf_config(a.config)
    sub = sublayers(cfg, range(0, 1))[0]
    if sub.kind != "moe":
        raise SystemExit("train_bench.py: layer 0 of the config is not an MoE layer")
    with SafetensorsFile(a.weights) as wf:
        w = sublayer_weights(sub, wf.get)
    with SafetensorsFile(a.inputs) as xf:
        x = np.asarray(xf.get("hidden_states"), dtype=np.float64)
    n = prenorm(cfg, x, w["norm"], w.get("norm_bias"))
    r = route(n, w["router"], cfg, sub.num_experts, w.get("bias"))
    counts = np.bincount(r.idx.ravel(), minlength=sub.num_experts)
    with open(os.path.join(a.work, "counts.txt"), "w", encoding="utf-8") as fh:
        fh.write(" ".join(str(int(c)) for c in counts) + "\n")
    with open(os.path.join(a.work, "prep.json"), "w", encoding="utf-8") as fh:
        json.dump({"tokens": int(x.shape[0]), "counts": [int(c) for c in counts]}, fh)
    print(f"routing of the first step: rows per expert {[int(c) for c in counts]}")
    return 0


def cmd_meta(a: argparse.Namespace) -> int:
    e = os.environ
    meta = {
        "benchmark": "training step", "command": e["BM_CMD"],
        "timestamp_utc": e["BM_STAMP"], "tokens": int(e["BM_T"]), "hidden": int(e["BM_D"]),
        "ffn": int(e["BM_F"]), "experts": int(e["BM_E"]), "top_k": int(e["BM_K"]),
        "activation": "swiglu", "dtype": "f32", "dropless": True,
        "loss": "mean((y - t)^2)",
        "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                      "weight_decay": 0.01},
        "threads": int(e["BM_THREADS"]), "rounds": int(e["BM_ROUNDS"]),
        "warmup": int(e["BM_WARMUP"]), "repeat": int(e["BM_REPEAT"]),
        "quick": e["BM_QUICK"] == "1", "git": e["BM_GIT"],
        "git_dirty_files": int(e["BM_DIRTY"] or 0), "cpu": e["BM_CPU"],
        "nproc": int(e["BM_NPROC"]), "loadavg_start": e["BM_LOAD0"],
        "loadavg_end": e["BM_LOAD1"], "build_dir": e["BM_BUILD"],
        "moe_compile": e["BM_COMPILER"], "python": e["BM_PY"],
        "torch_python": e["BM_TORCH_PY"], "libmoert_md5": e["BM_MOERT"],
        "bench_seconds": int(e["BM_SECONDS"]),
    }
    with open(a.out, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1)
    return 0


# -- report -----------------------------------------------------------------------------

def _load(path: str) -> object:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _rounds(work: str, pattern: str) -> list[str]:
    """Files of a contender, by round number."""
    def key(p: str) -> int:
        m = re.search(r"_r(\d+)", os.path.basename(p))
        return int(m.group(1)) if m else 0
    return sorted(glob.glob(os.path.join(work, pattern)), key=key)


def _stats(xs: list[float]) -> dict[str, float]:
    """median, min, max, n and the relative spread (max-min)/median, in seconds."""
    if not xs:
        return {}
    med = statistics.median(xs)
    return {"median_s": med, "min_s": min(xs), "max_s": max(xs), "n": len(xs),
            "spread": (max(xs) - min(xs)) / med if med > 0 else 0.0}


def _module_steps(trace_path: str, stats_path: str) -> dict[str, object]:
    """Per-step seconds of each entry point from moe-run --train's trace.

    moe-run --train appends each entry call's trace events in call order:
    forward_train, backward, step_adamw, step after step. Every step issues the
    same kernels, so the events split into steps evenly, and within a step into
    the entries by their phase counts per run (from --stats). An entry's time
    is its first kernel's start to its last kernel's end: the host work between
    the entries (the finite checks of the loss and of every gradient, filling
    optimizer.hparams, printing) is outside, the host work inside an entry is
    in. Returns per step: each entry's span and its phases' sums.
    """
    stats = _load(stats_path)
    rank0 = stats[0] if isinstance(stats, list) else stats
    entries = {e["name"]: e for e in rank0["entries"]}
    steps = int(rank0["steps"])
    counts = []
    for name in ENTRIES:
        e = entries[name]
        n = sum(p["calls"] for p in e["phases"])
        if n % e["runs"]:
            raise SystemExit(f"train_bench.py: {stats_path}: {name}: {n} calls do not split "
                             f"into {e['runs']} runs")
        counts.append(n // e["runs"])
    ev = [x for x in _load(trace_path) if x.get("ph") == "X" and x.get("pid", 0) == 0]
    ev.sort(key=lambda x: x["ts"])
    per = sum(counts)
    if len(ev) != per * steps:
        raise SystemExit(f"train_bench.py: {trace_path}: {len(ev)} trace events, expected "
                         f"{steps} steps x {per}")
    out: list[dict[str, object]] = []
    for i in range(steps):
        at = i * per
        step: dict[str, object] = {}
        for name, n in zip(ENTRIES, counts):
            group = ev[at:at + n]
            at += n
            span = (max(x["ts"] + x["dur"] for x in group) - group[0]["ts"]) * 1e-6
            phases: dict[str, float] = {}
            for x in group:
                phases[x["name"]] = phases.get(x["name"], 0.0) + x["dur"] * 1e-6
            step[name] = {"span_s": span, "phases_s": phases}
        out.append(step)
    return {"steps": out, "entry_mean_s": {n: entries[n]["seconds"] / entries[n]["runs"]
                                           for n in ENTRIES},
            "run_seconds": rank0["run_seconds"], "nsteps": steps}


def _profile(work: str, meta: dict, counts: list[int]) -> dict[str, object] | None:
    """The profiling moe-run --train (every cblas_sgemm timed by sgemm_timer.so).

    Per step the calls are: the router's forward GEMM, 3 per expert with rows
    (gate, up, down), then per expert the backward's 8 in the order of
    CpuFfn.cpp's ffnGradChunk (recompute gate, up; dh; ddown; dx; dup; dx;
    dgate), then the router's 2 (dx, dw). The split is refused when the number
    of calls per step does not match (an expert without rows, or rows split
    into chunks).
    """
    calls_path = os.path.join(work, "profile.sgemm.txt")
    trace = os.path.join(work, "module_profile.trace.json")
    if not (os.path.exists(calls_path) and os.path.exists(trace)):
        return None
    prof = _module_steps(trace, trace.replace(".trace.json", ".stats.json"))
    nsteps, warmup = int(prof["nsteps"]), int(meta["warmup"])
    with open(calls_path, encoding="utf-8") as fh:
        calls = [tuple(float(v) for v in line.split()) for line in fh]
    e_live = sum(1 for c in counts if c > 0)
    per = 1 + 3 * e_live + 8 * e_live + 2
    if len(calls) != per * nsteps:
        return {"error": f"{len(calls)} sgemm calls are not {nsteps} steps x {per} "
                f"(1 + 11 per expert with rows + 2)"}
    kinds = ("recompute", "recompute", "data", "weight", "data", "weight", "data", "weight")
    parts: dict[str, list[float]] = {k: [] for k in ("forward", "recompute", "data", "weight",
                                                     "router")}
    ffn_grad: list[float] = []
    for i in range(warmup, nsteps):
        c = calls[i * per:(i + 1) * per]
        acc = dict.fromkeys(parts, 0.0)
        acc["router"] = c[0][3] + c[-1][3] + c[-2][3]
        acc["forward"] = sum(x[3] for x in c[1:1 + 3 * e_live])
        for j, x in enumerate(c[1 + 3 * e_live:1 + 11 * e_live]):
            acc[kinds[j % 8]] += x[3]
        for k, v in acc.items():
            parts[k].append(v)
        ffn_grad.append(prof["steps"][i]["backward"]["phases_s"]["expert_ffn_grad"])
    med = statistics.median
    sgemm = [r + d + w for r, d, w in zip(parts["recompute"], parts["data"], parts["weight"])]
    return {"steps": nsteps - warmup, "calls_per_step": per,
            "sgemm_median_s": {k: med(v) for k, v in parts.items()},
            "expert_ffn_grad_median_s": med(ffn_grad),
            "expert_ffn_grad_sgemm_median_s": med(sgemm),
            "expert_ffn_grad_outside_sgemm_median_s": med(
                [f - s for f, s in zip(ffn_grad, sgemm)])}


def _compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, object]:
    """Per tensor max |got - ref| / max |ref|; the worst tensor and the bad ones."""
    errs: dict[str, float] = {}
    missing = sorted(set(ref) - set(got))
    for name, r in ref.items():
        if name not in got:
            continue
        g = np.asarray(got[name], dtype=np.float64).reshape(r.shape)
        r64 = np.asarray(r, dtype=np.float64)
        scale = float(np.abs(r64).max())
        errs[name] = float(np.abs(g - r64).max() / scale) if scale > 0 else float(
            np.abs(g).max())
    worst = max(errs, key=errs.get) if errs else None
    bad = sorted(n for n, e in errs.items() if not e <= BAD) + missing
    return {"tensors": len(errs), "missing": missing, "worst": worst,
            "worst_rel_err": errs[worst] if worst else None, "bad": bad,
            "rel_err": errs}


def _maybe_load(path: str) -> dict[str, np.ndarray] | None:
    return load(path) if os.path.exists(path) else None


def cmd_report(a: argparse.Namespace) -> int:  # noqa: C901 (one table, read top to bottom)
    work = a.work
    meta = _load(a.meta)
    prep = _load(os.path.join(work, "prep.json"))
    warmup = int(meta["warmup"])
    T, D, F, K = (int(meta[k]) for k in ("tokens", "hidden", "ffn", "top_k"))
    fwd_flops = 2.0 * T * K * 3 * D * F  # the forward's expert GEMMs
    med = statistics.median

    # (a) module: per timed step, each entry's span and phases
    mod: dict[str, list[float]] = {"step": [], **{n: [] for n in ENTRIES}}
    mod_phases: dict[str, dict[str, list[float]]] = {n: {} for n in ENTRIES}
    mod_round: list[float] = []
    mod_round_bwd: list[float] = []
    entry_means: list[dict[str, float]] = []
    moe_run_ms: list[float] = []
    mod_losses: list[list[float]] = []
    for tr in _rounds(work, "module_r*.trace.json"):
        st = tr.replace(".trace.json", ".stats.json")
        res = _module_steps(tr, st)
        entry_means.append(res["entry_mean_s"])
        timed = res["steps"][warmup:]
        for s in timed:
            for n in ENTRIES:
                mod[n].append(s[n]["span_s"])
                for p, v in s[n]["phases_s"].items():
                    mod_phases[n].setdefault(p, []).append(v)
            mod["step"].append(sum(s[n]["span_s"] for n in ENTRIES))
        mod_round.append(med([sum(s[n]["span_s"] for n in ENTRIES) for s in timed]))
        mod_round_bwd.append(med([s["backward"]["span_s"] for s in timed]))
        lj = _load(tr.replace(".trace.json", ".losses.json"))
        mod_losses.append([float(r["loss"]) for r in lj["steps"]])
        moe_run_ms += [float(r["ms"]) for r in lj["steps"][warmup:]]
    # (b) torch
    tor: dict[str, list[float]] = {"step": [], "forward": [], "loss": [], "backward": [],
                                   "step_adamw": []}
    tor_round: list[float] = []
    tor_losses: list[list[float]] = []
    tor_info: dict[str, object] = {}
    for p in _rounds(work, "torch_r*.json"):
        j = _load(p)
        tor["step"] += j["runs_s"]
        for k in ("forward", "loss", "backward"):
            tor[k] += j["parts_s"][k]
        tor["step_adamw"] += j["parts_s"]["step"]
        tor_round.append(med(j["runs_s"]))
        tor_losses.append(j["losses"])
        tor_info = {"torch": j.get("torch"), "threads": j.get("threads"),
                    "adamw_foreach": j.get("adamw_foreach")}
    # (d) GEMM floor
    flo: dict[str, list[float]] = {k: [] for k in ("runs_s", "forward_s", "backward_s",
                                                   "backward_recompute_s", "recompute_s",
                                                   "data_s", "weight_s")}
    flo_round_bwd: list[float] = []
    flo_round_bwdr: list[float] = []
    flo_round: list[float] = []
    bwd_flops = 2 * fwd_flops
    for p in _rounds(work, "floor_r*.json"):
        j = _load(p)
        for k in flo:
            flo[k] += j[k]
        bwd_flops = float(j["backward_flops"])
        flo_round.append(med(j["runs_s"]))
        flo_round_bwd.append(med(j["backward_s"]))
        flo_round_bwdr.append(med(j["backward_recompute_s"]))
    if not mod["step"] or not tor["step"] or not flo["runs_s"]:
        raise SystemExit("train_bench.py: a contender wrote no timings (see the log above)")

    # (c) reference and correctness
    ref_json = os.path.join(work, "reference.json")
    ref_loss = None
    ref_seconds = None
    if os.path.exists(ref_json):
        ref_loss = float(_load(ref_json)["steps"][0]["loss"])
        ref_seconds = float(_load(os.path.join(work, "reference_time.json"))["seconds"])
    ref_grads = _maybe_load(os.path.join(work, "ref_grads.safetensors"))
    mod_grads = _maybe_load(os.path.join(work, "module_grads.safetensors"))
    tor_grads = _maybe_load(os.path.join(work, "torch_grads.safetensors"))
    checks: dict[str, object] = {}
    base = ref_grads if ref_grads is not None else tor_grads
    base_name = "float64 reference" if ref_grads is not None else "torch"
    if base is not None and mod_grads is not None:
        checks["module_grads"] = _compare(mod_grads, base)
    if ref_grads is not None and tor_grads is not None:
        checks["torch_grads"] = _compare(tor_grads, ref_grads)
    # Losses: every step of every round, module against torch (same weights,
    # same updates), and the first step against the float64 reference.
    loss_err = 0.0
    for ml, tl in zip(mod_losses, tor_losses):
        for x, y in zip(ml, tl):
            loss_err = max(loss_err, abs(x - y) / max(abs(y), 1e-30))
    checks["losses_module_vs_torch_max_rel"] = loss_err
    if ref_loss is not None:
        checks["loss_step1_rel_err"] = {
            "module": abs(mod_losses[0][0] - ref_loss) / abs(ref_loss),
            "torch": abs(tor_losses[0][0] - ref_loss) / abs(ref_loss)}
    # The losses drift apart over the steps (f32 rounding differs; AdamW scales
    # tiny gradient differences to lr), so the later steps get 1e-2.
    bad_loss = loss_err > 1e-2 or any(
        v > BAD for v in checks.get("loss_step1_rel_err", {}).values())
    bad_grads = [k for k in ("module_grads", "torch_grads")
                 if k in checks and checks[k]["bad"]]

    def per_round(x: list[float], y: list[float]) -> list[float]:
        return [p / q for p, q in zip(x, y)]

    m_step, m_tor = med(mod["step"]), med(tor["step"])
    m_bwd = med(mod["backward"])
    m_fb, m_fbr = med(flo["backward_s"]), med(flo["backward_recompute_s"])
    m_ffn_grad = med(mod_phases["backward"].get("expert_ffn_grad", [float("nan")]))
    ratios = {
        "torch_over_module": m_tor / m_step,
        "module_over_torch": m_step / m_tor,
        "module_backward_over_floor_recompute": m_bwd / m_fbr,
        "module_backward_over_floor_no_recompute": m_bwd / m_fb,
        "expert_ffn_grad_over_floor_recompute": m_ffn_grad / m_fbr,
        "module_forward_train_over_floor_forward": med(mod["forward_train"])
        / med(flo["forward_s"]),
        "module_step_over_floor_step": m_step / med(flo["runs_s"]),
        "torch_backward_over_module_backward": med(tor["backward"]) / m_bwd,
        "of_minimums": {
            "torch_over_module": min(tor["step"]) / min(mod["step"]),
            "module_backward_over_floor_recompute": min(mod["backward"])
            / min(flo["backward_recompute_s"]),
            "module_backward_over_floor_no_recompute": min(mod["backward"])
            / min(flo["backward_s"]),
        },
        "median_of_per_round": {
            "torch_over_module": med(per_round(tor_round, mod_round)),
            "module_backward_over_floor_recompute": med(per_round(mod_round_bwd,
                                                                  flo_round_bwdr)),
            "module_backward_over_floor_no_recompute": med(per_round(mod_round_bwd,
                                                                     flo_round_bwd)),
        },
        "per_round": {
            "torch_over_module": per_round(tor_round, mod_round),
            "module_backward_over_floor_recompute": per_round(mod_round_bwd, flo_round_bwdr),
            "module_backward_over_floor_no_recompute": per_round(mod_round_bwd, flo_round_bwd),
        },
    }
    aims = {"module_1.3x_faster_than_torch": ratios["torch_over_module"] >= 1.3,
            "module_backward_within_1.3x_of_floor_recompute":
                ratios["module_backward_over_floor_recompute"] <= 1.3,
            "module_backward_within_1.3x_of_floor_no_recompute":
                ratios["module_backward_over_floor_no_recompute"] <= 1.3}

    # -- the table ----------------------------------------------------------------
    lines: list[str] = []
    out = lines.append
    ms = lambda s: s * 1e3  # noqa: E731
    out(f"Mixtral FFN sublayer, one training step on CPU: T={T} D={D} F={F} "
        f"E={meta['experts']} top-{K} SwiGLU dropless f32, {meta['threads']} threads"
        f"{'  [--quick]' if meta.get('quick') else ''}")
    out("step = forward + loss mean((y-t)^2) + backward (every weight and dX) + AdamW "
        "(lr 1e-3, betas 0.9,0.999, eps 1e-8, wd 0.01)")
    counts = prep["counts"]
    out(f"routing of step 1 (float64 spec): rows per expert {counts} (sum {sum(counts)})")
    out(f"expert GEMM work: forward {fwd_flops / 1e9:.1f} GFLOP, backward {bwd_flops / 1e9:.1f}"
        f" GFLOP (+ {2 / 3 * fwd_flops / 1e9:.1f} recomputed); rounds {meta['rounds']} x "
        f"(warmup {warmup} + {meta['repeat']} steps); load average "
        f"{meta.get('loadavg_start')} -> {meta.get('loadavg_end')}")
    out("")
    hdr = (f"{'contender':<46} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'runs':>5} "
           f"{'spread':>7} {'x module':>9}")
    out(hdr)
    out("-" * len(hdr))

    def row(name: str, xs: list[float], note: str = "") -> None:
        s = _stats(xs)
        m = s["median_s"]
        out(f"{name:<46} {ms(m):>10.1f} {ms(s['min_s']):>9.1f} {ms(s['max_s']):>9.1f} "
            f"{s['n']:>5} {100 * s['spread']:>6.0f}% {m / m_step:>9.2f}{note}")

    row("(a) compiled module step (moe-run --train)", mod["step"])
    row("(b) PyTorch eager step, HF block + AdamW", tor["step"])
    if ref_seconds is not None:
        row("(c) numpy float64 reference step", [ref_seconds],
            note="  (one process: incl. loading)")
    row("(d) GEMM floor: forward + backward + recompute", flo["runs_s"])
    out("")
    out(f"{'part (median ms)':<30} {'module':>9} {'torch':>9} {'torch/mod':>10} "
        f"{'GEMM floor':>11} {'mod/floor':>10}")
    parts = [
        ("forward (+ loss)", med(mod["forward_train"]),
         med([f + lo for f, lo in zip(tor["forward"], tor["loss"])]), med(flo["forward_s"])),
        ("backward", m_bwd, med(tor["backward"]), m_fbr),
        ("optimizer step (AdamW)", med(mod["step_adamw"]), med(tor["step_adamw"]), None),
    ]
    for name, mv, tv, fv in parts:
        fl = f"{ms(fv):>11.1f} {mv / fv:>10.2f}" if fv else f"{'':>11} {'':>10}"
        out(f"  {name:<28} {ms(mv):>9.1f} {ms(tv):>9.1f} {tv / mv:>10.2f} {fl}")
    out(f"  backward GEMM floor: data {ms(med(flo['data_s'])):.1f} + weight "
        f"{ms(med(flo['weight_s'])):.1f} = {ms(m_fb):.1f} ms without recompute; + recompute "
        f"{ms(med(flo['recompute_s'])):.1f} = {ms(m_fbr):.1f} ms with it (the column above)")
    out("")
    out("ratios of medians (per-round ratios in brackets)")
    pr = ratios["per_round"]
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    yes = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    out(f"  torch / module (speed-up)                {ratios['torch_over_module']:6.2f}  "
        f"[{fmt(pr['torch_over_module'])}]   aim >= 1.3: "
        f"{yes(aims['module_1.3x_faster_than_torch'])}")
    out(f"  module backward / floor with recompute   "
        f"{ratios['module_backward_over_floor_recompute']:6.2f}  "
        f"[{fmt(pr['module_backward_over_floor_recompute'])}]   aim <= 1.3: "
        f"{yes(aims['module_backward_within_1.3x_of_floor_recompute'])}")
    out(f"  module backward / floor w/o recompute    "
        f"{ratios['module_backward_over_floor_no_recompute']:6.2f}  "
        f"[{fmt(pr['module_backward_over_floor_no_recompute'])}]   aim <= 1.3: "
        f"{yes(aims['module_backward_within_1.3x_of_floor_no_recompute'])}   (what the module "
        f"does: --checkpoint none keeps the hidden activations, moe.expert_ffn_train)")
    out(f"  expert_ffn_grad / floor with recompute   "
        f"{ratios['expert_ffn_grad_over_floor_recompute']:6.2f}")
    out(f"  module forward_train / forward floor     "
        f"{ratios['module_forward_train_over_floor_forward']:6.2f}")
    out(f"  module step / floor (fwd + bwd + rec.)   {ratios['module_step_over_floor_step']:6.2f}"
        f"   (AdamW is not in the floor)")
    mr = ratios["median_of_per_round"]
    out(f"  median of the per-round ratios: torch / module "
        f"{mr['torch_over_module']:.2f}, backward / floor with recompute "
        f"{mr['module_backward_over_floor_recompute']:.2f}, without "
        f"{mr['module_backward_over_floor_no_recompute']:.2f}")
    mn = ratios["of_minimums"]
    out(f"  of the fastest runs (least disturbed): torch / module "
        f"{mn['torch_over_module']:.2f}, backward / floor with recompute "
        f"{mn['module_backward_over_floor_recompute']:.2f}, without "
        f"{mn['module_backward_over_floor_no_recompute']:.2f}")
    out("")
    em = {n: statistics.mean(e[n] for e in entry_means) for n in ENTRIES}
    out(f"module entries and phases (median ms per timed step over {len(mod['step'])} steps; "
        f"moe-run's own mean per call over all steps: " + ", ".join(
            f"{n} {ms(v):.1f}" for n, v in em.items()) + ")")
    for n in ENTRIES:
        out(f"  {n:<16} {ms(med(mod[n])):>9.1f} ms  {100 * med(mod[n]) / m_step:5.1f}%   "
            f"[{ms(min(mod[n])):.1f} .. {ms(max(mod[n])):.1f}]")
        for p, xs in sorted(mod_phases[n].items(), key=lambda kv: -med(kv[1])):
            if ms(med(xs)) >= 0.05:
                out(f"    {p:<16} {ms(med(xs)):>9.1f} ms")
    outside = med(moe_run_ms) - ms(m_step)
    out(f"  moe-run's step time (its --json 'ms': the entries + finite checks + hparams "
        f"copy) {med(moe_run_ms):.1f} ms: {outside:.1f} ms outside the entries")
    n_params = sum(v.size for k, v in (base or {}).items() if k != "hidden_states")
    if n_params:
        gb = 28.0 * n_params / 1e9  # read w, g, m, v; write w, m, v: 7 f32 per parameter
        out(f"  AdamW traffic: {n_params / 1e6:.1f} M parameters x 28 bytes = {gb:.2f} GB per "
            f"step: module {gb / med(mod['step_adamw']):.1f} GB/s, torch "
            f"{gb / med(tor['step_adamw']):.1f} GB/s")
    out(f"torch parts (median ms): forward {ms(med(tor['forward'])):.1f}, loss "
        f"{ms(med(tor['loss'])):.1f}, backward {ms(med(tor['backward'])):.1f}, AdamW "
        f"{ms(med(tor['step_adamw'])):.1f} (torch {tor_info.get('torch')}, AdamW foreach="
        f"{tor_info.get('adamw_foreach')})")
    prof = _profile(work, meta, counts)
    if prof and "error" not in prof:
        sg = prof["sgemm_median_s"]
        out(f"module expert_ffn_grad split (one extra moe-run --train with every cblas_sgemm "
            f"timed, {prof['calls_per_step']} calls per step; medians over {prof['steps']} "
            f"steps):")
        out(f"  expert_ffn_grad {ms(prof['expert_ffn_grad_median_s']):.1f} ms = sgemm "
            f"{ms(prof['expert_ffn_grad_sgemm_median_s']):.1f} ms (recompute "
            f"{ms(sg['recompute']):.1f}, data {ms(sg['data']):.1f}, weight "
            f"{ms(sg['weight']):.1f}) + outside sgemm "
            f"{ms(prof['expert_ffn_grad_outside_sgemm_median_s']):.1f} ms (activation "
            f"gradient, products, gathers); forward expert sgemm {ms(sg['forward']):.1f} ms, "
            f"router sgemm {ms(sg['router']):.1f} ms")
    elif prof:
        out(f"module sgemm profile: {prof['error']}")
    corr = []
    for k in ("module_grads", "torch_grads"):
        if k in checks:
            c = checks[k]
            corr.append(f"{k.split('_')[0]} gradients: {c['tensors']} tensors, worst "
                        f"{c['worst_rel_err']:.2e} of scale ({c['worst']}), "
                        f"{len(c['bad'])} bad")
    out(f"correctness vs {base_name} (first step): " + "; ".join(corr))
    ls = checks.get("loss_step1_rel_err")
    out(f"  losses: module vs torch max rel diff {loss_err:.2e} over every step"
        + (f"; step 1 vs float64: module {ls['module']:.2e}, torch {ls['torch']:.2e}"
           if ls else ""))
    loads = [float(x.split()[0]) for x in (meta.get("loadavg_start"),
                                          meta.get("loadavg_end")) if x]
    loadavg: dict[str, list[list[str]]] = {}
    for name in ("module", "torch", "floor"):
        p = os.path.join(work, f"loadavg_{name}.txt")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as fh:
                loadavg[name] = [line.split() for line in fh]
            loads += [float(fields[1]) for fields in loadavg[name] if fields]
    if loads and max(loads) > int(meta.get("nproc", 1)):
        out(f"WARNING: 1-minute load average reached {max(loads):.1f} on "
            f"{meta.get('nproc')} CPUs during the run: other work shared the cores, "
            f"the spread is wide and the ratios are less reliable")
    text = "\n".join(lines)
    print(text)

    result = {
        "meta": meta,
        "flops": {"forward_expert_gemms": fwd_flops, "backward_expert_gemms": bwd_flops,
                  "recompute": 2 / 3 * fwd_flops},
        "routing_counts_step1": counts,
        "module": {"step": {**_stats(mod["step"]), "runs_s": mod["step"]},
                   **{n: {**_stats(mod[n]), "runs_s": mod[n],
                          "phases_median_s": {p: med(v) for p, v in mod_phases[n].items()}}
                      for n in ENTRIES},
                   "entry_mean_s_per_round": entry_means,
                   "moe_run_step_ms": moe_run_ms, "losses": mod_losses},
        "torch": {**{k: {**_stats(v), "runs_s": v} for k, v in tor.items()}, **tor_info,
                  "losses": tor_losses},
        "reference": {"seconds": ref_seconds, "loss_step1": ref_loss},
        "gemm_floor": {k[:-2]: {**_stats(v), "runs_s": v} for k, v in flo.items()},
        "ratios": ratios,
        "aims": aims,
        "correctness": checks,
        "module_sgemm_profile": prof,
        "loadavg_per_contender": loadavg,
        "table": text,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(f"\nwrote {a.out}")
    if bad_loss or bad_grads:
        print("train_bench.py: " + ", ".join(
            (["losses"] if bad_loss else []) + bad_grads)
            + " do not match the reference (see correctness above)", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="helpers of bench/cpu/train.sh")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--work", required=True)
    p.set_defaults(func=cmd_prep)
    m = sub.add_parser("meta")
    m.add_argument("--out", required=True)
    m.set_defaults(func=cmd_meta)
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_report)
    a = ap.parse_args()
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
