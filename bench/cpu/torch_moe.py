"""PyTorch eager baseline for the CPU benchmark: one Mixtral FFN sublayer.

Written in the style of Hugging Face transformers' modeling_mixtral.py
(v4.36-v4.40: MixtralRMSNorm, MixtralBlockSparseTop2MLP, MixtralSparseMoeBlock),
which is not installed here, so the three modules are re-typed in
python/moe_compiler/torch_reference.py (shared with the training cross-checks),
unchanged in what they compute and how: router Linear, softmax in f32, topk, renormalize,
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "python"))
from moe_compiler.safetensors import SafetensorsFile  # noqa: E402
from moe_compiler.torch_reference import FfnSublayer  # noqa: E402


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
