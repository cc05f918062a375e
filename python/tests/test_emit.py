"""emit: structure of the generated MLIR, and moe-opt parses it when built."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import EXAMPLES, FIXTURES, REPO_ROOT

from moe_compiler.configs import ConfigError, load_hf_config
from moe_compiler.emit import emit_module, format_f32
from moe_compiler.presets import get_preset

MOE_OPT = REPO_ROOT / "build" / "bin" / "moe-opt"


def _moe_opt_or_skip():
    from moe_compiler.driver import ToolNotFound, find_tool
    try:
        return find_tool("moe-opt")
    except ToolNotFound as e:
        pytest.skip(f"moe-opt is not built ({e})")


def test_mixtral_graph_structure():
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    text = emit_module(cfg, 64)
    assert text.count("moe.rmsnorm") == 2 and text.count("moe.layer") == 2
    assert text.count("moe.add") == 2
    assert '%arg0: tensor<64x32xf32> {moe.input = "hidden_states"}' in text
    assert ('tensor<8x64x32xf32> {moe.weight = '
            '"model.layers.1.block_sparse_moe.experts.{e}.w1.weight"}') in text
    assert ('tensor<8x32x64xf32> {moe.weight = '
            '"model.layers.0.block_sparse_moe.experts.{e}.w2.weight"}') in text
    assert '-> (tensor<64x32xf32> {moe.output = "hidden_states"})' in text
    layer = next(line for line in text.splitlines() if "moe.layer" in line)
    assert re.search(r"moe.layer %\d+ router %arg\d+ gate %arg\d+ up %arg\d+ down %arg\d+ \{",
                     layer)
    assert ("{num_experts = 8 : i64, top_k = 2 : i64, renormalize, "
            "activation = #moe<activation swiglu>}") in layer
    assert layer.endswith("-> tensor<64x32xf32>")


def test_losses_are_results_summed_over_layers():
    cfg = load_hf_config(EXAMPLES / "tiny-switch.json").with_overrides(
        aux_loss_coeff=0.01, z_loss_coeff=0.001, token_groups=2)
    text = emit_module(cfg, 12)
    assert text.count("moe.layer") == 2 and ":3 = moe.layer" in text
    assert "drop_policy = #moe<drop_policy passthrough>" in text
    assert "capacity = 6 : i64" in text and "token_groups = 2 : i64" in text
    assert ('{moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"})') in text
    assert re.search(r"moe.add %\d+#1, %\d+#1 : \(tensor<f32>, tensor<f32>\)", text)
    assert "moe.mlp" in text and "act = relu" in text


def test_deepseek_v3_attributes():
    cfg = load_hf_config(FIXTURES / "deepseek-v3.json")
    text = emit_module(cfg, 4, range(3, 4))
    for attr in ("score_func = #moe<score_func sigmoid>", "renormalize",
                 "routed_scaling = 2.500000000e+00 : f32", "num_groups = 8 : i64",
                 "groups_kept = 4 : i64", "group_score = #moe<group_score top2_sum>",
                 "num_shared_experts = 1 : i64", "shared_intermediate = 2048 : i64"):
        assert attr in text
    assert 'tensor<256xf32> {moe.weight = "model.layers.3.mlp.gate.e_score_correction_bias"}' \
        in text
    assert " bias %arg" in text


def test_qwen_shared_gate_and_dbrx_transpose():
    q = emit_module(load_hf_config(FIXTURES / "qwen1.5-moe-a2.7b.json"), 4, range(0, 1))
    assert "shared_sigmoid_gate %arg" in q and "shared_gated" in q
    assert 'tensor<1x2048xf32> {moe.weight = "model.layers.0.mlp.shared_expert_gate.weight"}' \
        in q
    cfg = load_hf_config(FIXTURES / "dbrx-base.json")
    with pytest.raises(ConfigError, match="norm is layernorm"):
        emit_module(cfg, 4, range(0, 1))
    d = emit_module(cfg.with_overrides(norm="rmsnorm"), 4, range(0, 1), dtype="bf16")
    assert ('tensor<16x6144x10752xbf16> {moe.weight = "transformer.blocks.0.ffn.experts.mlp.w2",'
            ' moe.weight_transpose}') in d


def test_floats_round_trip_through_f32():
    assert format_f32(1e-5) == "9.999999747e-06 : f32"
    assert format_f32(1.25) == "1.250000000e+00 : f32"


def test_token_groups_must_divide_tokens():
    cfg = load_hf_config(EXAMPLES / "tiny-switch.json").with_overrides(token_groups=5)
    with pytest.raises(ConfigError, match="token_groups"):
        emit_module(cfg, 12)


def test_token_groups_follow_the_verifier():
    # emit --token-groups 3 with 16 tokens wrote a graph only moe-opt
    # rejected: dropless routing has no token groups, and 3 does not divide 16.
    mixtral = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    with pytest.raises(ConfigError, match=r"token_groups.*\(3\) needs a capacity"):
        emit_module(mixtral.with_overrides(token_groups=3), 16)
    capped = mixtral.with_overrides(capacity_factor=1.0, token_groups=3)
    with pytest.raises(ConfigError, match="token_groups: 3 does not divide tokens=16"):
        emit_module(capped, 16)
    with pytest.raises(ConfigError, match="drop_policy"):
        emit_module(mixtral.with_overrides(drop_policy="passthrough"), 16)
    with pytest.raises(ConfigError, match="routed_scaling"):
        emit_module(mixtral.with_overrides(routed_scaling=0.0), 16)
    assert "token_groups = 4" in emit_module(capped.with_overrides(token_groups=4), 16)


def _emitted():
    cases = []
    for p in sorted(EXAMPLES.glob("tiny-*.json")):
        cfg = load_hf_config(p).with_overrides(norm="rmsnorm", aux_loss_coeff=0.01,
                                               z_loss_coeff=0.001)
        cases.append((p.stem, emit_module(cfg, 16)))
    cases.append(("pr-moe-128-expert-layers", emit_module(get_preset("pr-moe-1.3b-64-128"), 4,
                                                          range(19, 24))))
    cases.append(("st-moe-extra-ffn", emit_module(get_preset("st-moe-32b"), 4, range(3, 4))))
    cases.append(("gshard-capacity", emit_module(get_preset("gshard-600b"), 8, range(0, 2))))
    cases.append(("bf16", emit_module(load_hf_config(EXAMPLES / "tiny-qwen2-moe.json"), 8,
                                      dtype="bf16")))
    return cases


@pytest.mark.parametrize("name,text", _emitted(), ids=[c[0] for c in _emitted()])
def test_moe_opt_parses_emitted_ir(tmp_path, name, text):
    tool = _moe_opt_or_skip()
    p = tmp_path / f"{name}.mlir"
    p.write_text(text)
    r = subprocess.run([tool, str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again.mlir"
    again.write_text(r.stdout)  # and what moe-opt prints parses again
    r2 = subprocess.run([tool, str(again)], capture_output=True, text=True, timeout=60)
    assert r2.returncode == 0, r2.stderr
    # moe-decompose re-checks every operand shape while expanding moe.layer.
    r3 = subprocess.run([tool, "--moe-decompose", str(p)], capture_output=True, text=True,
                        timeout=60)
    if "Unknown command line argument" in r3.stderr:
        pytest.skip("this moe-opt has no --moe-decompose")
    assert r3.returncode == 0, r3.stderr
