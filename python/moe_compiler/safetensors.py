"""Pure-numpy reader and writer for the safetensors format.

Why our own: the package's only run-time dependency is numpy, and the compiler's
weight files must be readable lazily (one tensor, or one tensor of a layer range,
out of a checkpoint that may be hundreds of GiB).

Format: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON mapping
tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets are
relative to the first byte after the header) plus an optional ``"__metadata__"``
object of strings, then the raw little-endian tensor bytes.

BF16 has no numpy dtype: on read it is widened to float32 (exact); on write a
float array is rounded to BF16 with round-to-nearest-even.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO

import numpy as np

__all__ = [
    "SafetensorsError",
    "SafetensorsFile",
    "bf16_bits_to_f32",
    "f32_to_bf16_bits",
    "load",
    "save",
    "save_lazy",
]

# dtype name in the file -> numpy dtype of the stored bytes.
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
    # FP8 E4M3 bytes: read raw, dequantized by moe_compiler.checkpoint (block scales).
    "F8_E4M3": np.dtype("u1"),
}

# Names accepted for the ``dtype`` argument of :func:`save` (ours and the file's).
_DTYPE_ALIASES = {
    "f64": "F64", "f32": "F32", "f16": "F16", "bf16": "BF16",
    "i64": "I64", "i32": "I32", "i16": "I16", "i8": "I8", "u8": "U8", "bool": "BOOL",
    "f8_e4m3": "F8_E4M3",
}

# A header larger than this is certainly corruption, not a real checkpoint
# (the reference implementation uses the same 100 MB bound).
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file is malformed, truncated, or lacks a requested tensor."""


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float values to BF16 (nearest, ties to even); return the uint16 bit patterns.

    NaN stays NaN (quiet, sign kept); values past the BF16 range round to infinity,
    as IEEE rounding requires.
    """
    f = np.ascontiguousarray(x, dtype=np.float32)
    bits = f.view(np.uint32).astype(np.uint64)
    lsb = (bits >> np.uint64(16)) & np.uint64(1)
    rounded = ((bits + np.uint64(0x7FFF) + lsb) >> np.uint64(16)).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        sign = ((bits >> np.uint64(16)) & np.uint64(0x8000)).astype(np.uint16)
        rounded = np.where(nan, sign | np.uint16(0x7FC0), rounded)
    return rounded.reshape(f.shape)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen BF16 bit patterns (uint16) to float32; exact."""
    b = np.ascontiguousarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32).reshape(b.shape)


class SafetensorsFile:
    """A safetensors file opened for lazy reading.

    Only the header is read on open; :meth:`get` seeks to one tensor and reads its
    bytes alone. Every entry's offsets are checked against the file size on open,
    so a truncated file is reported before any tensor is used. Use as a context
    manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            # Unbuffered: reads go to the file itself (no stale buffer), one tensor each.
            self._f: BinaryIO = open(self.path, "rb", buffering=0)  # noqa: SIM115
        except OSError as e:
            raise SafetensorsError(f"{self.path}: cannot open: {e.strerror}") from None
        try:
            self._entries, self.metadata, self._data_start = self._read_header()
        except BaseException:
            self._f.close()
            raise

    def _read(self, n: int) -> bytes | bytearray:
        """Read up to ``n`` bytes, looping: one read(2) returns at most ~2 GiB on Linux."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._f.readinto(view[got:])  # type: ignore[attr-defined]
            if not k:
                break
            got += k
        return buf if got == n else buf[:got]

    # -- header -----------------------------------------------------------------
    def _fail(self, what: str) -> SafetensorsError:
        return SafetensorsError(f"{self.path}: {what}")

    def _read_header(self) -> tuple[dict[str, tuple[str, tuple[int, ...], int, int]],
                                    dict[str, str], int]:
        size = os.fstat(self._f.fileno()).st_size
        head = self._read(8)
        if len(head) < 8:
            raise self._fail(f"truncated: {size} bytes, too short for the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise self._fail(f"corrupt: header length {n} is implausible")
        if 8 + n > size:
            raise self._fail(f"truncated: header of {n} bytes but the file has {size} bytes")
        raw = self._read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._fail(f"corrupt header: not valid UTF-8 JSON ({e})") from None
        if not isinstance(header, dict):
            raise self._fail("corrupt header: not a JSON object")
        data_size = size - 8 - n
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise self._fail("corrupt header: __metadata__ must map strings to strings")
        entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            entries[name] = self._check_entry(name, info, data_size)
        return entries, dict(meta), 8 + n

    def _check_entry(self, name: str, info: object,
                     data_size: int) -> tuple[str, tuple[int, ...], int, int]:
        where = f"tensor '{name}'"
        if not isinstance(info, dict):
            raise self._fail(f"corrupt header: {where} is not an object")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in info:
                raise self._fail(f"corrupt header: {where} has no '{key}'")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise self._fail(f"{where} has unsupported dtype {dtype!r}")
        if not (isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in shape)):
            raise self._fail(f"corrupt header: {where} has invalid shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise self._fail(f"corrupt header: {where} has invalid data_offsets {offs!r}")
        want = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
        if offs[1] - offs[0] != want:
            raise self._fail(
                f"corrupt header: {where} {dtype}{shape} needs {want} bytes but "
                f"data_offsets {offs} span {offs[1] - offs[0]}")
        if offs[1] > data_size:
            raise self._fail(
                f"truncated: {where} ends at data byte {offs[1]} but the file holds "
                f"{data_size} data bytes")
        return dtype, tuple(shape), offs[0], offs[1]

    # -- access -------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def dtype(self, name: str) -> str:
        """The file dtype name (``F32``, ``BF16``, ...) of ``name``."""
        return self._entry(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of ``name`` as stored."""
        return self._entry(name)[1]

    def _entry(self, name: str) -> tuple[str, tuple[int, ...], int, int]:
        try:
            return self._entries[name]
        except KeyError:
            raise SafetensorsError(f"{self.path}: no tensor named '{name}'") from None

    def get(self, name: str, raw_bf16: bool = False, raw: bool = False) -> np.ndarray:
        """Read one tensor (a fresh, writable array in native byte order).

        BF16 is returned as float32 unless ``raw_bf16`` or ``raw``, which give the
        uint16 bits. F8_E4M3 needs its block scale: ``raw`` gives the bytes (uint8);
        :class:`moe_compiler.checkpoint.Checkpoint` dequantizes it.
        """
        dtype, shape, begin, end = self._entry(name)
        if dtype == "F8_E4M3" and not raw:
            raise self._fail(f"tensor '{name}' is F8_E4M3: read it through "
                             "moe_compiler.checkpoint.Checkpoint (block-scaled "
                             "dequantization), or with raw=True")
        self._f.seek(self._data_start + begin)
        buf = self._read(end - begin)
        if len(buf) != end - begin:
            raise self._fail(f"truncated: tensor '{name}' has {len(buf)} of {end - begin} bytes")
        arr = np.frombuffer(buf, dtype=_DTYPES[dtype]).reshape(shape)
        if dtype == "BF16" and not (raw_bf16 or raw):
            return bf16_bits_to_f32(arr)
        # The buffer is ours and writable, so no copy is needed on little-endian hosts.
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: str | os.PathLike[str], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read ``names`` (default: every tensor) from ``path``."""
    with SafetensorsFile(path) as f:
        return {n: f.get(n) for n in (f.keys() if names is None else names)}


def _file_dtype(name: str, dtype: str) -> str:
    """The file's name (``F32``, ``BF16``, ...) for a ``dtype`` argument of tensor ``name``."""
    want = _DTYPE_ALIASES.get(dtype.lower(), dtype.upper())
    if want not in _DTYPES:
        raise SafetensorsError(f"tensor '{name}': unsupported dtype {dtype!r}")
    return want


def _encode(name: str, arr: np.ndarray, dtype: str | None) -> tuple[str, bytes, list[int]]:
    a = np.asarray(arr)
    if dtype is None:
        if a.dtype == np.float64:
            want = "F64"
        else:
            want = next((k for k, v in _DTYPES.items()
                         if k not in ("BF16", "F8_E4M3")
                         and v == a.dtype.newbyteorder("<")), "")
            if not want:
                raise SafetensorsError(f"tensor '{name}': numpy dtype {a.dtype} has no "
                                       "safetensors equivalent")
    else:
        want = _file_dtype(name, dtype)
    if want == "BF16":
        data = f32_to_bf16_bits(a) if a.dtype != np.uint16 else a
    elif want == "F8_E4M3":
        from .fp8 import f32_to_e4m3

        data = a if a.dtype == np.uint8 else f32_to_e4m3(a)
    else:
        data = a.astype(_DTYPES[want], copy=False)
    return want, np.ascontiguousarray(data).tobytes(), list(a.shape)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray],
         dtypes: Mapping[str, str] | str | None = None,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` atomically (a temporary file renamed into place).

    ``dtypes`` is one dtype for all tensors or a per-name mapping (``f32``, ``bf16``,
    ``F16``, ...); by default each array keeps its own dtype. A uint16 array saved as
    BF16 is taken to be bit patterns already.
    """
    entries = []
    for name, arr in tensors.items():
        dt = dtypes if isinstance(dtypes, str) or dtypes is None else dtypes.get(name)
        ftype, blob, shape = _encode(name, arr, dt)
        entries.append((name, ftype, shape, lambda b=blob: b))
    _write(os.fspath(path), entries, metadata)


def save_lazy(path: str | os.PathLike[str],
              entries: list[tuple[str, str, tuple[int, ...], Callable[[], np.ndarray]]],
              metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors produced one at a time: ``(name, dtype, shape, make_array)``.

    The header needs only names, dtypes and shapes, so each array is made, written and
    dropped in turn: peak memory is one tensor, whatever the file size.
    """
    def encoder(name: str, dtype: str, shape: tuple[int, ...],
                make: Callable[[], np.ndarray]) -> Callable[[], bytes]:
        def get() -> bytes:
            arr = make()
            if tuple(arr.shape) != tuple(shape):
                raise SafetensorsError(f"tensor '{name}': made shape {list(arr.shape)}, "
                                       f"declared {list(shape)}")
            return _encode(name, arr, dtype)[1]
        return get

    out = []
    for name, dtype, shape, make in entries:
        ftype = _file_dtype(name, dtype)
        out.append((name, ftype, list(shape), encoder(name, ftype, tuple(shape), make)))
    _write(os.fspath(path), out, metadata)


def _write(path: str, entries: list[tuple[str, str, list[int], Callable[[], bytes]]],
           metadata: Mapping[str, str] | None) -> None:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, ftype, shape, _ in entries:
        if name == "__metadata__" or name in header:
            raise SafetensorsError(f"tensor name '{name}' is reserved or repeated")
        size = int(np.prod(shape, dtype=np.int64)) * _DTYPES[ftype].itemsize
        header[name] = {"dtype": ftype, "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)  # keep the data 8-byte aligned
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<Q", len(hjson)))
            out.write(hjson)
            for name, _, _, get in entries:
                blob = get()
                want = header[name]["data_offsets"]  # type: ignore[index]
                if len(blob) != want[1] - want[0]:
                    raise SafetensorsError(f"tensor '{name}': {len(blob)} bytes, "
                                           f"expected {want[1] - want[0]}")
                out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
