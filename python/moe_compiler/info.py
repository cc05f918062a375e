"""Parameter, FLOP, communication and memory estimates for a model on a mesh.

Conventions (also in docs/frontend.md):

* Parameters count everything a model card counts: embeddings, the LM head when it
  is not tied, learned position tables, attention (with biases, q/k norms, MLA
  low-rank projections), every norm weight, routers, selection biases, experts,
  shared experts. Active = the same with only ``top_k`` routed experts per MoE layer.
  Encoder-decoder models count both stacks.
* FLOPs per token = 2 per multiply-accumulate over the active matmuls: attention
  projections, FFNs, routers and the LM head. Attention scores (QK^T, AV) depend on
  the sequence length and are not included; nor are norms, activations or biases.
  Encoder-decoder models count one token through both stacks.
* All-to-all bytes per token per MoE layer = dispatch + combine, ``slots x D`` values
  each of the activation dtype, times the fraction of tokens that leave their rank
  under uniform routing, ``(ep-1)/ep``. ``slots`` = top_k (dropless) or
  ``E * C / T_group`` (capacity buffers, padding included). With ``tp > 1`` every tp
  rank sends its copy unless duplicate-token dropping (DTD) is on.
* Memory per rank = weights + the peak activations of one MoE layer's forward for
  the rank's tokens ``T / (dp*ep)``. Weights follow moe-shard's rules for what
  moe-compile compiles (the FFN sublayers): routed experts / ep (/ (ep*tp) with
  ``expert_tp``); dense FFNs and shared experts / tp (Megatron: gate/up by rows,
  down by columns); routers, selection biases, norms and the shared experts'
  sigmoid gates replicated. Attention and embeddings, which moe-compile does not
  compile, are counted / tp as Megatron splits them. :func:`graph_weights_per_rank`
  is the same rule over the emitted graph's own operands, which the integration
  tests compare with the compiled manifest's local shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .configs import GATED, Attention, Mesh, MoEConfig
from .layout import sublayers

__all__ = ["ModelInfo", "ParamCount", "count_params", "graph_weights_per_rank",
           "model_info"]

DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2}


@dataclass
class ParamCount:
    """Parameters by kind; ``expert`` is routed-expert FFN weights, the part ep shards."""

    embedding: int = 0  # embeddings, LM head, position tables
    attention: int = 0
    norm: int = 0
    router: int = 0  # router weights and selection biases
    dense_ffn: int = 0  # dense layers' FFNs
    shared: int = 0  # shared experts and their sigmoid gates
    expert: int = 0  # all routed experts
    expert_active: int = 0  # top_k routed experts per MoE layer

    @property
    def total(self) -> int:
        return (self.embedding + self.attention + self.norm + self.router + self.dense_ffn
                + self.shared + self.expert)

    @property
    def active(self) -> int:
        return self.total - self.expert + self.expert_active


def _ffn(d: int, f: int, act: str, bias: bool) -> int:
    gated = act in GATED
    n = (3 if gated else 2) * d * f
    if bias:
        n += (2 if gated else 1) * f + d
    return n


def _attention(a: Attention, d: int) -> int:
    if a.kind == "mla":
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        if a.q_lora_rank:
            q = d * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * a.num_heads * qk
        else:
            q = d * a.num_heads * qk
        kv = (d * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
              + a.kv_lora_rank * a.num_heads * (a.qk_nope_head_dim + a.v_head_dim))
        return q + kv + a.num_heads * a.v_head_dim * d
    q = a.num_heads * a.head_dim
    kv = a.num_kv_heads * a.head_dim
    n = d * q + 2 * d * kv + q * d
    if a.qkv_bias:
        n += q + 2 * kv
    if a.out_bias:
        n += d
    if a.qk_norm == "head":
        n += 2 * a.head_dim
    elif a.qk_norm == "full":
        n += q + kv
    return n


def _ffn_layer(cfg: MoEConfig, kind: str, experts: int, c: ParamCount, norm: int) -> None:
    """Add one layer's FFN part(s) (and their pre-norms) to ``c``."""
    d, bias = cfg.hidden_size, cfg.arch.ffn_bias
    if kind in ("dense", "moe+dense"):
        c.dense_ffn += _ffn(d, cfg.dense_intermediate_size, cfg.dense_act, bias)
        c.norm += norm
    if kind == "dense":
        return
    c.router += experts * d + (experts if cfg.selection_bias else 0)
    one = _ffn(d, cfg.moe_intermediate_size, cfg.activation, bias)
    c.expert += experts * one
    c.expert_active += cfg.top_k * one
    if cfg.num_shared_experts:
        c.shared += _ffn(d, cfg.shared_intermediate_size, cfg.activation, bias)
        c.shared += d if cfg.shared_gated else 0
    c.norm += norm


def count_params(cfg: MoEConfig) -> ParamCount:
    """Whole-model parameter counts (see the module docstring for what is included)."""
    a, d = cfg.arch, cfg.hidden_size
    c = ParamCount()
    norm = d * (2 if a.norm_bias or cfg.norm_bias else 1)
    att = _attention(a.attention, d)
    heads = a.attention.num_heads
    c.embedding = a.vocab_size * d * (1 if a.tie_embeddings else 2) + a.learned_positions * d
    stacks = [(cfg.layer_kinds, cfg.layer_experts, False)]
    if a.decoder_layer_kinds:
        stacks.append((a.decoder_layer_kinds, a.decoder_layer_experts, True))
    for kinds, experts, cross in stacks:
        c.attention += a.attention.relative_buckets * heads
        c.norm += norm  # the stack's final norm
        for kind, e in zip(kinds, experts):
            c.attention += att * (2 if cross else 1)
            c.norm += norm * (2 if cross else 1)  # pre-attention (and pre-cross) norms
            _ffn_layer(cfg, kind, e, c, norm)
    return c


@dataclass
class ModelInfo:
    params_total: int
    params_active: int
    flops_per_token: int
    a2a_bytes_per_token_per_layer: float
    memory_per_rank_bytes: int
    breakdown: dict[str, int]
    weights_per_rank_bytes: int
    activations_per_rank_bytes: int
    moe_layers: int
    tokens: int
    mesh: str
    dtype: str

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _slots_per_token(cfg: MoEConfig, tokens_per_rank: int) -> float:
    """Expert-buffer rows per token: top_k dropless, E*C/T_group with capacity."""
    e = cfg.num_experts
    if cfg.capacity <= 0 and cfg.capacity_factor <= 0:
        return float(cfg.top_k)
    tg = max(1, tokens_per_rank // max(1, cfg.token_groups))
    if cfg.capacity > 0:
        cap = cfg.capacity
    else:
        cap = math.ceil(cfg.capacity_factor * tg * cfg.top_k / e)
    cap = max(cap, cfg.min_capacity)
    return e * cap / tg


# How moe-shard splits each operand of the emitted graph, by the operand's role
# (layout.MOE_ROLES / MLP_ROLES): the mesh axes whose product divides it.
_EXPERT_ROLES = ("gate", "up", "down")  # of a MoE sublayer: stacks over experts
_TP_ROLES = ("gate", "up", "down", "shared_gate", "shared_up", "shared_down")


def _split(kind: str, role: str, mesh: Mesh, expert_tp: bool) -> int:
    if kind == "moe" and role in _EXPERT_ROLES:
        return mesh.ep * (mesh.tp if expert_tp else 1)
    if role in _TP_ROLES:  # dense FFN (any role) or shared expert
        return mesh.tp
    return 1  # norms, routers, selection biases, sigmoid gates


def graph_weights_per_rank(cfg: MoEConfig, mesh: Mesh, layers: range | None = None,
                           expert_tp: bool = False) -> int:
    """Weight elements one rank holds of the graph ``emit`` writes for ``layers``.

    The same count as the local shapes of the ``moe.weight`` arguments in the manifest
    of ``moe-compile --mesh`` (``--expert-tp`` for ``expert_tp``).
    """
    total = 0
    for sub in sublayers(cfg, layers):
        for w in sub.specs():  # the norm (and its bias) first: replicated
            total += math.prod(w.shape) // _split(sub.kind, w.role, mesh, expert_tp)
    return total


def model_info(cfg: MoEConfig, mesh: Mesh | None = None, tokens: int = 4096,
               dtype: str = "bf16", dtd: bool = False,
               expert_tp: bool = False) -> ModelInfo:
    """Everything ``info`` prints (``expert_tp``: moe-compile's ``--expert-tp``)."""
    mesh = mesh or Mesh()
    mesh.check(cfg)
    b = DTYPE_BYTES[dtype]
    d = cfg.hidden_size
    c = count_params(cfg)
    a = cfg.arch
    # FLOPs: 2 x active matmul weights. Norms and c.embedding (the tables, plus an
    # untied LM head) are not matmuls, but the LM head is one, tied or not.
    matmul = c.active - c.norm - c.embedding + a.vocab_size * d
    flops = 2 * matmul

    tokens_rank = max(1, tokens // (mesh.dp * mesh.ep))
    slots = _slots_per_token(cfg, tokens_rank)
    leave = (mesh.ep - 1) / mesh.ep
    copies = 1 if dtd else mesh.tp
    a2a = 2 * slots * d * b * leave * copies

    moe_layers = sum(k != "dense" for k in cfg.layer_kinds + a.decoder_layer_kinds)
    sigmoid_gates = moe_layers * d if cfg.num_shared_experts and cfg.shared_gated else 0
    expert_split = mesh.ep * (mesh.tp if expert_tp else 1)
    replicated = c.router + c.norm + sigmoid_gates
    sharded_tp = c.embedding + c.attention + c.dense_ffn + c.shared - sigmoid_gates
    weights = (c.expert / expert_split + sharded_tp / mesh.tp + replicated) * b
    f = cfg.moe_intermediate_size
    gated = 2 if cfg.activation in GATED else 1
    f_rank = f / (mesh.tp if expert_tp else 1)
    per_token = (3 * d + 2 * slots * d + slots * gated * f_rank + slots * d) * b
    acts = tokens_rank * per_token + tokens_rank * cfg.num_experts * 4 * 2
    return ModelInfo(
        params_total=c.total, params_active=c.active, flops_per_token=int(flops),
        a2a_bytes_per_token_per_layer=a2a,
        memory_per_rank_bytes=int(math.ceil(weights + acts)),
        breakdown={k: int(v) for k, v in c.__dict__.items()},
        weights_per_rank_bytes=int(math.ceil(weights)),
        activations_per_rank_bytes=int(math.ceil(acts)), moe_layers=moe_layers,
        tokens=tokens, mesh=mesh.spec(), dtype=dtype)
