"""PyTorch versions of the FFN sublayers, for the CPU benchmark and the cross-checks.

Two things live here (torch is needed to import this module; the rest of the
package does not use it):

* ``MixtralRMSNorm``, ``MixtralBlockSparseTop2MLP``, ``MixtralSparseMoeBlock`` and
  ``FfnSublayer``: Hugging Face transformers' modeling_mixtral.py (v4.36-v4.40),
  which is not installed here, re-typed unchanged in what they compute and how:
  router Linear, softmax in f32, topk, renormalize, one_hot expert mask, a Python
  loop over experts with torch.where + index select, per-expert w1/w3/w2 Linear (no
  bias), SiLU, index_add_; around it, as in MixtralDecoderLayer,
  post_attention_layernorm (RMSNorm) before and the residual add after. The
  benchmark (bench/cpu/torch_moe.py) times it; the tests differentiate it with
  torch.autograd. The two f32 upcasts of HF's code are class attributes
  (``upcast_dtype``, ``router_dtype``) so that a float64 check can keep float64.
  ``Qwen2MoeSparseMoeBlock`` / ``Qwen2FfnSublayer`` are transformers' Qwen2-MoE
  block the same way (shared expert with its sigmoid gate, optional renormalization).
* :func:`spec_graph`: docs/spec.md sections 2-3 for every family in torch ops, so
  that torch.autograd can differentiate it; the discrete decisions (top-k, groups,
  capacity) are taken from the numpy reference, since they carry no gradient.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .configs import GATED, MoEConfig
from .layout import sublayers
from .reference import _f32, kept_mask, route

__all__ = ["FfnSublayer", "MixtralBlockSparseTop2MLP", "MixtralRMSNorm",
           "MixtralSparseMoeBlock", "Qwen2FfnSublayer", "Qwen2MoeMLP", "Qwen2MoeSparseMoeBlock",
           "spec_graph"]


class MixtralRMSNorm(nn.Module):
    # HF computes the norm in float32; the float64 cross-check sets torch.float64.
    upcast_dtype = torch.float32

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(self.upcast_dtype)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class MixtralBlockSparseTop2MLP(nn.Module):
    def __init__(self, hidden_dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden_dim, ffn_dim, bias=False)
        self.w2 = nn.Linear(ffn_dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(hidden_dim, ffn_dim, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, hidden_states: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        current_hidden_states = self.act_fn(self.w1(hidden_states)) * self.w3(hidden_states)
        current_hidden_states = self.w2(current_hidden_states)
        return routing_weights * current_hidden_states


class MixtralSparseMoeBlock(nn.Module):
    # HF takes the softmax in float32; the float64 cross-check sets torch.float64.
    router_dtype = torch.float32

    def __init__(self, hidden_dim: int, ffn_dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.ffn_dim = ffn_dim
        self.num_experts = num_experts
        self.top_k = top_k
        self.gate = nn.Linear(self.hidden_dim, self.num_experts, bias=False)
        self.experts = nn.ModuleList(
            [MixtralBlockSparseTop2MLP(hidden_dim, ffn_dim) for _ in range(self.num_experts)])
        self.times: dict[str, float] = {}

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        # router_logits: (batch * sequence_length, n_experts)
        router_logits = self.gate(hidden_states)

        routing_weights = F.softmax(router_logits, dim=1, dtype=self.router_dtype)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        # we cast back to the input dtype
        routing_weights = routing_weights.to(hidden_states.dtype)

        final_hidden_states = torch.zeros(
            (batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype,
            device=hidden_states.device)

        # One hot encode the selected experts to create an expert mask
        # this will be used to easily index which expert is going to be sollicitated
        expert_mask = torch.nn.functional.one_hot(
            selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        t1 = time.perf_counter()

        # Loop over all available experts in the model and perform the computation on each expert
        for expert_idx in range(self.num_experts):
            expert_layer = self.experts[expert_idx]
            idx, top_x = torch.where(expert_mask[expert_idx])

            if top_x.shape[0] == 0:
                continue

            # in torch it is faster to index using lists than torch tensors
            top_x_list = top_x.tolist()
            idx_list = idx.tolist()

            # Index the correct hidden states and compute the expert hidden state for
            # the current expert. We need to make sure to multiply the output hidden
            # states by `routing_weights` on the corresponding tokens (top-1 and top-2)
            current_state = hidden_states[None, top_x_list].reshape(-1, hidden_dim)
            current_hidden_states = expert_layer(
                current_state, routing_weights[top_x_list, idx_list, None])

            # However `index_add_` only support torch tensors for indexing so we'll use
            # the `top_x` tensor here.
            final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))
        final_hidden_states = final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)
        t2 = time.perf_counter()
        self.times = {"routing": t1 - t0, "experts": t2 - t1}
        return final_hidden_states, router_logits


class FfnSublayer(nn.Module):
    """MixtralDecoderLayer's second half: h + block_sparse_moe(post_attention_layernorm(h))."""

    def __init__(self, d: int, f: int, e: int, k: int, eps: float) -> None:
        super().__init__()
        self.post_attention_layernorm = MixtralRMSNorm(d, eps=eps)
        self.block_sparse_moe = MixtralSparseMoeBlock(d, f, e, k)
        self.times: dict[str, float] = {}

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        t1 = time.perf_counter()
        hidden_states, _router_logits = self.block_sparse_moe(hidden_states)
        t2 = time.perf_counter()
        hidden_states = residual + hidden_states
        t3 = time.perf_counter()
        self.times = {"rmsnorm": t1 - t0, **self.block_sparse_moe.times, "add": t3 - t2}
        return hidden_states


class Qwen2MoeMLP(nn.Module):
    """transformers' Qwen2MoeMLP (v4.40), hidden_act silu."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Qwen2MoeSparseMoeBlock(nn.Module):
    """transformers' Qwen2MoeSparseMoeBlock (v4.40): Mixtral's loop, renormalization
    only with norm_topk_prob, plus the shared expert scaled by sigmoid(shared_expert_gate)."""

    router_dtype = torch.float32  # as MixtralSparseMoeBlock.router_dtype

    def __init__(self, hidden: int, moe_ffn: int, shared_ffn: int, num_experts: int,
                 top_k: int, norm_topk_prob: bool) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList([Qwen2MoeMLP(hidden, moe_ffn) for _ in range(num_experts)])
        self.shared_expert = Qwen2MoeMLP(hidden, shared_ffn)
        self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=self.router_dtype)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.norm_topk_prob:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final_hidden_states = torch.zeros(
            (batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype,
            device=hidden_states.device)
        expert_mask = torch.nn.functional.one_hot(
            selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        for expert_idx in range(self.num_experts):
            expert_layer = self.experts[expert_idx]
            idx, top_x = torch.where(expert_mask[expert_idx])
            if top_x.shape[0] == 0:
                continue
            top_x_list = top_x.tolist()
            idx_list = idx.tolist()
            current_state = hidden_states[None, top_x_list].reshape(-1, hidden_dim)
            current_hidden_states = (expert_layer(current_state)
                                     * routing_weights[top_x_list, idx_list, None])
            final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))
        shared_expert_output = self.shared_expert(hidden_states)
        shared_expert_output = (torch.sigmoid(self.shared_expert_gate(hidden_states))
                                * shared_expert_output)
        final_hidden_states = final_hidden_states + shared_expert_output
        final_hidden_states = final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)
        return final_hidden_states, router_logits


class Qwen2FfnSublayer(nn.Module):
    """Qwen2MoeDecoderLayer's second half: h + mlp(post_attention_layernorm(h))."""

    def __init__(self, hidden: int, moe_ffn: int, shared_ffn: int, num_experts: int,
                 top_k: int, norm_topk_prob: bool, eps: float) -> None:
        super().__init__()
        self.post_attention_layernorm = MixtralRMSNorm(hidden, eps=eps)  # = Qwen2MoeRMSNorm
        self.mlp = Qwen2MoeSparseMoeBlock(hidden, moe_ffn, shared_ffn, num_experts, top_k,
                                          norm_topk_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        y, _router_logits = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + y


# -- the spec in torch ops (every family) -------------------------------------------------

def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name in ("gelu", "geglu"):
        return F.gelu(x)  # exact (erf) GeLU
    return F.silu(x)


def _ffn(x: torch.Tensor, act: str, gate: torch.Tensor | None, up: torch.Tensor,
         down: torch.Tensor) -> torch.Tensor:
    if act in GATED:
        assert gate is not None
        h = _act(act, F.linear(x, gate)) * F.linear(x, up)
    else:
        h = _act(act, F.linear(x, up))
    return F.linear(h, down)


def _norm(cfg: MoEConfig, x: torch.Tensor, w: torch.Tensor,
          b: torch.Tensor | None = None) -> torch.Tensor:
    eps = _f32(cfg.norm_eps)
    if cfg.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    return y if b is None else y + b


def _moe(cfg: MoEConfig, x: torch.Tensor, w: Mapping[str, torch.Tensor],
         e_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t_n, k = x.shape[0], cfg.top_k
    logits = F.linear(x, w["router"])
    scores = logits.softmax(-1) if cfg.score_func == "softmax" else logits.sigmoid()
    # The decisions, taken by the reference from the same numbers: no gradient.
    bias = w["bias"].detach().numpy() if "bias" in w else None
    r = route(x.detach().numpy(), w["router"].detach().numpy(), cfg, e_n, bias)
    kept = torch.from_numpy(kept_mask(r.idx, cfg, e_n))
    idx = torch.from_numpy(r.idx)
    gw = scores.gather(1, idx)
    if cfg.renormalize:
        gw = gw / gw.sum(-1, keepdim=True)
    gw = gw * _f32(cfg.routed_scaling)
    y = torch.zeros_like(x)
    for e in range(e_n):
        tok, slot = torch.where((idx == e) & kept)
        if tok.numel():
            out = _ffn(x[tok], cfg.activation, w["gate"][e] if "gate" in w else None,
                       w["up"][e], w["down"][e])
            y = y.index_add(0, tok, gw[tok, slot, None] * out)
    if cfg.drop_policy == "passthrough":
        y = y + (gw * (~kept)).sum(-1, keepdim=True) * x
    if cfg.num_shared_experts:
        s = _ffn(x, cfg.activation, w.get("shared_gate"), w["shared_up"], w["shared_down"])
        if cfg.shared_gated:
            s = s * F.linear(x, w["shared_sigmoid_gate"]).sigmoid()
        y = y + s
    counts = torch.bincount(idx.reshape(-1), minlength=e_n).to(x.dtype)
    aux = _f32(cfg.aux_loss_coeff) * e_n * ((counts / (t_n * k)) * scores.mean(0)).sum()
    z = _f32(cfg.z_loss_coeff) * torch.logsumexp(logits, -1).pow(2).mean()
    return y, aux, z


def spec_graph(cfg: MoEConfig, x: torch.Tensor, tensors: Mapping[str, torch.Tensor],
               layers: range | None = None) -> dict[str, torch.Tensor]:
    """The model graph (reference.model_forward) on torch tensors named as in the file,
    differentiable with respect to ``x`` and every tensor in ``tensors``."""

    def get(name: str) -> torch.Tensor:
        return tensors[name]

    h = x
    aux_t = z_t = x.new_zeros(())
    for sub in sublayers(cfg, layers):
        # load_operand's reshapes and transposes, but on torch tensors (differentiable)
        w = {s.role: _operand(s, get) for s in sub.specs()}
        n = _norm(cfg, h, w["norm"], w.get("norm_bias"))
        if sub.kind == "moe":
            y, aux, z = _moe(cfg, n, w, sub.num_experts)
            aux_t, z_t = aux_t + aux, z_t + z
        else:
            y = _ffn(n, cfg.dense_act, w.get("gate"), w["up"], w["down"])
            if "sigmoid_gate" in w:
                y = y * F.linear(n, w["sigmoid_gate"]).sigmoid()
        h = h + y
    out = {"hidden_states": h}
    if cfg.aux_loss_coeff > 0:
        out["aux_loss"] = aux_t
    if cfg.z_loss_coeff > 0:
        out["z_loss"] = z_t
    return out


def _operand(spec, get) -> torch.Tensor:  # type: ignore[no-untyped-def]
    if spec.stacked:
        arr = torch.stack([get(name) for name, _ in spec.file_tensors()])
    else:
        arr = get(spec.name).reshape(spec._stored(spec.shape))
    if spec.transpose:
        arr = arr.transpose(-1, -2)
    return arr

