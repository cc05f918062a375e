#!/usr/bin/env python3
"""Expert load statistics, and experts and ranks that receive no token.

Emits a model, compiles it for one device and for each mesh given
(SPEC[+dtd][+expert-tp]), for inference and with --train, and checks, with
seeded weights and then with *starved* weights:

  - moe-run --stats "expert_load" (inference) and "step_stats"[i]
    ["expert_load"] (training, every step): per MoE layer, tokens per expert
    (before capacity), kept, dropped, max, mean, max/mean, the experts with
    no token and (ep > 1) the tokens per ep rank, equal to what the float64
    reference's router computes in numpy on the same inputs (the training
    steps' weights included);
  - starved weights: router rows crafted so that the given experts (by default
    every expert of the last ep rank at the narrowest ep > 1 of the meshes,
    so that whole ranks get nothing, plus expert 1) get no
    token in any layer: a large constant feature in every input token, and a
    strongly negative router weight on it for those experts. Every rank of
    every mesh completes (moe-run --timeout 60: a rank that waited forever
    would fail the run), the outputs, the first step's gradients and the
    weights after the steps equal the single device's and the float64
    reference's, and the starved experts' gradients are exactly zero (so SGD
    without weight decay leaves them bit for bit unchanged).

Prints one PASS or FAIL line per check; exit 1 on any FAIL.

usage: expert_load_e2e.py --config C.json --moe-compile BIN --moe-run BIN
                          --workdir DIR [--mpiexec MPIEXEC] [--mesh SPEC ...]
                          [--routing 'OPTIONS'] [--starve E,E,...]
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

from moe_compiler import cli  # noqa: E402
from moe_compiler.layout import sublayers  # noqa: E402
from moe_compiler.safetensors import load, save  # noqa: E402
from moe_compiler.train_reference import (  # noqa: E402
    Optimizer,
    OptimizerConfig,
    forward_backward,
    load_training_weights,
    train,
)

LR, MOMENTUM, STEPS = 0.05, 0.9, 2


def expected_load(routing, num_experts):
    """What moe-run must report from the reference's (idx, kept) per MoE layer."""
    out = []
    for idx, kept in routing:
        tokens = np.bincount(idx.ravel(), minlength=num_experts)
        k = np.bincount(idx[kept].ravel(), minlength=num_experts)
        out.append({"tokens": tokens.tolist(), "kept": k.tolist(),
                    "assignments": int(tokens.sum()), "dropped": int(tokens.sum() - k.sum()),
                    "max": int(tokens.max()), "mean": float(tokens.mean()),
                    "overload": float(tokens.max() / tokens.mean()),
                    "empty": [int(e) for e in np.flatnonzero(tokens == 0)]})
    return out


def same_load(mine, ref, ep=1):
    """moe-run's expert_load against the reference's; with ep > 1 also the
    assignments per ep rank (E/ep consecutive experts each)."""
    if len(mine) != len(ref):
        return False
    for m, r in zip(mine, ref):
        if ep > 1 and m.get("ep_ranks") != np.add.reduceat(
                r["tokens"], range(0, len(r["tokens"]), len(r["tokens"]) // ep)).tolist():
            return False
        for key, v in r.items():
            if key in ("mean", "overload"):
                if abs(m.get(key, -1) - v) > 1e-12 * max(1.0, v):
                    return False
            elif m.get(key) != v:
                return False
    return True


def ep_of(mesh):
    return next((int(x.split("=")[1]) for x in mesh.split(",") if x.startswith("ep=")), 1)


def ranks_of(mesh):
    return int(np.prod([int(x.split("=")[1]) for x in mesh.split(",")])) if mesh else 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--moe-compile", required=True)
    ap.add_argument("--moe-run", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mpiexec", default="")
    ap.add_argument("--mesh", action="append", default=[])
    ap.add_argument("--routing", default="")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--starve", default="",
                    help="experts that get no token (default: the last ep rank's "
                    "experts on the narrowest ep > 1 of the meshes, and expert 1)")
    a = ap.parse_args()
    w = os.path.abspath(a.workdir)
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    p = lambda n: os.path.join(w, n)  # noqa: E731
    os.environ["PYTHONPATH"] = os.path.join(HERE, "..", "..", "..", "python")
    py = [sys.executable, "-m", "moe_compiler"]
    hf = ["--hf-config", a.config]
    routing = a.routing.split()
    cfg = cli._routed(cli.build_parser().parse_args(
        ["train-reference", *hf, *routing, "--weights", "W", "--inputs", "X",
         "--targets", "T", "--steps", "1"]))
    subs = sublayers(cfg)
    experts = max(s.num_experts for s in subs)

    sh(py + ["emit", *hf, *routing, "--tokens", str(a.tokens), "--dtype", "f32",
             "-o", p("model.mlir")])
    sh(py + ["init-weights", *hf, "--seed", "1", "-o", p("W.safetensors")])
    sh(py + ["init-inputs", *hf, "--tokens", str(a.tokens), "--seed", "2",
             "-o", p("X.safetensors")])
    sh(py + ["init-targets", *hf, "--tokens", str(a.tokens), "--seed", "3",
             "-o", p("T.safetensors")])
    modules = [("", [])] + [(s.split("+")[0], s.split("+")[1:]) for s in a.mesh]
    for mesh, flags in modules:
        tag = "+".join([mesh, *flags]) or "1"
        for train_flag, kind in (([], "inf"), (["--train"], "train")):
            sh([a.moe_compile, p("model.mlir"), "-o", p(f"{kind}-{tag}"), *train_flag]
               + (["--mesh", mesh] if mesh else []) + ["--" + f for f in flags])

    # The starved weights: feature 0 of every token large and positive; the
    # norms pass it on (weight 1, bias 0) and the starved experts' router
    # rows weigh it by -4.
    ep = min([int(x.split("=")[1]) for m, _ in modules for x in m.split(",")
              if x.startswith("ep=") and x != "ep=1"] or [1])
    starve = ([int(e) for e in a.starve.split(",")] if a.starve else
              sorted({1, *range(experts - experts // ep, experts)}) if ep > 1 else [1])
    wts = load(p("W.safetensors"))
    for s in subs:
        wts[s.norm.name] = wts[s.norm.name].copy()
        wts[s.norm.name][0] = 1.0
        if s.norm_bias is not None:
            wts[s.norm_bias.name] = wts[s.norm_bias.name].copy()
            wts[s.norm_bias.name][0] = 0.0
        if s.kind == "moe":
            r = wts[s.get("router").name].copy()
            r[:, 0] = 0.0
            r[starve, 0] = -4.0
            wts[s.get("router").name] = r
    save(p("Ws.safetensors"), wts)
    xs = load(p("X.safetensors"))
    xs["hidden_states"] = xs["hidden_states"].copy()
    xs["hidden_states"][:, 0] += 6.0
    save(p("Xs.safetensors"), xs)

    opt = ["--optimizer", "sgd", "--lr", str(LR), "--momentum", str(MOMENTUM),
           "--steps", str(STEPS)]
    for case, wf, xf in (("seeded", "W", "X"), ("starved", "Ws", "Xs")):
        x = load(p(xf + ".safetensors"))["hidden_states"]
        t = load(p("T.safetensors"))["hidden_states"]
        weights = load_training_weights(cfg, load(p(wf + ".safetensors")).__getitem__)
        fwd = forward_backward(cfg, x, np.zeros_like(x), weights.__getitem__,
                               backward=False)
        ref_load = expected_load(fwd.routing, experts)
        if case == "starved":
            empty = [set(layer["empty"]) for layer in ref_load]
            check(all(set(starve) <= e for e in empty),
                  f"starved: the reference routes no token to experts {starve} in "
                  f"any layer (empty: {[sorted(e) for e in empty]})")
        sh(py + ["reference", *hf, *routing, "--weights", p(wf + ".safetensors"),
                 "--inputs", p(xf + ".safetensors"), "-o", p(case + "-ref.safetensors")])
        sh(py + ["train-reference", *hf, *routing, "--weights", p(wf + ".safetensors"),
                 "--inputs", p(xf + ".safetensors"), "--targets", p("T.safetensors"),
                 *opt, "--grads", p(case + "-rG.safetensors"),
                 "--save-weights", p(case + "-rW.safetensors")])
        o = Optimizer(OptimizerConfig.make("sgd", LR, momentum=MOMENTUM),
                      {n: v.shape for n, v in weights.items()})
        steps_load = [expected_load(res.routing, experts)
                      for res in train(cfg, x, t, weights, o, STEPS)]
        for mesh, flags in modules:
            tag = "+".join([mesh, *flags]) or "1"
            name = f"{case} {tag if mesh else '1 device'}"
            n = ranks_of(mesh)
            launch = ([a.mpiexec, "--allow-run-as-root", "--oversubscribe", "-np",
                       str(n)] if n > 1 else [])
            base = [a.moe_run, "--weights", p(wf + ".safetensors"),
                    "--inputs", p(xf + ".safetensors"), "--timeout", "60", "--quiet"]
            out = sh(launch + [*base[:1], p(f"inf-{tag}"), *base[1:],
                               "--output", p(f"{case}-{tag}-Y.safetensors"),
                               "--check", p(case + "-ref.safetensors"),
                               "--stats", p(f"{case}-{tag}-inf.json")])
            check("FAIL" not in out, f"{name}: every rank completes the forward; "
                  "outputs match the float64 reference")
            got = json.load(open(p(f"{case}-{tag}-inf.json")))[0].get("expert_load")
            mesh_ep = ep_of(mesh)
            check(same_load(got or [], ref_load, mesh_ep),
                  f"{name}: inference expert_load (tokens per expert, kept, dropped, "
                  f"max/mean, empty) equals numpy's routing: "
                  f"{[(layer['tokens'], layer['dropped']) for layer in ref_load]}")
            sh(launch + [*base[:1], p(f"train-{tag}"), *base[1:], "--train",
                         "--targets", p("T.safetensors"), *opt,
                         "--stats", p(f"{case}-{tag}-train.json"),
                         "--grads", p(f"{case}-{tag}-G.safetensors"),
                         "--save-weights", p(f"{case}-{tag}-W.safetensors")])
            rows = json.load(open(p(f"{case}-{tag}-train.json")))[0]["step_stats"]
            check(len(rows) == STEPS and all(same_load(r.get("expert_load", []), e,
                                                       mesh_ep)
                                             for r, e in zip(rows, steps_load)),
                  f"{name}: training expert_load of each of {STEPS} steps equals numpy's")
            grads = load(p(f"{case}-{tag}-G.safetensors"))
            for what, mine, ref_file in (
                    ("first step's gradients", grads, p(case + "-rG.safetensors")),
                    ("weights after the steps", load(p(f"{case}-{tag}-W.safetensors")),
                     p(case + "-rW.safetensors"))):
                ref = load(ref_file)
                bad = [k for k in ref if not np.allclose(mine[k], ref[k], rtol=1e-4,
                                                         atol=1e-6)]
                check(not bad and mine.keys() == ref.keys(),
                      f"{name}: {what} match the float64 reference"
                      + (f" (differ: {bad[:3]})" if bad else ""))
                single = load(p(f"{case}-1-{'G' if 'grad' in what else 'W'}.safetensors"))
                bad = [k for k in single if not np.allclose(mine[k], single[k],
                                                            rtol=1e-4, atol=1e-6)]
                check(not bad, f"{name}: {what} equal the single device's"
                      + (f" (differ: {bad[:3]})" if bad else ""))
            if case == "starved" and mesh_ep > 1:
                per_rank = [layer["ep_ranks"] for layer in got]
                check(all(r[-1] == 0 for r in per_rank),
                      f"{name}: the last ep rank receives no token: {per_rank}")
            if case == "starved":
                starved = [spec.file_tensors()[e][0] for sub in subs
                           if sub.kind == "moe" for spec in sub.weights
                           if spec.stacked for e in starve]
                zero = [k for k in starved if not np.all(grads[k] == 0)]
                check(starved and not zero,
                      f"{name}: the {len(starved)} gradients of starved experts "
                      f"{starve} are exactly zero" + (f" (not: {zero[:3]})" if zero else ""))
                saved = load(p(f"{case}-{tag}-W.safetensors"))
                moved = [k for k in starved if not np.array_equal(saved[k], wts[k])]
                check(not moved, f"{name}: starved experts' weights unchanged bit for "
                      "bit after the steps")
    return e2e_checks.exit_status()


if __name__ == "__main__":
    sys.exit(main())
