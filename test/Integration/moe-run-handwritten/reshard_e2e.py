#!/usr/bin/env python3
"""Checkpoints move between layouts (docs/equivalence.md, "Checkpoints").

Compiles one model with --train for one device and for four meshes of 4 ranks:
ep=2,tp=2 with DTD (the source), dp=2,ep=2, dp=2,ep=2 with ZeRO-1 and
ep=2,tp=2 with DTD and expert TP. Then:

  1. K AdamW steps on the source, saved (weights + optimizer state);
     continued for K more steps on dp=2,ep=2, on ZeRO-1, on one rank and on
     the source itself. Each result (weights, state, the losses of the
     continued steps, optimizer.step) equals 2K steps on one rank within the
     tolerances of docs/equivalence.md; on the source mesh it equals 2K steps
     there bit for bit.
  2. The saved files, loaded on every layout and saved again with --steps 0,
     are the same bytes (loading slices and gathering on save lose nothing,
     ZeRO-1's dp-sharded state and expert TP's split experts included).
  3. K steps with expert TP save every expert whole: the same tensor names
     and shapes as one device, every element trained (no shard left at its
     initial value), equal to K steps on one rank within tolerance.
  4. Bad checkpoints on a mesh: a missing state tensor, a state tensor of the
     wrong shape (a plain one transposed, and a stacked expert's where the
     model stores experts one tensor each), a missing weight: exit 1, the
     message names the tensor, nothing written.

Prints one PASS or FAIL line per check and the largest differences measured;
exit 1 on any FAIL.

usage: reshard_e2e.py --config CONFIG.json --moe-compile BIN --moe-run BIN
                      --mpiexec MPIEXEC --workdir DIR [--tokens T] [--steps K]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PY = os.path.join(HERE, "..", "..", "..", "python")
sys.path.insert(0, PY)
import e2e_checks  # noqa: E402
from e2e_checks import check  # noqa: E402

from moe_compiler.safetensors import SafetensorsFile, save  # noqa: E402

# Tolerances of docs/equivalence.md for weights and AdamW state after 2K
# steps, layout against one device: |a - b| <= ATOL * max|b| + RTOL * |b|
# per tensor (AdamW's 1/sqrt(v) turns f32 noise in a near-zero gradient into
# a visible fraction of lr; the relative floor keeps exp_avg_sq, ~1e-6,
# honest).
RTOL, ATOL = 1e-4, 1e-4


def sh(cmd, expect=0):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if expect is not None and p.returncode != expect:
        sys.exit(f"FAIL {' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    return p


def tensors(path):
    with SafetensorsFile(path) as f:
        return {n: f.get(n) for n in f.keys()}


def compare(what, mine, ref):
    """Same names, shapes and dtypes; values within the tolerance. Prints the
    largest difference relative to each tensor's largest value."""
    a, b = tensors(mine), tensors(ref)
    if a.keys() != b.keys():
        return check(False, f"{what}: names differ: {sorted(set(a) ^ set(b))[:4]}")
    worst, bad = 0.0, []
    for k in a:
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape:
            bad.append(k)
            continue
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        scale = float(np.abs(y).max()) if y.size else 0.0
        d = np.abs(x - y)
        if not np.all(d <= ATOL * scale + RTOL * np.abs(y)):
            bad.append(k)
        if scale > 0:
            worst = max(worst, float(d.max()) / scale)
    check(not bad, f"{what}: {len(a)} tensors, max |diff|/max|ref| {worst:.2e}"
          + (f", differ: {bad[:4]}" if bad else ""))


def losses(out):
    return [float(m.group(1))
            for m in re.finditer(r"^step \d+/\d+ loss (\S+)", out, re.M)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--moe-compile", required=True)
    ap.add_argument("--moe-run", required=True)
    ap.add_argument("--mpiexec", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    k = a.steps
    w = os.path.abspath(a.workdir)
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    p = lambda n: os.path.join(w, n)  # noqa: E731
    py = [sys.executable, "-m", "moe_compiler"]
    os.environ["PYTHONPATH"] = PY
    cfg = ["--hf-config", a.config]
    sh(py + ["emit", *cfg, "--tokens", str(a.tokens), "-o", p("model.mlir")])
    sh(py + ["init-weights", *cfg, "--seed", "1", "-o", p("W.safetensors")])
    sh(py + ["init-inputs", *cfg, "--tokens", str(a.tokens), "--seed", "2",
             "-o", p("X.safetensors")])
    sh(py + ["init-targets", *cfg, "--tokens", str(a.tokens), "--seed", "3",
             "-o", p("T.safetensors")])
    layouts = {"one": [], "src": ["--mesh", "ep=2,tp=2", "--dtd"],
               "dpep": ["--mesh", "dp=2,ep=2"],
               "zero1": ["--mesh", "dp=2,ep=2", "--zero1"],
               "etp": ["--mesh", "ep=2,tp=2", "--dtd", "--expert-tp"]}
    for name, flags in layouts.items():
        sh([a.moe_compile, p("model.mlir"), "-o", p(name), "--train", *flags])

    def run(layout, steps, weights, state=None, out=None, expect=0):
        cmd = [] if layout == "one" else [
            a.mpiexec, "--allow-run-as-root", "--oversubscribe", "-np", "4"]
        cmd += [a.moe_run, p(layout), "--train", "--steps", str(steps),
                "--weights", weights, "--inputs", p("X.safetensors"),
                "--targets", p("T.safetensors"), "--quiet"]
        cmd += ["--optimizer-state", state] if state else []
        if out:
            cmd += ["--save-weights", p(out + "W.safetensors"),
                    "--save-optimizer-state", p(out + "S.safetensors")]
        return sh(cmd, expect)

    def same_bytes(x, y):
        with open(p(x), "rb") as f, open(p(y), "rb") as g:
            return f.read() == g.read()

    # 1. K steps on ep=2,tp=2+DTD, continued on other layouts == 2K on one rank.
    run("src", k, p("W.safetensors"), out="src")
    single = losses(run("one", 2 * k, p("W.safetensors"), out="one2k").stdout)
    run("one", k, p("W.safetensors"), out="onek")
    run("src", 2 * k, p("W.safetensors"), out="src2k")
    for dest in ("dpep", "zero1", "one", "src"):
        got = losses(run(dest, k, p("srcW.safetensors"), p("srcS.safetensors"),
                         out=f"cont-{dest}").stdout)
        what = f"{k} steps on ep=2,tp=2+dtd, {k} more on {dest}"
        check(len(got) == k and np.allclose(got, single[k:], rtol=1e-5, atol=0),
              f"{what}: losses {got} vs one rank's steps {k + 1}-{2 * k} {single[k:]}")
        compare(f"{what} vs {2 * k} on one rank: weights",
                p(f"cont-{dest}W.safetensors"), p("one2kW.safetensors"))
        compare(f"{what} vs {2 * k} on one rank: optimizer state",
                p(f"cont-{dest}S.safetensors"), p("one2kS.safetensors"))
        st = tensors(p(f"cont-{dest}S.safetensors"))["optimizer.step"]
        check(st.tolist() == [2 * k], f"{what}: optimizer.step {st.tolist()}")
    check(same_bytes("cont-srcW.safetensors", "src2kW.safetensors")
          and same_bytes("cont-srcS.safetensors", "src2kS.safetensors"),
          f"{k} + {k} resumed on ep=2,tp=2+dtd == {2 * k} there, bit for bit")

    # 2. Load on every layout and save again: the same bytes.
    for dest in layouts:
        run(dest, 0, p("srcW.safetensors"), p("srcS.safetensors"),
            out=f"rt-{dest}")
        check(same_bytes(f"rt-{dest}W.safetensors", "srcW.safetensors")
              and same_bytes(f"rt-{dest}S.safetensors", "srcS.safetensors"),
              f"ep=2,tp=2+dtd checkpoint loaded and saved on {dest} "
              "(--steps 0): bit for bit")

    # 3. Expert TP saves every shard of every expert.
    run("etp", k, p("W.safetensors"), out="etp")
    e, one, w0 = (tensors(p(f"{n}.safetensors"))
                  for n in ("etpW", "onekW", "W"))
    experts = [n for n in one if ".experts." in n]
    whole = e.keys() == one.keys() and all(
        e[n].shape == one[n].shape for n in one)
    trained = [n for n in experts if n in e and np.all(e[n] != w0[n])]
    check(whole and len(trained) == len(experts) > 0,
          f"expert TP saves {len(experts)} expert tensors whole, every element "
          f"trained ({len(trained)} of {len(experts)})")
    compare(f"{k} steps with expert TP vs one rank: weights",
            p("etpW.safetensors"), p("onekW.safetensors"))

    # 4. Bad checkpoints name the tensor, on a mesh, and write nothing.
    s = tensors(p("srcS.safetensors"))
    per_expert = re.compile(r"\.experts\.\d+\.")
    stacks = [n for n in s if per_expert.search(n) and n.endswith(".exp_avg_sq")]
    plain = next(n for n in s if n.endswith(".exp_avg") and not per_expert.search(n)
                 and s[n].ndim == 2 and s[n].shape[0] != s[n].shape[1])
    stack = stacks[0] if stacks else plain + "_sq"
    missing = dict(s)
    del missing[stack]
    transposed = dict(s, **{plain: np.ascontiguousarray(s[plain].T)})
    weights = tensors(p("srcW.safetensors"))
    weight = stack[: -len(".exp_avg_sq")]
    del weights[weight]
    cases = [("missing state tensor", stack, {"S": missing}),
             ("plain state transposed", plain, {"S": transposed}),
             ("missing weight", weight, {"W": weights})]
    if stacks:  # a model with experts stored one tensor each (not DBRX's fused)
        cases.append(("expert state of the wrong shape", stack,
                      {"S": dict(s, **{stack: np.zeros((3, 4), np.float32)})}))
    for what, tensor, files in cases:
        for x, t in files.items():
            save(p(f"bad{x}.safetensors"), t)
        wf = p("badW.safetensors") if "W" in files else p("srcW.safetensors")
        sf = p("badS.safetensors") if "S" in files else p("srcS.safetensors")
        for f in ("errW.safetensors", "errS.safetensors"):
            if os.path.exists(p(f)):
                os.unlink(p(f))
        r = run("dpep", 1, wf, sf, out="err", expect=None)
        text = r.stdout + r.stderr
        check(r.returncode == 1 and f"'{tensor}'" in text
              and not os.path.exists(p("errW.safetensors")),
              f"{what} on dp=2,ep=2: exit {r.returncode}, names '{tensor}'")
    return e2e_checks.exit_status()


if __name__ == "__main__":
    sys.exit(main())
