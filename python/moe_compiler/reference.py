"""Float64 numpy reference of the numerical specification (docs/spec.md, sections 2-3).

This is the ground truth the compiled modules are checked against, so it is written
for clarity, not speed: plain float64, one step per spec item (3.1-3.8), no fusion.

Two choices keep it bit-for-bit comparable with what the compiler sees:
* attributes the dialect stores as f32 (capacity factor, routed scaling, eps, loss
  coefficients) are rounded to f32 first, so ``C = ceil(cf * T_group * k / E)``
  uses the same ``cf`` the compiled module reads, evaluated left to right in double;
* ties in top-k (and in group selection) go to the lower index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .configs import ConfigError, MoEConfig
from .layout import Sublayer, load_operand, sublayers
from .routing import layer_keys
from .token_mask import check_token_mask

__all__ = [
    "Routing",
    "activation",
    "capacity_for",
    "ffn",
    "kept_mask",
    "layernorm",
    "mask_routing",
    "model_forward",
    "moe_layer",
    "prenorm",
    "rmsnorm",
    "route",
    "routing_losses",
    "sublayer_apply",
    "sublayer_forward",
    "sublayer_weights",
]


def _f32(x: float) -> float:
    """The value an f32 attribute holds."""
    return float(np.float32(x))


# -- elementwise ------------------------------------------------------------------------

try:  # scipy is optional; math.erf is exact but slow per element
    from scipy.special import erf as _erf  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GeLU: x * Phi(x) with the error function (not the tanh approximation)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1)
    return m + np.log(np.exp(x - m[..., None]).sum(axis=-1))


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + _f32(eps)) * w


def layernorm(x: np.ndarray, w: np.ndarray, eps: float,
              b: np.ndarray | None = None) -> np.ndarray:
    """LayerNorm, without bias (DBRX's norm_2) or with one (GPT style)."""
    c = x - x.mean(axis=-1, keepdims=True)
    y = c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + _f32(eps)) * w
    return y if b is None else y + b


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """The pointwise function of an FFN: relu/gelu directly, swiglu/geglu's gate side."""
    if name == "relu":
        return np.maximum(x, 0.0)
    if name in ("gelu", "geglu"):
        return gelu(x)
    if name == "swiglu":
        return silu(x)
    raise ConfigError(f"activation {name!r} is not relu, gelu, swiglu or geglu")


def ffn(x: np.ndarray, act: str, gate: np.ndarray | None, up: np.ndarray,
        down: np.ndarray) -> np.ndarray:
    """One FFN with HF layouts: gate/up [F, D], down [D, F]."""
    if act in ("swiglu", "geglu"):
        if gate is None:
            raise ConfigError(f"activation {act} needs a gate weight")
        h = activation(act, x @ gate.T) * (x @ up.T)
    else:
        h = activation(act, x @ up.T)
    return h @ down.T


# -- routing ----------------------------------------------------------------------------

@dataclass
class Routing:
    """What the router decided for T tokens."""

    logits: np.ndarray  # [T, E]
    scores: np.ndarray  # [T, E] softmax or sigmoid of logits
    idx: np.ndarray  # [T, k] chosen experts, best first
    weights: np.ndarray  # [T, k] combine weights (after renormalize and scaling)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row; ties to the lower index (stable sort)."""
    return np.argsort(-values, axis=-1, kind="stable")[..., :k]


def route(x: np.ndarray, router: np.ndarray, cfg: MoEConfig, num_experts: int,
          bias: np.ndarray | None = None, forced: np.ndarray | None = None) -> Routing:
    """docs/spec.md items 3.1-3.4: logits, scores, selection (bias, groups, top-k), weights.

    ``forced`` ([T, k] experts, a replayed routing): used instead of the selection
    (no bias, no group limit); the weights are computed from the scores as usual.
    """
    t = x.shape[0]
    e, k = num_experts, cfg.top_k
    logits = x @ router.T
    scores = softmax(logits) if cfg.score_func == "softmax" else sigmoid(logits)
    sel = scores + bias if bias is not None else scores.copy()
    if cfg.num_groups > 1:
        g = cfg.num_groups
        grouped = sel.reshape(t, g, e // g)
        if cfg.group_score == "max":
            gscore = grouped.max(axis=-1)
        else:  # top2_sum: the sum of the two best selection scores of the group
            gscore = -np.sort(-grouped, axis=-1)[..., :2].sum(axis=-1)
        keep = np.zeros((t, g), dtype=bool)
        np.put_along_axis(keep, _top(gscore, cfg.groups_kept), True, axis=-1)
        sel = np.where(np.repeat(keep, e // g, axis=-1), sel, -np.inf)
    idx = _top(sel, k) if forced is None else np.asarray(forced, dtype=np.int64)
    # A replayed row of -1 is a padding token of a masked dump: weight 0.
    unrouted = np.all(idx == -1, axis=-1, keepdims=True)
    w = np.where(unrouted, 0.0, np.take_along_axis(scores, np.maximum(idx, 0), axis=-1))
    if cfg.renormalize:
        w = w / np.where(unrouted, 1.0, w.sum(axis=-1, keepdims=True))
    w = w * _f32(cfg.routed_scaling)
    return Routing(logits, scores, idx, w)


def mask_routing(r: Routing, mask: np.ndarray | None) -> Routing:
    """``r`` with the padding rows of ``mask`` (bool [T]) unrouted: expert -1, weight 0
    (what moe.mask_rows makes of them)."""
    if mask is None:
        return r
    real = mask[:, None]
    return Routing(r.logits, r.scores, np.where(real, r.idx, -1), np.where(real, r.weights, 0.0))


def routing_losses(cfg: MoEConfig, r: Routing, num_experts: int,
                   mask: np.ndarray | None = None) -> tuple[float, float, np.ndarray, int]:
    """(load-balance loss, z-loss, expert counts, real tokens) over the real tokens of
    ``mask`` (every token without one); both losses are 0 without real tokens."""
    real = np.ones(r.idx.shape[0], dtype=bool) if mask is None else mask
    n, k = int(real.sum()), r.idx.shape[1]
    idx = r.idx[real]
    load = np.bincount(idx[idx >= 0].ravel(), minlength=num_experts)
    if n == 0:
        return 0.0, 0.0, load, 0
    f = load / (n * k)
    p = r.scores[real].mean(axis=0)
    aux = _f32(cfg.aux_loss_coeff) * num_experts * float(np.sum(f * p))
    z = _f32(cfg.z_loss_coeff) * float(np.mean(logsumexp(r.logits[real]) ** 2))
    return aux, z, load, n


def capacity_for(cfg: MoEConfig, tokens_per_group: int, num_experts: int) -> int:
    """docs/spec.md item 3.5: the per-expert capacity of one token group (0 = dropless).

    As moe.layer defines it: an absolute ``capacity`` is used as is; otherwise
    ``max(min_capacity, 1, ceil(f32(cf) * T_group * k / E))`` evaluated in double.
    """
    if cfg.capacity > 0:
        return cfg.capacity
    if cfg.capacity_factor <= 0:
        return 0
    c = math.ceil(_f32(cfg.capacity_factor) * tokens_per_group * cfg.top_k / num_experts)
    return max(c, 1, cfg.min_capacity)


def kept_mask(idx: np.ndarray, cfg: MoEConfig, num_experts: int) -> np.ndarray:
    """[T, k] bool: which assignments survive capacity (slot-major, tokens in order).

    Expert -1 (a padding token) is not an assignment: never kept, takes no slot. The
    capacity comes from the static T (padding included)."""
    t, k = idx.shape
    groups = cfg.token_groups
    if cfg.capacity <= 0 and cfg.capacity_factor <= 0:
        return idx >= 0
    if t % groups:
        raise ConfigError(f"token_groups={groups} does not divide tokens={t}")
    tg = t // groups
    cap = capacity_for(cfg, tg, num_experts)
    kept = np.zeros((t, k), dtype=bool)
    for g in range(groups):
        rows = slice(g * tg, (g + 1) * tg)
        used = np.zeros(num_experts, dtype=np.int64)
        for j in range(k):  # every token's j-th choice before any (j+1)-th
            col = idx[rows, j]
            onehot = np.eye(num_experts, dtype=np.int64)[np.maximum(col, 0)] * (col >= 0)[:, None]
            position = used + np.cumsum(onehot, axis=0) - 1  # queue position per expert
            at = np.take_along_axis(position, np.maximum(col, 0)[:, None], axis=1)[:, 0]
            kept[rows, j] = (at < cap) & (col >= 0)
            used += onehot.sum(axis=0)
    return kept


# -- layers -----------------------------------------------------------------------------

def moe_layer(x: np.ndarray, w: dict[str, np.ndarray], cfg: MoEConfig,
              num_experts: int, forced: np.ndarray | None = None,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """One MoE block: returns (y, load-balance loss, z-loss) for tokens ``x`` [T, D]
    (``forced``: replayed experts, see :func:`route`; ``mask``: bool [T], False for
    padding, whose row of y is 0)."""
    r = mask_routing(route(x, w["router"], cfg, num_experts, w.get("bias"), forced), mask)
    kept = kept_mask(r.idx, cfg, num_experts)
    y = np.zeros_like(x)
    gate = w.get("gate")
    for e in range(num_experts):
        tok, slot = np.nonzero((r.idx == e) & kept)
        if tok.size:
            out = ffn(x[tok], cfg.activation, None if gate is None else gate[e],
                      w["up"][e], w["down"][e])
            np.add.at(y, tok, r.weights[tok, slot, None] * out)
    if cfg.drop_policy == "passthrough":
        dropped = ~kept & (r.idx >= 0)
        y += (r.weights * dropped).sum(axis=1, keepdims=True) * x
    if cfg.num_shared_experts:
        s = ffn(x, cfg.activation, w.get("shared_gate"), w["shared_up"], w["shared_down"])
        if cfg.shared_gated:
            s = s * sigmoid(x @ w["shared_sigmoid_gate"].T)
        y += s if mask is None else s * mask[:, None]
    aux, z, _, _ = routing_losses(cfg, r, num_experts, mask)
    return y, aux, z


def prenorm(cfg: MoEConfig, x: np.ndarray, w: np.ndarray,
            b: np.ndarray | None = None) -> np.ndarray:
    """The norm in front of every FFN sublayer: the config's RMSNorm or LayerNorm
    (``b``: the LayerNorm's bias, where the config has one)."""
    if cfg.norm == "layernorm":
        return layernorm(x, w, cfg.norm_eps, b)
    return rmsnorm(x, w, cfg.norm_eps)


def sublayer_weights(sub: Sublayer, get: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """Every operand of ``sub`` by role, as float64.

    Separate from :func:`sublayer_apply` so that a caller that also inspects the
    routing (the integration harness, the benchmark) reads each tensor once.
    """
    return {s.role: load_operand(s, get).astype(np.float64) for s in sub.specs()}


def sublayer_forward(cfg: MoEConfig, sub: Sublayer, h: np.ndarray,
                     get: Callable[[str], np.ndarray],
                     forced: np.ndarray | None = None,
                     mask: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """``h + FFN(norm(h))`` for one sublayer, with its losses (``mask``: bool [T],
    padding rows are ``h`` alone)."""
    return sublayer_apply(cfg, sub, h, sublayer_weights(sub, get), forced, mask)


def sublayer_apply(cfg: MoEConfig, sub: Sublayer, h: np.ndarray,
                   w: dict[str, np.ndarray],
                   forced: np.ndarray | None = None,
                   mask: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """:func:`sublayer_forward` on operands already loaded by :func:`sublayer_weights`."""
    n = prenorm(cfg, h, w["norm"], w.get("norm_bias"))
    if sub.kind == "moe":
        y, aux, z = moe_layer(n, w, cfg, sub.num_experts, forced, mask)
    else:
        y = ffn(n, cfg.dense_act, w.get("gate"), w["up"], w["down"])
        if "sigmoid_gate" in w:
            y = y * sigmoid(n @ w["sigmoid_gate"].T)
        if mask is not None:
            y = y * mask[:, None]
        aux = z = 0.0
    return h + y, aux, z


def model_forward(cfg: MoEConfig, hidden_states: np.ndarray,
                  get: Callable[[str], np.ndarray],
                  layers: range | None = None,
                  routing: dict[str, np.ndarray] | None = None,
                  token_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The model graph of ``layers``: outputs by name (float64).

    ``routing`` (layer key -> [T, k] experts, :mod:`.routing`) replays a routing;
    ``token_mask`` ([T], 1 = real token, 0 = padding, :mod:`.token_mask`) masks one.

    ``get`` maps a Hugging Face tensor name to its array (e.g. a lazy
    SafetensorsFile.get), so only the tensors of the layer range are read.
    """
    h = np.asarray(hidden_states, dtype=np.float64)
    if h.ndim != 2 or h.shape[1] != cfg.hidden_size:
        raise ConfigError(f"inputs: hidden_states has shape {list(h.shape)}, expected "
                          f"[T, {cfg.hidden_size}]")
    mask = None if token_mask is None else check_token_mask(token_mask, h.shape[0])
    aux_total = z_total = 0.0
    subs = sublayers(cfg, layers)
    keys = iter(layer_keys(subs))
    for sub in subs:
        forced = None
        if sub.kind == "moe":
            key = next(keys)
            forced = routing[key] if routing is not None else None
        h, aux, z = sublayer_forward(cfg, sub, h, get, forced, mask)
        aux_total += aux
        z_total += z
    out = {"hidden_states": h}
    if cfg.aux_loss_coeff > 0:
        out["aux_loss"] = np.array(aux_total)
    if cfg.z_loss_coeff > 0:
        out["z_loss"] = np.array(z_total)
    return out
