"""Float64 numpy reference of training (docs/spec.md, section 7).

The backward pass is written out by hand, op by op, next to a forward that keeps
what the backward needs; the forward computes exactly what :mod:`.reference` does
(the same functions, the same order of operations), which the tests check bit for
bit. Then the optimizers (AdamW and SGD with momentum, as ``torch.optim`` defines
them) and DeepSeek-V3's aux-loss-free bias update.

Conventions (section 7 of docs/spec.md says them once for every implementation):

* loss = ``mean((y - t)^2)`` over every element of the output ``hidden_states``,
  plus ``aux_loss`` and ``z_loss`` where the model has them (they already carry
  their coefficients). The mean is over the global batch, so the gradients of a
  sharded run, summed over its ranks, are these.
* gradients flow through the gate weights into the scores; top-k selection, the
  selection bias, the group mask and the capacity decisions carry none; the
  load-balance loss sends its gradient through the mean scores only (the counts
  carry none). A tensor no path reaches (the selection bias) has no gradient.
* weights and optimizer state are held as f32 values between steps (``storage``),
  every update is computed in float64 from them; optimizer hyperparameters, like
  the dialect's attributes, are rounded to f32 first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .configs import GATED, ConfigError, MoEConfig
from .layout import Sublayer, WeightSpec, load_operand, sublayers
from .reference import (
    Routing,
    _erf,
    _f32,
    activation,
    kept_mask,
    logsumexp,
    mask_routing,
    prenorm,
    route,
    routing_losses,
    sigmoid,
    softmax,
)
from .routing import layer_keys
from .safetensors import save
from .token_mask import check_token_mask
from .weights import _rng, weight_tensors

__all__ = [
    "DEFAULT_BIAS_UPDATE_RATE",
    "Optimizer",
    "OptimizerConfig",
    "StepResult",
    "TrainError",
    "activation_grad",
    "ffn_backward",
    "ffn_forward",
    "clip_factor",
    "forward_backward",
    "grad_norm",
    "init_targets",
    "layernorm_backward",
    "load_training_weights",
    "moe_layer_backward",
    "moe_layer_forward",
    "operand_to_files",
    "rmsnorm_backward",
    "route_backward",
    "train",
    "update_selection_bias",
]

#: DeepSeek-V3's bias update speed (gamma) for most of its pre-training (its report,
#: section 4.2); an option, since no Hugging Face config holds it.
DEFAULT_BIAS_UPDATE_RATE = 0.001


class TrainError(ConfigError):
    """A training run that cannot go on (a non-finite loss or gradient, bad state)."""


# -- elementwise derivatives ------------------------------------------------------------

def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def activation_grad(name: str, x: np.ndarray) -> np.ndarray:
    """d activation(name, x) / dx, elementwise (relu'(0) = 0, as torch has it)."""
    if name == "relu":
        return (x > 0).astype(np.float64)
    if name in ("gelu", "geglu"):
        # gelu(x) = x * Phi(x)  ->  Phi(x) + x * phi(x)
        return 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * _phi(x)
    if name == "swiglu":
        s = sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    raise ConfigError(f"activation {name!r} is not relu, gelu, swiglu or geglu")


# -- FFN --------------------------------------------------------------------------------

@dataclass
class FfnCache:
    x: np.ndarray
    act: str
    a: np.ndarray | None  # x @ gate.T (gated activations only)
    u: np.ndarray  # x @ up.T
    h: np.ndarray  # the hidden activation fed to down


def ffn_forward(x: np.ndarray, act: str, gate: np.ndarray | None, up: np.ndarray,
                down: np.ndarray) -> tuple[np.ndarray, FfnCache]:
    """:func:`reference.ffn` (same operations, same order), keeping its intermediates."""
    if act in GATED:
        if gate is None:
            raise ConfigError(f"activation {act} needs a gate weight")
        a = x @ gate.T
        u = x @ up.T
        h = activation(act, a) * u
    else:
        a = None
        u = x @ up.T
        h = activation(act, u)
    return h @ down.T, FfnCache(x, act, a, u, h)


def ffn_backward(c: FfnCache, gate: np.ndarray | None, up: np.ndarray, down: np.ndarray,
                 dout: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx, dgate, dup, ddown) of ``out = FFN(x)`` for the upstream gradient ``dout``."""
    dh = dout @ down
    ddown = dout.T @ c.h
    if c.a is not None:
        assert gate is not None
        du = dh * activation(c.act, c.a)
        da = dh * c.u * activation_grad(c.act, c.a)
        dx = da @ gate + du @ up
        return dx, da.T @ c.x, du.T @ c.x, ddown
    du = dh * activation_grad(c.act, c.u)
    return du @ up, None, du.T @ c.x, ddown


# -- norms ------------------------------------------------------------------------------

def rmsnorm_backward(x: np.ndarray, w: np.ndarray, eps: float,
                     dn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dw) of ``n = x / sqrt(mean(x^2) + eps) * w``."""
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + _f32(eps))
    dxhat = dn * w
    dx = r * dxhat - x * r**3 * np.mean(dxhat * x, axis=-1, keepdims=True)
    return dx, np.sum(dn * x * r, axis=0)


def layernorm_backward(x: np.ndarray, w: np.ndarray, eps: float,
                       dn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dw) of the LayerNorm ``n = (x - mean) / sqrt(var + eps) * w (+ b)``; a
    bias's gradient is ``dn`` summed over the tokens."""
    c = x - x.mean(axis=-1, keepdims=True)
    r = 1.0 / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + _f32(eps))
    xhat = c * r
    dxhat = dn * w
    dx = r * (dxhat - dxhat.mean(axis=-1, keepdims=True)
              - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx, np.sum(dn * xhat, axis=0)


def _norm_backward(cfg: MoEConfig, x: np.ndarray, w: Mapping[str, np.ndarray],
                   dn: np.ndarray, grads: dict[str, np.ndarray]) -> np.ndarray:
    """dx of the sublayer's norm; its weight's (and bias's) gradients into ``grads``."""
    if cfg.norm == "layernorm":
        dx, grads["norm"] = layernorm_backward(x, w["norm"], cfg.norm_eps, dn)
        if "norm_bias" in w:
            grads["norm_bias"] = dn.sum(axis=0)
        return dx
    dx, grads["norm"] = rmsnorm_backward(x, w["norm"], cfg.norm_eps, dn)
    return dx


# -- routing ----------------------------------------------------------------------------

def route_backward(x: np.ndarray, router: np.ndarray, cfg: MoEConfig, r: Routing,
                   dweights: np.ndarray, dscores: np.ndarray | None = None,
                   dlogits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(dx, drouter) from the gradient of the combine weights ``dweights`` [T, k].

    ``dscores`` / ``dlogits`` [T, E] add gradients that reach the scores or the logits
    directly (the load-balance loss, the z-loss). The selection (bias, group mask,
    top-k) is a constant: the gradient reaches exactly the chosen scores.
    """
    raw = np.take_along_axis(r.scores, r.idx, axis=-1)
    dw = dweights * _f32(cfg.routed_scaling)
    if cfg.renormalize:
        s = raw.sum(axis=-1, keepdims=True)
        wn = raw / s
        dw = (dw - np.sum(dw * wn, axis=-1, keepdims=True)) / s
    ds = np.zeros_like(r.scores) if dscores is None else dscores.copy()
    t = np.arange(r.idx.shape[0])[:, None]
    np.add.at(ds, (np.broadcast_to(t, r.idx.shape), r.idx), dw)
    if cfg.score_func == "softmax":
        dl = r.scores * (ds - np.sum(ds * r.scores, axis=-1, keepdims=True))
    else:
        dl = ds * r.scores * (1.0 - r.scores)
    if dlogits is not None:
        dl = dl + dlogits
    return dl @ router, dl.T @ x


# -- one MoE layer ----------------------------------------------------------------------

@dataclass
class MoECache:
    x: np.ndarray
    r: Routing
    kept: np.ndarray
    experts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, FfnCache]]
    shared: FfnCache | None = None
    shared_out: np.ndarray | None = None  # FFN_shared(x) before its sigmoid gate
    shared_sig: np.ndarray | None = None  # sigmoid(x . g) [T, 1]
    load: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mask: np.ndarray | None = None  # bool [T]: False for padding
    real: int = 0  # tokens the losses average over


def moe_layer_forward(x: np.ndarray, w: Mapping[str, np.ndarray], cfg: MoEConfig,
                      num_experts: int, forced: np.ndarray | None = None,
                      mask: np.ndarray | None = None
                      ) -> tuple[np.ndarray, float, float, MoECache]:
    """:func:`reference.moe_layer` with its intermediates (bitwise the same results)."""
    r = mask_routing(route(x, w["router"], cfg, num_experts, w.get("bias"), forced), mask)
    kept = kept_mask(r.idx, cfg, num_experts)
    y = np.zeros_like(x)
    gate = w.get("gate")
    experts = []
    for e in range(num_experts):
        tok, slot = np.nonzero((r.idx == e) & kept)
        if tok.size:
            out, c = ffn_forward(x[tok], cfg.activation, None if gate is None else gate[e],
                                 w["up"][e], w["down"][e])
            np.add.at(y, tok, r.weights[tok, slot, None] * out)
            experts.append((e, tok, slot, out, c))
    if cfg.drop_policy == "passthrough":
        dropped = ~kept & (r.idx >= 0)
        y += (r.weights * dropped).sum(axis=1, keepdims=True) * x
    cache = MoECache(x, r, kept, experts, mask=mask)
    if cfg.num_shared_experts:
        s, cache.shared = ffn_forward(x, cfg.activation, w.get("shared_gate"), w["shared_up"],
                                      w["shared_down"])
        if cfg.shared_gated:
            cache.shared_out = s
            cache.shared_sig = sigmoid(x @ w["shared_sigmoid_gate"].T)
            s = s * cache.shared_sig
        y += s if mask is None else s * mask[:, None]
    aux, z, cache.load, cache.real = routing_losses(cfg, r, num_experts, mask)
    return y, aux, z, cache


def _gated_mlp_backward(c: FfnCache, out: np.ndarray | None, sig: np.ndarray | None,
                        w: Mapping[str, np.ndarray], prefix: str, sig_role: str,
                        dy: np.ndarray, grads: dict[str, np.ndarray]) -> np.ndarray:
    """Backward of ``FFN(x)``, or of ``FFN(x) * sigmoid(x . g)`` when ``sig`` (the
    sigmoid) is given with ``out`` (``FFN(x)``); weight gradients go into ``grads``."""
    dx = np.zeros_like(c.x)
    dout = dy
    if sig is not None:
        assert out is not None
        dout = dy * sig
        dpre = np.sum(dy * out, axis=-1, keepdims=True) * sig * (1.0 - sig)  # [T, 1]
        dx += dpre @ w[sig_role]
        grads[sig_role] = dpre.T @ c.x
    dxf, dgate, dup, ddown = ffn_backward(c, w.get(prefix + "gate"), w[prefix + "up"],
                                          w[prefix + "down"], dout)
    if dgate is not None:
        grads[prefix + "gate"] = dgate
    grads[prefix + "up"] = dup
    grads[prefix + "down"] = ddown
    return dx + dxf


def moe_layer_backward(cache: MoECache, w: Mapping[str, np.ndarray], cfg: MoEConfig,
                       num_experts: int, dy: np.ndarray, d_aux: float = 1.0,
                       d_z: float = 1.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(dx, gradients by role) of one MoE layer.

    ``dy`` is the gradient of ``y``; ``d_aux`` / ``d_z`` those of the layer's two
    losses (1 when the training loss adds them, and they are 0 anyway when their
    coefficient is 0). The selection bias gets no entry.
    """
    x, r, kept = cache.x, cache.r, cache.kept
    t, k = r.idx.shape
    dx = np.zeros_like(x)
    dweights = np.zeros_like(r.weights)
    grads: dict[str, np.ndarray] = {"up": np.zeros_like(w["up"]),
                                    "down": np.zeros_like(w["down"])}
    gate = w.get("gate")
    if gate is not None:
        grads["gate"] = np.zeros_like(gate)
    for e, tok, slot, out, c in cache.experts:
        dweights[tok, slot] = np.sum(dy[tok] * out, axis=-1)
        dout = r.weights[tok, slot, None] * dy[tok]
        dxe, dg, du, dd = ffn_backward(c, None if gate is None else gate[e], w["up"][e],
                                       w["down"][e], dout)
        np.add.at(dx, tok, dxe)
        if dg is not None:
            grads["gate"][e] = dg
        grads["up"][e] = du
        grads["down"][e] = dd
    if cfg.drop_policy == "passthrough":
        dropped = ~kept & (r.idx >= 0)
        dweights += dropped * np.sum(dy * x, axis=-1, keepdims=True)
        dx += (r.weights * dropped).sum(axis=1, keepdims=True) * dy
    real = None if cache.mask is None else cache.mask[:, None]
    if cache.shared is not None:
        dx += _gated_mlp_backward(cache.shared, cache.shared_out, cache.shared_sig, w,
                                  "shared_", "shared_sigmoid_gate",
                                  dy if real is None else dy * real, grads)
    # The losses average over the n real tokens (all T without a mask).
    n = max(cache.real, 1)
    # aux = c * E * sum_e f_e * mean_t scores[t, e]: the counts f_e are constants.
    dscores = np.broadcast_to(
        d_aux * _f32(cfg.aux_loss_coeff) * num_experts * (cache.load / (n * k)) / n,
        r.scores.shape)
    # z = c * mean_t lse_t^2  ->  dlogits = c * 2 lse_t / T * softmax(logits)_t
    lse = logsumexp(r.logits)
    dlogits = (d_z * _f32(cfg.z_loss_coeff) * 2.0 / n) * lse[:, None] * softmax(r.logits)
    if real is not None:
        dscores = dscores * real
        dlogits = dlogits * real
    dxr, grads["router"] = route_backward(x, w["router"], cfg, r, dweights, dscores, dlogits)
    return dx + dxr, grads


# -- sublayers and the graph ------------------------------------------------------------

@dataclass
class SublayerCache:
    h: np.ndarray
    n: np.ndarray
    moe: MoECache | None = None
    ffn: FfnCache | None = None
    out: np.ndarray | None = None
    sig: np.ndarray | None = None
    mask: np.ndarray | None = None  # bool [T]: False for padding


def _sublayer_forward(cfg: MoEConfig, sub: Sublayer, h: np.ndarray,
                      w: Mapping[str, np.ndarray], forced: np.ndarray | None = None,
                      mask: np.ndarray | None = None
                      ) -> tuple[np.ndarray, float, float, SublayerCache]:
    """:func:`reference.sublayer_apply` with its intermediates."""
    n = prenorm(cfg, h, w["norm"], w.get("norm_bias"))
    cache = SublayerCache(h, n, mask=mask)
    if sub.kind == "moe":
        y, aux, z, cache.moe = moe_layer_forward(n, w, cfg, sub.num_experts, forced, mask)
    else:
        y, cache.ffn = ffn_forward(n, cfg.dense_act, w.get("gate"), w["up"], w["down"])
        if "sigmoid_gate" in w:
            cache.out = y
            cache.sig = sigmoid(n @ w["sigmoid_gate"].T)
            y = y * cache.sig
        if mask is not None:
            y = y * mask[:, None]
        aux = z = 0.0
    return h + y, aux, z, cache


def _sublayer_backward(cfg: MoEConfig, sub: Sublayer, cache: SublayerCache,
                       w: Mapping[str, np.ndarray],
                       dh: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if cache.moe is not None:
        dn, grads = moe_layer_backward(cache.moe, w, cfg, sub.num_experts, dh)
    else:
        assert cache.ffn is not None
        grads = {}
        dy = dh if cache.mask is None else dh * cache.mask[:, None]
        dn = _gated_mlp_backward(cache.ffn, cache.out, cache.sig, w, "", "sigmoid_gate",
                                 dy, grads)
    dxn = _norm_backward(cfg, cache.h, w, dn, grads)
    return dh + dxn, grads


def operand_to_files(spec: WeightSpec, grad: np.ndarray) -> dict[str, np.ndarray]:
    """The transpose of :func:`layout.load_operand`: an operand-shaped array (a
    gradient) as the file tensors it was read from, under their names and shapes."""
    arr = np.swapaxes(grad, -1, -2) if spec.transpose else grad
    files = spec.file_tensors()
    if spec.stacked:
        return {name: np.ascontiguousarray(arr[e]).reshape(shape)
                for e, (name, shape) in enumerate(files)}
    name, shape = files[0]
    return {name: np.ascontiguousarray(arr).reshape(shape)}


@dataclass
class StepResult:
    """One forward and backward pass of the training loss."""

    loss: float  # mse + aux_loss + z_loss
    mse: float
    aux_loss: float | None  # None where the model has no such output
    z_loss: float | None
    outputs: dict[str, np.ndarray]  # as reference.model_forward returns them
    dx: np.ndarray  # gradient of the input hidden_states
    grads: dict[str, np.ndarray]  # by Hugging Face name (file shapes); no selection bias
    loads: dict[str, np.ndarray]  # selection-bias name -> that layer's expert counts [E]
    routing: list[tuple[np.ndarray, np.ndarray]]  # per MoE sublayer: (idx, kept)
    grad_norm: float = 0.0  # global L2 norm of ``grads`` (set by :func:`train`)
    clip_coef: float = 1.0  # the factor clipping applied (1.0: none)


def forward_backward(cfg: MoEConfig, hidden_states: np.ndarray, targets: np.ndarray,
                     get: Callable[[str], np.ndarray],
                     layers: range | None = None, backward: bool = True,
                     forced_routing: Mapping[str, np.ndarray] | None = None,
                     token_mask: np.ndarray | None = None) -> StepResult:
    """The training loss of ``layers`` for ``targets`` and its gradients.

    ``get`` maps a Hugging Face name to its tensor (as for the forward). The loss is
    ``mean((y - t)^2)`` over the ``T x D`` elements of ``hidden_states``, plus the
    ``aux_loss`` / ``z_loss`` outputs the model enables. ``backward=False`` stops
    after the forward (``dx`` is then empty and ``grads`` too; ``loads`` and
    ``routing`` are filled). ``forced_routing`` (layer key -> [T, k] experts,
    :mod:`.routing`) replays a routing: the backward keeps those experts.
    ``token_mask`` ([T], 1 = real token, 0 = padding): the mean is over the real
    tokens' rows, which alone get gradients; padding is masked as in the forward.
    """
    h = np.asarray(hidden_states, dtype=np.float64)
    if h.ndim != 2 or h.shape[1] != cfg.hidden_size:
        raise ConfigError(f"inputs: hidden_states has shape {list(h.shape)}, expected "
                          f"[T, {cfg.hidden_size}]")
    t = np.asarray(targets, dtype=np.float64)
    if t.shape != h.shape:
        raise ConfigError(f"targets: hidden_states has shape {list(t.shape)}, expected "
                          f"{list(h.shape)} (the shape of the output)")
    mask = None if token_mask is None else check_token_mask(token_mask, h.shape[0])
    subs = sublayers(cfg, layers)
    stack = []
    aux_total = z_total = 0.0
    keys = iter(layer_keys(subs))
    for sub in subs:
        w = {s.role: load_operand(s, get).astype(np.float64) for s in sub.specs()}
        forced = None
        if sub.kind == "moe":
            key = next(keys)
            forced = forced_routing[key] if forced_routing is not None else None
        h, aux, z, cache = _sublayer_forward(cfg, sub, h, w, forced, mask)
        aux_total += aux
        z_total += z
        stack.append((sub, w, cache))
    diff = h - t
    if mask is not None:  # the real tokens' rows only (none: 0)
        diff = diff * mask[:, None]
        count = max(int(mask.sum()) * h.shape[1], 1)
        mse = float(np.sum(diff * diff)) / count
    else:
        count = diff.size
        mse = float(np.mean(diff * diff))
    outputs = {"hidden_states": h}
    aux_out = z_out = None
    if cfg.aux_loss_coeff > 0:
        outputs["aux_loss"] = np.array(aux_total)
        aux_out = aux_total
    if cfg.z_loss_coeff > 0:
        outputs["z_loss"] = np.array(z_total)
        z_out = z_total
    loss = mse + (aux_out or 0.0) + (z_out or 0.0)

    grads: dict[str, np.ndarray] = {}
    loads: dict[str, np.ndarray] = {}
    routing = []
    for sub, _, cache in stack:
        if cache.moe is not None:
            routing.append((cache.moe.r.idx, cache.moe.kept))
            bias = sub.get("bias")
            if bias is not None:
                loads[bias.name] = cache.moe.load
    if not backward:
        return StepResult(loss, mse, aux_out, z_out, outputs, np.zeros(0), grads, loads,
                          routing)
    dh = (2.0 / count) * diff
    for sub, w, cache in reversed(stack):
        dh, g = _sublayer_backward(cfg, sub, cache, w, dh)
        for spec in sub.specs():
            if spec.role == "bias":  # reaches only the selection: no gradient
                continue
            for name, arr in operand_to_files(spec, g[spec.role]).items():
                grads[name] = grads[name] + arr if name in grads else arr
    return StepResult(loss, mse, aux_out, z_out, outputs, dh, grads, loads, routing)


# -- optimizers -------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimizerConfig:
    """Hyperparameters, as :meth:`make` checks them and rounds them to f32."""

    name: str  # "adamw" or "sgd"
    lr: float
    betas: tuple[float, float]  # adamw
    eps: float  # adamw
    momentum: float  # sgd
    weight_decay: float

    @staticmethod
    def make(name: str = "adamw", lr: float = 1e-3, betas: tuple[float, float] | None = None,
             eps: float | None = None, momentum: float | None = None,
             weight_decay: float | None = None) -> OptimizerConfig:
        """Validated hyperparameters with torch's defaults (AdamW: betas (0.9, 0.999),
        eps 1e-8, weight decay 0.01; SGD: momentum 0, weight decay 0)."""
        def finite(what: str, v: float, ok: bool, rule: str) -> float:
            if not (math.isfinite(v) and ok):
                raise ConfigError(f"{what}: must be a finite number {rule} (got {v})")
            return _f32(v)

        if name not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer: {name!r} is not adamw or sgd")
        lr = finite("lr", lr, lr > 0, "> 0")
        if name == "sgd":
            if betas is not None or eps is not None:
                raise ConfigError("betas/eps: apply to adamw only")
            m = 0.0 if momentum is None else momentum
            wd = 0.0 if weight_decay is None else weight_decay
            return OptimizerConfig("sgd", lr, (0.0, 0.0), 0.0,
                                   finite("momentum", m, m >= 0, ">= 0"),
                                   finite("weight_decay", wd, wd >= 0, ">= 0"))
        if momentum is not None:
            raise ConfigError("momentum: applies to sgd only (adamw has betas)")
        b1, b2 = betas if betas is not None else (0.9, 0.999)
        b1 = finite("betas", b1, 0 <= b1 < 1, "in [0, 1)")
        b2 = finite("betas", b2, 0 <= b2 < 1, "in [0, 1)")
        e = 1e-8 if eps is None else eps
        wd = 0.01 if weight_decay is None else weight_decay
        return OptimizerConfig("adamw", lr, (b1, b2), finite("eps", e, e >= 0, ">= 0"), 0.0,
                               finite("weight_decay", wd, wd >= 0, ">= 0"))

    @property
    def slots(self) -> tuple[str, ...]:
        """The state tensors of each weight: ``NAME.<slot>``."""
        return ("exp_avg", "exp_avg_sq") if self.name == "adamw" else ("momentum_buffer",)

    def metadata(self) -> dict[str, str]:
        out = {"optimizer": self.name, "lr": repr(self.lr),
               "weight_decay": repr(self.weight_decay)}
        if self.name == "adamw":
            out.update(betas=f"{self.betas[0]!r},{self.betas[1]!r}", eps=repr(self.eps))
        else:
            out["momentum"] = repr(self.momentum)
        return out


def _store(a: np.ndarray, storage: type) -> np.ndarray:
    """The value a tensor of the storage type holds, as float64."""
    return np.asarray(a, dtype=storage).astype(np.float64)


class Optimizer:
    """AdamW or SGD over named tensors, exactly as torch.optim's single-tensor loops
    (torch 1.13 - 2.x) with ``maximize=False``, ``amsgrad=False``, ``dampening=0``,
    ``nesterov=False``. Weights and state hold ``storage`` values (f32 by default):
    every new state tensor is rounded to it before the update reads it, and every
    new weight once at the end; the arithmetic is float64."""

    def __init__(self, cfg: OptimizerConfig, shapes: Mapping[str, tuple[int, ...]],
                 state: Mapping[str, np.ndarray] | None = None,
                 storage: type = np.float32) -> None:
        self.cfg = cfg
        self.storage = storage
        self.step_count = 0
        self.state: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            for slot in cfg.slots:
                self.state[f"{name}.{slot}"] = np.zeros(shape)
        if state is not None:
            self.load_state(state)

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in [*self.state, "optimizer.step"] if n not in state]
        if missing:
            raise ConfigError(f"optimizer state: missing tensor '{missing[0]}'"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                 else "")
                              + f" for {self.cfg.name}")
        step = np.asarray(state["optimizer.step"])
        if step.shape != (1,) or step.dtype.kind not in "iu" or int(step[0]) < 0:
            raise ConfigError("optimizer state: tensor 'optimizer.step' must be one "
                              f"non-negative integer of shape [1] (got {step.dtype} "
                              f"{list(step.shape)})")
        for name, cur in self.state.items():
            a = np.asarray(state[name])
            if a.shape != cur.shape or a.dtype.kind != "f":
                raise ConfigError(f"optimizer state: tensor '{name}' is {a.dtype} "
                                  f"{list(a.shape)}, expected a float tensor of shape "
                                  f"{list(cur.shape)}")
            if not np.all(np.isfinite(a)):
                raise ConfigError(f"optimizer state: tensor '{name}' is not finite")
            self.state[name] = _store(a, self.storage)
        self.step_count = int(step[0])

    def state_tensors(self) -> dict[str, np.ndarray]:
        out = {n: np.asarray(a, dtype=self.storage) for n, a in self.state.items()}
        out["optimizer.step"] = np.array([self.step_count], dtype=np.int64)
        return out

    def step(self, weights: dict[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """One update of every weight in ``grads`` (in place in ``weights``)."""
        c = self.cfg
        self.step_count += 1
        n = self.step_count
        for name, g in grads.items():
            p = weights[name]
            if c.name == "adamw":
                b1, b2 = c.betas
                m, v = self.state[name + ".exp_avg"], self.state[name + ".exp_avg_sq"]
                p = p * (1.0 - c.lr * c.weight_decay)
                m = _store(m * b1 + g * (1.0 - b1), self.storage)
                v = _store(v * b2 + g * g * (1.0 - b2), self.storage)
                step_size = c.lr / (1.0 - b1**n)
                denom = np.sqrt(v) / math.sqrt(1.0 - b2**n) + c.eps
                p = p + (-step_size) * (m / denom)
                self.state[name + ".exp_avg"] = m
                self.state[name + ".exp_avg_sq"] = v
            else:
                d = g + p * c.weight_decay if c.weight_decay != 0 else g
                key = name + ".momentum_buffer"
                if c.momentum != 0:  # the buffer is state: the update reads it stored
                    d = _store(self.state[key] * c.momentum + d if n > 1 else d,
                               self.storage)
                self.state[key] = _store(d, self.storage)  # with momentum 0: a record
                p = p + d * (-c.lr)
            weights[name] = _store(p, self.storage)


def update_selection_bias(bias: np.ndarray, load: np.ndarray, tokens: int, top_k: int,
                          rate: float, storage: type = np.float32) -> np.ndarray:
    """DeepSeek-V3's aux-loss-free balancing: ``bias + rate * sign(mean_load - load)``,
    ``mean_load = T * k / E`` over the expert counts of the step (before capacity)."""
    mean_load = tokens * top_k / load.size
    return _store(bias + _f32(rate) * np.sign(mean_load - load), storage)


# -- training loop ----------------------------------------------------------------------

def load_training_weights(cfg: MoEConfig, get: Callable[[str], np.ndarray],
                          layers: range | None = None) -> dict[str, np.ndarray]:
    """Every file tensor of the layer range as float64, checked against its operand."""
    out: dict[str, np.ndarray] = {}
    for _, name, shape in weight_tensors(cfg, layers):
        a = np.asarray(get(name))
        if a.dtype.kind != "f":
            raise ConfigError(f"weights: tensor '{name}' is {a.dtype}, expected a float "
                              "tensor")
        if tuple(a.shape) != tuple(shape):
            raise ConfigError(f"weights: tensor '{name}' has shape {list(a.shape)}, "
                              f"expected {list(shape)}")
        if not np.all(np.isfinite(a)):
            raise ConfigError(f"weights: tensor '{name}' is not finite")
        out[name] = a.astype(np.float64)
    return out


def grad_norm(grads: Mapping[str, np.ndarray]) -> float:
    """The global L2 norm over every element of every gradient (spec 7.5)."""
    return math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64)))
                         for g in grads.values()))


def clip_factor(norm: float, max_norm: float | None) -> float:
    """torch.nn.utils.clip_grad_norm_'s factor: ``max_norm / (norm + 1e-6)`` when
    that is below 1, else 1 (no clipping; also without ``max_norm``)."""
    if max_norm is None:
        return 1.0
    coef = _f32(max_norm) / (norm + 1e-6)
    return coef if coef < 1.0 else 1.0


def train(cfg: MoEConfig, hidden_states: np.ndarray, targets: np.ndarray,
          weights: dict[str, np.ndarray], opt: Optimizer, steps: int,
          layers: range | None = None, bias_update_rate: float = DEFAULT_BIAS_UPDATE_RATE,
          on_step: Callable[[int, StepResult], None] | None = None,
          clip_grad_norm: float | None = None,
          forced_routing: Mapping[str, np.ndarray] | None = None,
          token_mask: np.ndarray | None = None) -> list[StepResult]:
    """``steps`` training steps on one batch; updates ``weights`` and ``opt`` in place.

    Each step: forward and backward with the current weights, the gradient norm
    (and, with ``clip_grad_norm``, the gradients scaled by :func:`clip_factor`), the
    optimizer step on every weight with a gradient, then the selection-bias update of
    every layer that has one. A non-finite loss or gradient raises
    :class:`TrainError` naming the step (numbered from 1 within this call, and
    globally by the optimizer's counter). ``res.grads`` stay unclipped.
    """
    if clip_grad_norm is not None and not (math.isfinite(clip_grad_norm)
                                           and clip_grad_norm > 0):
        raise ConfigError(f"clip-grad-norm: must be a finite number > 0 (got "
                          f"{clip_grad_norm})")
    results = []
    x = np.asarray(hidden_states, dtype=np.float64)
    for i in range(1, steps + 1):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            # overflow shows up as a non-finite loss or gradient, reported below
            res = forward_backward(cfg, x, targets, weights.__getitem__, layers,
                                   forced_routing=forced_routing, token_mask=token_mask)
        where = f"step {i} (optimizer step {opt.step_count + 1})"
        if not math.isfinite(res.loss):
            raise TrainError(f"{where}: the loss is {res.loss}")
        for name, g in res.grads.items():
            if not np.all(np.isfinite(g)):
                raise TrainError(f"{where}: the gradient of '{name}' is not finite")
        res.grad_norm = grad_norm(res.grads)
        res.clip_coef = clip_factor(res.grad_norm, clip_grad_norm)
        results.append(res)
        if on_step is not None:
            on_step(i, res)
        grads = res.grads
        if res.clip_coef != 1.0:
            grads = {n: g * res.clip_coef for n, g in grads.items()}
        opt.step(weights, grads)
        for name, load in res.loads.items():
            weights[name] = update_selection_bias(weights[name], load, x.shape[0],
                                                  cfg.top_k, bias_update_rate, opt.storage)
    return results


def init_targets(cfg: MoEConfig, path: str | os.PathLike[str], tokens: int, seed: int,
                 dtype: str = "f32") -> None:
    """Write targets ``hidden_states`` [tokens, D] drawn from N(0, 1) (a generator of
    its own, so the same seed gives targets other than init-inputs' inputs)."""
    t = _rng(seed, "targets").standard_normal((tokens, cfg.hidden_size))
    save(path, {"hidden_states": t.astype(np.float32)}, dtypes=dtype,
         metadata={"generator": "moe_compiler init-targets", "seed": str(seed)})
