"""Helpers of bench/cpu/run.sh: routing counts + numpy reference, and the report.

  bench.py prep   --config C --weights W --inputs X --work DIR [--ref-tokens N]
                  [--ref-repeat R]
      Routes the tokens with the float64 reference (moe_compiler.reference, the
      spec), writes DIR/counts.txt (rows per expert, read by gemm_floor), times the
      reference FFN sublayer h + moe(rmsnorm(h)) on the first N tokens (weights
      converted to float64 beforehand, not timed), saves its output as
      DIR/ref.npy (f32) and writes DIR/prep.json.

  bench.py report --work DIR --meta META.json --out RESULT.json
      Reads what the contenders wrote in DIR (module_rI.trace.json / .stats.json,
      torch_rI.json, floor_rI.json, prep.json), prints the table and writes the
      result JSON.

Run with the same python as the rest of the benchmark (default /usr/bin/python3);
python/ must be importable (run.sh sets PYTHONPATH).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

from moe_compiler.configs import load_hf_config  # noqa: E402
from moe_compiler.layout import sublayers  # noqa: E402
from moe_compiler.reference import prenorm, route, sublayer_apply, sublayer_weights  # noqa: E402
from moe_compiler.safetensors import SafetensorsFile  # noqa: E402

# -- prep -------------------------------------------------------------------------------

def cmd_prep(a: argparse.Namespace) -> int:
    cfg = load_hf_config(a.config)
    sub = sublayers(cfg, range(0, 1))[0]
    if sub.kind != "moe":
        raise SystemExit("bench.py: layer 0 of the config is not an MoE layer")
    e = sub.num_experts
    t_load = time.perf_counter()
    with SafetensorsFile(a.weights) as wf:
        w = sublayer_weights(sub, wf.get)
    with SafetensorsFile(a.inputs) as xf:
        x = np.asarray(xf.get("hidden_states"), dtype=np.float64)
    t_load = time.perf_counter() - t_load
    t = x.shape[0]

    # Routing of all T tokens, as the spec (and so the module) decides it.
    r = route(prenorm(cfg, x, w["norm"], w.get("norm_bias")), w["router"], cfg, e, w.get("bias"))
    counts = np.bincount(r.idx.ravel(), minlength=e)
    with open(os.path.join(a.work, "counts.txt"), "w", encoding="utf-8") as fh:
        fh.write(" ".join(str(int(c)) for c in counts) + "\n")

    # The float64 reference: h + moe(rmsnorm(h)), reference.sublayer_forward
    # without its weight loading.
    n_ref = t if a.ref_tokens <= 0 else min(a.ref_tokens, t)
    xr = x[:n_ref]
    runs = []
    out = None
    for _ in range(max(1, a.ref_repeat)):
        t0 = time.perf_counter()
        out, _aux, _z = sublayer_apply(cfg, sub, xr, w)
        runs.append(time.perf_counter() - t0)
    assert out is not None
    np.save(os.path.join(a.work, "ref.npy"), out.astype(np.float32))
    prep = {
        "tokens": t,
        "counts": [int(c) for c in counts],
        "reference": {"tokens": n_ref, "runs_s": runs,
                      "scale": t / n_ref,
                      "scaled_runs_s": [s * t / n_ref for s in runs],
                      "numpy": np.__version__, "python": sys.version.split()[0],
                      "load_and_convert_s": t_load},
    }
    with open(os.path.join(a.work, "prep.json"), "w", encoding="utf-8") as fh:
        json.dump(prep, fh)
    print(f"routing: rows per expert {prep['counts']}; reference on {n_ref} tokens: "
          f"{min(runs):.2f} s")
    return 0


# -- report -----------------------------------------------------------------------------

BETWEEN = "(between)"  # run time not inside any phase (host code, hand-offs)


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


def _module_runs(trace_path: str, stats_path: str, repeat: int) -> tuple[
        list[float], dict[str, list[float]], float]:
    """Per-run seconds and per-phase seconds per run from moe-run's trace.

    The trace holds the timed runs only (moe-run resets its records after the
    warmup); every run issues the same phases, so the events split evenly into
    `repeat` runs in time order. A run's time is its first phase's start to its
    last phase's end. Returns also moe-run's own mean (run_seconds / repeat) as
    a cross-check.
    """
    ev = [x for x in _load(trace_path) if x.get("ph") == "X" and x.get("pid", 0) == 0]
    ev.sort(key=lambda x: x["ts"])
    stats = _load(stats_path)
    rank0 = stats[0] if isinstance(stats, list) else stats
    mean_wall = rank0["run_seconds"] / repeat
    if not ev or len(ev) % repeat:
        raise SystemExit(f"bench.py: {trace_path}: {len(ev)} trace events do not split "
                         f"into {repeat} runs")
    per = len(ev) // repeat
    runs: list[float] = []
    phases: dict[str, list[float]] = {}
    for i in range(repeat):
        group = ev[i * per:(i + 1) * per]
        start = group[0]["ts"]
        end = max(x["ts"] + x["dur"] for x in group)
        runs.append((end - start) * 1e-6)
        acc: dict[str, float] = {}
        for x in group:
            acc[x["name"]] = acc.get(x["name"], 0.0) + x["dur"] * 1e-6
        for name, s in acc.items():
            phases.setdefault(name, []).append(s)
        phases.setdefault(BETWEEN, []).append(runs[-1] - sum(acc.values()))
    return runs, phases, mean_wall


def _check(y_path: str, ref: np.ndarray | None, load) -> dict[str, object]:
    """Max abs error against the float64 reference on the rows it has."""
    if ref is None or not os.path.exists(y_path):
        return {"checked": False}
    y = load(y_path)[: ref.shape[0]].astype(np.float64)
    r = ref.astype(np.float64)
    err = np.abs(y - r)
    scale = float(np.abs(r).max())
    # A row counts as wrong past 1e-3 of the output's scale (f32 GEMMs with
    # K = 3584 are ~1e-6 relative; a flipped top-2 choice is O(1)).
    bad = int((err.max(axis=1) > 1e-3 * max(1.0, scale)).sum())
    return {"checked": True, "rows": int(r.shape[0]), "max_abs_err": float(err.max()),
            "max_rel_err": float(err.max() / scale) if scale > 0 else 0.0,
            "bad_rows": bad}


def _profile(work: str, meta: dict) -> dict[str, object] | None:
    """The profiling moe-run (every cblas_sgemm timed by sgemm_timer.so).

    Calls split evenly into warmup + repeat runs (every run makes the same
    calls); the warmup's are dropped. Expert GEMMs are recognised by shape:
    [n, D] x [F, D]^T (gate, then up, per expert) and [n, F] x [D, F]^T (down);
    the router's is [T, D] x [E, D]^T. Returns per-run medians in seconds.
    """
    calls_path = os.path.join(work, "profile.sgemm.txt")
    trace = os.path.join(work, "module_profile.trace.json")
    if not (os.path.exists(calls_path) and os.path.exists(trace)):
        return None
    warmup, repeat = int(meta["warmup"]), int(meta["repeat"])
    D, F, E = int(meta["hidden"]), int(meta["ffn"]), int(meta["experts"])
    calls = [tuple(float(v) for v in line.split()) for line in open(calls_path)]
    runs_total = warmup + repeat
    if not calls or len(calls) % runs_total:
        return {"error": f"{len(calls)} sgemm calls do not split into {runs_total} runs"}
    per = len(calls) // runs_total
    parts: dict[str, list[float]] = {"gate": [], "up": [], "down": [], "router": [],
                                     "other": []}
    shapes: list[list[int]] = []
    for i in range(warmup, runs_total):
        acc = dict.fromkeys(parts, 0.0)
        seen_first = False
        for m, n, k, sec in calls[i * per:(i + 1) * per]:
            if n == F and k == D:
                acc["up" if seen_first else "gate"] += sec
                seen_first = not seen_first
            elif n == D and k == F:
                acc["down"] += sec
            elif n == E and k == D:
                acc["router"] += sec
            else:
                acc["other"] += sec
            if i == warmup:
                shapes.append([int(m), int(n), int(k)])
        for key, v in acc.items():
            parts[key].append(v)
    runs, phases, _ = _module_runs(trace, trace.replace(".trace.json", ".stats.json"), repeat)
    med = statistics.median
    ffn = phases.get("expert_ffn", [0.0])
    expert_gemm = [g + u + d for g, u, d in zip(parts["gate"], parts["up"], parts["down"])]
    return {"runs_median_s": med(runs), "expert_ffn_median_s": med(ffn),
            "sgemm_median_s": {k: med(v) for k, v in parts.items()},
            "expert_sgemm_median_s": med(expert_gemm),
            "expert_ffn_outside_sgemm_median_s": med(
                [f - g for f, g in zip(ffn, expert_gemm)]),
            "calls_per_run": per, "call_shapes": shapes}


def _read_safetensors_y(path: str) -> np.ndarray:
    with SafetensorsFile(path) as f:
        return np.asarray(f.get("hidden_states"))


def cmd_report(a: argparse.Namespace) -> int:
    work = a.work
    meta = _load(a.meta)
    prep = _load(os.path.join(work, "prep.json"))
    repeat = int(meta["repeat"])
    T, D, F, E, K = (int(meta[k]) for k in ("tokens", "hidden", "ffn", "experts", "top_k"))
    flops = 2.0 * T * K * 3 * D * F  # expert GEMMs (gate, up, down) of the routed rows

    # (a) module
    mod_runs: list[float] = []
    mod_phases: dict[str, list[float]] = {}
    mod_means: list[float] = []
    mod_round_medians: list[float] = []
    for tr in _rounds(work, "module_r*.trace.json"):
        st = tr.replace(".trace.json", ".stats.json")
        runs, phases, mean_wall = _module_runs(tr, st, repeat)
        mod_runs += runs
        mod_means.append(mean_wall)
        mod_round_medians.append(statistics.median(runs))
        for k, v in phases.items():
            mod_phases.setdefault(k, []).extend(v)
    # (a2) diagnostic: the module with OMP_WAIT_POLICY=passive
    pas_runs: list[float] = []
    pas_phases: dict[str, list[float]] = {}
    for tr in _rounds(work, "module_passive_r*.trace.json"):
        runs, phases, _ = _module_runs(tr, tr.replace(".trace.json", ".stats.json"), repeat)
        pas_runs += runs
        for k, v in phases.items():
            pas_phases.setdefault(k, []).extend(v)
    # (b) torch
    tor_runs: list[float] = []
    tor_parts: dict[str, list[float]] = {}
    tor_round_medians: list[float] = []
    tor_info: dict[str, object] = {}
    for p in _rounds(work, "torch_r*.json"):
        j = _load(p)
        tor_runs += j["runs_s"]
        tor_round_medians.append(statistics.median(j["runs_s"]))
        for k, v in j["parts_s"].items():
            tor_parts.setdefault(k, []).extend(v)
        tor_info = {"torch": j.get("torch"), "threads": j.get("threads")}
    # (d) GEMM floor
    flo_runs: list[float] = []
    flo_parts: dict[str, list[float]] = {"gate": [], "up": [], "down": []}
    flo_round_medians: list[float] = []
    for p in _rounds(work, "floor_r*.json"):
        j = _load(p)
        flo_runs += j["runs_s"]
        flo_round_medians.append(statistics.median(j["runs_s"]))
        for k in flo_parts:
            flo_parts[k] += j[f"{k}_s"]
    # (c) reference
    ref = prep["reference"]

    if not mod_runs or not tor_runs or not flo_runs:
        raise SystemExit("bench.py: a contender wrote no timings (see the log above)")

    ms = lambda s: s * 1e3  # noqa: E731
    med = statistics.median
    m_mod, m_tor, m_flo = med(mod_runs), med(tor_runs), med(flo_runs)
    m_ref = med(ref["scaled_runs_s"])
    ffn = mod_phases.get("expert_ffn", [])
    m_ffn = med(ffn) if ffn else float("nan")

    ref_arr = None
    if os.path.exists(os.path.join(work, "ref.npy")):
        ref_arr = np.load(os.path.join(work, "ref.npy"))
    checks = {
        "module": _check(os.path.join(work, "module_y.safetensors"), ref_arr,
                         _read_safetensors_y),
        "torch": _check(os.path.join(work, "torch_y.npy"), ref_arr, np.load),
    }

    def per_round(a_: list[float], b_: list[float]) -> list[float]:
        return [x / y for x, y in zip(a_, b_)]

    ratios = {
        "module_over_torch": m_mod / m_tor,
        "module_over_gemm_floor": m_mod / m_flo,
        "expert_ffn_over_gemm_floor": m_ffn / m_flo,
        "torch_over_gemm_floor": m_tor / m_flo,
        "module_over_reference": m_mod / m_ref,
        "of_minimums": {
            "module_over_torch": min(mod_runs) / min(tor_runs),
            "module_over_gemm_floor": min(mod_runs) / min(flo_runs),
            "expert_ffn_over_gemm_floor": (min(ffn) if ffn else float("nan")) / min(flo_runs),
        },
        "per_round": {
            "module_over_torch": per_round(mod_round_medians, tor_round_medians),
            "module_over_gemm_floor": per_round(mod_round_medians, flo_round_medians),
        },
    }
    aims = {"module_faster_than_torch": ratios["module_over_torch"] < 1.0,
            "module_within_1.3x_of_gemm_floor": ratios["module_over_gemm_floor"] <= 1.3}

    # -- the table ----------------------------------------------------------------
    lines: list[str] = []
    out = lines.append
    out(f"Mixtral FFN sublayer on CPU: T={T} D={D} F={F} E={E} top-{K} SwiGLU dropless "
        f"f32, {meta['threads']} threads{'  [--quick]' if meta.get('quick') else ''}")
    out("timed in (a)(b)(c): h + moe(rmsnorm(h)) (norm, router, top-k, experts, "
        "combine, residual add); (d): the expert GEMMs only")
    counts = prep["counts"]
    out(f"routing (float64 spec): rows per expert {counts} (sum {sum(counts)}, "
        f"max/mean {max(counts) / (sum(counts) / len(counts)):.2f})")
    out(f"expert GEMM work: {flops / 1e9:.1f} GFLOP per forward; rounds {meta['rounds']} x "
        f"(warmup {meta['warmup']} + repeat {repeat}); load average {meta.get('loadavg_start')}"
        f" -> {meta.get('loadavg_end')}")
    out("")
    hdr = (f"{'contender':<36} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'runs':>5} "
           f"{'spread':>7} {'GFLOP/s':>8} {'x module':>9}")
    out(hdr)
    out("-" * len(hdr))

    def row(name: str, xs: list[float], note: str = "") -> None:
        s = _stats(xs)
        m = s["median_s"]
        out(f"{name:<36} {ms(m):>10.1f} {ms(s['min_s']):>9.1f} {ms(s['max_s']):>9.1f} "
            f"{s['n']:>5} {100 * s['spread']:>6.0f}% {flops / m / 1e9:>8.1f} "
            f"{m / m_mod:>9.2f}{note}")

    row("(a) compiled module (moe-run)", mod_runs)
    row("(b) PyTorch eager, HF style", tor_runs)
    ref_note = ""
    if ref["tokens"] != T:
        ref_note = f"  ({ref['tokens']} tokens, x{ref['scale']:.0f})"
    row("(c) numpy float64 reference", ref["scaled_runs_s"], ref_note)
    row("(d) GEMM floor (OpenBLAS sgemm)", flo_runs)
    if pas_runs:
        row("(a2) module, OMP_WAIT_POLICY=passive", pas_runs, "  (diagnostic)")
    out("")
    out("ratios of medians (per-round ratios in brackets)")
    pr = ratios["per_round"]
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    out(f"  module / torch eager      {ratios['module_over_torch']:6.2f}  "
        f"[{fmt(pr['module_over_torch'])}]   aim < 1: "
        f"{'met' if aims['module_faster_than_torch'] else 'MISSED'}")
    out(f"  module / GEMM floor       {ratios['module_over_gemm_floor']:6.2f}  "
        f"[{fmt(pr['module_over_gemm_floor'])}]   aim <= 1.3: "
        f"{'met' if aims['module_within_1.3x_of_gemm_floor'] else 'MISSED'}")
    out(f"  expert_ffn / GEMM floor   {ratios['expert_ffn_over_gemm_floor']:6.2f}")
    mn = ratios["of_minimums"]
    out(f"  of the fastest runs (least disturbed): module / torch "
        f"{mn['module_over_torch']:.2f}, module / GEMM floor "
        f"{mn['module_over_gemm_floor']:.2f}, expert_ffn / GEMM floor "
        f"{mn['expert_ffn_over_gemm_floor']:.2f}")
    out(f"  torch eager / GEMM floor  {ratios['torch_over_gemm_floor']:6.2f}")
    out(f"  module / f64 reference    {ratios['module_over_reference']:6.2f}")
    out("")
    out(f"module phases (median ms per run over {len(mod_runs)} runs; moe-run's own "
        f"mean per run {ms(statistics.mean(mod_means)):.1f} ms)")
    for name, xs in sorted(mod_phases.items(), key=lambda kv: -med(kv[1])):
        note = "   (run time not inside a phase)" if name == BETWEEN else ""
        out(f"  {name:<14} {ms(med(xs)):>9.1f} ms  {100 * med(xs) / m_mod:5.1f}%   "
            f"[{ms(min(xs)):.1f} .. {ms(max(xs)):.1f}]{note}")
    if pas_runs:
        out(f"(a2) with OMP_WAIT_POLICY=passive: run {ms(med(pas_runs)):.1f} ms, expert_ffn "
            f"{ms(med(pas_phases.get('expert_ffn', [0.0]))):.1f} ms, other phases "
            f"{ms(med(pas_runs) - med(pas_phases.get('expert_ffn', [0.0]))):.1f} ms; "
            f"/ GEMM floor {med(pas_runs) / m_flo:.2f}")
    out("GEMM floor parts (median ms): " + ", ".join(
        f"{k} {ms(med(v)):.1f}" for k, v in flo_parts.items() if v))
    out("torch eager parts (median ms): " + ", ".join(
        f"{k} {ms(med(v)):.1f}" for k, v in tor_parts.items()))
    out("correctness vs float64 reference: " + "; ".join(
        f"{k} max abs err {v['max_abs_err']:.2e} on {v['rows']} rows, {v['bad_rows']} bad rows"
        if v.get("checked") else f"{k} not checked" for k, v in checks.items()))
    prof = _profile(work, meta)
    if prof and "error" not in prof:
        sg = prof["sgemm_median_s"]
        out(f"module expert_ffn split (one extra moe-run with every cblas_sgemm timed, "
            f"{prof['calls_per_run']} calls per run; medians):")
        out(f"  expert_ffn {ms(prof['expert_ffn_median_s']):.1f} ms = sgemm "
            f"{ms(prof['expert_sgemm_median_s']):.1f} ms (gate {ms(sg['gate']):.1f}, up "
            f"{ms(sg['up']):.1f}, down {ms(sg['down']):.1f}) + outside sgemm "
            f"{ms(prof['expert_ffn_outside_sgemm_median_s']):.1f} ms (activation, "
            f"gathers, hand-offs); router sgemm {ms(sg['router']):.1f} ms")
        out(f"  the same GEMMs alone (GEMM floor, above): {ms(m_flo):.1f} ms")
    elif prof:
        out(f"module sgemm profile: {prof['error']}")
    busy = [x for x in (meta.get("loadavg_start"), meta.get("loadavg_end")) if x]
    loads = [float(x.split()[0]) for x in busy]
    # Each contender's load-average samples, read once: for the warning and the JSON.
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
        "flops_expert_gemms": flops,
        "routing_counts": counts,
        "module": {**_stats(mod_runs), "runs_s": mod_runs, "moe_run_mean_s": mod_means,
                   "phases_median_s": {k: med(v) for k, v in mod_phases.items()},
                   "phases_runs_s": mod_phases},
        "module_omp_passive": ({**_stats(pas_runs), "runs_s": pas_runs,
                                "phases_median_s": {k: med(v) for k, v in pas_phases.items()}}
                               if pas_runs else None),
        "torch": {**_stats(tor_runs), "runs_s": tor_runs, **tor_info,
                  "parts_median_s": {k: med(v) for k, v in tor_parts.items()}},
        "reference": {**_stats(ref["scaled_runs_s"]), **ref},
        "gemm_floor": {**_stats(flo_runs), "runs_s": flo_runs,
                       "parts_median_s": {k: med(v) for k, v in flo_parts.items() if v}},
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
    bad = [k for k, v in checks.items() if v.get("checked") and v["bad_rows"] > 0]
    if bad:
        print(f"bench.py: outputs of {', '.join(bad)} do not match the reference "
              f"(see correctness above)", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="helpers of bench/cpu/run.sh")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--config", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--ref-tokens", type=int, default=0, help="0: all tokens")
    p.add_argument("--ref-repeat", type=int, default=1)
    p.set_defaults(func=cmd_prep)
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_report)
    a = ap.parse_args()
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
