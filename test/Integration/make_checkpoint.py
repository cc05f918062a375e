#!/usr/bin/env python3
"""Write a checkpoint folder as Hugging Face publishes a full model, for the tests.

From a weights file of the module's tensors (``init-weights``) it writes a folder
with ``model.safetensors.index.json`` and several shards that also hold the tensors
a full model has and the MoE module never reads: token embeddings, ``lm_head``, the
final norm and, for every layer, the input norm and the attention projections under
the family's names (Mixtral / Qwen2-MoE: ``self_attn.{q,k,v,o}_proj``, Qwen2's q/k/v
biases; DeepSeek-V3: MLA's ``q_a_proj``, ``q_a_layernorm``, ``q_b_proj``,
``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj``, ``o_proj``), filled with
seeded noise. The module's tensors are spread over ``--shards`` shards in name order;
the extra tensors go to one more shard of their own (the last), so a test can delete
it and show that nothing reads it.

``--dtype bf16|f16`` stores the float tensors so; ``--dtype fp8`` stores every linear
weight (``*_proj.weight``, Mixtral's ``w1/w2/w3``) as F8_E4M3 with a DeepSeek-V3 block
scale ``<name>_scale_inv`` (F32, 128x128 blocks) and the rest (routers, norms,
biases) as BF16, except selection biases (F32), as DeepSeek-V3 publishes.

  make_checkpoint.py --weights W.safetensors --family deepseek-v3 --layers 3 \\
      --hidden 32 --shards 3 --dtype fp8 -o ckpt/
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
if os.path.join(SRC, "python") not in sys.path:
    sys.path.insert(0, os.path.join(SRC, "python"))

from moe_compiler.checkpoint import save_sharded  # noqa: E402
from moe_compiler.fp8 import quantize_blocks  # noqa: E402
from moe_compiler.safetensors import SafetensorsFile  # noqa: E402

FAMILIES = ("mixtral", "qwen2-moe", "deepseek-v3")
_LINEAR = re.compile(r"(_proj\.weight|\.w[123]\.weight)$")


def extra_tensors(family: str, layers: int, hidden: int, vocab: int = 64
                  ) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors of a full model that the MoE module never reads."""
    d = hidden
    out: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, d),
        "lm_head.weight": (vocab, d),
        "model.norm.weight": (d,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (d,)
        if family == "deepseek-v3":
            out[p + "self_attn.q_a_proj.weight"] = (d // 2, d)
            out[p + "self_attn.q_a_layernorm.weight"] = (d // 2,)
            out[p + "self_attn.q_b_proj.weight"] = (d, d // 2)
            out[p + "self_attn.kv_a_proj_with_mqa.weight"] = (d // 2 + 4, d)
            out[p + "self_attn.kv_a_layernorm.weight"] = (d // 2,)
            out[p + "self_attn.kv_b_proj.weight"] = (d, d // 2)
            out[p + "self_attn.o_proj.weight"] = (d, d)
        else:
            for proj in ("q", "k", "v", "o"):
                out[p + f"self_attn.{proj}_proj.weight"] = (d, d)
            if family == "qwen2-moe":
                for proj in ("q", "k", "v"):
                    out[p + f"self_attn.{proj}_proj.bias"] = (d,)
    return out


def write(weights: str, family: str, layers: int, hidden: int, out: str,
          shards: int = 3, dtype: str = "f32", seed: int = 7) -> list[str]:
    """Write the folder; returns its shard file names (the last holds the extras)."""
    if family not in FAMILIES:
        raise ValueError(f"family: one of {', '.join(FAMILIES)}")
    with SafetensorsFile(weights) as f:
        module = {n: f.get(n) for n in sorted(f.keys())}
    extras = {}
    for name, shape in extra_tensors(family, layers, hidden).items():
        if name not in module:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            extras[name] = rng.standard_normal(shape).astype(np.float32)
    entries, groups = [], []

    def add(name: str, arr: np.ndarray, group: int) -> None:
        bias = name.endswith("e_score_correction_bias")
        if dtype == "fp8" and arr.ndim == 2 and _LINEAR.search(name):
            q, scale = quantize_blocks(arr)
            entries.append((name, "F8_E4M3", q.shape, lambda q=q: q))
            entries.append((name + "_scale_inv", "F32", scale.shape, lambda s=scale: s))
            groups.extend([group, group])
            return
        dt = "f32" if dtype == "f32" or bias else ("bf16" if dtype == "fp8" else dtype)
        entries.append((name, dt, arr.shape, lambda a=arr: a))
        groups.append(group)

    names = list(module)
    for i, name in enumerate(names):
        add(name, module[name], i * shards // len(names))
    for name, arr in extras.items():
        add(name, arr, shards)
    return save_sharded(out, entries, shards + 1, groups=groups,
                        metadata={"generator": "make_checkpoint.py", "format": "pt"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="the module's weights (one file)")
    ap.add_argument("--family", required=True, choices=FAMILIES)
    ap.add_argument("--layers", type=int, required=True, help="layers of the full model")
    ap.add_argument("--hidden", type=int, required=True, help="hidden size")
    ap.add_argument("--shards", type=int, default=3, help="shards of the module's tensors")
    ap.add_argument("--dtype", choices=("f32", "bf16", "f16", "fp8"), default="f32")
    ap.add_argument("-o", "--output", required=True, help="the folder to write")
    a = ap.parse_args(argv)
    write(a.weights, a.family, a.layers, a.hidden, a.output, a.shards, a.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
