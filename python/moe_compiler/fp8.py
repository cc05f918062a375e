"""FP8 E4M3 (``F8_E4M3`` in safetensors, torch.float8_e4m3fn) and DeepSeek-V3 block scales.

E4M3 "fn": 1 sign, 4 exponent (bias 7) and 3 mantissa bits; no infinities; NaN is
``S.1111.111`` only; the largest finite value is 448; subnormals are ``m/8 * 2**-6``.

DeepSeek-V3 publishes each linear weight ``[M, N]`` as F8_E4M3 next to an F32 tensor
``<name>_scale_inv`` of shape ``[ceil(M/128), ceil(N/128)]``: element ``(r, c)`` is
``fp8[r, c] * scale_inv[r // 128, c // 128]`` computed in float32 (blocks at the
bottom and right edges are partial).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLOCK",
    "E4M3_MAX",
    "dequantize_blocks",
    "e4m3_to_f32",
    "f32_to_e4m3",
    "quantize_blocks",
]

BLOCK = 128
E4M3_MAX = 448.0


def _table() -> np.ndarray:
    b = np.arange(256, dtype=np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    mant = b & 0x7
    val = np.where(exp == 0, mant / 8.0 * 2.0 ** -6, (1 + mant / 8.0) * 2.0 ** (exp - 7.0))
    val = sign * val
    val[(exp == 0xF) & (mant == 0x7)] = np.nan
    return val.astype(np.float32)


_TABLE = _table()
# Finite non-negative values 0x00..0x7E, increasing with the code.
_POS = _TABLE[:0x7F].astype(np.float64)


def e4m3_to_f32(bits: np.ndarray) -> np.ndarray:
    """The float32 values of E4M3 bytes (exact)."""
    return _TABLE[np.asarray(bits, dtype=np.uint8)]


def f32_to_e4m3(x: np.ndarray, saturate: bool = True) -> np.ndarray:
    """Round to E4M3 bytes, nearest with ties to even.

    NaN stays NaN (sign kept). A magnitude past 448 gives +-448 with ``saturate``,
    else NaN when it rounds beyond 448 (past 464, torch's conversion), and so does
    infinity.
    """
    a = np.asarray(x, dtype=np.float64)
    mag = np.abs(a)
    m = np.where(np.isfinite(mag), np.minimum(mag, E4M3_MAX), 0.0)
    hi = np.searchsorted(_POS, m, side="left")  # _POS[hi-1] < m <= _POS[hi]
    hi = np.minimum(hi, 0x7E)
    lo = np.maximum(hi - 1, 0)
    dlo = m - _POS[lo]
    dhi = _POS[hi] - m
    code = np.where((dhi < dlo) | ((dhi == dlo) & (hi % 2 == 0)), hi, lo)
    code = np.where(m == _POS[hi], hi, code).astype(np.uint8)
    over = np.isinf(mag) | (mag > E4M3_MAX)
    if not saturate:
        over_nan = np.isinf(mag) | (mag > 464.0)
        code = np.where(over_nan, np.uint8(0x7F), code)
        code = np.where(over & ~over_nan, np.uint8(0x7E), code)
    else:
        code = np.where(over, np.uint8(0x7E), code)
    code = np.where(np.isnan(a), np.uint8(0x7F), code)
    sign = np.where(np.signbit(a), np.uint8(0x80), np.uint8(0))
    return (code | sign).astype(np.uint8)


def _expand(scale_inv: np.ndarray, rows: int, cols: int, block: int) -> np.ndarray:
    s = np.asarray(scale_inv, dtype=np.float32)
    want = (-(-rows // block), -(-cols // block))
    if s.shape != want:
        raise ValueError(f"block scale has shape {list(s.shape)}; a [{rows}, {cols}] "
                         f"matrix needs {list(want)}")
    return np.repeat(np.repeat(s, block, axis=0), block, axis=1)[:rows, :cols]


def dequantize_blocks(bits: np.ndarray, scale_inv: np.ndarray,
                      block: int = BLOCK) -> np.ndarray:
    """float32 ``e4m3(bits) * scale_inv`` per ``block`` x ``block`` block."""
    b = np.asarray(bits, dtype=np.uint8)
    if b.ndim != 2:
        raise ValueError(f"block scales are defined for matrices, not shape {list(b.shape)}")
    return e4m3_to_f32(b) * _expand(scale_inv, b.shape[0], b.shape[1], block)


def quantize_blocks(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """DeepSeek-V3-style quantization: (E4M3 bytes, float32 scale_inv per block).

    Each block's scale is its largest magnitude / 448 (1 for an all-zero block), so
    the block's values fill the E4M3 range.
    """
    a = np.asarray(w, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"block scales are defined for matrices, not shape {list(a.shape)}")
    rows, cols = a.shape
    br, bc = -(-rows // block), -(-cols // block)
    pad = np.zeros((br * block, bc * block), dtype=np.float32)
    pad[:rows, :cols] = np.abs(a)
    amax = pad.reshape(br, block, bc, block).max(axis=(1, 3))
    scale = np.where(amax > 0, amax / np.float32(E4M3_MAX), 1).astype(np.float32)
    q = f32_to_e4m3(a / _expand(scale, rows, cols, block))
    return q, scale
