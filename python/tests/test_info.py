"""info: hand-computed counts, the seed deck's figures, traffic and memory formulas."""

from __future__ import annotations

import pytest
from conftest import FIXTURES

from moe_compiler.configs import Mesh, load_hf_config
from moe_compiler.info import count_params, model_info
from moe_compiler.presets import PRESETS, get_preset


def test_mixtral_by_hand():
    cfg = load_hf_config(FIXTURES / "mixtral-8x7b-v0.1.json")
    d, f, v, layers, e, k = 4096, 14336, 32000, 32, 8, 2
    embed = 2 * v * d  # untied embeddings and LM head
    attn = layers * (d * d + 2 * d * 1024 + d * d)  # q, k, v (8 kv heads of 128), o
    norms = layers * 2 * d + d
    router = layers * e * d
    expert = 3 * d * f
    total = embed + attn + norms + router + layers * e * expert
    active = embed + attn + norms + router + layers * k * expert
    assert (total, active) == (46_702_792_704, 12_879_925_248)
    info = model_info(cfg, Mesh(ep=8), tokens=4096, dtype="bf16")
    assert info.params_total == total and info.params_active == active
    # 2 FLOPs per MAC over active matmuls: everything active but norms and the
    # embedding lookup (the LM head does multiply).
    assert info.flops_per_token == 2 * (active - norms - v * d)
    # dispatch + combine of k rows of D bf16 values; 7 of 8 leave the rank.
    assert info.a2a_bytes_per_token_per_layer == pytest.approx(2 * k * d * 2 * 7 / 8)
    weights = 2 * (layers * e * expert / 8 + embed + attn + router + norms)
    t = 4096 // 8
    acts = t * 2 * (3 * d + 2 * k * d + k * 2 * f + k * d) + t * e * 8
    assert info.weights_per_rank_bytes == weights
    assert info.memory_per_rank_bytes == weights + acts


def test_mesh_shards_weights_and_tokens():
    cfg = load_hf_config(FIXTURES / "mixtral-8x7b-v0.1.json")
    one = model_info(cfg, Mesh(), tokens=64, dtype="f32")
    assert one.a2a_bytes_per_token_per_layer == 0  # nothing leaves a single rank
    tp = model_info(cfg, Mesh(ep=2, tp=2), tokens=64, dtype="f32")
    dtd = model_info(cfg, Mesh(ep=2, tp=2), tokens=64, dtype="f32", dtd=True)
    assert tp.a2a_bytes_per_token_per_layer == 2 * dtd.a2a_bytes_per_token_per_layer
    assert dtd.a2a_bytes_per_token_per_layer == 2 * 2 * 4096 * 4 * 0.5
    c = count_params(cfg)
    assert tp.weights_per_rank_bytes == 4 * (c.expert / 4 + (c.embedding + c.attention) / 2
                                            + c.router + c.norm)


def test_capacity_buffers_count_padding():
    cfg = load_hf_config(FIXTURES / "mixtral-8x7b-v0.1.json").with_overrides(
        capacity_factor=1.25)
    info = model_info(cfg, Mesh(ep=4), tokens=256, dtype="f32")
    # 64 tokens per rank: C = ceil(1.25 * 64 * 2 / 8) = 20; 8 * 20 / 64 = 2.5 rows/token
    assert info.a2a_bytes_per_token_per_layer == pytest.approx(2 * 2.5 * 4096 * 4 * 0.75)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_reproduce_the_seed(name):
    p = PRESETS[name]
    c = count_params(get_preset(name))
    assert c.total == pytest.approx(p.seed_total, rel=p.tolerance)
    if p.seed_active is not None:
        assert c.active == pytest.approx(p.seed_active, rel=p.tolerance)


def test_seed_rows_within_two_percent():
    """The brief's explicit targets (the coarser GShard/GLaM/Switch-Base figures aside)."""
    want = {"mixtral-8x7b": (47e9, 13e9), "mixtral-8x22b": (141e9, 39e9),
            "deepseekmoe-16b": (16.4e9, 2.8e9), "qwen1.5-moe-a2.7b": (14.3e9, 2.7e9),
            "dbrx": (132e9, 36e9), "deepspeed-moe-1.3b-128": (52e9, 1.3e9),
            "pr-moe-1.3b-64-128": (31e9, None), "st-moe-32b": (269e9, None),
            "switch-c-2048": (1571e9, None)}
    for name, (total, active) in want.items():
        c = count_params(get_preset(name))
        assert abs(c.total / total - 1) <= 0.02, name
        if active:
            assert abs(c.active / active - 1) <= 0.02, name


def test_pr_moe_pyramid_and_residual_expert():
    cfg = get_preset("pr-moe-1.3b-64-128")
    moe = [e for e in cfg.layer_experts if e]
    assert moe == [64] * 10 + [128] * 2
    assert cfg.top_k == 1 and cfg.num_shared_experts == 1


def test_published_models_match_their_cards():
    """Totals of the fixtures against the model cards (B params, 2% tolerance)."""
    cards = {"deepseek-v3": 671e9, "deepseek-v2": 236e9, "deepseek-v2-lite": 15.7e9,
             "olmoe-1b-7b-0924": 6.9e9, "qwen3-30b-a3b": 30.5e9, "dbrx-base": 132e9}
    for name, total in cards.items():
        c = count_params(load_hf_config(FIXTURES / f"{name}.json"))
        assert c.total == pytest.approx(total, rel=0.02), name
    v3 = count_params(load_hf_config(FIXTURES / "deepseek-v3.json"))
    assert v3.active == pytest.approx(37e9, rel=0.02)
