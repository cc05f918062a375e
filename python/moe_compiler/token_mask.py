"""The token mask of a padded batch (``emit --token-mask``, docs/user-guide.md).

``token_mask`` is a [T] integer tensor of the inputs file next to ``hidden_states``:
1 marks a real token, 0 padding; any other value is an error that names the token.
The references (``reference``, ``train-reference``) apply it when the inputs file
has it, as the compiled program does: padding is not routed, takes no capacity
slot, is not counted in the load statistics or the aux losses, and leaves every
FFN sublayer as its residual alone.
"""

from __future__ import annotations

import numpy as np

from .configs import ConfigError
from .safetensors import SafetensorsFile

__all__ = ["check_token_mask", "read_token_mask"]

INT_DTYPES = ("I8", "I16", "I32", "I64", "U8")


def check_token_mask(mask: np.ndarray, tokens: int, what: str = "token_mask") -> np.ndarray:
    """``mask`` as a bool [T] array, after checking its shape and its values."""
    m = np.asarray(mask)
    if m.shape != (tokens,):
        raise ConfigError(f"{what}: shape {list(m.shape)}, expected [{tokens}] (one entry "
                          "per token)")
    bad = np.nonzero((m != 0) & (m != 1))[0]
    if bad.size:
        t = int(bad[0])
        raise ConfigError(f"{what}: token {t} has mask {m[t]}: 1 marks a real token, 0 "
                          "padding, nothing else")
    return m.astype(bool)


def read_token_mask(path: str, tokens: int) -> np.ndarray | None:
    """The inputs file's ``token_mask`` as a bool [T] array, or None without one."""
    with SafetensorsFile(path) as f:
        if "token_mask" not in f:
            return None
        dtype = f.dtype("token_mask")
        if dtype not in INT_DTYPES:
            raise ConfigError(f"inputs {path}: tensor 'token_mask' is {dtype}, expected an "
                              "integer tensor (I32)")
        m = f.get("token_mask")
    return check_token_mask(m, tokens, f"inputs {path}: tensor 'token_mask'")
