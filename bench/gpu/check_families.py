#!/usr/bin/env python3
"""Runs every module of gpu-pack/ (bench/gpu/prepare_families.sh) with moe-run
and checks it against the float64 reference: f32 elementwise at rtol 1e-4
(moe-run --check), bf16 by relative norm error below 1e-2. moe-run poisons the
outputs (NaN) before each run. Prints a table; writes JSON with --json."""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
from moe_compiler import safetensors as st  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pack", default="gpu-pack")
    p.add_argument("--moe-run", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", default="f32,bf16")
    p.add_argument("--json")
    a = p.parse_args()
    results, ok = [], True
    for name in sorted(os.listdir(a.pack)):
        case = os.path.join(a.pack, name)
        for dtype in a.dtypes.split(","):
            mod = os.path.join(case, dtype)
            if not os.path.isdir(mod):
                continue
            out = os.path.join(case, f"out-{dtype}.safetensors")
            cmd = [a.moe_run, mod, "--device", a.device, "--weights",
                   os.path.join(case, "w.safetensors"), "--inputs",
                   os.path.join(case, "x.safetensors"), "--output", out,
                   "--warmup", "1", "--repeat", "5", "--quiet"]
            if dtype == "f32":
                cmd += ["--check", os.path.join(case, "ref.safetensors"),
                        "--rtol", "1e-4", "--atol", "1e-5"]
            t = time.time()
            r = subprocess.run(cmd, capture_output=True, text=True)
            row = {"family": name, "dtype": dtype, "rc": r.returncode,
                   "seconds": round(time.time() - t, 2)}
            if r.returncode == 0:
                y = st.load(out)
                ref = st.load(os.path.join(case, "ref.safetensors"))
                errs = {k: float(np.linalg.norm(y[k].astype(np.float64) - ref[k])
                                 / max(np.linalg.norm(ref[k]), 1e-30)) for k in ref}
                row["rel_norm_err"] = max(errs.values())
                row["pass"] = (dtype == "f32") or row["rel_norm_err"] < 1e-2
            else:
                row["pass"] = False
                row["error"] = (r.stderr or r.stdout).strip().splitlines()[-1:]
            ok &= row["pass"]
            results.append(row)
            print(f"{name:<22} {dtype:<5} {'PASS' if row['pass'] else 'FAIL'} "
                  f"rel-norm-err {row.get('rel_norm_err', float('nan')):.2e} "
                  f"{row.get('error', '')}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
