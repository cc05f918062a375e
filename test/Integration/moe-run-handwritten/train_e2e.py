#!/usr/bin/env python3
"""moe-run --train on a compiled model against the float64 train-reference.

Emits a model from a Hugging Face config, compiles it with moe-compile
--train, makes weights, inputs and targets, runs N steps with moe-run --train
and with `python3 -m moe_compiler train-reference`, and compares: the printed
losses, the first step's gradients (--grads), the saved weights and the saved
optimizer state (the same names, shapes and dtypes; values at rtol), then
resumes: N-1 steps saved and one more must give the N-step files bit for bit.
With --mesh SPEC[+dtd][+expert-tp] the module is compiled for that mesh and run
under MPIEXEC; --compare-single then also trains the single-device module for
the same steps and compares the saved weights (N ranks train like one).
--learnable makes the targets the model's own output under other weights, and
checks that the loss goes down. --checkpoints P,Q,... also compiles the model
with moe-compile --checkpoint P (auto: the budget halfway between the saved
bytes of none and cac) and trains it the same way: the saved weights, optimizer
state and gradients must be the files of the default (none) bit for bit, and
--stats must list the backward's recomputed all-to-alls as an entry
"recompute" exactly when the policy recomputes collectives (full). Prints one
PASS or FAIL line per check; exit 1 on any FAIL.

usage: train_e2e.py --config CONFIG.json --moe-compile BIN --moe-run BIN
                    --workdir DIR [--tokens T] [--steps N] [--optimizer NAME]
                    [--routing '--norm rmsnorm ...'] [--mesh SPEC[+dtd]
                    --mpiexec MPIEXEC [--compare-single]] [--learnable]
                    [--checkpoints full,cac,auto]
                    [-- options for both trainers]
"""
import argparse
import json
import os
import re
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "python"))
import e2e_checks  # noqa: E402
from e2e_checks import check, sh  # noqa: E402

from moe_compiler.safetensors import SafetensorsFile  # noqa: E402


def tensors(path):
    with SafetensorsFile(path) as f:
        return {n: f.get(n) for n in f.keys()}


def compare(what, mine, ref, rtol, atol):
    a, b = tensors(mine), tensors(ref)
    if a.keys() != b.keys():
        return check(False, f"{what}: names differ: {sorted(set(a) ^ set(b))[:4]}")
    bad = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
           or not np.allclose(a[k].astype(np.float64), b[k].astype(np.float64),
                              rtol=rtol, atol=atol)]
    check(not bad, f"{what}: {len(a)} tensors" + (f", differ: {bad[:4]}" if bad else ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--moe-compile", required=True)
    ap.add_argument("--moe-run", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--mesh", default="")
    ap.add_argument("--mpiexec", default="")
    ap.add_argument("--rtol", type=float, default=1e-4)
    # Weights after AdamW steps: a gradient near zero (1e-9 where the median
    # is 1e-4) is f32 rounding noise, and AdamW turns it into a step of up to
    # lr; atol 1e-4 keeps such elements and still sees any wrong update.
    ap.add_argument("--atol", type=float, default=1e-4,
                    help="absolute tolerance of the saved weights")
    ap.add_argument("--routing", default="",
                    help="routing overrides for emit and train-reference, "
                    "e.g. '--norm rmsnorm --losses'")
    ap.add_argument("--compare-single", action="store_true",
                    help="with --mesh: also train on one device and compare")
    ap.add_argument("--learnable", action="store_true",
                    help="targets from other weights; the loss must go down")
    ap.add_argument("--checkpoints", default="",
                    help="moe-compile --checkpoint policies to train bitwise like none")
    ap.add_argument("extra", nargs="*", help="options for both trainers")
    a = ap.parse_args()
    mesh, *flags = a.mesh.split("+") if a.mesh else [""]
    w = os.path.abspath(a.workdir)
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    p = lambda n: os.path.join(w, n)  # noqa: E731
    py = [sys.executable, "-m", "moe_compiler"]
    os.environ["PYTHONPATH"] = os.path.join(HERE, "..", "..", "..", "python")
    cfg = ["--hf-config", a.config]
    routing = a.routing.split()
    sh(py + ["emit", *cfg, *routing, "--tokens", str(a.tokens), "--dtype", "f32", "-o",
             p("model.mlir")])
    sh([a.moe_compile, p("model.mlir"), "-o", p("mod"), "--train"]
       + (["--mesh", mesh] if mesh else []) + ["--" + f for f in flags])
    sh(py + ["init-weights", *cfg, "--seed", "1", "-o", p("W.safetensors")])
    sh(py + ["init-inputs", *cfg, "--tokens", str(a.tokens), "--seed", "2",
             "-o", p("X.safetensors")])
    if a.learnable:
        # What the same model computes with other weights: reachable by training.
        sh(py + ["init-weights", *cfg, "--seed", "4", "-o", p("W4.safetensors")])
        sh(py + ["reference", *cfg, *routing, "--weights", p("W4.safetensors"),
                 "--inputs", p("X.safetensors"), "-o", p("T.safetensors")])
    else:
        sh(py + ["init-targets", *cfg, "--tokens", str(a.tokens), "--seed", "3",
                 "-o", p("T.safetensors")])
    opts = ["--optimizer", a.optimizer, *a.extra]
    data = ["--inputs", p("X.safetensors"), "--targets", p("T.safetensors")]
    ranks = 1
    if mesh:
        for part in mesh.split(","):
            ranks *= int(part.split("=")[1])
    launch = ([a.mpiexec, "--allow-run-as-root", "--oversubscribe", "-np",
               str(ranks)] if ranks > 1 else [])

    def run(weights, steps, out, state=None, grads=None, module="mod", np_=True,
            stats=None):
        cmd = (launch if np_ else []) + [
            a.moe_run, p(module), "--train", "--steps", str(steps),
                        "--weights", weights, *data, *opts, "--quiet",
                        "--save-weights", p(out + "W.safetensors"),
                        "--save-optimizer-state", p(out + "S.safetensors")]
        cmd += ["--optimizer-state", state] if state else []
        cmd += ["--grads", grads] if grads else []
        cmd += ["--stats", stats] if stats else []
        return sh(cmd)

    out = run(p("W.safetensors"), a.steps, "m", grads=p("mG.safetensors"))
    mine = [float(m.group(1)) for m in re.finditer(r"^step \d+/\d+ loss (\S+)",
                                                   out, re.M)]
    ref_out = sh(py + ["train-reference", *cfg, *routing, "--steps", str(a.steps),
                       "--weights", p("W.safetensors"), *data, *opts,
                       "--save-weights", p("rW.safetensors"),
                       "--save-optimizer-state", p("rS.safetensors"),
                       "--grads", p("rG.safetensors")])
    ref = [float(m.group(1)) for m in re.finditer(r"^step\s+\d+\s+loss (\S+)",
                                                  ref_out, re.M)]
    check(len(mine) == a.steps and np.allclose(mine, ref, rtol=a.rtol),
          f"losses {mine} vs reference {ref}")
    if a.learnable:
        check(len(mine) > 1 and mine[-1] < mine[0],
              f"the loss goes down on a learnable target: {mine[0]} -> {mine[-1]}")
    if a.compare_single and ranks > 1:
        sh([a.moe_compile, p("model.mlir"), "-o", p("mod1"), "--train"])
        run(p("W.safetensors"), a.steps, "s", module="mod1", np_=False)
        compare(f"{ranks} ranks vs 1 device after {a.steps} steps: saved weights",
                p("mW.safetensors"), p("sW.safetensors"), a.rtol, a.atol)
    compare("first step's gradients", p("mG.safetensors"), p("rG.safetensors"),
            a.rtol, 1e-6)
    compare("saved weights", p("mW.safetensors"), p("rW.safetensors"), a.rtol,
            a.atol)
    compare("saved optimizer state", p("mS.safetensors"), p("rS.safetensors"),
            a.rtol, 1e-7)
    plans = {}
    for policy in [x for x in a.checkpoints.split(",") if x]:
        build = [a.moe_compile, p("model.mlir"), "--train"] + \
            (["--mesh", mesh] if mesh else []) + ["--" + f for f in flags]
        for need in ("none", "cac") if policy == "auto" else ():
            if need not in plans:
                sh(build + ["-o", p("mod-" + need), "--checkpoint", need])
                plans[need] = json.load(open(p(f"mod-{need}/manifest.json")))["checkpoint"]
        extra = ["--checkpoint", policy]
        if policy == "auto":
            extra += ["--checkpoint-budget",
                      str((plans["none"]["saved_bytes"] + plans["cac"]["saved_bytes"]) // 2)]
        sh(build + ["-o", p("mod-" + policy), *extra])
        plan = json.load(open(p(f"mod-{policy}/manifest.json")))["checkpoint"]
        run(p("W.safetensors"), a.steps, "c" + policy, module="mod-" + policy,
            grads=p(f"c{policy}G.safetensors"), stats=p(f"c{policy}.stats.json"))
        same = all(open(p(f"c{policy}{x}.safetensors"), "rb").read()
                   == open(p(f"m{x}.safetensors"), "rb").read() for x in "WSG")
        check(same, f"--checkpoint {policy} (saved {plan['saved_bytes']} bytes, "
              f"{plan['recompute_collectives']} recomputed collectives): weights, state "
              f"and gradients bit for bit those of none")
        entries = {e["name"]: e for e in json.load(open(p(f"c{policy}.stats.json")))[0]["entries"]}
        rec = entries.get("recompute", {}).get("collectives", [])
        a2a = sum(c["calls"] for c in rec if c["op"] == "all_to_all_v")
        want = plan["recompute_collectives"] > 0 and ranks > 1
        check(bool(rec) == want and (a2a > 0) == want,
              f"--checkpoint {policy}: --stats recompute entry "
              f"{'with' if rec else 'without'} collectives ({a2a} all_to_all_v calls)")
    if a.steps > 1:
        run(p("W.safetensors"), a.steps - 1, "k")
        run(p("kW.safetensors"), 1, "k1", state=p("kS.safetensors"))
        same = all(open(p(f"k1{x}.safetensors"), "rb").read()
                   == open(p(f"m{x}.safetensors"), "rb").read() for x in "WS")
        check(same, f"{a.steps - 1} steps + 1 resumed == {a.steps} steps, bit for bit")
    return e2e_checks.exit_status()


if __name__ == "__main__":
    sys.exit(main())
