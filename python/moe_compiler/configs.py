"""A normalized MoE configuration, read from Hugging Face ``config.json`` files.

Every family stores the same few facts (experts, top-k, expert width, routing rule,
which layers are sparse) under its own names and with its own quirks. This module
reads them once into :class:`MoEConfig`, the single description the reference, the
emitter and ``info`` use, so that no other module knows a family's field names.
The per-family rules (and where they deviate from the plain spec) are listed in
docs/frontend.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "ACTIVATIONS",
    "Arch",
    "Attention",
    "ConfigError",
    "MESH_AXES",
    "Mesh",
    "MoEConfig",
    "NATIVE_MODEL_TYPE",
    "SUPPORTED_MODEL_TYPES",
    "from_hf_dict",
    "load_hf_config",
    "parse_layers",
    "parse_mesh",
]

ACTIVATIONS = ("relu", "gelu", "swiglu", "geglu")
GATED = ("swiglu", "geglu")


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line naming the field."""


@dataclass(frozen=True)
class Attention:
    """The attention block of one layer, only as far as parameter counting needs it."""

    kind: str = "mha"  # "mha" (with GQA/MQA through num_kv_heads) or "mla" (DeepSeek)
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    q_lora_rank: int = 0  # MLA; 0 = a plain q projection
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm: str = "none"  # "head" (weights of head_dim, Qwen3) or "full" (OLMoE)
    relative_buckets: int = 0  # T5-style relative position bias, first layer of a stack


@dataclass(frozen=True)
class Arch:
    """Everything outside the FFN stack (embeddings, attention, norms): used by ``info``."""

    vocab_size: int = 0
    tie_embeddings: bool = False
    learned_positions: int = 0  # rows of a learned position table (GPT style), else 0
    attention: Attention = field(default_factory=Attention)
    norm_bias: bool = False  # LayerNorm with bias (GPT style)
    ffn_bias: bool = False  # biases in the FFN matmuls (GPT style; counted, never emitted)
    # Encoder-decoder models: the graph stack is the encoder; the decoder (with
    # cross-attention) is counted by ``info`` only.
    decoder_layer_kinds: tuple[str, ...] = ()
    decoder_layer_experts: tuple[int, ...] = ()


@dataclass(frozen=True)
class MoEConfig:
    """One MoE model, normalized. Field meanings follow docs/spec.md section 3."""

    name: str
    family: str  # a model_type, or "generic" for the seed's presets
    hidden_size: int
    layer_kinds: tuple[str, ...]  # per layer: "moe", "dense", or "moe+dense" (ST-MoE)
    layer_experts: tuple[int, ...]  # routed experts per layer, 0 for dense layers
    top_k: int
    moe_intermediate_size: int
    dense_intermediate_size: int
    activation: str  # of the experts (and shared experts)
    dense_activation: str = ""  # of dense layers; "" = same as activation
    score_func: str = "softmax"
    renormalize: bool = False
    routed_scaling: float = 1.0
    num_groups: int = 1
    groups_kept: int = 1
    group_score: str = "max"  # "max" or "top2_sum"
    selection_bias: bool = False  # DeepSeek-V3 e_score_correction_bias
    capacity_factor: float = 0.0  # 0 = dropless
    capacity: int = 0  # absolute capacity per token group; overrides capacity_factor
    min_capacity: int = 0
    token_groups: int = 1
    drop_policy: str = "zero"  # or "passthrough" (Switch: dropped -> weight * x)
    num_shared_experts: int = 0
    shared_intermediate_size: int = 0  # total width Fs of the shared MLP
    shared_gated: bool = False  # Qwen: shared output times sigmoid(x . w)
    norm: str = "rmsnorm"  # or "layernorm" (DBRX: LayerNorm without bias)
    norm_eps: float = 1e-6
    aux_loss_coeff: float = 0.0  # in the graph; 0 = no load-balance loss output
    z_loss_coeff: float = 0.0
    published_aux_loss_coeff: float = 0.0  # what the model was trained with (info only)
    published_z_loss_coeff: float = 0.0
    arch: Arch = field(default_factory=Arch)
    notes: tuple[str, ...] = ()  # how this family deviates from the plain spec

    # -- derived ------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    @property
    def num_experts(self) -> int:
        """The largest expert count of any layer (all layers agree except PR-MoE)."""
        return max(self.layer_experts, default=0)

    @property
    def dense_act(self) -> str:
        return self.dense_activation or self.activation

    def is_moe(self, layer: int) -> bool:
        return self.layer_kinds[layer] != "dense"

    def with_overrides(self, **changes: Any) -> MoEConfig:
        """A copy with ``changes`` applied (None values are ignored) and re-validated."""
        changes = {k: v for k, v in changes.items() if v is not None}
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent field."""
        def bad(fieldname: str, why: str) -> ConfigError:
            return ConfigError(f"{self.name}: {fieldname} {why}")

        if self.hidden_size <= 0:
            raise bad("hidden_size", f"must be positive (got {self.hidden_size})")
        if len(self.layer_kinds) != len(self.layer_experts) or not self.layer_kinds:
            raise bad("layer_kinds", "must be non-empty and match layer_experts")
        for i, (kind, e) in enumerate(zip(self.layer_kinds, self.layer_experts)):
            if kind not in ("moe", "dense", "moe+dense"):
                raise bad("layer_kinds", f"[{i}] = {kind!r} is not moe, dense or moe+dense")
            if kind != "dense" and e < self.top_k:
                raise bad("top_k", f"({self.top_k}) exceeds the experts of layer {i} ({e})")
            if kind != "dense" and e % self.num_groups:
                raise bad("num_groups", f"({self.num_groups}) does not divide the {e} "
                          f"experts of layer {i}")
        if any(k != "dense" for k in self.layer_kinds) and self.moe_intermediate_size <= 0:
            raise bad("moe_intermediate_size", "must be positive")
        if self.top_k <= 0:
            raise bad("top_k", f"must be positive (got {self.top_k})")
        if self.activation not in ACTIVATIONS:
            raise bad("activation", f"{self.activation!r} is not one of "
                      f"{', '.join(ACTIVATIONS)}")
        if self.dense_act not in ACTIVATIONS:
            raise bad("dense_activation", f"{self.dense_act!r} is not one of "
                      f"{', '.join(ACTIVATIONS)}")
        if self.score_func not in ("softmax", "sigmoid"):
            raise bad("score_func", f"{self.score_func!r} is not softmax or sigmoid")
        if self.group_score not in ("max", "top2_sum"):
            raise bad("group_score", f"{self.group_score!r} is not max or top2_sum")
        if not 1 <= self.groups_kept <= self.num_groups:
            raise bad("groups_kept", f"({self.groups_kept}) must be in [1, num_groups "
                      f"= {self.num_groups}]")
        if self.num_groups > 1:
            for i, e in enumerate(self.layer_experts):
                if e and self.groups_kept * (e // self.num_groups) < self.top_k:
                    raise bad("groups_kept", f"({self.groups_kept}) leaves fewer than top_k "
                              f"= {self.top_k} experts in layer {i}")
        # `not >= 0` also rejects NaN, which every later "> 0" / "<= 0" test
        # would read inconsistently.
        if not self.capacity_factor >= 0 or self.capacity < 0 or self.min_capacity < 0:
            raise bad("capacity_factor", "capacity_factor, capacity and min_capacity must "
                      "be >= 0")
        if self.token_groups <= 0:
            raise bad("token_groups", f"must be positive (got {self.token_groups})")
        if self.drop_policy not in ("zero", "passthrough"):
            raise bad("drop_policy", f"{self.drop_policy!r} is not zero or passthrough")
        # The rules of moe.layer's verifier (LayerOp::verify), so that emit
        # never writes a graph that only moe-opt rejects.
        dropless = self.capacity == 0 and self.capacity_factor <= 0
        if dropless and self.token_groups != 1:
            raise bad("token_groups", f"({self.token_groups}) needs a capacity: dropless "
                      "routing has no token groups (set capacity_factor or capacity)")
        if dropless and self.drop_policy == "passthrough":
            raise bad("drop_policy", "'passthrough' needs a capacity")
        if not self.routed_scaling > 0:
            raise bad("routed_scaling", f"must be positive (got {self.routed_scaling})")
        if self.num_groups > 1 and self.group_score == "top2_sum":
            for i, e in enumerate(self.layer_experts):
                if e and e // self.num_groups < 2:
                    raise bad("group_score", f"'top2_sum' needs at least 2 experts per "
                              f"group, layer {i} has {e // self.num_groups}")
        if self.num_shared_experts and self.shared_intermediate_size <= 0:
            raise bad("shared_intermediate_size", "must be positive with shared experts")
        if self.shared_gated and not self.num_shared_experts:
            raise bad("shared_gated", "needs a shared expert")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise bad("norm", f"{self.norm!r} is not rmsnorm or layernorm")
        if self.norm_eps <= 0:
            raise bad("norm_eps", "must be positive")
        if self.aux_loss_coeff < 0 or self.z_loss_coeff < 0:
            raise bad("aux_loss_coeff", "loss coefficients must be >= 0")

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view (the ``config`` subcommand prints it)."""
        d = dataclasses.asdict(self)
        d["num_layers"] = self.num_layers
        d["num_experts"] = self.num_experts
        return d


# -- mesh and layer ranges ------------------------------------------------------------

@dataclass(frozen=True)
class Mesh:
    """Device mesh degrees: tokens over dp x ep, experts over ep, expert FFN width over tp."""

    dp: int = 1
    ep: int = 1
    tp: int = 1

    @property
    def size(self) -> int:
        return self.dp * self.ep * self.tp

    def spec(self) -> str:
        return f"dp={self.dp},ep={self.ep},tp={self.tp}"

    def check(self, cfg: MoEConfig, layers: range | None = None,
              tokens: int | None = None) -> None:
        """Raise ConfigError when this mesh cannot shard ``cfg`` (naming the field)."""
        layers = layers if layers is not None else range(cfg.num_layers)
        for i in layers:
            e = cfg.layer_experts[i]
            if e and e % self.ep:
                raise ConfigError(f"mesh: ep={self.ep} does not divide num_experts={e} "
                                  f"(layer {i})")
        widths = [("moe_intermediate_size", cfg.moe_intermediate_size)]
        if cfg.num_shared_experts:
            widths.append(("shared_intermediate_size", cfg.shared_intermediate_size))
        if any(cfg.layer_kinds[i] != "moe" for i in layers):
            widths.append(("dense_intermediate_size", cfg.dense_intermediate_size))
        for name, width in widths:
            if width and width % self.tp:
                raise ConfigError(f"mesh: tp={self.tp} does not divide {name}={width}")
        if tokens is not None and tokens % (self.dp * self.ep):
            raise ConfigError(f"mesh: dp*ep={self.dp * self.ep} does not divide "
                              f"tokens={tokens}")


# The rules and messages of parse_mesh are those of the compiler's parseMeshSpec
# (lib/Dialect/MoE/IR/Mesh.cpp); change both together.
MESH_AXES = ("dp", "ep", "tp")  # the known axes, in canonical (row-major) order
_MAX_SIZE = 2**63 - 1  # an int64
_MAX_RANKS = 2**31 - 1  # ranks are MPI ranks (C ints)
_DIGITS = re.compile(r"[0-9]+")


def parse_mesh(text: str | None) -> Mesh:
    """Parse ``dp=1,ep=2,tp=2`` (any subset, any order; axes left out are 1).

    No text (``None`` or ``""``) is the single-device mesh. Errors name the bad
    part: an entry that is not axis=size, a size that is not a positive integer or
    is too large, an unknown axis, an axis given twice, an empty spec or entry, or
    more ranks than an MPI rank can count.
    """
    if not text:
        return Mesh()

    def bad(message: str) -> ConfigError:
        return ConfigError(f"mesh: {message}")

    if not text.strip():
        raise bad("empty mesh spec (expected axis=size pairs, e.g. dp=1,ep=2,tp=2)")
    values: dict[str, int] = {}
    given: dict[str, str] = {}
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise bad(f"empty entry in '{text}' (expected axis=size pairs separated "
                      "by commas)")
        axis, sep, size = (s.strip() for s in part.partition("="))
        if not sep or not axis:
            raise bad(f"'{part}' is not axis=size (e.g. ep=2)")
        if axis not in MESH_AXES:
            raise bad(f"unknown axis '{axis}' (axes are {', '.join(MESH_AXES)})")
        if axis in given:
            raise bad(f"axis '{axis}' is given twice ('{given[axis]}' and '{part}')")
        given[axis] = part
        if not _DIGITS.fullmatch(size):
            raise bad(f"'{part}': size '{size}' is not a positive integer")
        n = int(size)
        if n > _MAX_SIZE:
            raise bad(f"'{part}': size {size} is too large")
        if n < 1:
            raise bad(f"'{part}': size {size} is not a positive integer")
        values[axis] = n
    if math.prod(values.values()) > _MAX_RANKS:
        raise bad(f"'{text}' has more than {_MAX_RANKS} ranks")
    return Mesh(**values)


def parse_layers(text: str | None, num_layers: int) -> range:
    """Parse ``A:B`` (either side optional, Python slice rules without negatives)."""
    if not text:
        return range(num_layers)
    a, sep, b = text.partition(":")
    try:
        start = int(a) if a else 0
        stop = int(b) if b else num_layers
        if not sep:
            stop = start + 1
    except ValueError:
        raise ConfigError(f"layers: {text!r} is not A:B") from None
    if not 0 <= start < stop <= num_layers:
        raise ConfigError(f"layers: {text!r} is not a non-empty range inside [0, {num_layers})")
    return range(start, stop)


# -- reading Hugging Face config.json -------------------------------------------------

class _Fields:
    """Typed access to one config dict, with errors that name the file and field."""

    def __init__(self, d: Mapping[str, Any], source: str, model_type: str,
                 prefix: str = "") -> None:
        self.d, self.source, self.model_type, self.prefix = d, source, model_type, prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: field '{self._name(key)}' {why} "
                           f"(model_type {self.model_type})")

    def has(self, key: str) -> bool:
        return self.d.get(key) is not None

    def int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        v = self.d.get(key, default)
        if v is None:
            if default is None:
                raise self.error(key, "is missing")
            v = default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, f"must be an integer (got {v!r})")
        if v < minimum:
            raise self.error(key, f"must be >= {minimum} (got {v})")
        return v

    def float(self, key: str, default: float) -> float:
        v = self.d.get(key, default)
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.error(key, f"must be a number (got {v!r})")
        return float(v)

    def bool(self, key: str, default: bool) -> bool:
        v = self.d.get(key, default)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.error(key, f"must be true or false (got {v!r})")
        return v

    def str(self, key: str, default: str | None = None) -> str:
        v = self.d.get(key, default)
        if v is None:
            raise self.error(key, "is missing")
        if not isinstance(v, str):
            raise self.error(key, f"must be a string (got {v!r})")
        return v

    def int_list(self, key: str) -> list[int]:
        v = self.d.get(key) or []
        if not isinstance(v, list) or not all(isinstance(x, int) for x in v):
            raise self.error(key, f"must be a list of integers (got {v!r})")
        return v

    def sub(self, key: str) -> _Fields:
        v = self.d.get(key)
        if v is None:
            raise self.error(key, "is missing")
        if not isinstance(v, dict):
            raise self.error(key, "must be an object")
        return _Fields(v, self.source, self.model_type, f"{self._name(key)}.")


def _gated_activation(f: _Fields, key: str, default: str = "silu") -> tuple[str, tuple[str, ...]]:
    """Map a decoder family's hidden_act to our gated activation."""
    act = f.str(key, default)
    if act in ("silu", "swish"):
        return "swiglu", ()
    if act == "gelu":
        return "geglu", ()
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return "geglu", (f"{key}={act} (tanh GeLU) is computed with the exact erf GeLU",)
    raise f.error(key, f"{act!r} is not supported (silu or gelu)")


def _mha(f: _Fields, hidden: int, heads_key: str = "num_attention_heads",
         kv_key: str = "num_key_value_heads", **extra: Any) -> Attention:
    heads = f.int(heads_key)
    kv = f.int(kv_key, heads)
    head_dim = f.int("head_dim", hidden // heads)  # absent or null: hidden / heads
    return Attention(kind="mha", num_heads=heads, num_kv_heads=kv, head_dim=head_dim, **extra)


def _uniform(n: int, moe: Callable[[int], bool], experts: int) -> tuple[tuple[str, ...],
                                                                        tuple[int, ...]]:
    kinds = tuple("moe" if moe(i) else "dense" for i in range(n))
    return kinds, tuple(experts if k == "moe" else 0 for k in kinds)


def _mixtral(f: _Fields, name: str) -> MoEConfig:
    d = f.int("hidden_size")
    e = f.int("num_local_experts")
    kinds, experts = _uniform(f.int("num_hidden_layers"), lambda i: True, e)
    act, notes = _gated_activation(f, "hidden_act")
    return MoEConfig(
        name=name, family="mixtral", hidden_size=d, layer_kinds=kinds, layer_experts=experts,
        top_k=f.int("num_experts_per_tok"), moe_intermediate_size=f.int("intermediate_size"),
        dense_intermediate_size=0, activation=act, score_func="softmax", renormalize=True,
        norm_eps=f.float("rms_norm_eps", 1e-5),
        published_aux_loss_coeff=f.float("router_aux_loss_coef", 0.001),
        arch=Arch(vocab_size=f.int("vocab_size", 32000),
                  tie_embeddings=f.bool("tie_word_embeddings", False),
                  attention=_mha(f, d)),
        notes=notes + ("router_jitter_noise is training-only and ignored",),
    )


def _qwen_moe(f: _Fields, name: str) -> MoEConfig:
    d = f.int("hidden_size")
    e = f.int("num_experts")
    step = f.int("decoder_sparse_step", 1)
    dense_only = set(f.int_list("mlp_only_layers"))
    kinds, experts = _uniform(f.int("num_hidden_layers"),
                              lambda i: i not in dense_only and (i + 1) % step == 0, e)
    act, notes = _gated_activation(f, "hidden_act")
    qwen2 = f.model_type == "qwen2_moe"
    shared = f.int("shared_expert_intermediate_size", 0, minimum=0) if qwen2 else 0
    attn = (_mha(f, d, qkv_bias=True) if qwen2
            else _mha(f, d, qkv_bias=f.bool("attention_bias", False), qk_norm="head"))
    return MoEConfig(
        name=name, family=f.model_type, hidden_size=d, layer_kinds=kinds, layer_experts=experts,
        top_k=f.int("num_experts_per_tok"), moe_intermediate_size=f.int("moe_intermediate_size"),
        dense_intermediate_size=f.int("intermediate_size", 0, minimum=0),
        activation=act, score_func="softmax",
        renormalize=f.bool("norm_topk_prob", False),
        num_shared_experts=1 if shared else 0, shared_intermediate_size=shared,
        shared_gated=bool(shared), norm_eps=f.float("rms_norm_eps", 1e-6),
        published_aux_loss_coeff=f.float("router_aux_loss_coef", 0.001),
        arch=Arch(vocab_size=f.int("vocab_size", 151936),
                  tie_embeddings=f.bool("tie_word_embeddings", False), attention=attn),
        notes=notes,
    )


def _olmoe(f: _Fields, name: str) -> MoEConfig:
    d = f.int("hidden_size")
    e = f.int("num_experts")
    kinds, experts = _uniform(f.int("num_hidden_layers"), lambda i: True, e)
    act, notes = _gated_activation(f, "hidden_act")
    return MoEConfig(
        name=name, family="olmoe", hidden_size=d, layer_kinds=kinds, layer_experts=experts,
        top_k=f.int("num_experts_per_tok"), moe_intermediate_size=f.int("intermediate_size"),
        dense_intermediate_size=0, activation=act, score_func="softmax",
        renormalize=f.bool("norm_topk_prob", False), norm_eps=f.float("rms_norm_eps", 1e-5),
        published_aux_loss_coeff=f.float("router_aux_loss_coef", 0.01),
        arch=Arch(vocab_size=f.int("vocab_size", 50304),
                  tie_embeddings=f.bool("tie_word_embeddings", False),
                  attention=_mha(f, d, qkv_bias=f.bool("attention_bias", False),
                                 qk_norm="full")),
        notes=notes,
    )


def _deepseek(f: _Fields, name: str) -> MoEConfig:
    d = f.int("hidden_size")
    e = f.int("n_routed_experts")
    k = f.int("num_experts_per_tok")
    first_dense = f.int("first_k_dense_replace", 0, minimum=0)
    freq = f.int("moe_layer_freq", 1)
    kinds, experts = _uniform(f.int("num_hidden_layers"),
                              lambda i: i >= first_dense and i % freq == 0, e)
    act, notes = _gated_activation(f, "hidden_act")
    notes = list(notes)
    v3 = f.model_type == "deepseek_v3"
    method = f.str("topk_method", "noaux_tc" if v3 else "greedy")
    score = f.str("scoring_func", "sigmoid" if v3 else "softmax")
    if score not in ("softmax", "sigmoid"):
        raise f.error("scoring_func", f"{score!r} is not softmax or sigmoid")
    groups, kept, group_score, bias = 1, 1, "max", False
    if method in ("group_limited_greedy", "noaux_tc"):
        groups = f.int("n_group", 1)
        kept = f.int("topk_group", 1)
        group_score = "max" if method == "group_limited_greedy" else "top2_sum"
        bias = method == "noaux_tc"
        notes.append("experts of dropped groups are excluded outright; HF masks their "
                     "scores to 0.0, which can differ only if a kept score is below 0")
    elif method not in ("greedy", "gready"):  # "gready" is the HF config class's default
        raise f.error("topk_method", f"{method!r} is not greedy, group_limited_greedy "
                      "or noaux_tc")
    norm_topk = f.bool("norm_topk_prob", False) and k > 1
    scaling = f.float("routed_scaling_factor", 1.0)
    if not v3 and norm_topk and scaling != 1.0:
        # DeepSeek-V1/V2 code scales only when it does not renormalize.
        notes.append("V2 applies routed_scaling_factor only without renormalization")
        scaling = 1.0
    n_shared = f.int("n_shared_experts", 0, minimum=0)
    fe = f.int("moe_intermediate_size")
    if f.model_type == "deepseek":
        attn = _mha(f, d)
    else:
        attn = Attention(
            kind="mla", num_heads=f.int("num_attention_heads"),
            num_kv_heads=f.int("num_attention_heads"),
            q_lora_rank=f.int("q_lora_rank", 0, minimum=0),
            kv_lora_rank=f.int("kv_lora_rank"), qk_nope_head_dim=f.int("qk_nope_head_dim"),
            qk_rope_head_dim=f.int("qk_rope_head_dim"), v_head_dim=f.int("v_head_dim"))
    return MoEConfig(
        name=name, family=f.model_type, hidden_size=d, layer_kinds=kinds,
        layer_experts=experts, top_k=k, moe_intermediate_size=fe,
        dense_intermediate_size=f.int("intermediate_size", 0, minimum=0), activation=act,
        score_func=score, renormalize=norm_topk, routed_scaling=scaling, num_groups=groups,
        groups_kept=kept, group_score=group_score, selection_bias=bias,
        num_shared_experts=n_shared, shared_intermediate_size=n_shared * fe,
        norm_eps=f.float("rms_norm_eps", 1e-6),
        published_aux_loss_coeff=f.float("aux_loss_alpha", 0.001),
        arch=Arch(vocab_size=f.int("vocab_size", 102400),
                  tie_embeddings=f.bool("tie_word_embeddings", False), attention=attn),
        notes=tuple(notes),
    )


def _switch_sparse(step: int) -> Callable[[int], bool]:
    # HF SwitchTransformersStack: is_sparse = (i % step == 1 or step == 1) if step > 0.
    return lambda i: step > 0 and (i % step == 1 or step == 1)


def _switch(f: _Fields, name: str) -> MoEConfig:
    d = f.int("d_model")
    e = f.int("num_experts")
    enc_step = f.int("encoder_sparse_step", 1, minimum=0)
    dec_step = f.int("decoder_sparse_step", 1, minimum=0)
    kinds, experts = _uniform(f.int("num_layers"), _switch_sparse(enc_step), e)
    dkinds, dexperts = _uniform(f.int("num_decoder_layers", f.int("num_layers")),
                                _switch_sparse(dec_step), e)
    act_name = f.str("dense_act_fn", "relu")
    notes = ["top-1 routing with the max softmax probability as weight",
             "expert_capacity is absolute, per token group (HF: per sequence)",
             "a dropped token passes through scaled by its router probability",
             "graph = the encoder FFN stack (encoder.block.{i}.layer.1); "
             "the decoder is counted by info only"]
    if act_name == "relu":
        act = "relu"
    elif act_name in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        act = "gelu"
        if act_name != "gelu":
            notes.append(f"dense_act_fn={act_name} (tanh GeLU) is computed with exact erf")
    else:
        raise f.error("dense_act_fn", f"{act_name!r} is not supported (relu or gelu)")
    if f.int("num_selected_experts", 1) != 1:
        raise f.error("num_selected_experts", "must be 1 (HF Switch routes top-1)")
    if f.bool("is_gated_act", False):
        raise f.error("is_gated_act", "true is not supported (HF Switch experts are not gated)")
    heads = f.int("num_heads")
    return MoEConfig(
        name=name, family="switch_transformers", hidden_size=d, layer_kinds=kinds,
        layer_experts=experts, top_k=1, moe_intermediate_size=f.int("d_ff"),
        dense_intermediate_size=f.int("d_ff"), activation=act, score_func="softmax",
        renormalize=False, capacity=f.int("expert_capacity"), drop_policy="passthrough",
        norm_eps=f.float("layer_norm_epsilon", 1e-6),
        published_aux_loss_coeff=f.float("router_aux_loss_coef", 0.001),
        published_z_loss_coeff=f.float("router_z_loss_coef", 0.001),
        arch=Arch(vocab_size=f.int("vocab_size", 32128),
                  tie_embeddings=f.bool("tie_word_embeddings", True),
                  attention=Attention(num_heads=heads, num_kv_heads=heads,
                                      head_dim=f.int("d_kv"),
                                      relative_buckets=f.int(
                                          "relative_attention_num_buckets", 32)),
                  decoder_layer_kinds=dkinds, decoder_layer_experts=dexperts),
        notes=tuple(notes),
    )


def _dbrx(f: _Fields, name: str) -> MoEConfig:
    d = f.int("d_model")
    ffn = f.sub("ffn_config")
    attn = f.sub("attn_config") if f.has("attn_config") else _Fields({}, f.source,
                                                                      f.model_type)
    e = ffn.int("moe_num_experts")
    kinds, experts = _uniform(f.int("n_layers"), lambda i: True, e)
    act_cfg = ffn.d.get("ffn_act_fn") or {"name": "silu"}
    if not isinstance(act_cfg, dict) or act_cfg.get("name", "silu") not in ("silu", "gelu"):
        raise ffn.error("ffn_act_fn", f"{act_cfg!r} is not supported (silu or gelu)")
    act = "swiglu" if act_cfg.get("name", "silu") == "silu" else "geglu"
    p = ffn.d.get("moe_normalize_expert_weights", 1)
    if p not in (None, 1, 1.0):
        raise ffn.error("moe_normalize_expert_weights", f"{p!r} is not supported (1 or null)")
    heads = f.int("n_heads")
    return MoEConfig(
        name=name, family="dbrx", hidden_size=d, layer_kinds=kinds, layer_experts=experts,
        top_k=ffn.int("moe_top_k"), moe_intermediate_size=ffn.int("ffn_hidden_size"),
        dense_intermediate_size=0, activation=act, score_func="softmax",
        renormalize=p is not None, norm="layernorm", norm_eps=1e-5,
        published_aux_loss_coeff=ffn.float("moe_loss_weight", 0.01),
        arch=Arch(vocab_size=f.int("vocab_size", 100352),
                  tie_embeddings=f.bool("tie_word_embeddings", False),
                  attention=Attention(num_heads=heads,
                                      num_kv_heads=attn.int("kv_n_heads", 1),
                                      head_dim=d // heads)),
        notes=("norm_2 is a LayerNorm without bias; the reference computes it exactly, "
               "the moe dialect has only RMSNorm (see docs/frontend.md)",
               "moe_normalize_expert_weights=1: top-k weights divided by their L1 norm",
               "expert weights are fused [E*F, D]; w2 is stored transposed",
               "moe_jitter_eps is training-only and ignored"),
    )


# -- the native format ("model_type": "moe_compiler") ---------------------------------

NATIVE_MODEL_TYPE = "moe_compiler"
# Conveniences of the native format besides MoEConfig's own fields.
_NATIVE_EXTRA = ("model_type", "_name_or_path", "num_layers", "num_experts")


def _str_list(f: _Fields, key: str) -> list[str]:
    v = f.d.get(key) or []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise f.error(key, f"must be a list of strings (got {v!r})")
    return v


def _reject_unknown(f: _Fields, allowed: list[str]) -> None:
    for key in f.d:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else \
                f"known: {', '.join(sorted(allowed))}"
            raise f.error(key, f"is not a field of this format ({hint})")


def _typed(f: _Fields, key: str, default: Any) -> Any:
    """An optional field, typed (and defaulted) like the dataclass default ``default``."""
    if isinstance(default, bool):
        return f.bool(key, default)
    if isinstance(default, int):
        return f.int(key, default, minimum=1 if default >= 1 else 0)
    if isinstance(default, float):
        return f.float(key, default)
    if isinstance(default, str):
        return f.str(key, default)
    raise AssertionError(f"no reader for field {key}")  # pragma: no cover


def _native_dataclass(f: _Fields, cls: type) -> Any:
    """An Arch or Attention from a JSON object with the dataclass's field names."""
    fields = dataclasses.fields(cls)
    _reject_unknown(f, [fl.name for fl in fields])
    kw: dict[str, Any] = {}
    for fl in fields:
        if not f.has(fl.name):
            continue
        if fl.name == "attention":
            kw[fl.name] = _native_dataclass(f.sub(fl.name), Attention)
        elif fl.name == "decoder_layer_kinds":
            kw[fl.name] = tuple(_str_list(f, fl.name))
        elif fl.name == "decoder_layer_experts":
            kw[fl.name] = tuple(f.int_list(fl.name))
        else:
            kw[fl.name] = _typed(f, fl.name, fl.default)
    return cls(**kw)


def _native(f: _Fields, name: str) -> MoEConfig:
    """Our own format: MoEConfig's field names, family ``generic`` (docs/frontend.md).

    Layers: ``layer_kinds`` (``moe``/``dense``/``moe+dense`` per layer) or
    ``num_layers`` (all ``moe``). Experts: ``layer_experts`` (per layer, 0 for dense
    layers) or ``num_experts`` (every sparse layer). ``hidden_size``, ``top_k``,
    ``activation`` and the intermediate sizes the layers need are required; every
    other field defaults as MoEConfig does.
    """
    fields = {fl.name: fl for fl in dataclasses.fields(MoEConfig)}
    _reject_unknown(f, [k for k in fields if k != "family"] + list(_NATIVE_EXTRA))

    if f.has("layer_kinds"):
        kinds = tuple(_str_list(f, "layer_kinds"))
        if not kinds:
            raise f.error("layer_kinds", "must not be empty")
        if f.has("num_layers") and f.int("num_layers") != len(kinds):
            raise f.error("num_layers", f"({f.int('num_layers')}) disagrees with "
                          f"layer_kinds ({len(kinds)} layers)")
    elif f.has("num_layers"):
        kinds = ("moe",) * f.int("num_layers")
    else:
        raise f.error("num_layers", "is missing (or give layer_kinds)")
    for i, kind in enumerate(kinds):
        if kind not in ("moe", "dense", "moe+dense"):
            raise f.error("layer_kinds", f"[{i}] = {kind!r} is not moe, dense or moe+dense")

    if f.has("layer_experts"):
        if f.has("num_experts"):
            raise f.error("num_experts", "and 'layer_experts' exclude each other")
        experts = tuple(f.int_list("layer_experts"))
        if len(experts) != len(kinds):
            raise f.error("layer_experts", f"has {len(experts)} entries for "
                          f"{len(kinds)} layers")
        for i, (kind, e) in enumerate(zip(kinds, experts)):
            if (kind == "dense") != (e == 0) or e < 0:
                raise f.error("layer_experts", f"[{i}] = {e}: a {kind} layer needs "
                              f"{'0' if kind == 'dense' else 'a positive count'}")
    elif f.has("num_experts"):
        e = f.int("num_experts")
        experts = tuple(0 if k == "dense" else e for k in kinds)
    elif all(k == "dense" for k in kinds):
        experts = (0,) * len(kinds)
    else:
        raise f.error("num_experts", "is missing (or give layer_experts)")

    sparse = any(k != "dense" for k in kinds)
    dense = any(k != "moe" for k in kinds)
    kw: dict[str, Any] = {
        "hidden_size": f.int("hidden_size"),
        "top_k": f.int("top_k") if sparse else f.int("top_k", 1),
        "activation": f.str("activation"),
        "moe_intermediate_size": (f.int("moe_intermediate_size") if sparse
                                  else f.int("moe_intermediate_size", 0, minimum=0)),
        "dense_intermediate_size": (f.int("dense_intermediate_size") if dense
                                    else f.int("dense_intermediate_size", 0, minimum=0)),
    }
    for key, fl in fields.items():
        if key in kw or key in ("name", "family", "layer_kinds", "layer_experts", "arch",
                                "notes"):
            continue
        kw[key] = _typed(f, key, fl.default)
    if kw["num_shared_experts"] and not f.has("shared_intermediate_size"):
        # DeepSeek's convention: n shared experts of the routed experts' width.
        kw["shared_intermediate_size"] = kw["num_shared_experts"] * kw["moe_intermediate_size"]
    arch = _native_dataclass(f.sub("arch"), Arch) if f.has("arch") else Arch()
    return MoEConfig(name=f.str("name", name), family="generic", layer_kinds=kinds,
                     layer_experts=experts, arch=arch, notes=tuple(_str_list(f, "notes")),
                     **kw)


_LOADERS: dict[str, Callable[[_Fields, str], MoEConfig]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "deepseek": _deepseek,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "olmoe": _olmoe,
    "switch_transformers": _switch,
    "dbrx": _dbrx,
    NATIVE_MODEL_TYPE: _native,
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_LOADERS))


def from_hf_dict(d: Mapping[str, Any], source: str = "config.json",
                 name: str | None = None) -> MoEConfig:
    """Normalize a parsed Hugging Face config.json."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: not a JSON object")
    mt = d.get("model_type")
    if not isinstance(mt, str):
        raise ConfigError(f"{source}: field 'model_type' is missing")
    if mt not in _LOADERS:
        raise ConfigError(f"{source}: unknown model_type {mt!r} (supported: "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)})")
    if name is None:
        name = str(d.get("_name_or_path") or _name_from_path(source) or mt)
    cfg = _LOADERS[mt](_Fields(d, source, mt), name)
    cfg.validate()
    return cfg


def _name_from_path(source: str) -> str:
    """``.../Mixtral-8x7B/config.json`` -> ``Mixtral-8x7B``; ``mixtral.json`` -> ``mixtral``."""
    stem = os.path.splitext(os.path.basename(source))[0]
    if stem == "config":
        stem = os.path.basename(os.path.dirname(os.path.abspath(source)))
    return stem


def load_hf_config(path: str | os.PathLike[str]) -> MoEConfig:
    """Read and normalize a config.json (or a directory holding one)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return from_hf_dict(d, source=path)
