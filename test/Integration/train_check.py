#!/usr/bin/env python3
"""Training entries of a compiled module against the float64 training reference.

For one model config and one set of routing options it
  1. emits the model graph and draws seeded weights, inputs and targets;
  2. compiles it with ``moe-compile --train`` (one device);
  3. runs the entry points through libmoert's C ABI with ctypes
     (moe_compiler.runtime), as a driver does (tensors passed between entries by
     name): ``forward_train``, ``backward`` and ``step_<optimizer>`` for ``--steps``
     steps;
  4. compares the first step's loss and every gradient (``grad.hidden_states``
     and ``grad.<weight>``, put back into the file layout: ``{e}`` stacks split
     per expert, transposed weights transposed back) with
     ``train-reference --grads``, and the weights after the last step with
     ``train-reference --save-weights``, at rtol 1e-4.

Output, one line per check (FileCheck reads them):
  LOSS <family> compiled=<l> reference=<l>
  A2A <family> <mesh> <op> forward=<b> backward=<b>   (rank 0's bytes sent by the
                           token all-to-alls of forward_train and backward: equal)
  BWD <family> <mesh> expert_ffn_grad_data=<n> expert_ffn_grad_weight=<m> expert_ffn_grad=0
                           (with +overlap=N: the backward pipelined, n = N m)
  GRADS <family> <n> tensors max_rel_err=<e>
  STEP <family> <optimizer> steps=<n> <m> tensors max_rel_err=<e>
  BITWISE <family> <mesh> = <other mesh> <n> tensors   (with --same-bits-as)
  PASS <family>            (or FAIL <family> <why>, exit status 1)

Every rank keeps its first step's loss and gradients and its weights after the
last step in ``<workdir>/results.<rank>.npz``; ``--same-bits-as DIR`` compares them
byte for byte with those of an earlier run's workdir (e.g. the same mesh without
``+overlap=N``).

``max_rel_err`` = max |a - ref| / (|ref| + atol/rtol) with atol = 1e-6 times the
largest |ref| of the tensor (gradients are small numbers, so the floor is
relative), so it is <= rtol exactly when |a - ref| <= atol + rtol |ref| everywhere.
For the weights after the steps atol is a fraction of the largest possible
change (lr per step): rtol of it for SGD; 1% of it for AdamW, which divides by
sqrt(v) + eps, so that a gradient element near eps (f32 against float64) moves
its weight by a visible fraction of lr, which a relative tolerance on a weight
near 0 cannot absorb.

  train_check.py --config examples/configs/tiny-mixtral.json --family mixtral \
                 --tokens 16 [--optimizer adamw|sgd] [--steps 2] -- --losses

Needs numpy, the repository's python/ (found next to this file), moe-compile on
PATH (else $MOE_BUILD_DIR/bin, else build/bin) and libmoert.so next to it
($MOE_BUILD_DIR/lib).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
if os.path.join(SRC, "python") not in sys.path:
    sys.path.insert(0, os.path.join(SRC, "python"))

from moe_compiler.runtime import Module, RuntimeError_  # noqa: E402
from moe_compiler.safetensors import load  # noqa: E402

RTOL = 1e-4
ATOL_REL = 1e-6
# AdamW's first update is lr * g / (|g| + eps): for a gradient element near eps
# (1e-8, a millionth of the tensor's largest), the f32 gradient's last digits
# move the weight by up to ~1% of lr (seen: 2.06e-8 against 2.03e-8 in the
# float64 reference, 0.3% of lr).
ADAMW_ATOL = 1e-2
# Hyperparameters of the steps (train-reference gets the same ones).
LR, BETAS, EPS, WD, MOMENTUM, BIAS_RATE = 1e-3, (0.9, 0.999), 1e-8, 0.01, 0.9, 1e-3


class CheckError(Exception):
    pass


def build_dir() -> str:
    if os.environ.get("MOE_BUILD_DIR"):
        return os.environ["MOE_BUILD_DIR"]
    return os.path.join(SRC, "build")


def tool(name: str) -> str:
    path = shutil.which(name)
    return path or os.path.join(build_dir(), "bin", name)


def run(cmd: list[str]) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(SRC, "python")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if p.returncode != 0:
        raise CheckError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


def cli(*args: str) -> str:
    return run([sys.executable, "-m", "moe_compiler", *args])


# ---------------------------------------------------------------- layouts


def expand(name: str, spec: dict, file: dict[str, np.ndarray]) -> np.ndarray:
    """The compiler-layout tensor of a weight argument from file tensors."""
    def one(t: np.ndarray, shape: list[int]) -> np.ndarray:
        # The file's layout of `shape` (DBRX fuses its experts into one
        # [E*F, D] tensor: same elements, same order).
        if spec.get("transpose"):
            return np.swapaxes(t.reshape(shape[:-2] + [shape[-1], shape[-2]]), -1, -2)
        return t.reshape(shape)
    if "{e}" in name:
        e = spec["shape"][0]
        return np.stack([one(file[name.replace("{e}", str(i))], spec["shape"][1:])
                         for i in range(e)])
    return one(file[name], spec["shape"])


def to_file(name: str, value: np.ndarray, transpose: bool) -> dict[str, np.ndarray]:
    """The inverse of expand: file tensors of a compiler-layout tensor (to be
    reshaped to the file's shape where experts are fused)."""
    def one(t: np.ndarray) -> np.ndarray:
        return np.swapaxes(t, -1, -2) if transpose else t
    if "{e}" in name:
        return {name.replace("{e}", str(i)): one(value[i]) for i in range(value.shape[0])}
    return {name: one(value)}


def rel_err(a: np.ndarray, ref: np.ndarray, atol: float | None = None) -> float:
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if a.shape != ref.shape:
        raise CheckError(f"shape {a.shape} vs reference {ref.shape}")
    if atol is None:
        atol = ATOL_REL * float(np.max(np.abs(ref))) if ref.size else 0.0
    return float(np.max(np.abs(a - ref) / (np.abs(ref) + atol / RTOL + 1e-300)))


# ---------------------------------------------------------------- the check


def say(line: str) -> None:
    """One line in one write, so that the lines of ranks sharing mpiexec's
    stdout do not interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def check_exchange(args: argparse.Namespace, m: Module, where: str) -> None:
    """The backward's token all-to-alls send what the forward's send: the
    uneven ones (dropless) byte for byte; the even ones too in the capacity
    layout, where they carry the tokens (in the dropless one they only carry
    the counts, which the backward takes from forward_train)."""
    fwd, bwd = m.a2a_bytes("forward_train"), m.a2a_bytes("backward")
    dropless = fwd["all_to_all_v"] > 0
    tokens = "all_to_all_v" if dropless else "all_to_all"
    say(f"A2A{where}{args.family} {args.mesh} {tokens} forward={fwd[tokens]} "
        f"backward={bwd[tokens]}")
    # The hierarchical uneven exchange sends counts over ep_local in the
    # backward too (what each local peer forwards).
    hier = "+hier=" in (args.mesh or "")
    if bwd[tokens] != fwd[tokens] or (dropless and not hier and bwd["all_to_all"] != 0):
        raise CheckError(f"the backward's all-to-all bytes {bwd} differ from the "
                         f"forward's {fwd}")
    # +overlap=N: the backward is pipelined too, a data gradient per chunk and
    # one weight gradient per exchange (no fused expert_ffn_grad left).
    degree = overlap_degree(args.mesh)
    if degree and degree > 1:
        calls = {p["name"]: p["calls"] for p in m.stats["backward"]["phases"]}
        data, weight = calls.get("expert_ffn_grad_data", 0), calls.get("expert_ffn_grad_weight", 0)
        fused = calls.get("expert_ffn_grad", 0)
        say(f"BWD{where}{args.family} {args.mesh} expert_ffn_grad_data={data} "
            f"expert_ffn_grad_weight={weight} expert_ffn_grad={fused}")
        if weight == 0 or data != degree * weight or fused != 0:
            raise CheckError(f"the backward of {args.mesh} is not pipelined in {degree} "
                             f"chunks: {calls}")


def moddir_of(work: str, policy: str, args: argparse.Namespace) -> str:
    return os.path.join(work, "mod" if len(args.policies) == 1 else f"mod-{policy}")


def compile_policies(args: argparse.Namespace, work: str, mlir: str,
                     mesh_flags: list[str]) -> None:
    """moe-compile --train once per checkpoint policy. ``auto`` gets the budget
    halfway between the saved bytes of ``cac`` and ``none`` (compiled before
    it). Prints each plan (CKPT) and checks full < cac < none (full <= cac
    without a mesh), auto within its budget and recomputing no collective
    (cac's plan fits)."""
    plans = {}
    for policy in args.policies:
        flags = ["--checkpoint", policy]
        budget = None
        if policy == "auto":
            if "none" not in plans or "cac" not in plans:
                raise CheckError("--checkpoints: auto needs none and cac before it")
            budget = (plans["none"]["saved_bytes"] + plans["cac"]["saved_bytes"]) // 2
            flags += ["--checkpoint-budget", str(budget)]
        moddir = moddir_of(work, policy, args)
        out = run([tool("moe-compile"), mlir, "-o", moddir, "--train", *mesh_flags, *flags])
        with open(os.path.join(moddir, "manifest.json")) as f:
            plan = json.load(f)["checkpoint"]
        plans[policy] = plan
        printed = [ln for ln in out.splitlines() if ln.startswith("moe-compile: checkpoint")]
        if len(printed) != 1 or f" saved {plan['saved_bytes']} bytes" not in printed[0]:
            raise CheckError(f"moe-compile printed {printed}, the manifest says {plan}")
        say(f"CKPT {args.family} {policy} saved_bytes={plan['saved_bytes']} "
            f"peak_bytes={plan['peak_bytes']} recompute_ops={plan['recompute_ops']} "
            f"recompute_collectives={plan['recompute_collectives']}"
            + (f" budget={budget}" if budget is not None else ""))
        if budget is not None and (plan["saved_bytes"] > budget
                                   or plan["recompute_collectives"] != 0):
            raise CheckError(f"auto with budget {budget} (>= cac's bytes) chose {plan}")
    # Without a mesh there is no collective: cac keeps what full keeps.
    order = [p for p in ("full", "cac", "none") if p in plans]
    for a, b in zip(order, order[1:]):
        equal_ok = (a, b) == ("full", "cac") and not args.mesh
        if not (plans[a]["saved_bytes"] < plans[b]["saved_bytes"]
                or (equal_ok and plans[a]["saved_bytes"] == plans[b]["saved_bytes"])):
            raise CheckError(f"saved bytes of {a} ({plans[a]['saved_bytes']}) are not "
                             f"below {b}'s ({plans[b]['saved_bytes']})")


# All-to-all calls per MoE layer per training step (forward_train + backward,
# its recomputation included) by policy: the token exchanges, and for dropless
# layers the exchange of the expert counts (a moe.all_to_all of [1, E] counts;
# capacity layers have none: their tokens go by all_to_all).
TOKEN_CALLS = {"none": 4, "full": 6, "cac": 4, "auto": 4}
COUNT_CALLS = {"none": 1, "full": 2, "cac": 1, "auto": 1}


def overlap_degree(mesh: str | None) -> int | None:
    """The +overlap=N of a mesh (1 without; None for auto)."""
    for f in (mesh or "").split("+")[1:]:
        if f.startswith("overlap="):
            n = f.partition("=")[2]
            return int(n) if n.isdigit() else None
    return 1


def check_calls(args: argparse.Namespace, m: Module, where: str, policy: str) -> None:
    """Counts the all-to-all calls of one step from the runtime statistics of
    forward_train and backward (recompute phase apart) per MoE layer (the
    expert FFN calls of forward_train, one per chunk with +overlap=N). With
    moe-overlap, forward_train's and the backward's token exchanges go in N
    chunks each (4 (N - 1) more calls per layer); the backward's replay of
    the forward (full) is not pipelined, and the counts go once."""
    degree = overlap_degree(args.mesh)
    layers = sum(p["calls"] for p in m.stats["forward_train"]["phases"]
                 if p["name"] in ("expert_ffn", "expert_ffn_train")) / (degree or 1)
    fwd, bwd = m.a2a("forward_train"), m.a2a("backward")
    rec = m.a2a("backward", "recompute")
    dropless = fwd["all_to_all_v"][0] > 0
    tokens = "all_to_all_v" if dropless else "all_to_all"
    calls = [fwd[tokens][0], rec[tokens][0], bwd[tokens][0]]
    line = (f"CALLS{where}{args.family} {policy} {args.mesh} layers={layers:g} {tokens} "
            f"forward={calls[0]} recompute={calls[1]} backward={calls[2]} "
            f"per_layer_step={sum(calls) / max(layers, 1):g}")
    want = [TOKEN_CALLS.get(policy)]
    if degree is None:  # auto: the degree per exchange is the compiler's
        want = [None]
    elif want[0] is not None:
        want[0] += 4 * (degree - 1)
    if dropless:
        counts = [fwd["all_to_all"][0], rec["all_to_all"][0], bwd["all_to_all"][0]]
        line += (f" counts forward={counts[0]} recompute={counts[1]} backward={counts[2]} "
                 f"per_layer_step={sum(counts) / max(layers, 1):g}")
        want.append(COUNT_CALLS.get(policy))
    say(line)
    got = [sum(calls) / max(layers, 1)] + ([sum(counts) / max(layers, 1)] if dropless else [])
    # A mesh without ep (tp only) exchanges no tokens.
    if None not in want and calls[0] > 0 and got != want:
        raise CheckError(f"{policy}: all-to-alls per layer per step {got}, expected {want}")


def check(args: argparse.Namespace, work: str) -> None:
    routing = args.routing
    model = ["--hf-config", args.config]
    paths = {k: os.path.join(work, k + ".safetensors")
             for k in ("w", "x", "t", "grads", "w2")}
    mlir = os.path.join(work, "model.mlir")
    if not args.worker:
        cli("emit", *model, "--tokens", str(args.tokens), "-o", mlir, *routing)
        cli("init-weights", *model, "--seed", "1", "-o", paths["w"])
        cli("init-inputs", *model, "--tokens", str(args.tokens), "--seed", "2", "-o",
            paths["x"])
        cli("init-targets", *model, "--tokens", str(args.tokens), "--seed", "3", "-o",
            paths["t"])
    mesh_flags = []
    if args.mesh:
        spec, *flags = args.mesh.split("+")
        mesh_flags = ["--mesh", spec]
        for f in flags:
            if f.startswith("overlap="):
                mesh_flags.append(f"--overlap-degree={f.partition('=')[2]}")
            elif f.startswith("hier="):
                mesh_flags += ["--hierarchical-a2a",
                               f"--ranks-per-node={f.partition('=')[2]}"]
            else:
                mesh_flags.append(f"--{f}")
    if not args.worker:
        compile_policies(args, work, mlir, mesh_flags)

    opt = ["--optimizer", args.optimizer, "--lr", str(LR), "--weight-decay", str(WD)]
    if args.optimizer == "adamw":
        opt += ["--betas", f"{BETAS[0]},{BETAS[1]}", "--eps", str(EPS)]
    else:
        opt += ["--momentum", str(MOMENTUM)]
    ref_json = os.path.join(work, "ref.json")
    if not args.worker:
        with open(ref_json, "w") as f:
            f.write(cli("train-reference", *model, "--weights", paths["w"],
                        "--inputs", paths["x"], "--targets", paths["t"],
                        "--steps", str(args.steps), *opt, *routing, "--json",
                        "--grads", paths["grads"], "--save-weights", paths["w2"]))
    if args.mesh and not args.worker:
        # One process per rank; each checks its slices and prints its lines.
        ranks = 1
        for part in args.mesh.split("+")[0].split(","):
            ranks *= int(part.split("=")[1])
        cmd = [os.environ.get("MPIEXEC", "mpiexec"), "--oversubscribe", "-np", str(ranks),
               sys.executable, os.path.abspath(__file__), "--worker", "--config",
               args.config, "--family", args.family, "--tokens", str(args.tokens),
               "--optimizer", args.optimizer, "--steps", str(args.steps),
               "--mesh", args.mesh, "--workdir", work, "--checkpoints",
               ",".join(args.policies), "--", *routing]
        out = run(cmd)
        for line in out.splitlines():
            if line.startswith(("LOSS", "GRADS", "STEP", "A2A", "CALLS", "BITWISE", "BWD")) \
                    and " rank 0 " in line:
                print(line.replace(" rank 0 ", " "))
        bad = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
        if bad:
            raise CheckError("; ".join(bad))
        return
    with open(ref_json) as f:
        ref = json.load(f)

    base = None
    for policy in args.policies:
        m = Module(moddir_of(work, policy, args))
        tag = args.family if len(args.policies) == 1 else f"{args.family} {policy}"
        grads, weights, loss = run_policy(args, m, ref, paths, tag, policy)
        if base is None:
            base = (policy, grads, weights)
            save_results(args, m, work, grads, weights, loss)
        else:
            bitwise(base, policy, grads, weights, m, args)
        m.close()


def bitwise(base, policy, grads, weights, m, args) -> None:
    """Every gradient and updated weight of ``policy`` equals ``base``'s bit
    for bit (recomputation runs the same kernels on the same operands)."""
    name0, grads0, weights0 = base
    for kind, mine, theirs in (("gradient", grads, grads0), ("weight", weights, weights0)):
        if sorted(mine) != sorted(theirs):
            raise CheckError(f"{policy}: {kind}s {sorted(mine)} differ from {name0}'s")
        for n, v in mine.items():
            if v.dtype != theirs[n].dtype or not np.array_equal(v.view(np.uint8),
                                                                theirs[n].view(np.uint8)):
                diff = float(np.max(np.abs(v.astype(np.float64) - theirs[n])))
                raise CheckError(f"{policy}: {kind} '{n}' is not bitwise {name0}'s "
                                 f"(max |diff| {diff:.3g})")
    where = f" rank {m.rank} " if args.mesh else " "
    say(f"BITWISE{where}{args.family} {policy} == {name0}: {len(grads)} gradients, "
        f"{len(weights)} weights")


def run_policy(args, m, ref, paths, tag, policy):
    """Runs the steps on module ``m``, checks against the reference, returns
    the first step's gradients and the weights after the last step."""
    fwd = m.entries["forward_train"]
    specs = {a["name"]: a for a in fwd["args"] if a["role"] == "weight"}
    wfile = load(paths["w"])
    tensors = {n: m.local(s, expand(n, s, wfile)) for n, s in specs.items()}
    xspec = fwd["args"][0]
    tensors["hidden_states"] = m.local(xspec, load(paths["x"])["hidden_states"])
    tensors["targets"] = m.local(xspec, load(paths["t"])["hidden_states"])
    where = f" rank {m.rank} " if args.mesh else " "
    step = m.entries["step_" + args.optimizer]
    for a in step["args"]:
        if a["role"] == "state":
            tensors[a["name"]] = np.zeros(a["local_shape"], dtype=np.float32)

    first_grads, first_loss = None, None
    for i in range(args.steps):
        out = m.call("forward_train", tensors)
        if i == 0:
            loss, want = float(out["loss"][0]), ref["steps"][0]["loss"]
            say(f"LOSS{where}{tag} compiled={loss:.9e} reference={want:.9e}")
            first_loss = out["loss"]
            if abs(loss - want) > RTOL * abs(want):
                raise CheckError(f"loss {loss} differs from the reference {want}")
        tensors.update(out)
        grads = m.call("backward", tensors)
        if i == 0:
            first_grads = grads
        tensors.update(grads)
        if i == 0 and args.mesh:
            check_exchange(args, m, where)
            if len(args.policies) > 1:
                check_calls(args, m, where, policy)
        hp = np.array([LR, BETAS[0], BETAS[1], EPS, WD, MOMENTUM if args.optimizer == "sgd"
                       else 0.0, i + 1, BIAS_RATE], dtype=np.float32)
        tensors["optimizer.hparams"] = hp
        tensors.update(m.call(step["name"], tensors))

    # Gradients of the first step: this rank's slice of the reference's, in
    # the compiler layout.
    ref_grads = load(paths["grads"])
    # Each gradient's own shard spec (ZeRO-1 splits it over dp too).
    rspecs = {r["name"]: r for r in m.entries["backward"]["results"]}
    worst, count = 0.0, 0
    for name, value in first_grads.items():
        base = name[len("grad."):]
        if base == "hidden_states":
            want = m.local(rspecs[name], ref_grads["hidden_states"])
        else:
            try:
                want = m.local(rspecs[name], expand(base, specs[base], ref_grads))
            except KeyError as e:
                raise CheckError(f"gradient '{name}': {e} is not in the reference") from None
        e = rel_err(value, want)
        if e > RTOL:
            raise CheckError(f"gradient '{name}': max_rel_err {e:.3g} > {RTOL}")
        worst, count = max(worst, e), count + 1
    # Every gradient of the reference has its compiled counterpart.
    patterns = [re.compile(re.escape(n[len("grad."):]).replace(r"\{e\}", r"\d+") + "$")
                for n in first_grads]
    missing = [n for n in ref_grads if not any(p.match(n) for p in patterns)]
    if missing:
        raise CheckError(f"no compiled gradient for {sorted(missing)}")
    say(f"GRADS{where}{tag} {count} tensors max_rel_err={worst:.3e}")

    # Weights after the last step, biases included.
    ref_w = load(paths["w2"])
    step_atol = (RTOL if args.optimizer == "sgd" else ADAMW_ATOL) * LR * args.steps
    worst = 0.0
    for name, spec in specs.items():
        e = rel_err(tensors[name], m.local(spec, expand(name, spec, ref_w)), atol=step_atol)
        if e > RTOL:
            raise CheckError(f"weight '{name}' after {args.steps} steps: "
                             f"max_rel_err {e:.3g} > {RTOL}")
        worst = max(worst, e)
    say(f"STEP{where}{tag} {args.optimizer} steps={args.steps} {len(specs)} tensors "
        f"max_rel_err={worst:.3e}")
    return first_grads, {n: tensors[n] for n in specs}, first_loss


def save_results(args, m, work, first_grads, weights, first_loss) -> None:
    """results.<rank>.npz: what --same-bits-as compares."""
    kept = {"loss": np.asarray(first_loss)} if first_loss is not None else {}
    kept.update({n: np.asarray(v) for n, v in (first_grads or {}).items()})
    kept.update({"weight." + n: np.asarray(v) for n, v in weights.items()})
    np.savez(os.path.join(work, f"results.{m.rank if args.mesh else 0}.npz"), **kept)


def same_bits(args: argparse.Namespace, work: str) -> None:
    """This run's results.<rank>.npz against --same-bits-as's, byte for byte."""
    names = sorted(f for f in os.listdir(work) if re.fullmatch(r"results\.\d+\.npz", f))
    if not names:
        raise CheckError(f"no results.<rank>.npz in {work}")
    count = 0
    for name in names:
        other = os.path.join(args.same_bits_as, name)
        if not os.path.exists(other):
            raise CheckError(f"{other} does not exist")
        with np.load(os.path.join(work, name)) as a, np.load(other) as b:
            if sorted(a.files) != sorted(b.files):
                raise CheckError(f"{name}: tensors {sorted(a.files)} != {sorted(b.files)}")
            for t in a.files:
                x, y = a[t], b[t]
                if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
                    diff = np.max(np.abs(x.astype(np.float64) - y)) if x.shape == y.shape else None
                    raise CheckError(f"{name}: '{t}' differs from {other} (max |diff| {diff})")
                count += 1
    with open(os.path.join(args.same_bits_as, "mesh.txt")) as f:
        base = f.read().strip()
    print(f"BITWISE {args.family} {args.mesh or 'single'} = {base} {count} tensors")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--family", required=True)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--workdir")
    p.add_argument("--mesh", help="dp=..,ep=..,tp=.. with +dtd / +expert-tp / +overlap=N / "
                   "+hier=R: compile for "
                   "that mesh and run one process per rank under $MPIEXEC (mpiexec)")
    p.add_argument("--checkpoints", default="none",
                   help="comma-separated moe-compile --checkpoint policies: each is "
                   "compiled and run, and all give bitwise the first one's gradients "
                   "and weights (auto: budget between cac and none)")
    p.add_argument("--same-bits-as", metavar="DIR", help="compare the loss, gradients and "
                   "weights of every rank byte for byte with the run whose --workdir was DIR")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("routing", nargs=argparse.REMAINDER)
    args = p.parse_args()
    args.policies = args.checkpoints.split(",")
    if args.routing and args.routing[0] == "--":
        args.routing = args.routing[1:]
    work = args.workdir or tempfile.mkdtemp(prefix="train_check.")
    if args.workdir and not args.worker:
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
    try:
        if not args.worker:
            with open(os.path.join(work, "mesh.txt"), "w") as f:
                f.write(args.mesh or "single")
        check(args, work)
        if args.same_bits_as and not args.worker:
            same_bits(args, work)
    except (CheckError, RuntimeError_) as e:
        msg = re.sub(r"\s+", " ", str(e))[:2000]
        say(f"FAIL {args.family} {args.mesh or 'single'} {msg}")
        Module.finalize()
        return 1
    if not args.worker:
        print(f"PASS {args.family} {args.mesh or 'single'}")
    else:
        sys.stdout.flush()
        Module.finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
