"""The float64 reference against small cases computed independently with plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import EXAMPLES

from moe_compiler.configs import MoEConfig, load_hf_config
from moe_compiler.layout import WeightSpec, load_operand, sublayers
from moe_compiler.reference import (
    capacity_for,
    gelu,
    kept_mask,
    layernorm,
    model_forward,
    moe_layer,
    rmsnorm,
    route,
)
from moe_compiler.safetensors import SafetensorsFile
from moe_compiler.weights import init_weights, weight_tensors

# -- an independent, loop-by-loop reading of docs/spec.md section 3 ----------------------


def _act(name, v):
    if name == "relu":
        return max(v, 0.0)
    if name in ("gelu", "geglu"):
        return 0.5 * v * (1 + math.erf(v / math.sqrt(2)))
    return v / (1 + math.exp(-v))  # silu


def _ffn_loop(x, gate, up, down, act):
    f, d = len(up), len(x)
    h = []
    for i in range(f):
        u = sum(x[j] * up[i][j] for j in range(d))
        if act in ("swiglu", "geglu"):
            g = sum(x[j] * gate[i][j] for j in range(d))
            h.append(_act(act, g) * u)
        else:
            h.append(_act(act, u))
    return [sum(h[i] * down[o][i] for i in range(f)) for o in range(d)]


def loop_moe(x, w, *, k, act, score="softmax", renorm=False, scale=1.0, groups=1, kept=1,
             group_score="max", capacity=0, token_groups=1, passthrough=False,
             shared_gated=False, aux=0.0, zc=0.0):
    x = x.tolist()
    wr = w["router"].tolist()
    bias = w["bias"].tolist() if "bias" in w else None
    t_n, e_n = len(x), len(wr)
    choices, all_scores, lse = [], [], []
    for t in range(t_n):
        logits = [sum(a * b for a, b in zip(x[t], wr[e])) for e in range(e_n)]
        m = max(logits)
        lse.append(m + math.log(sum(math.exp(v - m) for v in logits)))
        if score == "softmax":
            z = sum(math.exp(v - m) for v in logits)
            s = [math.exp(v - m) / z for v in logits]
        else:
            s = [1 / (1 + math.exp(-v)) for v in logits]
        all_scores.append(s)
        sel = [s[e] + (bias[e] if bias else 0.0) for e in range(e_n)]
        if groups > 1:
            size = e_n // groups
            gs = []
            for g in range(groups):
                vals = sorted(sel[g * size:(g + 1) * size], reverse=True)
                gs.append(vals[0] if group_score == "max" else vals[0] + vals[1])
            best = sorted(range(groups), key=lambda g: (-gs[g], g))[:kept]
            sel = [sel[e] if e // size in best else -math.inf for e in range(e_n)]
        order = sorted(range(e_n), key=lambda e: (-sel[e], e))[:k]
        ws = [s[e] for e in order]
        if renorm:
            tot = sum(ws)
            ws = [v / tot for v in ws]
        choices.append([(e, v * scale) for e, v in zip(order, ws)])
    keep = [[True] * k for _ in range(t_n)]
    if capacity:
        tg = t_n // token_groups
        for g in range(token_groups):
            used = [0] * e_n
            for j in range(k):
                for t in range(g * tg, (g + 1) * tg):
                    e = choices[t][j][0]
                    if used[e] < capacity:
                        used[e] += 1
                    else:
                        keep[t][j] = False
    y = []
    for t in range(t_n):
        acc = [0.0] * len(x[t])
        for j, (e, wt) in enumerate(choices[t]):
            if keep[t][j]:
                out = _ffn_loop(x[t], w["gate"][e].tolist() if "gate" in w else None,
                                w["up"][e].tolist(), w["down"][e].tolist(), act)
            elif passthrough:
                out = x[t]
            else:
                continue
            acc = [a + wt * o for a, o in zip(acc, out)]
        if "shared_up" in w:
            out = _ffn_loop(x[t], w["shared_gate"].tolist() if "shared_gate" in w else None,
                            w["shared_up"].tolist(), w["shared_down"].tolist(), act)
            if shared_gated:
                g = sum(a * b for a, b in zip(x[t], w["shared_sigmoid_gate"][0].tolist()))
                out = [o / (1 + math.exp(-g)) for o in out]
            acc = [a + o for a, o in zip(acc, out)]
        y.append(acc)
    f = [sum(1 for t in range(t_n) for e, _ in choices[t] if e == ex) / (t_n * k)
         for ex in range(e_n)]
    p = [sum(all_scores[t][ex] for t in range(t_n)) / t_n for ex in range(e_n)]
    aux_v = aux * e_n * sum(a * b for a, b in zip(f, p))
    z_v = zc * sum(v * v for v in lse) / t_n
    return np.array(y), aux_v, z_v, keep


def _cfg(**kw) -> MoEConfig:
    base = dict(name="t", family="generic", hidden_size=6, layer_kinds=("moe",),
                layer_experts=(kw.get("e", 8),), top_k=2, moe_intermediate_size=5,
                dense_intermediate_size=7, activation="swiglu")
    base.update({k: v for k, v in kw.items() if k != "e"})
    c = MoEConfig(**base)
    c.validate()
    return c


def _weights(rng, e=8, d=6, f=5, fs=4, gated=True, shared=False, bias=False):
    w = {"router": rng.standard_normal((e, d)), "up": rng.standard_normal((e, f, d)) / 2,
         "down": rng.standard_normal((e, d, f)) / 2}
    if gated:
        w["gate"] = rng.standard_normal((e, f, d)) / 2
    if shared:
        w["shared_up"] = rng.standard_normal((fs, d)) / 2
        w["shared_down"] = rng.standard_normal((d, fs)) / 2
        w["shared_sigmoid_gate"] = rng.standard_normal((1, d))
        if gated:
            w["shared_gate"] = rng.standard_normal((fs, d)) / 2
    if bias:
        w["bias"] = rng.standard_normal(e) * 0.2
    return w


CASES = {
    "mixtral": dict(cfg=dict(renormalize=True), loop=dict(renorm=True)),
    "qwen2_shared_gated": dict(cfg=dict(top_k=4, num_shared_experts=1,
                                        shared_intermediate_size=4, shared_gated=True),
                               loop=dict(k=4, shared_gated=True), w=dict(shared=True)),
    "deepseek_v2_groups": dict(cfg=dict(top_k=3, num_groups=4, groups_kept=2,
                                        routed_scaling=16.0),
                               loop=dict(k=3, groups=4, kept=2, scale=16.0)),
    "deepseek_v3_noaux": dict(cfg=dict(top_k=4, score_func="sigmoid", renormalize=True,
                                       routed_scaling=2.5, num_groups=4, groups_kept=2,
                                       group_score="top2_sum", selection_bias=True,
                                       num_shared_experts=1, shared_intermediate_size=4),
                              loop=dict(k=4, score="sigmoid", renorm=True, scale=2.5,
                                        groups=4, kept=2, group_score="top2_sum"),
                              w=dict(bias=True, shared=True)),
    "switch_passthrough": dict(cfg=dict(top_k=1, activation="relu", capacity=2,
                                        token_groups=2, drop_policy="passthrough"),
                               loop=dict(k=1, act="relu", capacity=2, token_groups=2,
                                         passthrough=True), w=dict(gated=False)),
    "gshard_capacity": dict(cfg=dict(activation="gelu", capacity_factor=0.5,
                                     renormalize=True),
                            loop=dict(act="gelu", capacity=2, renorm=True),
                            w=dict(gated=False)),
    "geglu_losses": dict(cfg=dict(activation="geglu", aux_loss_coeff=0.01, z_loss_coeff=0.001),
                         loop=dict(act="geglu", aux=0.01, zc=0.001)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_moe_layer_matches_loops(case):
    spec = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    cfg = _cfg(**spec["cfg"])
    w = _weights(rng, **spec.get("w", {}))
    if "shared_sigmoid_gate" in w and not cfg.shared_gated:
        del w["shared_sigmoid_gate"]
    x = rng.standard_normal((12, 6))
    loop_kw = dict(k=2, act=cfg.activation)
    loop_kw.update(spec["loop"])
    y_ref, aux_ref, z_ref, keep = loop_moe(x, w, **loop_kw)
    y, aux, z = moe_layer(x, w, cfg, 8)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert aux == pytest.approx(aux_ref, rel=1e-6, abs=1e-15)
    assert z == pytest.approx(z_ref, rel=1e-6, abs=1e-15)
    if cfg.capacity or cfg.capacity_factor:
        assert not all(all(r) for r in keep), "the case should drop something"


def test_ties_go_to_the_lower_index():
    cfg = _cfg(top_k=2, e=4, layer_experts=(4,))
    x = np.ones((1, 6))
    router = np.zeros((4, 6))
    router[3] = 0.5  # expert 3 best, then 0, 1, 2 tied
    r = route(x, router, cfg, 4)
    assert r.idx.tolist() == [[3, 0]]
    router[1] = 0.5
    assert route(x, router, cfg, 4).idx.tolist() == [[1, 3]]


def test_group_selection_excludes_dropped_groups():
    # 4 experts in 2 groups; group 1 holds the single best expert but group 0 has the
    # better sum of two, so top2_sum keeps group 0 and max keeps group 1.
    cfg_sum = _cfg(top_k=1, e=4, layer_experts=(4,), num_groups=2, groups_kept=1,
                   group_score="top2_sum", score_func="sigmoid")
    cfg_max = cfg_sum.with_overrides(group_score="max")
    x = np.array([[1.0, 0, 0, 0, 0, 0]])
    router = np.zeros((4, 6))
    router[:, 0] = [1.0, 1.0, 3.0, -5.0]
    assert route(x, router, cfg_sum, 4).idx.tolist() == [[0]]
    assert route(x, router, cfg_max, 4).idx.tolist() == [[2]]
    # the bias changes the choice, the weight stays the unbiased score
    bias = np.array([0.0, 0.5, 0.0, 0.0])
    r = route(x, router, cfg_sum, 4, bias)
    assert r.idx.tolist() == [[1]]
    assert r.weights[0, 0] == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_capacity_is_slot_major():
    # E=2, k=2, T=4, cf=0.5 -> C = ceil(0.5 * 4 * 2 / 2) = 2.
    cfg = _cfg(top_k=2, e=2, layer_experts=(2,), capacity_factor=0.5)
    assert capacity_for(cfg, 4, 2) == 2
    idx = np.array([[0, 1], [0, 1], [0, 1], [1, 0]])
    # slot 0: e0 <- t0, t1 (t2 dropped), e1 <- t3; slot 1: e1 <- t0 (now full), rest dropped
    assert kept_mask(idx, cfg, 2).tolist() == [[True, True], [True, False],
                                               [False, False], [True, False]]
    # Two groups: C = ceil(0.5 * 2 * 2 / 2) = 1 each. Group 0: t0 takes e0 then e1,
    # t1 gets nothing; group 1: t2 takes e0, t3 takes e1, both second choices are full.
    groups = cfg.with_overrides(token_groups=2)
    assert kept_mask(idx, groups, 2).tolist() == [[True, True], [False, False],
                                                  [True, False], [True, False]]


def test_capacity_rules():
    cfg = _cfg(capacity_factor=1.25)
    assert capacity_for(cfg, 64, 8) == 20  # ceil(1.25 * 64 * 2 / 8)
    assert capacity_for(cfg.with_overrides(min_capacity=32), 64, 8) == 32
    assert capacity_for(cfg.with_overrides(capacity_factor=0.01), 64, 8) == 1
    assert capacity_for(cfg.with_overrides(capacity=5, min_capacity=32), 64, 8) == 5
    assert capacity_for(cfg.with_overrides(capacity_factor=0.0), 64, 8) == 0
    # cf is an f32 attribute: 1.1f = 1.10000002384..., so ceil(1.1f * 10 * 1 / 1) = 12
    one = _cfg(top_k=1, e=1, layer_experts=(1,), capacity_factor=1.1)
    assert capacity_for(one, 10, 1) == 12


def test_dropped_assignment_contributes_zero():
    cfg = _cfg(top_k=1, e=2, layer_experts=(2,), capacity=1, activation="relu")
    w = {"router": np.array([[1.0, 0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0, 0]]),
         "up": np.ones((2, 5, 6)), "down": np.ones((2, 6, 5))}
    x = np.full((3, 6), 1.0)  # every token picks expert 0; only the first fits
    y, _, _ = moe_layer(x, w, cfg, 2)
    p0 = 1 / (1 + math.exp(-2.0))
    np.testing.assert_allclose(y[0], p0 * 5 * 6)
    np.testing.assert_array_equal(y[1:], 0.0)
    y, _, _ = moe_layer(x, w, cfg.with_overrides(drop_policy="passthrough"), 2)
    np.testing.assert_allclose(y[1:], p0 * 1.0)


def test_norms_and_gelu():
    x = np.array([[3.0, 4.0]])
    np.testing.assert_allclose(rmsnorm(x, np.array([1.0, 2.0]), 0.0),
                               [[3 / math.sqrt(12.5), 8 / math.sqrt(12.5)]])
    np.testing.assert_allclose(layernorm(x, np.array([1.0, 1.0]), 0.0), [[-1.0, 1.0]])
    assert gelu(np.array([1.0]))[0] == pytest.approx(0.8413447460685429, rel=1e-15)
    assert gelu(np.array([-3.0]))[0] == pytest.approx(-3 * 0.0013498980316301, rel=1e-12)


def test_dbrx_fused_layout_loads_like_per_expert_tensors():
    rng = np.random.default_rng(5)
    e, f, d = 3, 4, 5
    down = rng.standard_normal((e, d, f))
    # DBRX stores w2 as [E*F, D]: expert e's rows are down[e]^T.
    w2 = np.concatenate([down[i].T for i in range(e)])
    spec = WeightSpec("down", "w2", (e, d, f), transpose=True, file_shape=(e * f, d))
    np.testing.assert_array_equal(load_operand(spec, {"w2": w2}.__getitem__), down)
    gate = rng.standard_normal((e, f, d))
    spec = WeightSpec("gate", "w1", (e, f, d), file_shape=(e * f, d))
    np.testing.assert_array_equal(load_operand(spec, {"w1": gate.reshape(e * f, d)}.__getitem__),
                                  gate)
    stacked = WeightSpec("up", "x.{e}.w", (e, f, d))
    tensors = {f"x.{i}.w": gate[i] for i in range(e)}
    np.testing.assert_array_equal(load_operand(stacked, tensors.__getitem__), gate)


def _graph_loop(cfg, x, get, layers):
    """h = h + FFN(norm(h)) over the layers, FFNs from the loop MoE above."""
    h = x.copy()
    aux_t = z_t = 0.0
    for sub in sublayers(cfg, layers):
        w = {s.role: load_operand(s, get) for s in sub.specs()}
        ms = np.sqrt((h * h).mean(axis=1, keepdims=True) + float(np.float32(cfg.norm_eps)))
        n = h / ms * w["norm"]
        if sub.kind == "dense":
            y = np.array([_ffn_loop(row, w["gate"].tolist(), w["up"].tolist(),
                                    w["down"].tolist(), cfg.dense_act) for row in n.tolist()])
        else:
            y, aux, z, _ = loop_moe(
                n, w, k=cfg.top_k, act=cfg.activation, score=cfg.score_func,
                renorm=cfg.renormalize, scale=cfg.routed_scaling, groups=cfg.num_groups,
                kept=cfg.groups_kept, group_score=cfg.group_score,
                shared_gated=cfg.shared_gated, aux=float(np.float32(cfg.aux_loss_coeff)))
            aux_t += aux
            z_t += z
        h = h + y
    return h, aux_t


@pytest.mark.parametrize("name", ["tiny-qwen2-moe", "tiny-deepseek-v3", "tiny-mixtral"])
def test_model_graph_matches_loops(tmp_path, name):
    cfg = load_hf_config(EXAMPLES / f"{name}.json").with_overrides(aux_loss_coeff=0.01)
    p = tmp_path / "w.safetensors"
    init_weights(cfg, p, seed=3)
    x = np.random.default_rng(4).standard_normal((8, cfg.hidden_size))
    with SafetensorsFile(p) as f:
        out = model_forward(cfg, x, f.get)
        h_ref, aux_ref = _graph_loop(cfg, x, f.get, range(cfg.num_layers))
    np.testing.assert_allclose(out["hidden_states"], h_ref, rtol=1e-6, atol=1e-9)
    assert float(out["aux_loss"]) == pytest.approx(aux_ref, rel=1e-9)
    assert "z_loss" not in out


def test_layer_range_reads_only_its_tensors(tmp_path):
    cfg = load_hf_config(EXAMPLES / "tiny-qwen2-moe.json")
    p = tmp_path / "w.safetensors"
    init_weights(cfg, p, seed=1, layers=range(1, 3))
    with SafetensorsFile(p) as f:
        assert all(n.startswith(("model.layers.1.", "model.layers.2.")) for n in f.keys())
        x = np.ones((4, 32))
        out = model_forward(cfg, x, f.get, range(1, 3))
    assert out["hidden_states"].shape == (4, 32)
    full = tmp_path / "full.safetensors"
    init_weights(cfg, full, seed=1)
    with SafetensorsFile(p) as a, SafetensorsFile(full) as b:
        for n in a.keys():  # a tensor's values do not depend on the range asked for
            np.testing.assert_array_equal(a.get(n), b.get(n))
    names = [n for _, n, _ in weight_tensors(cfg, range(1, 3))]
    assert len(names) == len(set(names))


def test_init_weights_scale_keeps_activations_order_one(tmp_path):
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    p = tmp_path / "w.safetensors"
    init_weights(cfg, p, seed=0)
    x = np.random.default_rng(0).standard_normal((64, 32))
    with SafetensorsFile(p) as f:
        y = model_forward(cfg, x, f.get)["hidden_states"] - x
    assert 0.1 < float(np.sqrt((y * y).mean())) < 3.0
