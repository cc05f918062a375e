"""``python3 -m moe_compiler plan``: emit through the front end, then moe-plan."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import EXAMPLES, REPO_ROOT

from moe_compiler.driver import ToolNotFound, find_tool

CLUSTER = REPO_ROOT / "test" / "Tools" / "Inputs" / "plan-slow-ep.json"


def _plan(cli_env, *args):
    try:
        find_tool("moe-plan")
    except ToolNotFound as e:
        pytest.skip(f"moe-plan is not built yet: {e}")
    return subprocess.run([sys.executable, "-m", "moe_compiler", "plan", *map(str, args)],
                          env=cli_env, capture_output=True, text=True)


def test_plan_from_config_ranks_layouts(cli_env, tmp_path):
    model = tmp_path / "m.mlir"
    r = _plan(cli_env, "--hf-config", EXAMPLES / "tiny-mixtral.json", "--tokens", 64,
              "--model-out", model, "--cluster", CLUSTER, "--json", "-")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokens"] == 64 and out["devices"] == 4
    steps = [p["step_s"] for p in out["plans"]]
    assert steps == sorted(steps) and steps[0] > 0
    # The emitted model is kept, and every plan's command names it.
    assert model.is_file()
    assert all(f"moe-compile {model} -o out --mesh " in p["command"] for p in out["plans"])
    # 150000 B per device: layouts that do not split the experts 4 ways are
    # rejected with the memory they need.
    assert out["rejected"] and all("per rank" in r["rejected"]
                                   and "the device has 146.48 KiB" in r["rejected"]
                                   for r in out["rejected"])


def test_plan_from_preset_without_model_out(cli_env):
    r = _plan(cli_env, "--preset", "mixtral-8x7b", "--tokens", 256, "--layers", "0:1",
              "--dtype", "bf16", "--devices", 4, "--top", 1)
    assert r.returncode == 0, r.stderr
    assert "1  dp=" in r.stdout
    assert "temporary file" in r.stderr


def test_plan_errors_name_the_problem(cli_env):
    r = _plan(cli_env, "--hf-config", EXAMPLES / "tiny-mixtral.json")
    assert r.returncode == 1
    assert "tokens: --tokens T is required" in r.stderr
    r = _plan(cli_env, "--hf-config", EXAMPLES / "tiny-mixtral.json", "--tokens", 64,
              "--devices", 64, "--cluster", CLUSTER)
    assert r.returncode == 1
    assert "--devices 64: the cluster file describes only 4 devices" in r.stderr
