"""Drive the C++ tools ``moe-compile`` and ``moe-run`` and check results.

Tools are found in ``$MOE_BUILD_DIR/bin``, then the repository's ``build/bin``, then
on ``PATH``. A compiled module whose manifest mesh has N > 1 ranks is run under
``mpirun --allow-run-as-root --oversubscribe -np N``. Exit codes of the tools are
passed through unchanged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .configs import ConfigError
from .safetensors import SafetensorsFile

__all__ = ["ToolNotFound", "check_outputs", "compile_module", "find_tool", "manifest_ranks",
           "run_module"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class ToolNotFound(ConfigError):
    """A C++ tool is not built or not on PATH."""


def find_tool(name: str) -> str:
    """The path of ``name`` (see the module docstring for the search order)."""
    dirs = []
    if os.environ.get("MOE_BUILD_DIR"):
        dirs.append(Path(os.environ["MOE_BUILD_DIR"]) / "bin")
    dirs.append(REPO_ROOT / "build" / "bin")
    for d in dirs:
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    found = shutil.which(name)
    if found:
        return found
    raise ToolNotFound(f"{name}: not found in $MOE_BUILD_DIR/bin, {REPO_ROOT}/build/bin "
                       "or PATH (build the C++ tools first)")


def _call(cmd: Sequence[str]) -> int:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(list(cmd))


def compile_module(model: str, out_dir: str, mesh: str | None = None, dtd: bool = False,
                   extra: Sequence[str] = ()) -> int:
    """``moe-compile MODEL -o OUT_DIR [--mesh M] [--dtd] EXTRA...``; returns its exit code."""
    cmd = [find_tool("moe-compile"), model, "-o", out_dir]
    if mesh:
        cmd += [f"--mesh={mesh}"]
    if dtd:
        cmd += ["--dtd"]
    return _call(cmd + list(extra))


def manifest_ranks(out_dir: str) -> int:
    """World size of a compiled module: the product of its manifest's mesh shape."""
    path = os.path.join(out_dir, "manifest.json")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg})") from None
    shape = (manifest.get("mesh") or {}).get("shape") or []
    if not all(isinstance(s, int) and s > 0 for s in shape):
        raise ConfigError(f"{path}: field 'mesh.shape' must list positive integers")
    return math.prod(shape) if shape else 1


def run_module(out_dir: str, weights: str, inputs: str, output: str,
               ranks: int | None = None, extra: Sequence[str] = ()) -> int:
    """Run a compiled module (under mpirun when it has several ranks)."""
    n = ranks if ranks is not None else manifest_ranks(out_dir)
    cmd = [find_tool("moe-run"), out_dir, "--weights", weights, "--inputs", inputs,
           "--output", output, *extra]
    if n > 1:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise ToolNotFound(f"mpirun: not found on PATH (needed for {n} ranks)")
        cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(n), *cmd]
    return _call(cmd)


def check_outputs(output: str, reference: str, rtol: float = 1e-4,
                  atol: float = 1e-4) -> tuple[bool, list[str]]:
    """Compare every tensor of ``reference`` with ``output``: (all close, report lines).

    The criterion is numpy's ``|out - ref| <= atol + rtol * |ref|`` elementwise.
    """
    ok, lines = True, []
    with SafetensorsFile(reference) as ref, SafetensorsFile(output) as out:
        for name in ref.keys():
            if name not in out:
                ok = False
                lines.append(f"{name}: missing from {output}")
                continue
            r = ref.get(name).astype(np.float64)
            o = out.get(name).astype(np.float64)
            if r.shape != o.shape:
                ok = False
                lines.append(f"{name}: shape {list(o.shape)} != reference {list(r.shape)}")
                continue
            err = np.abs(o - r)
            bad = int(np.count_nonzero(err > atol + rtol * np.abs(r)))
            worst = float(err.max()) if err.size else 0.0
            ok &= bad == 0
            lines.append(f"{name}: max_abs_err={worst:.3e} "
                         f"{'OK' if bad == 0 else f'MISMATCH ({bad} elements)'}")
    return ok, lines
