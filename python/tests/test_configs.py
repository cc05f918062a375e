"""Config mapping of every family, from the published config.json of a real model."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLES, FIXTURES

from moe_compiler.configs import (
    SUPPORTED_MODEL_TYPES,
    ConfigError,
    Mesh,
    from_hf_dict,
    load_hf_config,
    parse_layers,
    parse_mesh,
)
from moe_compiler.layout import sublayers


def fixture(name):
    return load_hf_config(FIXTURES / f"{name}.json")


def test_mixtral_8x7b():
    c = fixture("mixtral-8x7b-v0.1")
    assert (c.family, c.hidden_size, c.num_layers, c.num_experts, c.top_k) == (
        "mixtral", 4096, 32, 8, 2)
    assert c.moe_intermediate_size == 14336 and c.activation == "swiglu"
    assert c.score_func == "softmax" and c.renormalize and c.routed_scaling == 1.0
    assert c.capacity_factor == 0 and c.capacity == 0  # dropless
    assert all(k == "moe" for k in c.layer_kinds)
    assert c.norm_eps == 1e-5 and c.published_aux_loss_coeff == 0.02
    a = c.arch.attention
    assert (a.num_heads, a.num_kv_heads, a.head_dim) == (32, 8, 128)
    sub = sublayers(c, range(3, 4))[0]
    assert sub.norm.name == "model.layers.3.post_attention_layernorm.weight"
    names = {w.role: (w.name, w.shape) for w in sub.weights}
    assert names == {
        "router": ("model.layers.3.block_sparse_moe.gate.weight", (8, 4096)),
        "gate": ("model.layers.3.block_sparse_moe.experts.{e}.w1.weight", (8, 14336, 4096)),
        "up": ("model.layers.3.block_sparse_moe.experts.{e}.w3.weight", (8, 14336, 4096)),
        "down": ("model.layers.3.block_sparse_moe.experts.{e}.w2.weight", (8, 4096, 14336)),
    }


def test_qwen1_5_moe_shared_expert_gate():
    c = fixture("qwen1.5-moe-a2.7b")
    assert (c.family, c.num_experts, c.top_k, c.moe_intermediate_size) == (
        "qwen2_moe", 60, 4, 1408)
    assert not c.renormalize  # norm_topk_prob false
    assert c.num_shared_experts == 1 and c.shared_intermediate_size == 5632 and c.shared_gated
    assert c.arch.attention.qkv_bias
    sub = sublayers(c, range(0, 1))[0]
    roles = [w.role for w in sub.weights]
    assert roles == ["router", "gate", "up", "down", "shared_gate", "shared_up",
                     "shared_down", "shared_sigmoid_gate"]
    assert sub.get("shared_up").name == "model.layers.0.mlp.shared_expert.up_proj.weight"
    assert sub.get("shared_up").shape == (5632, 2048)
    assert sub.get("shared_sigmoid_gate").name == "model.layers.0.mlp.shared_expert_gate.weight"
    assert sub.get("shared_sigmoid_gate").shape == (1, 2048)
    assert sub.get("up").name == "model.layers.0.mlp.experts.{e}.up_proj.weight"


def test_qwen3_moe():
    c = fixture("qwen3-30b-a3b")
    assert (c.family, c.num_layers, c.num_experts, c.top_k, c.moe_intermediate_size) == (
        "qwen3_moe", 48, 128, 8, 768)
    assert c.renormalize and c.num_shared_experts == 0
    assert c.arch.attention.head_dim == 128 and c.arch.attention.qk_norm == "head"


def test_qwen_dense_layers_mlp_only_and_sparse_step():
    d = json.loads((FIXTURES / "qwen1.5-moe-a2.7b.json").read_text())
    d.update(num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    c = from_hf_dict(d)
    # MoE where (i + 1) % step == 0 and i not in mlp_only_layers.
    assert c.layer_kinds == ("dense", "moe", "dense", "dense", "dense", "moe")
    dense = sublayers(c, range(0, 1))[0]
    assert dense.kind == "dense"
    assert [(w.role, w.name, w.shape) for w in dense.weights] == [
        ("gate", "model.layers.0.mlp.gate_proj.weight", (5632, 2048)),
        ("up", "model.layers.0.mlp.up_proj.weight", (5632, 2048)),
        ("down", "model.layers.0.mlp.down_proj.weight", (2048, 5632))]


def test_deepseek_v2_lite_greedy():
    c = fixture("deepseek-v2-lite")
    assert (c.num_layers, c.num_experts, c.top_k, c.num_groups) == (27, 64, 6, 1)
    assert c.layer_kinds[:2] == ("dense", "moe")  # first_k_dense_replace = 1
    assert c.dense_intermediate_size == 10944
    assert c.num_shared_experts == 2 and c.shared_intermediate_size == 2 * 1408
    assert not c.shared_gated and not c.renormalize and c.routed_scaling == 1.0
    sub = sublayers(c, range(1, 2))[0]
    assert sub.get("shared_down").name == "model.layers.1.mlp.shared_experts.down_proj.weight"
    assert sub.get("shared_down").shape == (2048, 2816)
    assert c.arch.attention.kind == "mla" and c.arch.attention.q_lora_rank == 0


def test_deepseek_v2_group_limited_greedy():
    c = fixture("deepseek-v2")
    assert (c.num_experts, c.top_k, c.num_groups, c.groups_kept, c.group_score) == (
        160, 6, 8, 3, "max")
    assert c.score_func == "softmax" and not c.selection_bias
    assert c.routed_scaling == 16.0 and not c.renormalize


def test_deepseek_v2_scaling_only_without_renormalization():
    d = json.loads((FIXTURES / "deepseek-v2.json").read_text())
    d["norm_topk_prob"] = True
    c = from_hf_dict(d)
    assert c.renormalize and c.routed_scaling == 1.0
    assert any("routed_scaling_factor" in n for n in c.notes)


def test_deepseek_v3_noaux_tc():
    c = fixture("deepseek-v3")
    assert (c.num_experts, c.top_k, c.num_groups, c.groups_kept) == (256, 8, 8, 4)
    assert c.score_func == "sigmoid" and c.selection_bias and c.group_score == "top2_sum"
    assert c.renormalize and c.routed_scaling == 2.5
    assert c.layer_kinds[:4] == ("dense", "dense", "dense", "moe")
    assert c.num_shared_experts == 1 and c.shared_intermediate_size == 2048
    sub = sublayers(c, range(3, 4))[0]
    bias = sub.get("bias")
    assert bias.name == "model.layers.3.mlp.gate.e_score_correction_bias"
    assert bias.shape == (256,)


def test_olmoe():
    c = fixture("olmoe-1b-7b-0924")
    assert (c.family, c.num_layers, c.num_experts, c.top_k, c.moe_intermediate_size) == (
        "olmoe", 16, 64, 8, 1024)
    assert not c.renormalize and c.num_shared_experts == 0
    assert sublayers(c, range(0, 1))[0].get("router").name == "model.layers.0.mlp.gate.weight"


def test_switch_base_8():
    c = fixture("switch-base-8")
    assert (c.family, c.hidden_size, c.num_experts, c.top_k) == (
        "switch_transformers", 768, 8, 1)
    # HF: is_sparse = i % encoder_sparse_step == 1
    assert c.layer_kinds == ("dense", "moe") * 6
    assert c.capacity == 64 and c.capacity_factor == 0
    assert c.drop_policy == "passthrough" and c.activation == "relu" and not c.renormalize
    assert c.published_z_loss_coeff == 0.001
    assert c.arch.decoder_layer_kinds == ("dense", "moe") * 6
    moe, dense = sublayers(c, range(1, 2))[0], sublayers(c, range(0, 1))[0]
    assert moe.norm.name == "encoder.block.1.layer.1.layer_norm.weight"
    assert moe.get("router").name == "encoder.block.1.layer.1.mlp.router.classifier.weight"
    assert moe.get("up").name == "encoder.block.1.layer.1.mlp.experts.expert_{e}.wi.weight"
    assert moe.get("down").shape == (8, 768, 3072)
    assert moe.get("gate") is None
    assert [w.name for w in dense.weights] == ["encoder.block.0.layer.1.mlp.wi.weight",
                                               "encoder.block.0.layer.1.mlp.wo.weight"]


def test_dbrx_fused_experts_and_layernorm():
    c = fixture("dbrx-base")
    assert (c.hidden_size, c.num_layers, c.num_experts, c.top_k, c.moe_intermediate_size) == (
        6144, 40, 16, 4, 10752)
    assert c.renormalize and c.norm == "layernorm" and c.activation == "swiglu"
    assert c.arch.attention.num_kv_heads == 8
    sub = sublayers(c, range(2, 3))[0]
    assert sub.norm.name == "transformer.blocks.2.norm_attn_norm.norm_2.weight"
    assert sub.get("router").name == "transformer.blocks.2.ffn.router.layer.weight"
    w1, v1, w2 = sub.get("gate"), sub.get("up"), sub.get("down")
    assert (w1.name, v1.name, w2.name) == ("transformer.blocks.2.ffn.experts.mlp.w1",
                                           "transformer.blocks.2.ffn.experts.mlp.v1",
                                           "transformer.blocks.2.ffn.experts.mlp.w2")
    assert w1.shape == (16, 10752, 6144) and not w1.transpose
    assert w2.shape == (16, 6144, 10752) and w2.transpose
    assert w1.file_tensors() == [(w1.name, (16 * 10752, 6144))]
    assert w2.file_tensors() == [(w2.name, (16 * 10752, 6144))]


def test_every_supported_model_type_has_a_fixture_or_example():
    seen = {json.loads(p.read_text())["model_type"]
            for p in list(FIXTURES.glob("*.json")) + list(EXAMPLES.glob("*.json"))}
    assert set(SUPPORTED_MODEL_TYPES) - {"deepseek"} <= seen


# -- errors ---------------------------------------------------------------------------

def _mixtral():
    return json.loads((FIXTURES / "mixtral-8x7b-v0.1.json").read_text())


def test_unknown_model_type():
    with pytest.raises(ConfigError, match="unknown model_type 'llama'") as e:
        from_hf_dict({"model_type": "llama"}, source="x.json")
    assert "x.json" in str(e.value) and "mixtral" in str(e.value)


def test_missing_model_type():
    with pytest.raises(ConfigError, match="field 'model_type' is missing"):
        from_hf_dict({"hidden_size": 3})


@pytest.mark.parametrize("field", ["num_local_experts", "hidden_size", "num_experts_per_tok",
                                   "intermediate_size", "num_hidden_layers"])
def test_missing_field_is_named(field):
    d = _mixtral()
    del d[field]
    with pytest.raises(ConfigError, match=f"field '{field}' is missing"):
        from_hf_dict(d)


def test_wrong_types_and_values_are_named():
    d = _mixtral()
    d["num_local_experts"] = "8"
    with pytest.raises(ConfigError, match="'num_local_experts' must be an integer"):
        from_hf_dict(d)
    d = _mixtral()
    d["num_experts_per_tok"] = 9
    with pytest.raises(ConfigError, match=r"top_k \(9\) exceeds"):
        from_hf_dict(d)
    d = _mixtral()
    d["hidden_act"] = "tanh"
    with pytest.raises(ConfigError, match="'hidden_act' 'tanh' is not supported"):
        from_hf_dict(d)


def test_nested_dbrx_field_is_named():
    d = json.loads((FIXTURES / "dbrx-base.json").read_text())
    del d["ffn_config"]["moe_top_k"]
    with pytest.raises(ConfigError, match="field 'ffn_config.moe_top_k' is missing"):
        from_hf_dict(d)


def test_deepseek_bad_topk_method_and_groups():
    d = json.loads((FIXTURES / "deepseek-v3.json").read_text())
    d["topk_method"] = "mystery"
    with pytest.raises(ConfigError, match="'topk_method'"):
        from_hf_dict(d)
    d = json.loads((FIXTURES / "deepseek-v3.json").read_text())
    d["n_group"] = 7
    with pytest.raises(ConfigError, match="num_groups"):
        from_hf_dict(d)


def test_switch_rejects_top2():
    d = json.loads((FIXTURES / "switch-base-8.json").read_text())
    d["num_selected_experts"] = 2
    with pytest.raises(ConfigError, match="num_selected_experts"):
        from_hf_dict(d)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_hf_config(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_hf_config(bad)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(_mixtral()))
    assert load_hf_config(tmp_path / "m").name == "m"


def test_mesh_parsing_and_divisibility():
    assert parse_mesh("dp=2,ep=4,tp=2") == Mesh(2, 4, 2)
    assert parse_mesh("ep=2") == Mesh(1, 2, 1) and parse_mesh(None).size == 1
    for bad, match in [("ep=0", "must be positive"), ("xp=2", "is not dp=N"),
                       ("ep=two", "not an integer"), ("ep", "is not dp=N")]:
        with pytest.raises(ConfigError, match=match):
            parse_mesh(bad)
    c = fixture("mixtral-8x7b-v0.1")
    parse_mesh("ep=8,tp=2").check(c, tokens=64)
    with pytest.raises(ConfigError, match="ep=3 does not divide num_experts=8"):
        parse_mesh("ep=3").check(c)
    with pytest.raises(ConfigError, match="tp=5 does not divide moe_intermediate_size"):
        parse_mesh("tp=5").check(c)
    with pytest.raises(ConfigError, match="dp\\*ep=4 does not divide tokens=6"):
        parse_mesh("dp=2,ep=2").check(c, tokens=6)


def test_layer_ranges():
    assert parse_layers("1:3", 4) == range(1, 3)
    assert parse_layers(":2", 4) == range(0, 2) and parse_layers("2:", 4) == range(2, 4)
    assert parse_layers("3", 4) == range(3, 4) and parse_layers(None, 4) == range(4)
    for bad in ("3:1", "0:9", "a:b", "2:2"):
        with pytest.raises(ConfigError, match="layers"):
            parse_layers(bad, 4)


def test_overrides_are_validated():
    c = fixture("mixtral-8x7b-v0.1")
    assert c.with_overrides(capacity_factor=1.25, token_groups=None).capacity_factor == 1.25
    with pytest.raises(ConfigError, match="token_groups"):
        c.with_overrides(token_groups=0)
