"""Seeded random weights and inputs under a family's Hugging Face names.

Every tensor draws from its own generator, seeded by (seed, crc32(name)): the
weights of layers 2:4 are the same whether one asks for 2:4 or 0:8, so files for
different layer ranges (or ranks) agree. By default each matrix has standard
deviation 1/sqrt(fan_in), which keeps activations O(1) at any model size and makes
routing non-trivial (router logits O(1)); ``scale`` replaces that with a fixed
standard deviation (0.02 is the Hugging Face initializer_range).
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from .configs import MoEConfig
from .layout import WeightSpec, sublayers
from .safetensors import save, save_lazy

__all__ = ["init_inputs", "init_weights", "weight_tensors"]


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def _fan_in(spec: WeightSpec) -> int:
    """The width a matmul with this operand contracts over.

    Every operand is in HF nn.Linear layout [.., out, in] (down is [.., D, F],
    gate/up [.., F, D], the router [E, D]), so it is the last graph dimension.
    """
    return spec.shape[-1]


def _make(spec: WeightSpec, name: str, shape: tuple[int, ...], seed: int,
          scale: float | None) -> np.ndarray:
    rng = _rng(seed, name)
    if spec.role == "norm":
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if spec.role in ("bias", "norm_bias"):
        # Comparable to the spread of sigmoid scores, so it changes some selections.
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    std = scale if scale is not None else 1.0 / np.sqrt(_fan_in(spec))
    return (std * rng.standard_normal(shape)).astype(np.float32)


def weight_tensors(cfg: MoEConfig, layers: range | None = None
                   ) -> list[tuple[WeightSpec, str, tuple[int, ...]]]:
    """Every file tensor the layer range reads: (operand spec, name, file shape)."""
    out = []
    for sub in sublayers(cfg, layers):
        for spec in sub.specs():
            for name, shape in spec.file_tensors():
                out.append((spec, name, shape))
    return out


def init_weights(cfg: MoEConfig, path: str | os.PathLike[str], seed: int,
                 layers: range | None = None, scale: float | None = None,
                 dtype: str = "f32", shards: int | None = None) -> int:
    """Write random weights for ``layers``; returns the number of tensors.

    With ``shards``, ``path`` is a checkpoint folder of that many shards and an index
    (:func:`moe_compiler.checkpoint.save_sharded`), as Hugging Face publishes models.
    """
    entries = []
    for spec, name, shape in weight_tensors(cfg, layers):
        # Selection biases are f32 in HF checkpoints whatever the model dtype.
        dt = "f32" if spec.role == "bias" else dtype
        entries.append((name, dt, shape,
                        lambda s=spec, n=name, sh=shape: _make(s, n, sh, seed, scale)))
    meta = {"generator": "moe_compiler init-weights", "model": cfg.name,
            "seed": str(seed), "scale": "1/sqrt(fan_in)" if scale is None else str(scale)}
    if shards is not None:
        from .checkpoint import save_sharded

        save_sharded(path, entries, shards, metadata=meta)
    else:
        save_lazy(path, entries, metadata=meta)
    return len(entries)


def init_inputs(cfg: MoEConfig, path: str | os.PathLike[str], tokens: int, seed: int,
                dtype: str = "f32") -> None:
    """Write ``hidden_states`` [tokens, D] drawn from N(0, 1)."""
    x = _rng(seed, "hidden_states").standard_normal((tokens, cfg.hidden_size))
    save(path, {"hidden_states": x.astype(np.float32)}, dtypes=dtype,
         metadata={"generator": "moe_compiler init-inputs", "seed": str(seed)})
