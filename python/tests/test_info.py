"""info: hand-computed counts, the seed deck's figures, traffic and memory formulas."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLES, FIXTURES

from moe_compiler.configs import Mesh, load_hf_config, parse_mesh
from moe_compiler.info import count_params, graph_weights_per_rank, model_info
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
    # moe-shard's rules: experts / ep (/ ep*tp with --expert-tp), the rest / tp or
    # replicated (Mixtral has no dense FFN nor shared expert).
    assert tp.weights_per_rank_bytes == 4 * (c.expert / 2 + (c.embedding + c.attention) / 2
                                            + c.router + c.norm)
    etp = model_info(cfg, Mesh(ep=2, tp=2), tokens=64, dtype="f32", expert_tp=True)
    assert etp.weights_per_rank_bytes == 4 * (c.expert / 4 + (c.embedding + c.attention) / 2
                                             + c.router + c.norm)
    # The expert intermediate activations shrink by tp only when the experts are split.
    f, gated, t = 14336, 2, 64 // 2
    assert (tp.activations_per_rank_bytes - etp.activations_per_rank_bytes
            == t * 4 * 2 * gated * f / 2)


def _ffn_part(cfg, mesh, expert_tp):
    """info's weights per rank less what moe-compile does not compile (attention,
    embeddings and the norms outside the FFN sublayers), in elements."""
    info = model_info(cfg, mesh, tokens=64, dtype="f32", expert_tp=expert_tp)
    c = count_params(cfg)
    d = cfg.hidden_size
    ffn_norms = len(cfg.layer_kinds) * d  # one pre-norm per FFN sublayer
    outside = (c.embedding + c.attention) / mesh.tp + (c.norm - ffn_norms)
    return info.weights_per_rank_bytes / 4 - outside


@pytest.mark.parametrize("name", ["tiny-qwen2-moe", "tiny-deepseek-v2", "tiny-deepseek-v3",
                                  "tiny-mixtral", "tiny-dbrx"])
@pytest.mark.parametrize("spec,expert_tp", [("tp=2", False), ("ep=2,tp=2", False),
                                            ("ep=2,tp=2", True), ("dp=2,ep=2", False)])
def test_weights_per_rank_follow_the_compiled_graph(name, spec, expert_tp):
    """info's formula agrees with moe-shard's rules applied to the emitted graph's own
    operands (which e2e.py compares with the compiled manifest)."""
    cfg = load_hf_config(EXAMPLES / f"{name}.json")
    mesh = parse_mesh(spec)
    graph = graph_weights_per_rank(cfg, mesh, expert_tp=expert_tp)
    assert _ffn_part(cfg, mesh, expert_tp) == pytest.approx(graph, abs=0.5)
    if mesh.tp > 1:  # every FFN sublayer has a dense MLP or shared expert to split
        no_tp = graph_weights_per_rank(cfg, Mesh(dp=mesh.dp, ep=mesh.ep),
                                       expert_tp=expert_tp)
        assert graph < no_tp or not (cfg.num_shared_experts or "dense" in cfg.layer_kinds)


def test_shared_expert_and_dense_layer_split_over_tp():
    """Qwen2-MoE: the shared expert is split over tp, its sigmoid gate is not."""
    cfg = load_hf_config(EXAMPLES / "tiny-qwen2-moe.json")
    d, fs = cfg.hidden_size, cfg.shared_intermediate_size
    shared = 3 * d * fs  # swiglu shared expert
    one = graph_weights_per_rank(cfg, Mesh(), range(0, 1))
    two = graph_weights_per_rank(cfg, Mesh(tp=2), range(0, 1))
    assert cfg.layer_kinds[0] == "moe" and cfg.shared_gated
    assert one - two == shared // 2
    dense = 3 * d * cfg.dense_intermediate_size  # layer 1 is a dense swiglu MLP
    assert cfg.layer_kinds[1] == "dense"
    assert (graph_weights_per_rank(cfg, Mesh(), range(1, 2))
            - graph_weights_per_rank(cfg, Mesh(tp=2), range(1, 2))) == dense // 2


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


def test_cli_expert_tp(capsys):
    """``info --expert-tp`` is moe-compile's flag: only then are the routed experts / tp."""
    from moe_compiler.cli import main

    out = {}
    for flag in ([], ["--expert-tp"]):
        assert main(["info", "dbrx", "--json", "--mesh", "ep=4,tp=2", *flag]) == 0
        out[bool(flag)] = json.loads(capsys.readouterr().out)
    c = count_params(get_preset("dbrx"))
    diff = out[False]["weights_per_rank_bytes"] - out[True]["weights_per_rank_bytes"]
    assert diff == pytest.approx(2 * c.expert / 8, abs=1)  # bf16: E/4 -> E/8 per rank
