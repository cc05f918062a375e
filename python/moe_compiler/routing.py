"""Routing files: what ``moe-run --dump-routing`` writes and ``--replay-routing`` reads.

A routing file is a safetensors file with, per MoE layer ``L``, the tensors
``routing.L.experts`` (I32 ``[T, k]``: the chosen experts of every token, best
first, global token order) and ``routing.L.weights`` (F32 ``[T, k]``: their gate
weights); replay reads only the experts (docs/user-guide.md, "Routing"). ``L`` is
the layer key of ``moe-routing-io``: the first all-digit dot-separated component of
the layer's router weight name, or, when a router has none or two layers share one,
the layer's position among the MoE layers (0, 1, ...).
"""

from __future__ import annotations

import numpy as np

from .configs import ConfigError, MoEConfig
from .layout import Sublayer, sublayers


def layer_keys(subs: list[Sublayer]) -> list[str]:
    """The routing key of every MoE sublayer of ``subs``, in order (moe-routing-io's rule)."""
    names = [s.get("router").name for s in subs if s.kind == "moe"]
    keys = []
    for name in names:
        key = next((p for p in name.split(".") if p.isdigit()), None)
        if key is None or key in keys:
            return [str(i) for i in range(len(names))]
        keys.append(key)
    return keys


def load_routing(path: str, cfg: MoEConfig, layers: range | None,
                 tokens: int) -> dict[str, np.ndarray]:
    """The forced experts of every MoE layer, by layer key, checked like the runtime does."""
    from .safetensors import SafetensorsFile

    subs = [s for s in sublayers(cfg, layers) if s.kind == "moe"]
    out = {}
    with SafetensorsFile(path) as f:
        for key, sub in zip(layer_keys(subs), subs):
            name = f"routing.{key}.experts"
            if name not in f.keys():
                raise ConfigError(f"{path}: missing tensor '{name}' (the file has: "
                                  f"{', '.join(sorted(f.keys()))})")
            idx = f.get(name)
            if idx.dtype.kind not in "iu":
                raise ConfigError(f"{path}: tensor '{name}' is {idx.dtype}, expected an "
                                  "integer tensor (I32)")
            if idx.shape != (tokens, cfg.top_k):
                raise ConfigError(f"{path}: tensor '{name}' has shape {list(idx.shape)}, "
                                  f"expected {[tokens, cfg.top_k]}")
            # A row of -1: a padding token of a masked run (emit --token-mask).
            padding = np.all(idx == -1, axis=1, keepdims=True)
            bad = np.argwhere(((idx < 0) | (idx >= sub.num_experts)) & ~padding)
            if bad.size:
                t, j = bad[0]
                raise ConfigError(f"{path}: '{name}': token {t}, choice {j}: expert "
                                  f"{idx[t, j]} is not in [0, {sub.num_experts})")
            srt = np.sort(idx, axis=1)
            dup = np.argwhere((srt[:, 1:] == srt[:, :-1]) & ~padding)
            if dup.size:
                raise ConfigError(f"{path}: '{name}': token {dup[0][0]} chooses expert "
                                  f"{srt[dup[0][0], dup[0][1]]} twice")
            out[key] = idx.astype(np.int64)
    return out
