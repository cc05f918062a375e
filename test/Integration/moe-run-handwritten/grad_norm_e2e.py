#!/usr/bin/env python3
"""moe-run --train --clip-grad-norm: the exact global gradient norm on every mesh.

Emits a model with both auxiliary losses, compiles it with --train for one device
and for each mesh given (SPEC[+dtd][+expert-tp][+zero1]), and runs --steps
training steps with moe-run --train --json --stats on each (under MPIEXEC for a
mesh). Checks:

  - every step's grad_norm on every mesh equals the single device's (relative
    1e-6: each parameter counted exactly once, whatever splits or replicates
    it) and the float64 train-reference's (relative 1e-5);
  - --stats holds the same per-step loss, aux_loss, z_loss and grad_norm as
    --json (rank 0's "step_stats");
  - with a small --clip-grad-norm (a tenth of the first step's norm, so every
    step clips), every step reports the factor max / (norm + 1e-6) < 1, and
    the losses and saved weights (SGD) match train-reference --clip-grad-norm
    and the single device; without clipping the saved weights differ.

Prints one PASS or FAIL line per check; exit 1 on any FAIL.

usage: grad_norm_e2e.py --config C.json --moe-compile BIN --moe-run BIN
                        --workdir DIR [--mpiexec MPIEXEC] [--mesh SPEC ...]
                        [--routing 'OPTIONS']
"""
import argparse
import json
import os
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
        return {n: f.get(n).astype(np.float64) for n in f.keys()}


def max_rel(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]) / (np.abs(b[k]) + 1e-6))) for k in b)


def rel(a, b):
    return abs(a - b) / abs(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--moe-compile", required=True)
    ap.add_argument("--moe-run", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mpiexec", default="")
    ap.add_argument("--mesh", action="append", default=[])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--routing", default="--aux-loss-coeff 0.02 --z-loss-coeff 0.001",
                    help="routing options for emit and train-reference")
    a = ap.parse_args()
    w = os.path.abspath(a.workdir)
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    p = lambda n: os.path.join(w, n)  # noqa: E731
    os.environ["PYTHONPATH"] = os.path.join(HERE, "..", "..", "..", "python")
    py = [sys.executable, "-m", "moe_compiler"]
    cfg = ["--hf-config", a.config]
    routing = a.routing.split()
    sh(py + ["emit", *cfg, *routing, "--tokens", str(a.tokens), "--dtype", "f32",
             "-o", p("model.mlir")])
    sh(py + ["init-weights", *cfg, "--seed", "1", "-o", p("W.safetensors")])
    sh(py + ["init-inputs", *cfg, "--tokens", str(a.tokens), "--seed", "2",
             "-o", p("X.safetensors")])
    sh(py + ["init-targets", *cfg, "--tokens", str(a.tokens), "--seed", "3",
             "-o", p("T.safetensors")])
    data = ["--weights", p("W.safetensors"), "--inputs", p("X.safetensors"),
            "--targets", p("T.safetensors"), "--steps", str(a.steps),
            "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9"]

    def ref(tag, extra=()):
        out = sh(py + ["train-reference", *cfg, *routing, *data, *extra, "--json",
                       "--save-weights", p(tag + "W.safetensors")])
        return json.loads(out)["steps"]

    def train(mod, mesh, tag, extra=()):
        ranks = int(np.prod([int(x.split("=")[1]) for x in mesh.split(",")])) if mesh else 1
        launch = ([a.mpiexec, "--allow-run-as-root", "--oversubscribe", "-np",
                   str(ranks)] if ranks > 1 else [])
        out = sh(launch + [a.moe_run, p(mod), "--train", *data, *extra, "--json",
                           "--timeout", "120", "--stats", p(tag + "stats.json"),
                           "--save-weights", p(tag + "W.safetensors")])
        return json.loads(out)["steps"], json.load(open(p(tag + "stats.json")))

    modules = [("mod1", "", [])]
    for spec in a.mesh:
        mesh, *flags = spec.split("+")
        modules.append(("mod-" + spec.replace(",", "_").replace("=", "").replace("+", "_"),
                        mesh, flags))
    for mod, mesh, flags in modules:
        sh([a.moe_compile, p("model.mlir"), "-o", p(mod), "--train"]
           + (["--mesh", mesh] if mesh else []) + ["--" + f for f in flags])

    ref_rows = ref("r")
    ref_norms = [r["grad_norm"] for r in ref_rows]
    single = None
    for mod, mesh, flags in modules:
        name = "+".join([mesh or "1 device", *flags])
        rows, stats = train(mod, mesh, mod + ".")
        norms = [r["grad_norm"] for r in rows]
        if single is None:
            single = norms
        worst = max(rel(x, y) for x, y in zip(norms, single))
        check(len(norms) == a.steps and worst <= 1e-6,
              f"{name}: grad_norm {norms} equals the single device's "
              f"(max rel {worst:.2e} <= 1e-6)")
        worst = max(rel(x, y) for x, y in zip(norms, ref_norms))
        check(worst <= 1e-5, f"{name}: grad_norm equals train-reference's {ref_norms} "
              f"(max rel {worst:.2e} <= 1e-5)")
        logged = stats[0].get("step_stats", [])
        keys = ("loss", "mse", "aux_loss", "z_loss", "grad_norm")
        same = len(logged) == a.steps and all(
            all(k in s and s[k] == r[k] for k in keys) for s, r in zip(logged, rows))
        check(same, f"{name}: --stats step_stats hold loss, mse, aux_loss, z_loss "
              "and grad_norm of every step")

    clip = round(0.1 * ref_norms[0], 6)
    ref_clip = ref("rc", ["--clip-grad-norm", str(clip)])
    coefs = [r["clip_coef"] for r in ref_clip]
    check(all(c < 1 for c in coefs), f"clipping at {clip} is active on every step of "
          f"the reference: factors {coefs}")
    for mod, mesh, flags in modules:
        name = "+".join([mesh or "1 device", *flags])
        rows, _ = train(mod, mesh, mod + ".c.", ["--clip-grad-norm", str(clip)])
        mine = [r["clip_coef"] for r in rows]
        expect = [clip / (r["grad_norm"] + 1e-6) for r in rows]
        check(all(m < 1 and rel(m, e) <= 1e-6 for m, e in zip(mine, expect))
              and max(rel(m, c) for m, c in zip(mine, coefs)) <= 1e-5,
              f"{name}: clipped by {mine} = max/(norm + 1e-6), as the reference")
        losses = [r["loss"] for r in rows]
        rl = [r["loss"] for r in ref_clip]
        check(np.allclose(losses, rl, rtol=1e-5), f"{name}: clipped losses {losses} "
              f"vs reference {rl}")
        err = max_rel(tensors(p(mod + ".c.W.safetensors")), tensors(p("rcW.safetensors")))
        check(err <= 1e-4, f"{name}: weights after {a.steps} clipped steps vs "
              f"train-reference --clip-grad-norm (max rel {err:.2e} <= 1e-4)")
        err = max_rel(tensors(p(mod + ".c.W.safetensors")),
                      tensors(p("mod1.c.W.safetensors")))
        check(err <= 1e-4, f"{name}: weights after clipped steps vs the single device "
              f"(max rel {err:.2e} <= 1e-4)")
    err = max_rel(tensors(p("mod1.c.W.safetensors")), tensors(p("mod1.W.safetensors")))
    check(err > 1e-3, f"clipping changes the weights (max rel {err:.2e} > 1e-3)")
    return e2e_checks.exit_status()


if __name__ == "__main__":
    sys.exit(main())
