"""Weight names, shapes and operand order of the model graph, per family.

The emitter, the reference and ``init-weights`` must agree on which file tensor
feeds which operand; they all take it from :func:`sublayers`. Names are the
Hugging Face parameter names of the family (docs/module-format.md, *Weight names*):
a name with ``{e}`` is a stack over experts, any other name is one file tensor
reshaped row-major to the operand's shape, and ``transpose`` means the file holds
each trailing matrix transposed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .configs import GATED, ConfigError, MoEConfig

__all__ = ["MLP_ROLES", "MOE_ROLES", "Sublayer", "WeightSpec", "load_operand", "sublayers"]

# Operand keywords of moe.layer / moe.mlp, in the order the dialect takes them.
MOE_ROLES = ("router", "bias", "gate", "up", "down",
             "shared_gate", "shared_up", "shared_down", "shared_sigmoid_gate")
MLP_ROLES = ("gate", "up", "down", "sigmoid_gate")


@dataclass(frozen=True)
class WeightSpec:
    """One graph operand read from the weights file."""

    role: str
    name: str  # Hugging Face name; "{e}" marks a stack over experts
    shape: tuple[int, ...]  # the operand's (graph) shape
    transpose: bool = False  # the file holds every trailing matrix transposed
    file_shape: tuple[int, ...] | None = None  # a single file tensor's own shape, if different

    @property
    def stacked(self) -> bool:
        return "{e}" in self.name

    def _stored(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.transpose:
            return shape[:-2] + (shape[-1], shape[-2])
        return shape

    def file_tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """The (name, shape) of every file tensor this operand reads."""
        if self.stacked:
            each = self._stored(self.shape[1:])
            return [(self.name.replace("{e}", str(e)), each) for e in range(self.shape[0])]
        return [(self.name, self.file_shape or self._stored(self.shape))]


@dataclass(frozen=True)
class Sublayer:
    """One residual FFN sublayer: ``h = h + FFN(norm(h))``."""

    layer: int
    kind: str  # "moe" or "dense"
    num_experts: int
    norm: WeightSpec
    weights: tuple[WeightSpec, ...]  # operands in dialect order
    norm_bias: WeightSpec | None = None  # the LayerNorm's bias (GPT style)

    def get(self, role: str) -> WeightSpec | None:
        return next((w for w in self.weights if w.role == role), None)

    def specs(self) -> tuple[WeightSpec, ...]:
        bias = (self.norm_bias,) if self.norm_bias is not None else ()
        return (self.norm,) + bias + self.weights


@dataclass(frozen=True)
class _Names:
    """Name templates of one family for one layer (None: the family has no such tensor)."""

    norm: str
    router: str
    bias: str | None
    expert: Callable[[str], str]  # role ("gate"/"up"/"down") -> name with {e}
    shared: Callable[[str], str] | None
    shared_sigmoid_gate: str | None
    dense: Callable[[str], str]
    fused_experts: bool = False  # DBRX: [E*F, D] tensors, down stored transposed


def _proj(prefix: str) -> Callable[[str], str]:
    """HF ``{gate,up,down}_proj`` names; non-gated MLPs use up_proj/down_proj as W1/W2."""
    def name(role: str) -> str:
        return f"{prefix}{role}_proj.weight"
    return name


def _names(cfg: MoEConfig, i: int) -> _Names:
    fam = cfg.family
    if fam == "mixtral":
        p = f"model.layers.{i}"
        w = {"gate": "w1", "up": "w3", "down": "w2"}
        return _Names(
            norm=f"{p}.post_attention_layernorm.weight",
            router=f"{p}.block_sparse_moe.gate.weight", bias=None,
            expert=lambda r: f"{p}.block_sparse_moe.experts.{{e}}.{w[r]}.weight",
            shared=None, shared_sigmoid_gate=None,
            dense=lambda r: f"{p}.block_sparse_moe.dense.{r}_proj.weight")
    if fam == "switch_transformers":
        p = f"encoder.block.{i}.layer.1"
        w = {"up": "wi", "down": "wo"}
        return _Names(
            norm=f"{p}.layer_norm.weight", router=f"{p}.mlp.router.classifier.weight",
            bias=None, expert=lambda r: f"{p}.mlp.experts.expert_{{e}}.{w[r]}.weight",
            shared=None, shared_sigmoid_gate=None, dense=lambda r: f"{p}.mlp.{w[r]}.weight")
    if fam == "dbrx":
        p = f"transformer.blocks.{i}"
        w = {"gate": "w1", "up": "v1", "down": "w2"}
        return _Names(
            norm=f"{p}.norm_attn_norm.norm_2.weight", router=f"{p}.ffn.router.layer.weight",
            bias=None, expert=lambda r: f"{p}.ffn.experts.mlp.{w[r]}",
            shared=None, shared_sigmoid_gate=None,
            dense=lambda r: f"{p}.ffn.dense.{r}_proj.weight", fused_experts=True)
    # Qwen2/3-MoE, OLMoE, DeepSeek and our generic presets share the "mlp.*" layout.
    p = f"model.layers.{i}"
    shared_prefix = f"{p}.mlp.shared_expert." if fam == "qwen2_moe" else f"{p}.mlp.shared_experts."
    return _Names(
        norm=f"{p}.post_attention_layernorm.weight", router=f"{p}.mlp.gate.weight",
        bias=f"{p}.mlp.gate.e_score_correction_bias",
        expert=_proj(f"{p}.mlp.experts.{{e}}."),
        shared=_proj(shared_prefix),
        shared_sigmoid_gate=f"{p}.mlp.shared_expert_gate.weight",
        dense=_proj(f"{p}.mlp."))


def _extra_names(i: int) -> tuple[str, Callable[[str], str]]:
    """ST-MoE's extra dense FFN after a sparse one (generic presets only)."""
    p = f"model.layers.{i}"
    return f"{p}.extra_mlp_layernorm.weight", _proj(f"{p}.extra_mlp.")


def _norm_specs(cfg: MoEConfig, name: str) -> tuple[WeightSpec, WeightSpec | None]:
    """The norm's weight and, for a LayerNorm with bias, its bias (HF: ``.bias``)."""
    d = cfg.hidden_size
    bias = None
    if cfg.norm_bias:
        assert name.endswith(".weight"), name
        bias = WeightSpec("norm_bias", name[:-len("weight")] + "bias", (d,))
    return WeightSpec("norm", name, (d,)), bias


def _mlp_specs(name: Callable[[str], str], gated: bool, d: int, f: int,
               prefix: str = "") -> list[WeightSpec]:
    out = []
    if gated:
        out.append(WeightSpec(prefix + "gate", name("gate"), (f, d)))
    out.append(WeightSpec(prefix + "up", name("up"), (f, d)))
    out.append(WeightSpec(prefix + "down", name("down"), (d, f)))
    return out


def _moe_sublayer(cfg: MoEConfig, i: int, n: _Names) -> Sublayer:
    d, f, e = cfg.hidden_size, cfg.moe_intermediate_size, cfg.layer_experts[i]
    gated = cfg.activation in GATED
    ws = [WeightSpec("router", n.router, (e, d))]
    if cfg.selection_bias:
        if n.bias is None:
            raise ConfigError(f"{cfg.name}: selection_bias is not supported by family "
                              f"{cfg.family}")
        ws.append(WeightSpec("bias", n.bias, (e,)))
    roles = ("gate", "up", "down") if gated else ("up", "down")
    for r in roles:
        shape = (e, d, f) if r == "down" else (e, f, d)
        if n.fused_experts:
            # DBRX: one [E*F, D] tensor per role; w2 holds each expert's down transposed.
            ws.append(WeightSpec(r, n.expert(r), shape, transpose=r == "down",
                                 file_shape=(e * f, d)))
        else:
            ws.append(WeightSpec(r, n.expert(r), shape))
    if cfg.num_shared_experts:
        if n.shared is None:
            raise ConfigError(f"{cfg.name}: shared experts are not supported by family "
                              f"{cfg.family}")
        ws += _mlp_specs(n.shared, gated, d, cfg.shared_intermediate_size, "shared_")
        if cfg.shared_gated:
            assert n.shared_sigmoid_gate is not None
            ws.append(WeightSpec("shared_sigmoid_gate", n.shared_sigmoid_gate, (1, d)))
    norm, bias = _norm_specs(cfg, n.norm)
    return Sublayer(i, "moe", e, norm, tuple(ws), bias)


def sublayers(cfg: MoEConfig, layers: range | None = None) -> list[Sublayer]:
    """The residual FFN sublayers of ``layers`` (default: all), in execution order."""
    layers = layers if layers is not None else range(cfg.num_layers)
    d = cfg.hidden_size
    out: list[Sublayer] = []
    for i in layers:
        n = _names(cfg, i)
        kind = cfg.layer_kinds[i]
        if kind == "dense":
            if cfg.dense_intermediate_size <= 0:
                raise ConfigError(f"{cfg.name}: dense_intermediate_size is needed by dense "
                                  f"layer {i}")
            ws = _mlp_specs(n.dense, cfg.dense_act in GATED, d, cfg.dense_intermediate_size)
            nw, nb = _norm_specs(cfg, n.norm)
            out.append(Sublayer(i, "dense", 0, nw, tuple(ws), nb))
            continue
        out.append(_moe_sublayer(cfg, i, n))
        if kind == "moe+dense":
            norm, name = _extra_names(i)
            ws = _mlp_specs(name, cfg.dense_act in GATED, d, cfg.dense_intermediate_size)
            nw, nb = _norm_specs(cfg, norm)
            out.append(Sublayer(i, "dense", 0, nw, tuple(ws), nb))
    return out


def load_operand(spec: WeightSpec, get: Callable[[str], np.ndarray]) -> np.ndarray:
    """Assemble one operand from file tensors, as moe-run does (module-format.md)."""
    want = int(np.prod(spec.shape))
    if spec.stacked:
        parts = []
        for name, shape in spec.file_tensors():
            a = get(name)
            if tuple(a.shape) != shape:
                raise ConfigError(f"weights: tensor '{name}' has shape {list(a.shape)}, "
                                  f"expected {list(shape)}")
            parts.append(a)
        arr = np.stack(parts)
    else:
        a = get(spec.name)
        if a.size != want:
            raise ConfigError(f"weights: tensor '{spec.name}' has shape {list(a.shape)} "
                              f"({a.size} elements), expected {want} elements "
                              f"for {list(spec.shape)}")
        arr = a.reshape(spec._stored(spec.shape))
    if spec.transpose:
        arr = np.swapaxes(arr, -1, -2)
    return np.ascontiguousarray(arr)
