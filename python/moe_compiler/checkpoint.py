"""Checkpoints as Hugging Face publishes them: one file, or a folder of shards.

A folder holds ``model.safetensors.index.json``::

    {"metadata": {"total_size": 123}, "weight_map": {"<tensor>": "<shard file>"}}

and the shards it names (or a single ``model.safetensors``). :class:`Checkpoint`
reads tensors by name from either; a shard is opened (its header read) only when one
of its tensors is asked for, so tensors that nobody reads (attention, embeddings) and
shards holding only such tensors cost nothing, and need not even be present.

F8_E4M3 tensors are dequantized on read with their DeepSeek-V3 block scale
``<name>_scale_inv`` (see :mod:`moe_compiler.fp8`); BF16 and F16 widen to float32.
The index is untrusted input: :func:`read_index` validates it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator

import numpy as np

from .fp8 import BLOCK, dequantize_blocks
from .safetensors import SafetensorsError, SafetensorsFile, save_lazy

__all__ = [
    "INDEX_NAME",
    "Checkpoint",
    "read_index",
    "save_sharded",
]

INDEX_NAME = "model.safetensors.index.json"
_MAX_INDEX = 100 * 1000 * 1000


def _plain_file_name(s: object) -> bool:
    return (isinstance(s, str) and 0 < len(s) <= 255 and s not in (".", "..")
            and "/" not in s and "\\" not in s and "\0" not in s)


def read_index(path: str | os.PathLike[str]) -> dict[str, str]:
    """The validated ``weight_map`` (tensor name -> shard file name) of an index file."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > _MAX_INDEX:
            raise SafetensorsError(f"{path}: {size} bytes is too large for a checkpoint index")
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot open: {e.strerror}") from None

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        d: dict[str, object] = {}
        for k, v in pairs:
            if k in d:
                raise SafetensorsError(f"{path}: duplicate key {k!r}")
            d[k] = v
        return d

    try:
        root = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(root, dict):
        raise SafetensorsError(f"{path}: not a checkpoint index: expected a JSON object "
                               "with a 'weight_map'")
    meta = root.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise SafetensorsError(f"{path}: 'metadata' must be an object")
    wmap = root.get("weight_map")
    if not isinstance(wmap, dict):
        raise SafetensorsError(f"{path}: not a checkpoint index: no 'weight_map' object of "
                               "tensor names to shard files")
    if not wmap:
        raise SafetensorsError(f"{path}: 'weight_map' is empty")
    for name, file in wmap.items():
        if not name:
            raise SafetensorsError(f"{path}: 'weight_map' has an empty tensor name")
        if not _plain_file_name(file):
            raise SafetensorsError(f"{path}: tensor '{name}' maps to {file!r}, not to a file "
                                   "name in the index's folder (no '/', '\\', '.' or '..')")
    return dict(wmap)  # type: ignore[arg-type]


class Checkpoint:
    """Tensors by name from a safetensors file, a checkpoint folder or its index file.

    ``get`` returns float32 for F32, F16, BF16 and block-scaled F8_E4M3 tensors (the
    other dtypes as stored). ``opened`` lists the files opened so far.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.index_path: str | None = None
        self._files: dict[str, SafetensorsFile] = {}
        self._single: SafetensorsFile | None = None
        target = self.path
        if os.path.isdir(self.path):
            index = os.path.join(self.path, INDEX_NAME)
            single = os.path.join(self.path, "model.safetensors")
            if os.path.exists(index):
                self.index_path = index
            elif os.path.exists(single):
                target = single
            else:
                raise SafetensorsError(f"{self.path}: a checkpoint folder holds {INDEX_NAME} "
                                       "and its shards, or model.safetensors; neither is here")
        elif self.path.endswith(".json"):
            self.index_path = self.path
        if self.index_path is not None:
            self._map = read_index(self.index_path)
            self._dir = os.path.dirname(os.path.abspath(self.index_path))
        else:
            self._single = SafetensorsFile(target)
            self._files[target] = self._single

    # -- lookups --------------------------------------------------------------
    @property
    def opened(self) -> list[str]:
        """Paths of the files opened so far."""
        return list(self._files)

    def keys(self) -> list[str]:
        """Every tensor name (the index's, or the file's)."""
        return self._single.keys() if self._single is not None else list(self._map)

    def __contains__(self, name: object) -> bool:
        if self._single is not None:
            return name in self._single
        return name in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def _file(self, name: str) -> SafetensorsFile:
        if self._single is not None:
            if name not in self._single:
                raise SafetensorsError(f"{self.path}: no tensor named '{name}'")
            return self._single
        shard = self._map.get(name)
        if shard is None:
            raise SafetensorsError(f"{self.index_path}: missing tensor '{name}': it is in "
                                   f"none of the shards of the index")
        path = os.path.join(self._dir, shard)
        f = self._files.get(path)
        if f is None:
            try:
                f = SafetensorsFile(path)
            except SafetensorsError as e:
                raise SafetensorsError(f"{self.index_path}: tensor '{name}' is in shard "
                                       f"'{shard}', which cannot be read: {e}") from None
            self._files[path] = f
        if name not in f:
            raise SafetensorsError(f"{path}: the index {self.index_path} puts tensor "
                                   f"'{name}' in this file, but it has no such tensor")
        return f

    def dtype(self, name: str) -> str:
        """The stored dtype name (``F32``, ``BF16``, ``F8_E4M3``, ...)."""
        return self._file(name).dtype(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def get(self, name: str) -> np.ndarray:
        """One tensor; F8_E4M3 dequantized with ``<name>_scale_inv`` (float32)."""
        f = self._file(name)
        if f.dtype(name) != "F8_E4M3":
            return f.get(name)
        scale_name = name + "_scale_inv"
        if scale_name not in self:
            raise SafetensorsError(f"{self.path}: tensor '{name}' is F8_E4M3 but there is no "
                                   f"block scale '{scale_name}' (DeepSeek-V3's convention; "
                                   "other FP8 scalings are not read)")
        if self.dtype(scale_name) not in ("F32", "F16", "BF16"):
            raise SafetensorsError(f"{self.path}: block scale '{scale_name}' is "
                                   f"{self.dtype(scale_name)}, expected a float tensor")
        scale = self.get(scale_name).astype(np.float32)
        if not np.all(np.isfinite(scale)):
            raise SafetensorsError(f"{self.path}: block scale '{scale_name}' has a "
                                   "non-finite value")
        try:
            return dequantize_blocks(f.get(name, raw=True), scale, BLOCK)
        except ValueError as e:
            raise SafetensorsError(f"{self.path}: tensor '{name}' {list(f.shape(name))}: "
                                   f"'{scale_name}': {e}") from None

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


def save_sharded(folder: str | os.PathLike[str],
                 entries: list[tuple[str, str, tuple[int, ...], Callable[[], np.ndarray]]],
                 shards: int, metadata: dict[str, str] | None = None,
                 groups: list[int] | None = None) -> list[str]:
    """Write ``entries`` (as :func:`~moe_compiler.safetensors.save_lazy` takes them) as a
    checkpoint folder of ``shards`` files ``model-0000i-of-0000N.safetensors`` and an index.

    Tensors keep their order; the shards hold about equal bytes, unless ``groups`` gives
    each entry's shard number (0-based). Each file is written atomically and the index
    last; earlier shards of this naming pattern that the new index does not name are
    removed (as ``save_pretrained`` does). Returns the shard file names.
    """
    folder = os.fspath(folder)
    if shards < 1 or shards > 99999:
        raise SafetensorsError(f"shards: must be in 1..99999 (got {shards})")
    os.makedirs(folder, exist_ok=True)
    from .safetensors import _DTYPES, _file_dtype

    sizes = [int(np.prod(shape, dtype=np.int64)) * _DTYPES[_file_dtype(n, dt)].itemsize
             for n, dt, shape, _ in entries]
    total = sum(sizes)
    if groups is None:
        groups, acc = [], 0
        for s in sizes:
            groups.append(min(shards - 1, acc * shards // max(total, 1)))
            acc += s
    if len(groups) != len(entries) or any(not 0 <= g < shards for g in groups):
        raise SafetensorsError("groups: one shard number in 0..shards-1 per tensor")
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map: dict[str, str] = {}
    for i, fname in enumerate(names):
        part = [e for e, g in zip(entries, groups) if g == i]
        save_lazy(os.path.join(folder, fname), part, metadata=metadata)
        for e in part:
            weight_map[e[0]] = fname
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    tmp = os.path.join(folder, f".{INDEX_NAME}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, os.path.join(folder, INDEX_NAME))
    for old in os.listdir(folder):
        if _SHARD_RE.match(old) and old not in names:
            os.unlink(os.path.join(folder, old))
    return names
