#!/usr/bin/env python3
"""Checks for routing dump and replay (moe-run --dump-routing / --replay-routing).

Subcommands (each prints one line FileCheck reads, and exits 1 on a mismatch):

  same-routing A B          two routing files choose the same experts for every
                            token of every layer (bit for bit) and their gate
                            weights agree to --rtol:
                            SAME-ROUTING layers=<keys> tokens=<T> max_weight_err=<e>
  close A B [--bitwise]     every tensor of A equals B's (|a - b| <= atol + rtol |b|,
                            atol = --atol-rel times the largest |b|), or bit for
                            bit: CLOSE <n> tensors max_abs_err=<e> bitwise=<yes|no>
  modify R -o R2 --experts E [--every N] [--invalid]
                            a routing file whose experts differ from R's for every
                            N-th token (each choice moved to the next expert,
                            modulo E, so they stay distinct): MODIFIED <n> tokens;
                            --invalid: token 3's second choice becomes expert E
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


def same_routing(a: str, b: str, rtol: float) -> int:
    ra, rb = load(a), load(b)
    if sorted(ra) != sorted(rb):
        return fail(f"tensors differ: {sorted(ra)} vs {sorted(rb)}")
    layers, err, tokens = [], 0.0, 0
    for name in sorted(ra):
        x, y = ra[name], rb[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            return fail(f"{name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
        if name.endswith(".experts"):
            layers.append(name[len("routing."):-len(".experts")])
            tokens = x.shape[0]
            diff = np.argwhere(x != y)
            if diff.size:
                t, j = diff[0]
                return fail(f"{name}: token {t} choice {j}: expert {x[t, j]} vs {y[t, j]} "
                            f"({len(diff)} choices differ)")
        else:
            e = float(np.max(np.abs(x - y) / (np.abs(y) + 1e-30)))
            if e > rtol:
                return fail(f"{name}: gate weights differ by {e:.3e} (relative)")
            err = max(err, e)
    print(f"SAME-ROUTING layers={','.join(layers)} tokens={tokens} max_weight_err={err:.3e}")
    return 0


def close(a: str, b: str, rtol: float, atol_rel: float, bitwise: bool) -> int:
    ta, tb = load(a), load(b)
    if sorted(ta) != sorted(tb):
        return fail(f"tensors differ: {sorted(ta)} vs {sorted(tb)}")
    worst, same = 0.0, True
    for name in sorted(ta):
        x = ta[name].astype(np.float64)
        y = tb[name].astype(np.float64)
        if x.shape != y.shape:
            return fail(f"{name}: shape {list(x.shape)} vs {list(y.shape)}")
        same = same and ta[name].tobytes() == tb[name].tobytes()
        d = np.abs(x - y)
        worst = max(worst, float(d.max(initial=0)))
        atol = atol_rel * float(np.abs(y).max(initial=0))
        bad = np.argwhere(d > atol + rtol * np.abs(y))
        if bad.size:
            i = tuple(bad[0])
            return fail(f"{name}{list(i)}: {x[i]!r} vs {y[i]!r} ({len(bad)} elements)")
    if bitwise and not same:
        return fail(f"{a} and {b} are close (max abs err {worst:.3e}) but not bit for bit")
    print(f"CLOSE {len(ta)} tensors max_abs_err={worst:.3e} bitwise={'yes' if same else 'no'}")
    return 0


def modify(src: str, out: str, experts: int, every: int, invalid: bool) -> int:
    r = load(src)
    n = 0
    for name in list(r):
        if name.endswith(".experts"):
            idx = r[name].copy()
            idx[::every] = (idx[::every] + 1) % experts
            n = len(idx[::every])
            if invalid:
                idx[3, 1] = experts
            r[name] = idx.astype(np.int32)
    save(out, r)
    print(f"MODIFIED {n} tokens")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("same-routing")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--rtol", type=float, default=1e-5)
    s = sub.add_parser("close")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--rtol", type=float, default=1e-4)
    s.add_argument("--atol-rel", type=float, default=1e-6)
    s.add_argument("--bitwise", action="store_true")
    s = sub.add_parser("modify")
    s.add_argument("src")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--experts", type=int, required=True)
    s.add_argument("--every", type=int, default=3)
    s.add_argument("--invalid", action="store_true")
    a = p.parse_args()
    if a.cmd == "same-routing":
        return same_routing(a.a, a.b, a.rtol)
    if a.cmd == "close":
        return close(a.a, a.b, a.rtol, a.atol_rel, a.bitwise)
    return modify(a.src, a.output, a.experts, a.every, a.invalid)


if __name__ == "__main__":
    sys.exit(main())
