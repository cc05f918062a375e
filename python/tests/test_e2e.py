"""End to end: emit -> moe-compile -> moe-run, checked against the float64 reference.

Skipped (with the reason) until the C++ tools are built; multi-rank cases also need
mpirun.
"""

from __future__ import annotations

import shutil

import pytest
from conftest import EXAMPLES

from moe_compiler.cli import main
from moe_compiler.driver import ToolNotFound, find_tool


def _tools_or_skip(ranks: int) -> None:
    for tool in ("moe-compile", "moe-run"):
        try:
            find_tool(tool)
        except ToolNotFound as e:
            pytest.skip(f"{tool} is not built yet: {e}")
    if ranks > 1 and shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (multi-rank run)")


def _cli(*argv) -> int:
    return main([str(a) for a in argv])


# (example, tokens, mesh, extra routing options for emit and reference); a mesh ending
# in "+dtd" is compiled with duplicate token dropping.
CASES = [
    ("tiny-mixtral", 16, None, []),
    ("tiny-qwen2-moe", 16, None, ["--aux-loss-coeff", "0.01", "--z-loss-coeff", "0.001"]),
    ("tiny-qwen3-moe", 16, None, []),
    ("tiny-deepseek-v2", 16, None, []),
    ("tiny-deepseek-v3", 16, None, []),
    ("tiny-olmoe", 16, None, ["--capacity-factor", "1.0"]),
    ("tiny-switch", 16, None, ["--token-groups", "2"]),
    ("tiny-dbrx", 16, None, []),
    ("tiny-mixtral", 16, "ep=2", []),
    ("tiny-switch", 16, "dp=1,ep=2,tp=1", ["--token-groups", "2"]),
    ("tiny-deepseek-v3", 16, "ep=2,tp=2", []),
    ("tiny-deepseek-v3", 16, "ep=2,tp=2+dtd", []),
    ("tiny-qwen2-moe", 16, "dp=2,ep=2", ["--aux-loss-coeff", "0.01", "--z-loss-coeff", "0.001"]),
    ("tiny-olmoe", 16, "ep=4", ["--capacity-factor", "1.0", "--token-groups", "4"]),
    ("tiny-mixtral", 16, None, ["--capacity-factor", "0.5", "--drop-policy", "passthrough",
                                "--min-capacity", "2"]),
]


@pytest.mark.parametrize("name,tokens,mesh,extra", CASES,
                         ids=[f"{c[0]}-{c[2] or 'single'}" for c in CASES])
def test_compiled_module_matches_reference(tmp_path, name, tokens, mesh, extra):
    ranks = 1
    dtd = bool(mesh) and mesh.endswith("+dtd")
    if dtd:
        mesh = mesh[:-len("+dtd")]
    if mesh:
        for part in mesh.split(","):
            ranks *= int(part.split("=")[1])
    _tools_or_skip(ranks)
    cfg = EXAMPLES / f"{name}.json"
    model, out = tmp_path / "model.mlir", tmp_path / "module"
    w, x = tmp_path / "w.safetensors", tmp_path / "x.safetensors"
    ref, y = tmp_path / "ref.safetensors", tmp_path / "y.safetensors"
    assert _cli("emit", "--hf-config", cfg, "--tokens", tokens, *extra, "-o", model) == 0
    assert _cli("init-weights", "--hf-config", cfg, "--seed", 11, "-o", w) == 0
    assert _cli("init-inputs", "--hf-config", cfg, "--tokens", tokens, "--seed", 12,
                "-o", x) == 0
    assert _cli("reference", "--hf-config", cfg, "--weights", w, "--inputs", x, *extra,
                "-o", ref) == 0
    compile_args = ["compile", model, "-o", out] + (["--mesh", mesh] if mesh else [])
    compile_args += ["--dtd"] if dtd else []
    assert _cli(*compile_args) == 0
    assert _cli("run", out, "--weights", w, "--inputs", x, "--output", y, "--check", ref,
                "--atol", "1e-4") == 0
