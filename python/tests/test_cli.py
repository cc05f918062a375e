"""The command line: every subcommand's --help, the init/reference flow, bad inputs,
and the compile/run wrappers against stand-in tools."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, FIXTURES

from moe_compiler.cli import main
from moe_compiler.driver import check_outputs
from moe_compiler.safetensors import SafetensorsFile, load, save

SUBCOMMANDS = ["info", "config", "presets", "emit", "init-weights", "init-inputs",
               "reference", "compile", "run"]


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("sub", [None] + SUBCOMMANDS)
def test_help_everywhere(capsys, sub):
    with pytest.raises(SystemExit) as e:
        main(([sub] if sub else []) + ["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_module_entry_point(cli_env):
    r = subprocess.run([sys.executable, "-m", "moe_compiler", "info", "mixtral-8x7b", "--json"],
                       capture_output=True, text=True, env=cli_env, timeout=60)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("params_total", "params_active", "flops_per_token",
                "a2a_bytes_per_token_per_layer", "memory_per_rank_bytes"):
        assert key in d
    r = subprocess.run([sys.executable, "-m", "moe_compiler", "info", "no-such-model"],
                       capture_output=True, text=True, env=cli_env, timeout=60)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no-such-model" in r.stderr


def test_info_text_and_json(capsys):
    rc, out, _ = run_cli(capsys, "info", FIXTURES / "mixtral-8x7b-v0.1.json", "--mesh",
                         "ep=8", "--tokens", "1024")
    assert rc == 0 and "46,702,792,704" in out and "12,879,925,248" in out
    rc, out, _ = run_cli(capsys, "info", "dbrx", "--json", "--mesh", "dp=2,ep=4,tp=2")
    d = json.loads(out)
    assert rc == 0 and d["params_total"] == 131_596_523_520 and d["mesh"] == "dp=2,ep=4,tp=2"


def test_presets_and_config(capsys):
    rc, out, _ = run_cli(capsys, "presets", "--json")
    assert rc == 0 and {r["name"] for r in json.loads(out)} >= {"mixtral-8x7b", "gshard-600b"}
    rc, out, _ = run_cli(capsys, "config", FIXTURES / "deepseek-v3.json")
    d = json.loads(out)
    assert rc == 0 and d["num_experts"] == 256 and d["group_score"] == "top2_sum"


def test_init_reference_flow(tmp_path, capsys):
    cfg = EXAMPLES / "tiny-deepseek-v3.json"
    w, x, ref = tmp_path / "w.safetensors", tmp_path / "x.safetensors", tmp_path / "r.st"
    assert run_cli(capsys, "init-weights", "--hf-config", cfg, "--layers", "0:3", "--seed", 7,
                   "-o", w)[0] == 0
    assert run_cli(capsys, "init-inputs", "--hf-config", cfg, "--tokens", 16, "--seed", 8,
                   "-o", x)[0] == 0
    rc, _, err = run_cli(capsys, "reference", "--hf-config", cfg, "--weights", w, "--inputs",
                         x, "-o", ref, "--aux-loss-coeff", "0.01", "--capacity-factor", "1.0")
    assert rc == 0, err
    out = load(ref)
    assert out["hidden_states"].shape == (16, 32) and out["hidden_states"].dtype == np.float32
    assert out["aux_loss"].shape == () and "z_loss" not in out
    with SafetensorsFile(w) as f:
        assert f.dtype("model.layers.1.mlp.gate.e_score_correction_bias") == "F32"
        assert f.shape("model.layers.1.mlp.experts.15.down_proj.weight") == (32, 16)
    rc, _, _ = run_cli(capsys, "emit", "--hf-config", cfg, "--tokens", 16, "--layers", "1:3",
                       "--capacity-factor", "1.0", "--aux-loss-coeff", "0.01", "-o",
                       tmp_path / "m.mlir")
    text = (tmp_path / "m.mlir").read_text()
    assert rc == 0 and "capacity_factor = 1.000000000e+00 : f32" in text
    assert not list(tmp_path.glob("*.tmp*"))


def test_emit_takes_a_preset_as_hf_config(tmp_path, capsys, monkeypatch):
    # The README's `emit --hf-config $M` with M a preset name, as `info` accepts it.
    rc, out, err = run_cli(capsys, "emit", "--hf-config", "mixtral-8x7b", "--tokens", 4,
                           "--layers", "0:1", "-o", "-")
    assert rc == 0, err
    assert "// Source: preset mixtral-8x7b" in out
    assert "moe.layer" in out and "tensor<4x4096xf32>" in out
    assert "{num_experts = 8 : i64, top_k = 2 : i64, renormalize, " in out
    assert "model.layers.0.block_sparse_moe.experts.{e}.w1.weight" in out
    rc, same, _ = run_cli(capsys, "emit", "--preset", "mixtral-8x7b", "--tokens", 4,
                          "--layers", "0:1", "-o", "-")
    assert rc == 0 and same == out
    # init-inputs (like every --hf-config subcommand) accepts it too.
    x = tmp_path / "x.safetensors"
    assert run_cli(capsys, "init-inputs", "--hf-config", "qwen1.5-moe-a2.7b", "--tokens", 2,
                   "--seed", 1, "-o", x)[0] == 0
    assert load(x)["hidden_states"].shape == (2, 2048)
    # An existing path wins over a preset of the same name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mixtral-8x7b").mkdir()
    (tmp_path / "mixtral-8x7b" / "config.json").write_text(
        (EXAMPLES / "tiny-mixtral.json").read_text())
    rc, out, err = run_cli(capsys, "emit", "--hf-config", "mixtral-8x7b", "--tokens", 4,
                           "-o", "-")
    assert rc == 0, err
    assert "// Source: mixtral-8x7b" in out and "tensor<4x32xf32>" in out
    # Neither a path nor a preset: one line naming both possibilities.
    rc, _, err = run_cli(capsys, "emit", "--hf-config", "no-such-model", "--tokens", 4,
                         "-o", "-")
    assert rc == 1 and err.count("\n") == 1
    assert "no-such-model: neither a config.json path nor a preset" in err


def test_bf16_weights_feed_the_reference(tmp_path, capsys):
    cfg = EXAMPLES / "tiny-olmoe.json"
    w, x = tmp_path / "w.safetensors", tmp_path / "x.safetensors"
    run_cli(capsys, "init-weights", "--hf-config", cfg, "--seed", 1, "--dtype", "bf16",
            "-o", w)
    run_cli(capsys, "init-inputs", "--hf-config", cfg, "--tokens", 4, "--seed", 1, "-o", x)
    rc, _, err = run_cli(capsys, "reference", "--hf-config", cfg, "--weights", w,
                         "--inputs", x, "-o", tmp_path / "r.safetensors")
    assert rc == 0, err
    with SafetensorsFile(w) as f:
        assert f.dtype("model.layers.0.mlp.gate.weight") == "BF16"


@pytest.fixture
def tiny_files(tmp_path, capsys):
    cfg = EXAMPLES / "tiny-mixtral.json"
    w, x = tmp_path / "w.safetensors", tmp_path / "x.safetensors"
    run_cli(capsys, "init-weights", "--hf-config", cfg, "--seed", 1, "-o", w)
    run_cli(capsys, "init-inputs", "--hf-config", cfg, "--tokens", 8, "--seed", 2, "-o", x)
    return cfg, w, x


def _bad_config(tmp_path, **changes):
    d = json.loads((EXAMPLES / "tiny-mixtral.json").read_text())
    for k, v in changes.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize("make_args,needle", [
    (lambda t, f: ["info", _bad_config(t, model_type="llama")], "unknown model_type 'llama'"),
    (lambda t, f: ["info", _bad_config(t, num_local_experts=None)],
     "field 'num_local_experts' is missing"),
    (lambda t, f: ["info", _bad_config(t, num_experts_per_tok="two")],
     "'num_experts_per_tok' must be an integer"),
    (lambda t, f: ["info", "mixtral-8x7b", "--mesh", "ep=3"], "ep=3 does not divide"),
    (lambda t, f: ["info", "mixtral-8x7b", "--mesh", "tp=5"], "tp=5 does not divide"),
    (lambda t, f: ["info", "mixtral-8x7b", "--mesh", "ep=2", "--tokens", "3"],
     "does not divide tokens=3"),
    (lambda t, f: ["info", "mixtral-8x7b", "--mesh", "zz=2"],
     "mesh: unknown axis 'zz' (axes are dp, ep, tp)"),
    (lambda t, f: ["emit", "--preset", "nope", "--tokens", "4", "-o", t / "m.mlir"],
     "preset: unknown name 'nope'"),
    (lambda t, f: ["emit", "--hf-config", f[0], "--tokens", "4", "--layers", "5:9", "-o",
                   t / "m.mlir"], "layers: '5:9'"),
    (lambda t, f: ["emit", "--hf-config", f[0], "--tokens", "6", "--capacity-factor", "1",
                   "--token-groups", "4", "-o", t / "m.mlir"], "token_groups"),
    (lambda t, f: ["emit", "--hf-config", f[0], "--tokens", "16", "--token-groups", "3",
                   "-o", t / "m.mlir"], "token_groups (3) needs a capacity"),
    (lambda t, f: ["emit", "--hf-config", f[0], "--tokens", "0", "-o", t / "m.mlir"],
     "tokens"),
    (lambda t, f: ["emit", "--hf-config", EXAMPLES / "tiny-dbrx.json", "--tokens", "4",
                   "-o", t / "m.mlir"], "norm is layernorm"),
    (lambda t, f: ["reference", "--hf-config", f[0], "--weights", t / "none.safetensors",
                   "--inputs", f[2], "-o", t / "r.st"], "none.safetensors: cannot open"),
    (lambda t, f: ["reference", "--hf-config", EXAMPLES / "tiny-olmoe.json", "--weights", f[1],
                   "--inputs", f[2], "-o", t / "r.st"], "no tensor named 'model.layers.0.mlp"),
    (lambda t, f: ["reference", "--hf-config", f[0], "--weights", _truncated(f[1]),
                   "--inputs", f[2], "-o", t / "r.st"], "truncated: tensor"),
    (lambda t, f: ["reference", "--hf-config", f[0], "--weights", f[1], "--inputs",
                   _wrong_width(t), "-o", t / "r.st"], "hidden_states has shape [4, 5]"),
    (lambda t, f: ["run", t, "--weights", f[1], "--inputs", f[2], "--output", t / "y"],
     "manifest.json: cannot read"),
])
def test_bad_inputs_fail_with_one_line(tmp_path, capsys, tiny_files, make_args, needle,
                                       monkeypatch):
    monkeypatch.setenv("MOE_BUILD_DIR", str(_fake_tools(tmp_path, 0)))
    args = make_args(tmp_path, tiny_files)
    rc, out, err = run_cli(capsys, *args)
    assert rc == 1, (out, err)
    assert needle in err
    assert err.count("\n") == 1 and err.startswith("python3 -m moe_compiler")


def _truncated(path):
    p = path.with_name("trunc.safetensors")
    data = path.read_bytes()
    p.write_bytes(data[: len(data) - 7])
    return p


def _wrong_width(tmp):
    p = tmp / "x5.safetensors"
    save(p, {"hidden_states": np.zeros((4, 5), np.float32)})
    return p


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["emit", "--tokens", "4", "-o", "x"])  # neither --hf-config nor --preset
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["info", "mixtral-8x7b", "--bogus"])
    assert e.value.code == 2


# -- compile / run wrappers against stand-in tools --------------------------------------

def _fake_tools(tmp_path, rc: int):
    """moe-compile / moe-run / mpirun stand-ins that log their argv and exit with rc."""
    bin_dir = tmp_path / "fakebuild" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "calls.log"
    for tool in ("moe-compile", "moe-run", "mpirun"):
        p = bin_dir / tool
        p.write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {log}\nexit {rc}\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return bin_dir.parent


def _calls(tmp_path):
    return (tmp_path / "calls.log").read_text().splitlines()


def test_compile_wrapper_passes_args_and_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOE_BUILD_DIR", str(_fake_tools(tmp_path, 3)))
    rc, _, _ = run_cli(capsys, "compile", "m.mlir", "-o", "out", "--mesh", "ep=2", "--dtd",
                       "--target", "cpu")
    assert rc == 3
    assert _calls(tmp_path) == ["moe-compile m.mlir -o out --mesh=ep=2 --dtd --target cpu"]


def test_run_wrapper_uses_mpirun_for_several_ranks(tmp_path, capsys, monkeypatch):
    build = _fake_tools(tmp_path, 0)
    monkeypatch.setenv("MOE_BUILD_DIR", str(build))
    monkeypatch.setenv("PATH", str(build / "bin") + os.pathsep + os.environ["PATH"])
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "manifest.json").write_text(json.dumps({"mesh": {"axes": ["dp", "ep", "tp"],
                                                            "shape": [1, 2, 2]}}))
    rc, _, _ = run_cli(capsys, "run", mod, "--weights", "w", "--inputs", "x", "--output", "y",
                       "--trace", "t.json")
    assert rc == 0
    call = _calls(tmp_path)[-1]
    assert call.startswith("mpirun --allow-run-as-root --oversubscribe -np 4 ")
    assert call.endswith(f"moe-run {mod} --weights w --inputs x --output y --trace t.json")
    (mod / "manifest.json").write_text(json.dumps({"mesh": {"axes": [], "shape": []}}))
    run_cli(capsys, "run", mod, "--weights", "w", "--inputs", "x", "--output", "y")
    assert _calls(tmp_path)[-1].startswith("moe-run ")


def test_run_forwards_check_to_moe_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOE_BUILD_DIR", str(_fake_tools(tmp_path, 1)))
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "manifest.json").write_text(json.dumps({"mesh": {"axes": [], "shape": []}}))
    rc, _, _ = run_cli(capsys, "run", mod, "--weights", "w", "--inputs", "x", "--output", "y",
                       "--check", "ref", "--atol", "1e-3")
    assert rc == 1  # moe-run's exit code (a mismatch) comes back
    assert _calls(tmp_path)[-1] == (f"moe-run {mod} --weights w --inputs x --output y "
                                    "--check ref --atol 0.001")


def test_check_outputs_compares_every_reference_tensor(tmp_path):
    ref, y = tmp_path / "ref.safetensors", tmp_path / "y.safetensors"
    h = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    save(ref, {"hidden_states": h})
    save(y, {"hidden_states": h + 1e-6})
    ok, lines = check_outputs(str(y), str(ref))
    assert ok and "max_abs_err=" in lines[0] and lines[0].endswith("OK")
    save(y, {"hidden_states": h + 1e-2})
    ok, lines = check_outputs(str(y), str(ref))
    assert not ok and "MISMATCH (12 elements)" in lines[0]
    save(y, {"other": h})
    ok, lines = check_outputs(str(y), str(ref))
    assert not ok and "missing" in lines[0]


def test_missing_tool_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOE_BUILD_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("PATH", str(tmp_path))
    import moe_compiler.driver as drv
    monkeypatch.setattr(drv, "REPO_ROOT", tmp_path)
    rc, _, err = run_cli(capsys, "compile", "m.mlir", "-o", "out")
    assert rc == 1 and "moe-compile: not found" in err and err.count("\n") == 1
