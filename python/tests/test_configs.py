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
    assert parse_mesh("") == Mesh() and parse_mesh(" tp = 2 , dp=3") == Mesh(3, 1, 2)
    assert parse_mesh("dp=46341,ep=46340").size == 46341 * 46340
    c = fixture("mixtral-8x7b-v0.1")
    parse_mesh("ep=8,tp=2").check(c, tokens=64)
    with pytest.raises(ConfigError, match="ep=3 does not divide num_experts=8"):
        parse_mesh("ep=3").check(c)
    with pytest.raises(ConfigError, match="tp=5 does not divide moe_intermediate_size"):
        parse_mesh("tp=5").check(c)
    with pytest.raises(ConfigError, match="dp\\*ep=4 does not divide tokens=6"):
        parse_mesh("dp=2,ep=2").check(c, tokens=6)


# The messages of the compiler's parseMeshSpec (test/Unit/Dialect/MeshSpecTest.cpp),
# word for word, after "mesh: ".
@pytest.mark.parametrize("text,message", [
    ("  ", "empty mesh spec (expected axis=size pairs, e.g. dp=1,ep=2,tp=2)"),
    ("ep=2,,tp=2",
     "empty entry in 'ep=2,,tp=2' (expected axis=size pairs separated by commas)"),
    ("ep=2,", "empty entry in 'ep=2,' (expected axis=size pairs separated by commas)"),
    ("ep", "'ep' is not axis=size (e.g. ep=2)"),
    ("=2", "'=2' is not axis=size (e.g. ep=2)"),
    ("ep=2,xp=2", "unknown axis 'xp' (axes are dp, ep, tp)"),
    ("ep=2,ep=4", "axis 'ep' is given twice ('ep=2' and 'ep=4')"),
    ("ep=2, tp=1 ,ep=2", "axis 'ep' is given twice ('ep=2' and 'ep=2')"),
    ("ep=0", "'ep=0': size 0 is not a positive integer"),
    ("ep=-2", "'ep=-2': size '-2' is not a positive integer"),
    ("ep=two", "'ep=two': size 'two' is not a positive integer"),
    ("ep=", "'ep=': size '' is not a positive integer"),
    ("ep=2.5", "'ep=2.5': size '2.5' is not a positive integer"),
    ("ep=99999999999999999999",
     "'ep=99999999999999999999': size 99999999999999999999 is too large"),
    ("dp=65536,ep=65536", "'dp=65536,ep=65536' has more than 2147483647 ranks"),
    ("dp=9223372036854775807,ep=2",
     "'dp=9223372036854775807,ep=2' has more than 2147483647 ranks"),
])
def test_mesh_errors_match_the_compiler(text, message):
    with pytest.raises(ConfigError) as err:
        parse_mesh(text)
    assert str(err.value) == f"mesh: {message}"


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


# -- the native format ("model_type": "moe_compiler") ---------------------------------

def _native(**changes):
    d = {"model_type": "moe_compiler", "hidden_size": 16, "num_layers": 2, "num_experts": 4,
         "top_k": 2, "moe_intermediate_size": 8, "activation": "gelu"}
    d.update(changes)
    return {k: v for k, v in d.items() if v is not None}


def test_native_minimal_defaults():
    c = from_hf_dict(_native(), source="n.json")
    assert (c.family, c.name, c.hidden_size, c.layer_kinds, c.layer_experts) == (
        "generic", "n", 16, ("moe", "moe"), (4, 4))
    assert (c.top_k, c.moe_intermediate_size, c.activation) == (2, 8, "gelu")
    # Everything else as MoEConfig's defaults: softmax, dropless, no shared experts.
    assert c.score_func == "softmax" and not c.renormalize and c.routed_scaling == 1.0
    assert c.capacity_factor == 0 and c.token_groups == 1 and c.drop_policy == "zero"
    assert c.num_shared_experts == 0 and c.aux_loss_coeff == 0 and c.norm == "rmsnorm"
    # Generic weight names: model.layers.{i}.mlp.*, non-gated experts use up/down_proj.
    sub = sublayers(c, range(1, 2))[0]
    assert sub.norm.name == "model.layers.1.post_attention_layernorm.weight"
    assert {w.role: w.name for w in sub.weights} == {
        "router": "model.layers.1.mlp.gate.weight",
        "up": "model.layers.1.mlp.experts.{e}.up_proj.weight",
        "down": "model.layers.1.mlp.experts.{e}.down_proj.weight",
    }


def test_native_example_gshard():
    c = load_hf_config(EXAMPLES / "tiny-gshard.json")
    assert (c.name, c.family, c.top_k, c.activation) == ("tiny-gshard", "generic", 2, "gelu")
    assert c.layer_kinds == ("dense", "moe", "dense", "moe")
    assert c.layer_experts == (0, 8, 0, 8)
    assert c.capacity_factor == 1.25 and c.token_groups == 4 and c.renormalize
    assert c.dense_intermediate_size == 64 and c.published_aux_loss_coeff == 0.01
    assert c.arch.vocab_size == 128 and c.arch.attention.num_heads == 4
    dense = sublayers(c, range(0, 1))[0]
    assert [w.name for w in dense.weights] == ["model.layers.0.mlp.up_proj.weight",
                                               "model.layers.0.mlp.down_proj.weight"]


def test_native_example_pr_moe_pyramid_and_residual_expert():
    c = load_hf_config(EXAMPLES / "tiny-pr-moe.json")
    assert c.layer_experts == (0, 4, 0, 8) and c.num_experts == 8 and c.top_k == 1
    assert c.num_shared_experts == 1 and c.shared_intermediate_size == 64
    assert not c.shared_gated and c.activation == "gelu" and c.capacity_factor == 0
    last = sublayers(c, range(3, 4))[0]
    assert last.get("router").shape == (8, 32)
    assert last.get("shared_up").name == "model.layers.3.mlp.shared_experts.up_proj.weight"
    assert last.get("shared_up").shape == (64, 32) and last.get("shared_gate") is None
    Mesh(ep=4).check(c)
    with pytest.raises(ConfigError, match="ep=8 does not divide num_experts=4"):
        Mesh(ep=8).check(c)


def test_native_all_fields():
    c = from_hf_dict(_native(
        name="custom", layer_kinds=["dense", "moe+dense", "moe"], num_layers=None,
        num_experts=None, layer_experts=[0, 8, 8], dense_intermediate_size=32,
        activation="swiglu", dense_activation="relu", score_func="sigmoid",
        renormalize=True, routed_scaling=2.5, num_groups=4, groups_kept=2,
        group_score="top2_sum", selection_bias=True, capacity_factor=1.5, min_capacity=2,
        token_groups=2, drop_policy="passthrough", num_shared_experts=2,
        shared_gated=True, norm="layernorm", norm_eps=1e-5, aux_loss_coeff=0.01,
        z_loss_coeff=0.001, published_aux_loss_coeff=0.02, published_z_loss_coeff=0.002,
        notes=["a note"], arch={"vocab_size": 100, "attention": {"num_heads": 2}}))
    assert (c.name, c.layer_kinds, c.layer_experts) == (
        "custom", ("dense", "moe+dense", "moe"), (0, 8, 8))
    assert (c.dense_act, c.score_func, c.renormalize, c.routed_scaling) == (
        "relu", "sigmoid", True, 2.5)
    assert (c.num_groups, c.groups_kept, c.group_score, c.selection_bias) == (
        4, 2, "top2_sum", True)
    assert (c.capacity_factor, c.min_capacity, c.token_groups, c.drop_policy) == (
        1.5, 2, 2, "passthrough")
    # Shared width defaults to num_shared_experts x moe_intermediate_size (DeepSeek).
    assert (c.num_shared_experts, c.shared_intermediate_size, c.shared_gated) == (2, 16, True)
    assert (c.norm, c.norm_eps, c.aux_loss_coeff, c.z_loss_coeff) == (
        "layernorm", 1e-5, 0.01, 0.001)
    assert (c.published_aux_loss_coeff, c.published_z_loss_coeff) == (0.02, 0.002)
    assert c.notes == ("a note",) and c.arch.vocab_size == 100
    assert c.arch.attention.num_heads == 2
    roles = [w.role for w in sublayers(c, range(1, 2))[0].weights]
    assert roles[:2] == ["router", "bias"] and "shared_sigmoid_gate" in roles
    assert [s.kind for s in sublayers(c)] == ["dense", "moe", "dense", "moe"]


@pytest.mark.parametrize("drop,field", [
    ("hidden_size", "hidden_size"), ("top_k", "top_k"), ("activation", "activation"),
    ("moe_intermediate_size", "moe_intermediate_size"), ("num_layers", "num_layers"),
    ("num_experts", "num_experts")])
def test_native_missing_field(drop, field):
    with pytest.raises(ConfigError, match=f"field '{field}' is missing") as e:
        from_hf_dict(_native(**{drop: None}), source="n.json")
    assert "n.json" in str(e.value) and "moe_compiler" in str(e.value)


def test_native_dense_layers_need_their_width():
    with pytest.raises(ConfigError, match="field 'dense_intermediate_size' is missing"):
        from_hf_dict(_native(layer_kinds=["dense", "moe"], num_layers=None))


@pytest.mark.parametrize("changes,match", [
    ({"num_expert": 4}, "field 'num_expert' is not a field of this format "
                        r"\(did you mean 'num_experts'\?\)"),
    ({"family": "mixtral"}, "field 'family' is not a field"),
    ({"arch": {"vocab": 3}}, "field 'arch.vocab' is not a field"),
    ({"layer_experts": [4, 4]}, "'num_experts' and 'layer_experts' exclude each other"),
    ({"num_experts": None, "layer_experts": [4]}, "layer_experts' has 1 entries for 2 layers"),
    ({"num_experts": None, "layer_experts": [4, 0]}, r"layer_experts' \[1\] = 0"),
    ({"layer_kinds": ["moe", "sparse"]}, r"layer_kinds' \[1\] = 'sparse'"),
    ({"layer_kinds": ["moe"]}, r"num_layers' \(2\) disagrees with layer_kinds"),
    ({"top_k": "2"}, "field 'top_k' must be an integer"),
    ({"renormalize": 1}, "field 'renormalize' must be true or false"),
    ({"capacity_factor": "big"}, "field 'capacity_factor' must be a number"),
    ({"token_groups": 0}, "field 'token_groups' must be >= 1"),
    ({"activation": "tanh"}, "activation 'tanh' is not one of"),
    ({"top_k": 5}, r"top_k \(5\) exceeds the experts of layer 0"),
    ({"drop_policy": "drop"}, "drop_policy 'drop' is not zero or passthrough"),
])
def test_native_bad_fields(changes, match):
    with pytest.raises(ConfigError, match=match):
        from_hf_dict(_native(**changes), source="n.json")


def test_native_config_through_the_cli(tmp_path, capsys):
    from moe_compiler import cli

    assert cli.main(["config", str(EXAMPLES / "tiny-pr-moe.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "generic" and out["layer_experts"] == [0, 4, 0, 8]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(_native(top_k=None)))
    assert cli.main(["emit", "--hf-config", str(p), "--tokens", "8", "-o", "-"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'top_k' is missing" in err



def test_nan_capacity_factor_is_rejected():
    """NaN would pass a `< 0` check and make 'dropless' and 'has capacity' disagree."""
    with pytest.raises(ConfigError, match="capacity_factor"):
        fixture("mixtral-8x7b-v0.1").with_overrides(capacity_factor=float("nan"))
