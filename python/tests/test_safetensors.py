"""safetensors: round trips, BF16 rounding, lazy reads and every bad-file error."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from moe_compiler.safetensors import (
    SafetensorsError,
    SafetensorsFile,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    load,
    save,
    save_lazy,
)


def _raw(path, header: dict, data: bytes = b"", header_len: int | None = None) -> None:
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if header_len is None else header_len))
        f.write(h)
        f.write(data)


@pytest.mark.parametrize("dtype,arr", [
    ("F32", np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
    ("F16", (np.arange(6, dtype=np.float16) - 2.5).reshape(2, 3)),
    ("I32", np.array([[-(2**31), 2**31 - 1], [0, 7]], dtype=np.int32)),
    ("I64", np.array([-(2**62), 5, 2**62], dtype=np.int64)),
    ("F64", np.array([1e-300, -2.5], dtype=np.float64)),
])
def test_round_trip(tmp_path, dtype, arr):
    p = tmp_path / "t.safetensors"
    save(p, {"a": arr, "scalar": np.array(3.5, dtype=np.float32)}, metadata={"k": "v"})
    with SafetensorsFile(p) as f:
        assert f.keys() == ["a", "scalar"]
        assert f.dtype("a") == dtype
        assert f.shape("scalar") == ()
        assert f.metadata == {"k": "v"}
        got = f.get("a")
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert load(p)["scalar"] == np.float32(3.5)


def test_bf16_round_trip_and_rounding(tmp_path):
    # Bit patterns: 1.0 = 0x3F80; 1 + 2^-8 is halfway between 0x3F80 and 0x3F81 -> even
    # (0x3F80); 1 + 3*2^-8 is halfway between 0x3F81 and 0x3F82 -> even (0x3F82).
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.0,
                  np.inf, -np.inf, 3.4028234663852886e38, 0.0, -0.0], dtype=np.float32)
    bits = f32_to_bf16_bits(x)
    assert [hex(b) for b in bits] == ["0x3f80", "0x3f80", "0x3f82", "0x3f81", "0xc000",
                                      "0x7f80", "0xff80", "0x7f80", "0x0", "0x8000"]
    nan = f32_to_bf16_bits(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.isnan(bf16_bits_to_f32(nan)).all()
    assert nan[0] & 0x7FFF == 0x7FC0
    p = tmp_path / "b.safetensors"
    y = np.array([[0.1, -3.0], [1e-3, 65504.0]], dtype=np.float32)
    save(p, {"w": y}, dtypes="bf16")
    with SafetensorsFile(p) as f:
        assert f.dtype("w") == "BF16"
        got = f.get("w")
        raw = f.get("w", raw_bf16=True)
    assert got.dtype == np.float32 and raw.dtype == np.uint16
    np.testing.assert_array_equal(got, bf16_bits_to_f32(f32_to_bf16_bits(y)))
    np.testing.assert_allclose(got, y, rtol=2**-8)


def test_bf16_file_layout_is_little_endian_bits(tmp_path):
    p = tmp_path / "b.safetensors"
    save(p, {"w": np.array([1.0, -2.0], dtype=np.float32)}, dtypes={"w": "BF16"})
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert data[8 + n:] == bytes([0x80, 0x3F, 0x00, 0xC0])


def test_lazy_read_touches_only_the_named_tensor(tmp_path):
    p = tmp_path / "big.safetensors"
    save(p, {"a": np.zeros((256, 256), np.float32), "b": np.arange(4, dtype=np.float32)})
    with SafetensorsFile(p) as f:
        start = f._f.tell()
        assert start == f._data_start  # only the header was read on open
        f._f.seek(0)
        got = f.get("b")
        assert f._f.tell() == f._data_start + 256 * 256 * 4 + 16  # seeked past "a"
    np.testing.assert_array_equal(got, np.arange(4))


def test_save_lazy_makes_one_tensor_at_a_time(tmp_path):
    made = []

    def make(i):
        made.append(i)
        return np.full((2, 3), i, dtype=np.float32)

    p = tmp_path / "l.safetensors"
    save_lazy(p, [(f"t{i}", "f32", (2, 3), lambda i=i: make(i)) for i in range(3)])
    assert made == [0, 1, 2]
    assert load(p)["t2"][1, 2] == 2
    with pytest.raises(SafetensorsError, match="made shape"):
        save_lazy(p, [("x", "f32", (2, 2), lambda: np.zeros(3, np.float32))])
    assert load(p)["t0"].shape == (2, 3)  # a failed write leaves the old file intact


def test_atomic_write_leaves_no_temporary(tmp_path):
    p = tmp_path / "w.safetensors"
    save(p, {"a": np.ones(3, np.float32)})
    with pytest.raises(SafetensorsError):
        save(p, {"a": np.ones(3, np.complex64)})
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]
    np.testing.assert_array_equal(load(p)["a"], np.ones(3))
    assert os.stat(p).st_mode & 0o777 != 0o600


def _good_header():
    return {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_bytes(b"\x01\x02"), "too short"),
    (lambda p: _raw(p, _good_header(), b"\0" * 8, header_len=10**6), "truncated: header"),
    (lambda p: _raw(p, _good_header(), b"\0" * 8, header_len=2**40), "implausible"),
    (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{nop"), "not valid UTF-8 JSON"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"\xff\xfe"), "not valid UTF-8 JSON"),
    (lambda p: _raw(p, [1, 2]), "not a JSON object"),
    (lambda p: _raw(p, {"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
     "tensor 'x' has no 'data_offsets'"),
    (lambda p: _raw(p, {"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}},
                    b"\0" * 8), "tensor 'x' has unsupported dtype"),
    (lambda p: _raw(p, {"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
                    b"\0" * 8), "tensor 'x' has invalid shape"),
    (lambda p: _raw(p, {"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}},
                    b"\0" * 8), "tensor 'x' has invalid data_offsets"),
    (lambda p: _raw(p, {"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                    b"\0" * 12), "tensor 'x' F32\\[3\\] needs 12 bytes"),
    (lambda p: _raw(p, _good_header(), b"\0" * 5), "truncated: tensor 'x' ends at"),
    (lambda p: _raw(p, {"__metadata__": {"a": 1}}), "__metadata__"),
    (lambda p: _raw(p, {"x": 3}), "tensor 'x' is not an object"),
])
def test_bad_files_name_file_and_tensor(tmp_path, make, match):
    p = tmp_path / "bad.safetensors"
    make(p)
    with pytest.raises(SafetensorsError, match=match) as e:
        SafetensorsFile(p)
    assert str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_missing_tensor(tmp_path):
    with pytest.raises(SafetensorsError, match="cannot open"):
        SafetensorsFile(tmp_path / "nope.safetensors")
    p = tmp_path / "ok.safetensors"
    save(p, {"a": np.zeros(2, np.float32)})
    with SafetensorsFile(p) as f, pytest.raises(SafetensorsError,
                                                match="no tensor named 'zz'"):
        f.get("zz")


def test_file_shrunk_after_open_is_reported(tmp_path):
    p = tmp_path / "s.safetensors"
    save(p, {"a": np.zeros(64, np.float32)})
    f = SafetensorsFile(p)
    try:
        os.truncate(p, os.path.getsize(p) - 10)
        with pytest.raises(SafetensorsError, match="truncated: tensor 'a' has"):
            f.get("a")
    finally:
        f.close()
