#!/usr/bin/env python3
"""moe-run on checkpoint folders: equal to the single-file run, bit for bit.

For one model config it emits the graph, draws seeded weights (f32, and bf16) and
inputs, and writes with make_checkpoint.py three folders as Hugging Face publishes a
full model (the module's tensors over several shards, plus attention / embedding
tensors in a shard of their own): f32, bf16 and FP8 (F8_E4M3 with DeepSeek-V3 block
scales). Then, for one rank and every ``--mesh``, it checks that moe-run's outputs are
bitwise those of the run on a single file holding the same values: the f32 file, the
bf16 file, and for FP8 an f32 file of the numpy dequantization
(moe_compiler.checkpoint); and that the FP8 run passes ``--check`` against the float64
reference computed from the folder. On one rank it also checks that deleting the shard
of unused tensors changes nothing (nothing reads it), and that a tensor missing from
the index, a shard missing from the folder, or an index entry that leaves the folder
is an error naming it.

Output (for FileCheck):
  BITWISE <family> <mesh> <f32|bf16|fp8>
  PASS <family> <mesh> fp8 reference
  UNREAD <family> extras shard
  ERROR <family> <case>: <the message's first line>
  FAIL <family> <why>      (exit status 1)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import e2e  # noqa: E402
import make_checkpoint  # noqa: E402
from e2e import Failure, find_tool, frontend, run  # noqa: E402

from moe_compiler.checkpoint import INDEX_NAME, Checkpoint  # noqa: E402
from moe_compiler.configs import load_hf_config  # noqa: E402
from moe_compiler.safetensors import SafetensorsFile, save  # noqa: E402

TOKENS = 24


def outputs(path: str) -> dict[str, np.ndarray]:
    with SafetensorsFile(path) as f:
        return {n: f.get(n, raw=True) for n in f.keys()}


def same_bits(a: str, b: str, what: str) -> None:
    x, y = outputs(a), outputs(b)
    if x.keys() != y.keys():
        raise Failure(f"{what}: outputs {sorted(x)} != {sorted(y)}")
    for n in x:
        if x[n].dtype != y[n].dtype or x[n].shape != y[n].shape or \
                x[n].tobytes() != y[n].tobytes():
            diff = np.abs(x[n].astype(np.float64) - y[n].astype(np.float64)).max()
            raise Failure(f"{what}: output '{n}' differs (max abs {diff:.3e})")


def failing(cmd: list[str], what: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 1:
        raise Failure(f"{what}: expected exit 1, got {p.returncode}: {shlex.join(cmd)}\n"
                      f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
    lines = [ln for ln in p.stderr.splitlines() if "error" in ln]
    return lines[0] if lines else p.stderr.strip()


def variant(folder: str, dest: str, edit) -> str:  # type: ignore[no-untyped-def]
    """A copy of ``folder`` whose shards are links and whose index is ``edit(index)``."""
    os.makedirs(dest)
    for f in os.listdir(folder):
        if f != INDEX_NAME:
            os.symlink(os.path.join(folder, f), os.path.join(dest, f))
    with open(os.path.join(folder, INDEX_NAME), encoding="utf-8") as fh:
        index = json.load(fh)
    edit(index)
    with open(os.path.join(dest, INDEX_NAME), "w", encoding="utf-8") as fh:
        json.dump(index, fh)
    return dest


def config_file(args: argparse.Namespace) -> str:
    """The config, with ``--set key=value`` applied (a copy in the workdir)."""
    if not args.set:
        return args.config
    with open(args.config, encoding="utf-8") as fh:
        d = json.load(fh)
    for kv in args.set:
        k, _, v = kv.partition("=")
        d[k] = json.loads(v)
    path = os.path.join(args.workdir, "config.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(d, fh)
    return path


def check(args: argparse.Namespace) -> None:
    args.config = config_file(args)
    cfg = load_hf_config(args.config)
    fam, w = args.family, args.workdir
    model = ["--hf-config", args.config]
    p = {k: os.path.join(w, v) for k, v in {
        "mlir": "model.mlir", "x": "x.safetensors", "w": "w.safetensors",
        "wb": "wb.safetensors", "d8": "d8.safetensors", "ref8": "ref8.safetensors",
        "f32": "ckpt-f32", "bf16": "ckpt-bf16", "fp8": "ckpt-fp8"}.items()}
    frontend(["emit", *model, "--tokens", str(TOKENS), "-o", p["mlir"]])
    frontend(["init-inputs", *model, "--tokens", str(TOKENS), "--seed", "2", "-o", p["x"]])
    frontend(["init-weights", *model, "--seed", "1", "-o", p["w"]])
    frontend(["init-weights", *model, "--seed", "1", "--dtype", "bf16", "-o", p["wb"]])
    mk = dict(family=fam, layers=cfg.num_layers, hidden=cfg.hidden_size, shards=3)
    shards = make_checkpoint.write(p["w"], out=p["f32"], dtype="f32", **mk)
    make_checkpoint.write(p["wb"], out=p["bf16"], dtype="bf16", **mk)
    make_checkpoint.write(p["w"], out=p["fp8"], dtype="fp8", **mk)
    with SafetensorsFile(p["w"]) as f, Checkpoint(p["fp8"]) as c:
        save(p["d8"], {n: c.get(n) for n in f.keys()})
    frontend(["reference", *model, "--weights", p["fp8"], "--inputs", p["x"],
              "-o", p["ref8"]])

    compile_ = find_tool("moe-compile")
    moe_run = find_tool("moe-run")
    for label in ["single"] + args.mesh:
        m = e2e.MeshRun(label)
        mod = os.path.join(w, f"mod-{label}")
        run([compile_, p["mlir"], "-o", mod, *m.compile_flags()], f"compile {label}")
        launch = shlex.split(args.mpirun) + ["-np", str(m.ranks)] if m.ranks > 1 else []

        def go(weights: str, out: str, *extra: str, mod: str = mod, launch: list[str] = launch,
               label: str = label) -> None:
            run(launch + [moe_run, mod, "--weights", weights, "--inputs", p["x"],
                          "--output", out, *extra], f"moe-run {label} {weights}")

        for kind, single in (("f32", "w"), ("bf16", "wb"), ("fp8", "d8")):
            a = os.path.join(w, f"y-{label}-{kind}-file.safetensors")
            b = os.path.join(w, f"y-{label}-{kind}-folder.safetensors")
            go(p[single], a)
            extra = ["--check", p["ref8"], "--rtol", "1e-4"] if kind == "fp8" else []
            go(p[kind], b, *extra)
            same_bits(a, b, f"{label} {kind}")
            print(f"BITWISE {fam} {label} {kind}")
            if kind == "fp8":
                print(f"PASS {fam} {label} fp8 reference")

    # Only the single-rank module from here on.
    mod = os.path.join(w, "mod-single")
    base = os.path.join(w, "y-single-f32-file.safetensors")
    os.unlink(os.path.join(p["f32"], shards[-1]))  # the shard of unused tensors
    out = os.path.join(w, "y-noextras.safetensors")
    run([moe_run, mod, "--weights", p["f32"], "--inputs", p["x"], "--output", out],
        "moe-run without the extras shard")
    same_bits(base, out, "without the extras shard")
    print(f"UNREAD {fam} extras shard")

    with SafetensorsFile(p["w"]) as f:
        needed = sorted(f.keys())[-1]
    cases = {
        "missing-tensor": lambda ix: ix["weight_map"].pop(needed),
        "missing-shard": lambda ix: ix["weight_map"].__setitem__(
            needed, "model-00009-of-00009.safetensors"),
        "bad-index": lambda ix: ix["weight_map"].__setitem__(needed, "../w.safetensors"),
    }
    for case, edit in cases.items():
        folder = variant(p["f32"], os.path.join(w, f"ckpt-{case}"), edit)
        msg = failing([moe_run, mod, "--weights", folder, "--inputs", p["x"],
                       "--output", os.path.join(w, "never.safetensors")], case)
        want = "model-00009-of-00009" if case == "missing-shard" else needed
        if want not in msg:
            raise Failure(f"{case}: the error does not name {want}: {msg}")
        print(f"ERROR {fam} {case}: {msg.replace(w, '%t')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--family", required=True, choices=make_checkpoint.FAMILIES)
    ap.add_argument("--mesh", action="append", default=[], help="e.g. ep=2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="change a config field (e.g. hidden_size=160: FP8 matrices of "
                    "several 128x128 blocks, partial at the edges)")
    ap.add_argument("--mpirun", default="mpiexec")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    try:
        check(args)
    except Failure as e:
        print(f"FAIL {args.family} {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
