"""PyTorch eager baseline for the CPU benchmark: one Mixtral FFN sublayer.

Written in the style of Hugging Face transformers' modeling_mixtral.py
(v4.36-v4.40: MixtralRMSNorm, MixtralBlockSparseTop2MLP, MixtralSparseMoeBlock),
which is not installed here, so the three modules are re-typed below, unchanged
in what they compute and how: router Linear, softmax in f32, topk, renormalize,
one_hot expert mask, a Python loop over experts with torch.where + index select,
per-expert w1/w3/w2 Linear (no bias), SiLU, index_add_. Around it, as in
MixtralDecoderLayer: post_attention_layernorm (RMSNorm) before and the residual
add after, so it times the same graph as the compiled module
(h + moe(rmsnorm(h))).

Run with Debian's /usr/bin/python3 (python3-torch 1.13, CPU):

  /usr/bin/python3 bench/cpu/torch_moe.py --config config.json --weights W \
      --inputs X --threads N --warmup W --repeat R --json out.json [--output y.npy]

Weights and inputs are read with moe_compiler's safetensors reader (PYTHONPATH
must hold python/). Writes per-run seconds (total and per part) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "python"))
from moe_compiler.safetensors import SafetensorsFile  # noqa: E402


class MixtralRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
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

        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="HF-style mixtral config.json")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", required=True, help="write per-run timings here")
    ap.add_argument("--output", help="write the output hidden_states here (.npy, f32)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    with open(a.config, encoding="utf-8") as fh:
        cfg = json.load(fh)
    d, f = cfg["hidden_size"], cfg["intermediate_size"]
    e, k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    eps = cfg.get("rms_norm_eps", 1e-5)
    layer = FfnSublayer(d, f, e, k, eps)
    p = f"model.layers.{a.layer}."
    state = {}
    with SafetensorsFile(a.weights) as wf:
        state["post_attention_layernorm.weight"] = wf.get(p + "post_attention_layernorm.weight")
        state["block_sparse_moe.gate.weight"] = wf.get(p + "block_sparse_moe.gate.weight")
        for i in range(e):
            for w in ("w1", "w2", "w3"):
                name = f"block_sparse_moe.experts.{i}.{w}.weight"
                state[name] = wf.get(p + name)
    layer.load_state_dict({n: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                           for n, v in state.items()})
    layer.eval()
    with SafetensorsFile(a.inputs) as xf:
        x = torch.from_numpy(np.ascontiguousarray(xf.get("hidden_states"), dtype=np.float32))
    x = x.reshape(1, x.shape[0], d)  # [batch, seq, D] as the decoder layer sees it

    runs: list[float] = []
    parts: dict[str, list[float]] = {}
    y = None
    with torch.inference_mode():
        for i in range(a.warmup + a.repeat):
            t0 = time.perf_counter()
            y = layer(x)
            t = time.perf_counter() - t0
            if i >= a.warmup:
                runs.append(t)
                for name, s in layer.times.items():
                    parts.setdefault(name, []).append(s)
    assert y is not None
    if a.output:
        np.save(a.output, y.reshape(-1, d).numpy().astype(np.float32))
    with open(a.json, "w", encoding="utf-8") as fh:
        json.dump({"runs_s": runs, "parts_s": parts, "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "tokens": int(x.shape[1])}, fh)
    med = sorted(runs)[len(runs) // 2]
    print(f"torch eager: {len(runs)} runs, median {med * 1e3:.1f} ms "
          f"(threads {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
