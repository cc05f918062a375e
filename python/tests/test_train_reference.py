"""The float64 training reference: hand-written gradients against central finite
differences for every family and every weight, the optimizers' formulas, the
selection-bias update, training on a learnable target, and bitwise resumption."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import EXAMPLES

from moe_compiler.configs import ConfigError, MoEConfig, load_hf_config
from moe_compiler.layout import sublayers
from moe_compiler.reference import model_forward
from moe_compiler.safetensors import load
from moe_compiler.train_reference import (
    Optimizer,
    OptimizerConfig,
    TrainError,
    activation_grad,
    forward_backward,
    load_training_weights,
    train,
    update_selection_bias,
)
from moe_compiler.weights import init_weights

LOSSES = dict(aux_loss_coeff=0.05, z_loss_coeff=0.01)


def _shrunk(name: str, **kw) -> MoEConfig:
    """An example config at D = 6 and widths 4/5, so that every coordinate of every
    weight can be perturbed in a test."""
    cfg = load_hf_config(EXAMPLES / name)
    small = dict(hidden_size=6, moe_intermediate_size=4, dense_intermediate_size=5)
    if cfg.num_shared_experts:
        small["shared_intermediate_size"] = 4
    small.update(kw)
    return cfg.with_overrides(**small)


def _st_moe() -> MoEConfig:
    """ST-MoE's graph: a sparse sublayer followed by an extra dense one, geglu experts."""
    c = MoEConfig(name="st", family="generic", hidden_size=6, layer_kinds=("moe+dense",),
                  layer_experts=(4,), top_k=2, moe_intermediate_size=4,
                  dense_intermediate_size=5, activation="geglu", dense_activation="gelu",
                  renormalize=True, capacity_factor=1.0, **LOSSES)
    c.validate()
    return c


# Every family the forward supports, at tiny shapes, with the features that matter.
FAMILIES = {
    "mixtral": lambda: _shrunk("tiny-mixtral.json"),  # no losses: the outputs are absent
    "olmoe": lambda: _shrunk("tiny-olmoe.json", **LOSSES),
    "qwen2_moe": lambda: _shrunk("tiny-qwen2-moe.json", **LOSSES),  # gated shared, dense
    "qwen3_moe": lambda: _shrunk("tiny-qwen3-moe.json", layer_experts=(8, 8), **LOSSES),
    "deepseek_v2": lambda: _shrunk("tiny-deepseek-v2.json", **LOSSES),  # groups, scaling
    "deepseek_v3": lambda: _shrunk("tiny-deepseek-v3.json", layer_experts=(0, 8, 8),
                                   **LOSSES),  # sigmoid, bias, top2_sum, renorm, scaling
    "dbrx": lambda: _shrunk("tiny-dbrx.json", **LOSSES),  # LayerNorm, fused experts
    "switch": lambda: _shrunk("tiny-switch.json", capacity=2, token_groups=2,
                              **LOSSES),  # drops with passthrough, relu, dense layers
    "gshard": lambda: _shrunk("tiny-gshard.json", **LOSSES),  # capacity factor, drops
    "pr_moe": lambda: _shrunk("tiny-pr-moe.json", **LOSSES),  # pyramid, ungated shared
    "st_moe": _st_moe,  # moe+dense, geglu, capacity with drop_policy zero
}
DROPPING = {"switch", "gshard", "st_moe"}


def _weights(cfg: MoEConfig, tmp_path, seed: int = 1) -> dict[str, np.ndarray]:
    p = tmp_path / f"w{seed}.safetensors"
    init_weights(cfg, p, seed=seed)
    return {k: v.astype(np.float64) for k, v in load(p).items()}


def _same_routing(a, b) -> bool:
    return all(np.array_equal(i, j) and np.array_equal(k, m)
               for (i, k), (j, m) in zip(a.routing, b.routing))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_is_the_reference_forward(family, tmp_path):
    cfg = FAMILIES[family]()
    w = _weights(cfg, tmp_path)
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((8, 6)), rng.standard_normal((8, 6))
    res = forward_backward(cfg, x, t, w.__getitem__)
    ref = model_forward(cfg, x, w.__getitem__)
    assert sorted(res.outputs) == sorted(ref)
    for k in ref:  # bit for bit: the same operations in the same order
        np.testing.assert_array_equal(res.outputs[k], ref[k])
    y = ref["hidden_states"]
    want = float(np.mean((y - t) ** 2))  # then + aux_loss + z_loss, left to right
    for k in ("aux_loss", "z_loss"):
        if k in ref:
            want += float(ref[k])
    assert res.loss == want


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradients_match_finite_differences(family, tmp_path):
    """Central differences of the training loss for every coordinate of every weight and
    of hidden_states. A coordinate whose +-h changes a routing decision (top-k, group
    or capacity) is skipped and counted; there must be few."""
    cfg = FAMILIES[family]()
    w = _weights(cfg, tmp_path)
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((8, 6)), rng.standard_normal((8, 6))
    base = forward_backward(cfg, x, t, w.__getitem__)
    if family in DROPPING:
        assert any(not kept.all() for _, kept in base.routing), "the case should drop"
    bias_names = {s.get("bias").name for s in sublayers(cfg)
                  if s.kind == "moe" and s.get("bias") is not None}
    assert set(base.grads) == set(w) - bias_names
    assert set(base.loads) == bias_names
    h = 1e-5
    tensors = dict(w, hidden_states=x)
    grads = dict(base.grads, hidden_states=base.dx)
    checked = skipped = 0
    bad = []
    for name, arr in tensors.items():
        flat = arr.reshape(-1)
        g = grads.get(name)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            plus = forward_backward(cfg, x, t, w.__getitem__, backward=False)
            flat[i] = old - h
            minus = forward_backward(cfg, x, t, w.__getitem__, backward=False)
            flat[i] = old
            if not (_same_routing(plus, base) and _same_routing(minus, base)):
                skipped += 1
                continue
            checked += 1
            fd = (plus.loss - minus.loss) / (2 * h)
            got = 0.0 if g is None else float(g.reshape(-1)[i])
            if abs(fd - got) > 1e-6 * abs(got) + 1e-9:
                bad.append(f"{name}[{i}]: finite difference {fd!r}, gradient {got!r}")
    assert not bad, "\n".join(bad[:20])
    assert skipped <= 0.01 * (checked + skipped), (checked, skipped)
    assert checked > 300


def test_sharded_gradients_sum_to_the_single_device_ones(tmp_path):
    """The mean over the global batch (spec 7.1): two ranks holding half the tokens each,
    their gradients scaled by T_rank / T_global, sum to the whole batch's gradient.
    Dropless routing and the z-loss are per token; the load-balance loss needs the
    global counts, so it is left out here."""
    cfg = FAMILIES["qwen2_moe"]().with_overrides(aux_loss_coeff=0.0)
    w = _weights(cfg, tmp_path)
    rng = np.random.default_rng(8)
    x, t = rng.standard_normal((16, 6)), rng.standard_normal((16, 6))
    full = forward_backward(cfg, x, t, w.__getitem__)
    parts = [forward_backward(cfg, x[r], t[r], w.__getitem__)
             for r in (slice(0, 8), slice(8, 16))]
    for n, g in full.grads.items():
        np.testing.assert_allclose(0.5 * (parts[0].grads[n] + parts[1].grads[n]), g,
                                   rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.concatenate([0.5 * p.dx for p in parts]), full.dx,
                               rtol=1e-12, atol=1e-15)
    assert 0.5 * (parts[0].loss + parts[1].loss) == pytest.approx(full.loss, rel=1e-13)


def test_activation_derivatives():
    x = np.linspace(-4, 4, 81) + 0.0123
    h = 1e-6
    from moe_compiler.reference import activation
    for name in ("relu", "gelu", "swiglu"):
        fd = (activation(name, x + h) - activation(name, x - h)) / (2 * h)
        np.testing.assert_allclose(activation_grad(name, x), fd, rtol=1e-7, atol=1e-8)
    assert activation_grad("relu", np.array([0.0]))[0] == 0.0  # torch's choice


def test_selection_bias_has_no_gradient_and_balances(tmp_path):
    cfg = FAMILIES["deepseek_v3"]()
    w = _weights(cfg, tmp_path)
    rng = np.random.default_rng(3)
    x, t = rng.standard_normal((16, 6)), rng.standard_normal((16, 6))
    res = forward_backward(cfg, x, t, w.__getitem__)
    name = "model.layers.1.mlp.gate.e_score_correction_bias"
    assert name not in res.grads and name in res.loads
    load_ = res.loads[name]
    assert load_.sum() == 16 * cfg.top_k
    new = update_selection_bias(w[name], load_, 16, cfg.top_k, 0.001)
    mean = 16 * cfg.top_k / 8
    step = np.float32(0.001)
    want = np.where(load_ < mean, w[name] + step, np.where(load_ > mean, w[name] - step,
                                                           w[name]))
    np.testing.assert_array_equal(new, want.astype(np.float32).astype(np.float64))
    assert new.dtype == np.float64
    # train() applies it after every step, and the optimizer never touches the bias
    opt = Optimizer(OptimizerConfig.make("sgd", lr=0.01), {n: a.shape for n, a in w.items()
                                                         if n != name and not
                                                         n.endswith("correction_bias")})
    before = {n: a.copy() for n, a in w.items()}
    train(cfg, x, t, w, opt, 1, bias_update_rate=0.001)
    np.testing.assert_array_equal(w[name], new)
    assert not any(k.startswith(name) for k in opt.state)
    assert not np.array_equal(w["model.layers.1.mlp.gate.weight"],
                              before["model.layers.1.mlp.gate.weight"])


# -- optimizers -------------------------------------------------------------------------

def _adamw_loop(p, grads, lr, b1, b2, eps, wd):
    """torch.optim.AdamW's documented algorithm, written out once more with loops."""
    m = v = 0.0
    for n, g in enumerate(grads, 1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**n), v / (1 - b2**n)
        p = p - lr * mhat / (math.sqrt(vhat) + eps)
    return p


def test_adamw_and_sgd_formulas():
    grads = [0.3, -1.2, 0.05, 2.0]
    c = OptimizerConfig.make("adamw", lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    opt = Optimizer(c, {"w": (1,)}, storage=np.float64)
    w = {"w": np.array([0.7])}
    for g in grads:
        opt.step(w, {"w": np.array([g])})
    want = _adamw_loop(0.7, grads, c.lr, *c.betas, c.eps, c.weight_decay)
    assert w["w"][0] == pytest.approx(want, rel=1e-13)
    assert opt.step_count == 4
    # SGD, momentum 0 and weight decay 0: one step is exactly w - lr * grad
    opt = Optimizer(OptimizerConfig.make("sgd", lr=0.5), {"w": (3,)}, storage=np.float64)
    w = {"w": np.array([1.0, 2.0, 3.0])}
    g = np.array([0.25, -1.0, 4.0])
    opt.step(w, {"w": g})
    np.testing.assert_array_equal(w["w"], np.array([1.0, 2.0, 3.0]) - 0.5 * g)
    # momentum: buffer = grad on the first step, then mu * buf + grad; wd added to grad
    opt = Optimizer(OptimizerConfig.make("sgd", lr=0.125, momentum=0.5, weight_decay=0.25),
                    {"w": (1,)}, storage=np.float64)
    w = {"w": np.array([2.0])}
    opt.step(w, {"w": np.array([1.0])})  # d = 1 + 0.25 * 2 = 1.5 = buf; w = 2 - 0.1875
    assert w["w"][0] == 1.8125
    opt.step(w, {"w": np.array([1.0])})  # d = 1 + 0.25 * 1.8125; buf = 0.5 * 1.5 + d
    assert opt.state["w.momentum_buffer"][0] == 2.203125
    assert w["w"][0] == 1.8125 - 0.125 * 2.203125


def test_hyperparameters_are_f32_and_checked():
    c = OptimizerConfig.make("adamw", lr=0.1)
    assert c.lr == float(np.float32(0.1)) and c.eps == float(np.float32(1e-8))
    assert c.weight_decay == float(np.float32(0.01)) and c.betas[1] == float(np.float32(0.999))
    assert OptimizerConfig.make("sgd").weight_decay == 0.0
    for kw, what in [(dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
                     (dict(lr=-1.0), "lr"), (dict(lr=float("inf")), "lr"),
                     (dict(betas=(1.0, 0.9)), "betas"), (dict(eps=-1.0), "eps"),
                     (dict(weight_decay=float("nan")), "weight_decay"),
                     (dict(momentum=0.9), "momentum")]:
        with pytest.raises(ConfigError, match=what):
            OptimizerConfig.make("adamw", **kw)
    with pytest.raises(ConfigError, match="momentum"):
        OptimizerConfig.make("sgd", momentum=-0.1)
    with pytest.raises(ConfigError, match="adamw only"):
        OptimizerConfig.make("sgd", betas=(0.9, 0.99))


def test_state_is_checked_when_loaded():
    c = OptimizerConfig.make("adamw")
    shapes = {"a": (2, 3), "b": (4,)}
    good = Optimizer(c, shapes).state_tensors()
    assert sorted(good) == ["a.exp_avg", "a.exp_avg_sq", "b.exp_avg", "b.exp_avg_sq",
                            "optimizer.step"]
    assert good["optimizer.step"].dtype == np.int64 and good["optimizer.step"].shape == (1,)
    for drop in ("b.exp_avg_sq", "optimizer.step"):
        bad = {k: v for k, v in good.items() if k != drop}
        with pytest.raises(ConfigError, match=f"missing tensor '{drop}'"):
            Optimizer(c, shapes, bad)
    with pytest.raises(ConfigError, match="'a.exp_avg' is float32 \\[3, 2\\]"):
        Optimizer(c, shapes, dict(good, **{"a.exp_avg": np.zeros((3, 2), np.float32)}))
    with pytest.raises(ConfigError, match="optimizer.step"):
        Optimizer(c, shapes, dict(good, **{"optimizer.step": np.zeros(1, np.float32)}))
    with pytest.raises(ConfigError, match="missing tensor 'a.momentum_buffer'"):
        Optimizer(OptimizerConfig.make("sgd"), shapes, good)


# -- training ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "switch"])
def test_loss_goes_down_on_a_learnable_target(family, tmp_path):
    """Targets made by the same model with other weights: 20 AdamW steps reduce the loss."""
    cfg = FAMILIES[family]()
    w = _weights(cfg, tmp_path, seed=1)
    other = _weights(cfg, tmp_path, seed=2)
    x = np.random.default_rng(4).standard_normal((16, 6))
    t = model_forward(cfg, x, other.__getitem__)["hidden_states"]
    opt = Optimizer(OptimizerConfig.make("adamw", lr=0.01),
                    {n: a.shape for n, a in w.items() if not n.endswith("correction_bias")})
    res = train(cfg, x, t, w, opt, 20)
    losses = [r.loss for r in res]
    assert losses[-1] < 0.7 * losses[0], losses
    after = forward_backward(cfg, x, t, w.__getitem__, backward=False)
    assert after.loss < losses[-1]


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_resume_is_bitwise(name, tmp_path):
    """k + n steps in one go equal k steps, state saved and loaded as files, n steps."""
    from moe_compiler.safetensors import save

    cfg = FAMILIES["deepseek_v3"]()
    w0 = _weights(cfg, tmp_path)
    x = np.random.default_rng(5).standard_normal((16, 6))
    t = np.random.default_rng(6).standard_normal((16, 6))
    kw = dict(lr=0.01, momentum=0.9) if name == "sgd" else dict(lr=0.01)
    c = OptimizerConfig.make(name, **kw)
    shapes = {n: a.shape for n, a in w0.items() if not n.endswith("correction_bias")}

    w_all = {n: a.copy() for n, a in w0.items()}
    opt = Optimizer(c, shapes)
    full = train(cfg, x, t, w_all, opt, 5)

    w_k = {n: a.copy() for n, a in w0.items()}
    opt_k = Optimizer(c, shapes)
    first = train(cfg, x, t, w_k, opt_k, 2)
    save(tmp_path / "w.st", {n: a.astype(np.float32) for n, a in w_k.items()})
    save(tmp_path / "s.st", opt_k.state_tensors())
    w_r = load_training_weights(cfg, load(tmp_path / "w.st").__getitem__)
    opt_r = Optimizer(c, shapes, load(tmp_path / "s.st"))
    assert opt_r.step_count == 2
    rest = train(cfg, x, t, w_r, opt_r, 3)
    assert [r.loss for r in first + rest] == [r.loss for r in full]
    for n in w_all:
        np.testing.assert_array_equal(w_r[n], w_all[n])
    for n, a in opt.state_tensors().items():
        np.testing.assert_array_equal(opt_r.state_tensors()[n], a)


def test_non_finite_loss_names_the_step(tmp_path):
    cfg = FAMILIES["mixtral"]()
    w = _weights(cfg, tmp_path)
    x = np.random.default_rng(7).standard_normal((8, 6))
    opt = Optimizer(OptimizerConfig.make("sgd", lr=1e30), {n: a.shape for n, a in w.items()})
    with pytest.raises(TrainError, match="step [0-9]+ \\(optimizer step [0-9]+\\)"):
        train(cfg, x, np.zeros_like(x), w, opt, 50)


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_gradient_clipping(tmp_path, max_norm):
    """Spec 7.6: grad_norm over every gradient element; with max_norm below it the
    step uses g * max / (norm + 1e-6), above it the gradients unchanged."""
    cfg = FAMILIES["deepseek_v3"]()
    w = _weights(cfg, tmp_path)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((8, cfg.hidden_size)), rng.standard_normal((8, cfg.hidden_size))
    weights = load_training_weights(cfg, w.__getitem__)
    first = forward_backward(cfg, x, t, weights.__getitem__)
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in first.grads.values()))
    coef = min(1.0, float(np.float32(max_norm)) / (norm + 1e-6))
    opt = Optimizer(OptimizerConfig.make("sgd", lr=0.1), {n: weights[n].shape
                                                          for n in first.grads})
    res = train(cfg, x, t, weights, opt, 1, clip_grad_norm=max_norm)[0]
    assert res.grad_norm == pytest.approx(norm, rel=1e-12)
    assert res.clip_coef == pytest.approx(coef, rel=1e-12)
    assert (res.clip_coef < 1) == (max_norm < norm)
    for n, g in first.grads.items():
        want = np.float32(w[n] - np.float32(0.1) * (g * coef))
        np.testing.assert_allclose(weights[n], want, rtol=1e-6, atol=1e-7, err_msg=n)
    with pytest.raises(ConfigError, match="clip-grad-norm"):
        train(cfg, x, t, weights, opt, 1, clip_grad_norm=0.0)
