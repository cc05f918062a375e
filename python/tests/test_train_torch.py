"""The hand-written backward and the optimizers against torch.autograd and torch.optim,
in float64: Hugging Face's Mixtral block (moe_compiler.torch_reference) and the spec
in torch ops for every family. Skips where torch is not installed (Debian:
python3-torch)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLES
from test_train_reference import FAMILIES, _weights

from moe_compiler.configs import load_hf_config
from moe_compiler.train_reference import Optimizer, OptimizerConfig, forward_backward, train

torch = pytest.importorskip("torch")
tr = pytest.importorskip("moe_compiler.torch_reference")

RTOL = 1e-10


def _close(got, want, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = max(float(np.abs(want).max()), 1e-300)
    err = float(np.abs(got - want).max()) / scale
    assert err < RTOL, f"{what}: max error {err:.3g} of max |ref| {scale:.3g}"


def _hf_mixtral(cfg, w, layer=0):
    """FfnSublayer in float64 with the weights of ``layer``, under HF parameter names."""
    torch.manual_seed(0)
    m = tr.FfnSublayer(cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
                       cfg.top_k, float(np.float32(cfg.norm_eps))).double()
    m.post_attention_layernorm.upcast_dtype = torch.float64
    m.block_sparse_moe.router_dtype = torch.float64
    p = f"model.layers.{layer}."
    m.load_state_dict({n: torch.from_numpy(w[p + n]) for n, _ in m.named_parameters()})
    return m


def test_hf_mixtral_block_gradients(tmp_path):
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    w = _weights(cfg, tmp_path)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((32, cfg.hidden_size)), rng.standard_normal((32, 32))
    m = _hf_mixtral(cfg, w)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    y = m(xt.reshape(1, 32, -1)).reshape(32, -1)
    loss = ((y - torch.from_numpy(t)) ** 2).mean()
    loss.backward()
    ref = forward_backward(cfg, x, t, w.__getitem__, range(0, 1))
    _close(y.detach().numpy(), ref.outputs["hidden_states"], "hidden_states")
    assert float(loss) == pytest.approx(ref.loss, rel=1e-12)
    _close(xt.grad.numpy(), ref.dx, "dX")
    for n, prm in m.named_parameters():
        _close(prm.grad.numpy(), ref.grads["model.layers.0." + n], n)


def test_hf_qwen2_moe_block_gradients(tmp_path):
    """Qwen2-MoE: shared expert scaled by its sigmoid gate, top-4 of 8 without
    renormalization (norm_topk_prob false), then with it."""
    base = load_hf_config(EXAMPLES / "tiny-qwen2-moe.json")
    for layer, cfg in ((0, base), (2, base.with_overrides(renormalize=True))):
        name = f"renormalize={cfg.renormalize}"
        w = _weights(cfg, tmp_path)
        rng = np.random.default_rng(layer)
        x, t = rng.standard_normal((32, cfg.hidden_size)), rng.standard_normal((32, 32))
        torch.manual_seed(0)
        m = tr.Qwen2FfnSublayer(cfg.hidden_size, cfg.moe_intermediate_size,
                                cfg.shared_intermediate_size, cfg.num_experts, cfg.top_k,
                                cfg.renormalize, float(np.float32(cfg.norm_eps))).double()
        m.post_attention_layernorm.upcast_dtype = torch.float64
        m.mlp.router_dtype = torch.float64
        p = f"model.layers.{layer}."
        m.load_state_dict({n: torch.from_numpy(w[p + n]) for n, _ in m.named_parameters()})
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        y = m(xt.reshape(1, 32, -1)).reshape(32, -1)
        ((y - torch.from_numpy(t)) ** 2).mean().backward()
        ref = forward_backward(cfg, x, t, w.__getitem__, range(layer, layer + 1))
        _close(y.detach().numpy(), ref.outputs["hidden_states"], f"{name} hidden_states")
        _close(xt.grad.numpy(), ref.dx, f"{name} dX")
        for n, prm in m.named_parameters():
            _close(prm.grad.numpy(), ref.grads[p + n], f"{name} {n}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_spec_graph_gradients(family, tmp_path):
    cfg = FAMILIES[family]()
    w = _weights(cfg, tmp_path)
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((16, 6)), rng.standard_normal((16, 6))
    tensors = {n: torch.from_numpy(a.copy()).requires_grad_(True) for n, a in w.items()}
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out = tr.spec_graph(cfg, xt, tensors)
    loss = ((out["hidden_states"] - torch.from_numpy(t)) ** 2).mean()
    for k in ("aux_loss", "z_loss"):
        if k in out:
            loss = loss + out[k]
    loss.backward()
    ref = forward_backward(cfg, x, t, w.__getitem__)
    assert float(loss) == pytest.approx(ref.loss, rel=1e-12)
    _close(xt.grad.numpy(), ref.dx, "dX")
    for n, a in tensors.items():
        if n in ref.grads:
            _close(a.grad.numpy(), ref.grads[n], n)
        else:  # the selection bias: no path reaches it
            assert n.endswith("e_score_correction_bias") and a.grad is None


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_optimizer_steps_match_torch_optim(opt, tmp_path):
    """Five steps of training the HF block with torch.optim equal five steps of train()."""
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    w = _weights(cfg, tmp_path)
    w = {n: a for n, a in w.items() if n.startswith("model.layers.0.")}
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((32, 32)), rng.standard_normal((32, 32))
    if opt == "adamw":
        c = OptimizerConfig.make("adamw", lr=0.01, betas=(0.8, 0.95), eps=1e-6,
                                 weight_decay=0.1)
        make = lambda ps: torch.optim.AdamW(ps, lr=c.lr, betas=c.betas, eps=c.eps,  # noqa: E731
                                            weight_decay=c.weight_decay)
    else:
        c = OptimizerConfig.make("sgd", lr=0.05, momentum=0.9, weight_decay=0.01)
        make = lambda ps: torch.optim.SGD(ps, lr=c.lr, momentum=c.momentum,  # noqa: E731
                                          weight_decay=c.weight_decay)
    m = _hf_mixtral(cfg, w)
    params = dict(m.named_parameters())
    topt = make(list(params.values()))
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    for _ in range(5):
        topt.zero_grad()
        y = m(xt.reshape(1, 32, -1)).reshape(32, -1)
        ((y - tt) ** 2).mean().backward()
        for prm in params.values():
            # An expert that got no token has grad None, which torch.optim would skip;
            # the reference steps every weight (section 7): give it a zero gradient.
            if prm.grad is None:
                prm.grad = torch.zeros_like(prm)
        topt.step()
    mine = Optimizer(c, {n: a.shape for n, a in w.items()}, storage=np.float64)
    train(cfg, x, t, w, mine, 5, range(0, 1))
    for n, prm in params.items():
        _close(w["model.layers.0." + n], prm.detach().numpy(), n)
    st = topt.state_dict()["state"]
    for i, n in enumerate(params):
        for slot in c.slots:
            _close(mine.state[f"model.layers.0.{n}.{slot}"], st[i][slot].numpy(),
                   f"{n}.{slot}")


def test_clip_factor_is_torch_clip_grad_norm():
    """clip_factor / grad_norm against torch.nn.utils.clip_grad_norm_ (norm 2)."""
    from moe_compiler.train_reference import clip_factor, grad_norm

    rng = np.random.default_rng(3)
    grads = {f"g{i}": rng.standard_normal(s) for i, s in enumerate([(3, 4), (5,), (2, 2, 2)])}
    for max_norm in (0.5, 100.0):
        params = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
                  for g in grads.values()]
        for prm, g in zip(params, grads.values()):
            prm.grad = torch.from_numpy(g.copy())
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = grad_norm(grads)
        assert float(total) == pytest.approx(norm, rel=1e-12)
        coef = clip_factor(norm, max_norm)
        for prm, g in zip(params, grads.values()):
            _close(prm.grad.numpy(), g * coef, "clipped gradient")
