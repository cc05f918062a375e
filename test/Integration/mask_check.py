#!/usr/bin/env python3
"""Checks for the token mask (emit --token-mask): a padded batch against its real tokens.

Subcommands (each prints one line FileCheck reads, and exits 1 on a mismatch):

  make X --padding I,J,.. -o P [--targets T] [--bad-token N]
        P.masked.safetensors: X's hidden_states and token_mask (I32, 0 at the
        given tokens); P.real.safetensors: the real tokens' hidden_states only;
        with --targets also P.treal.safetensors (the real tokens' targets);
        --bad-token: token N's mask is 2 (an invalid mask):
        MASK tokens=<T> real=<R>
  real-rows A B --mask M [--padding-rows input|zero] [--rtol] [--bitwise]
        A (a run of the masked batch M) against B (a run of its real tokens):
        every tensor of B equals A's, A's token tensors ([T, ...]) compared on
        their real rows; A's padding rows of hidden_states are M's hidden_states
        bit for bit (input: an output, the residual alone) or 0 (zero: a
        gradient): REAL-ROWS <n> tensors max_abs_err=<e> bitwise=<yes|no>
  routing A B --mask M
        A routing dump of the masked batch against one of its real tokens: the
        padding rows are expert -1 and weight 0 in every layer, the real rows
        choose B's experts: ROUTING-MASKED layers=<n> padding=<P>
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
if os.path.join(SRC, "python") not in sys.path:
    sys.path.insert(0, os.path.join(SRC, "python"))

from moe_compiler.safetensors import load, save  # noqa: E402


def fail(msg: str) -> int:
    print(f"FAIL {msg}")
    return 1


def make(x_path: str, padding: str, prefix: str, targets: str | None,
         bad_token: int | None) -> int:
    x = load(x_path)["hidden_states"]
    mask = np.ones(x.shape[0], dtype=np.int32)
    mask[[int(i) for i in padding.split(",")]] = 0
    real = mask.astype(bool)
    if bad_token is not None:
        mask[bad_token] = 2
    save(f"{prefix}.masked.safetensors", {"hidden_states": x, "token_mask": mask})
    save(f"{prefix}.real.safetensors", {"hidden_states": np.ascontiguousarray(x[real])})
    if targets:
        t = load(targets)["hidden_states"]
        save(f"{prefix}.treal.safetensors", {"hidden_states": np.ascontiguousarray(t[real])})
    print(f"MASK tokens={x.shape[0]} real={int(real.sum())}")
    return 0


def real_rows(a: str, b: str, mask_path: str, padding_rows: str, rtol: float,
              atol_rel: float, bitwise: bool) -> int:
    m = load(mask_path)
    real = m["token_mask"].astype(bool)
    ta, tb = load(a), load(b)
    missing = sorted(set(tb) - set(ta))
    if missing:
        return fail(f"{a} lacks {missing}")
    worst, same = 0.0, True
    for name in sorted(tb):
        x, y = ta[name], tb[name]
        if x.shape != y.shape:
            if x.shape[:1] != real.shape or x.shape[1:] != y.shape[1:] \
                    or y.shape[0] != real.sum():
                return fail(f"{name}: shape {list(x.shape)} vs {list(y.shape)}")
            pad = x[~real]
            if name == "hidden_states" and padding_rows == "input":
                if pad.tobytes() != m["hidden_states"][~real].tobytes():
                    return fail(f"{name}: a padding row is not its input (the residual)")
            elif np.any(pad != 0):
                return fail(f"{name}: a padding row is not 0")
            x = x[real]
        same = same and np.ascontiguousarray(x).tobytes() == y.tobytes()
        x, y = x.astype(np.float64), y.astype(np.float64)
        d = np.abs(x - y)
        worst = max(worst, float(d.max(initial=0)))
        atol = atol_rel * float(np.abs(y).max(initial=0))
        bad = np.argwhere(d > atol + rtol * np.abs(y))
        if bad.size:
            i = tuple(bad[0])
            return fail(f"{name}{list(i)}: {x[i]!r} vs {y[i]!r} ({len(bad)} elements)")
    if bitwise and not same:
        return fail(f"{a} and {b} are close (max abs err {worst:.3e}) but not bit for bit")
    print(f"REAL-ROWS {len(tb)} tensors max_abs_err={worst:.3e} "
          f"bitwise={'yes' if same else 'no'}")
    return 0


def routing(a: str, b: str, mask_path: str) -> int:
    real = load(mask_path)["token_mask"].astype(bool)
    ra, rb = load(a), load(b)
    if sorted(ra) != sorted(rb):
        return fail(f"tensors differ: {sorted(ra)} vs {sorted(rb)}")
    layers = 0
    for name in sorted(ra):
        x, y = ra[name], rb[name]
        pad = x[~real]
        if name.endswith(".experts"):
            layers += 1
            if np.any(pad != -1):
                return fail(f"{name}: a padding token has an expert")
            if not np.array_equal(x[real], y):
                return fail(f"{name}: the real tokens choose other experts")
        else:
            if np.any(pad != 0):
                return fail(f"{name}: a padding token has a gate weight")
            if not np.allclose(x[real], y, rtol=1e-5, atol=0):
                return fail(f"{name}: the real tokens' gate weights differ")
    print(f"ROUTING-MASKED layers={layers} padding={int((~real).sum())}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("make")
    s.add_argument("x")
    s.add_argument("--padding", required=True)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--targets")
    s.add_argument("--bad-token", type=int)
    s = sub.add_parser("real-rows")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--mask", required=True)
    s.add_argument("--padding-rows", choices=("input", "zero"), default="input")
    s.add_argument("--rtol", type=float, default=1e-5)
    s.add_argument("--atol-rel", type=float, default=1e-6)
    s.add_argument("--bitwise", action="store_true")
    s = sub.add_parser("routing")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--mask", required=True)
    a = p.parse_args()
    if a.cmd == "make":
        return make(a.x, a.padding, a.output, a.targets, a.bad_token)
    if a.cmd == "real-rows":
        return real_rows(a.a, a.b, a.mask, a.padding_rows, a.rtol, a.atol_rel, a.bitwise)
    return routing(a.a, a.b, a.mask)


if __name__ == "__main__":
    sys.exit(main())
