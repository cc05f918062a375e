"""Checkpoint folders (index + shards) and FP8 E4M3 with DeepSeek-V3 block scales."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import EXAMPLES

from moe_compiler import cli
from moe_compiler.checkpoint import INDEX_NAME, Checkpoint, read_index, save_sharded
from moe_compiler.fp8 import (
    dequantize_blocks,
    e4m3_to_f32,
    f32_to_e4m3,
    quantize_blocks,
)
from moe_compiler.safetensors import SafetensorsError, SafetensorsFile, load, save

# -- FP8 E4M3 -------------------------------------------------------------------------


def _brute_e4m3(x: float, saturate: bool) -> int:
    """Independent encoder: the nearest of all finite codes, ties to the even code."""
    if np.isnan(x):
        return 0x7F | (0x80 if np.signbit(x) else 0)
    sign = 0x80 if np.signbit(x) else 0
    m = abs(x)
    if m > 448:
        if saturate or (np.isfinite(m) and m <= 464):
            return 0x7E | sign
        return 0x7F | sign
    best, best_d = 0, np.inf
    for code in range(0x7F):
        v = float(e4m3_to_f32(np.uint8(code)))
        d = abs(m - v)
        if d < best_d or (d == best_d and code % 2 == 0):
            best, best_d = code, d
    return best | sign


def test_e4m3_decoding():
    v = e4m3_to_f32(np.arange(256, dtype=np.uint8))
    assert v[0x00] == 0 and np.signbit(v[0x80])
    assert v[0x38] == 1.0 and v[0x3B] == 1.375
    assert v[0x7E] == 448 and v[0xFE] == -448
    assert v[0x78] == 256  # S.1111.000 is finite: no infinities
    assert v[0x01] == 2.0 ** -9 and v[0x07] == 7 * 2.0 ** -9  # subnormals
    assert v[0x08] == 2.0 ** -6  # smallest normal
    assert np.isnan(v[0x7F]) and np.isnan(v[0xFF])
    assert np.isnan(v).sum() == 2
    assert np.all(np.diff(v[:0x7F]) > 0)


def test_e4m3_round_trips_every_code():
    codes = np.array([c for c in range(256) if c not in (0x7F, 0xFF)], dtype=np.uint8)
    assert np.array_equal(f32_to_e4m3(e4m3_to_f32(codes)), codes)


@pytest.mark.parametrize("saturate", [True, False])
def test_e4m3_encoding_matches_brute_force(saturate):
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(400) * 10.0 ** rng.uniform(-4, 2.8, 400),
        # ties: midpoints between neighbouring codes, normal and subnormal
        (e4m3_to_f32(np.arange(0, 0x7E, dtype=np.uint8)).astype(np.float64)
         + e4m3_to_f32(np.arange(1, 0x7F, dtype=np.uint8))) / 2,
        [0.0, -0.0, 2.0 ** -10, 3 * 2.0 ** -10, 448, 449, 464, 464.5, 479, 480, 1e9,
         -1e9, np.inf, -np.inf, np.nan, -np.nan],
    ]).astype(np.float32)
    got = f32_to_e4m3(x, saturate=saturate)
    want = np.array([_brute_e4m3(float(v), saturate) for v in x], dtype=np.uint8)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(float(x[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]


def test_e4m3_saturation_and_nan():
    assert list(f32_to_e4m3(np.array([500.0, -1e30, np.inf, -np.inf]))) == [
        0x7E, 0xFE, 0x7E, 0xFE]
    assert list(f32_to_e4m3(np.array([460.0, 470.0, np.inf]), saturate=False)) == [
        0x7E, 0x7F, 0x7F]
    assert f32_to_e4m3(np.array([np.nan]))[0] & 0x7F == 0x7F
    # Ties to even: 1.0625 lies between 1.0 (0x38) and 1.125 (0x39).
    assert list(f32_to_e4m3(np.array([1.0625, 1.1875, 2.0 ** -10]))) == [0x38, 0x3A, 0x00]


def test_e4m3_matches_torch():
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8_e4m3fn")
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.uniform(-4, 2.9, 2000),
                        [470.0, -500.0, np.inf, 2.0 ** -10]]).astype(np.float32)
    t = torch.from_numpy(x).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    assert np.array_equal(f32_to_e4m3(x, saturate=False), t)
    codes = np.arange(256, dtype=np.uint8)
    back = torch.from_numpy(codes).view(torch.float8_e4m3fn).float().numpy()
    assert np.array_equal(e4m3_to_f32(codes), back, equal_nan=True)


def test_block_quantization_with_partial_edge_blocks():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((200, 300)) * np.linspace(0.01, 5, 300)).astype(np.float32)
    w[128:, 256:] = 0  # an all-zero (edge) block gets scale 1
    q, s = quantize_blocks(w)
    assert q.dtype == np.uint8 and q.shape == w.shape
    assert s.dtype == np.float32 and s.shape == (2, 3) and s[1, 2] == 1
    d = dequantize_blocks(q, s)
    # Element by element: fp8 value times its block's scale, in float32.
    for r, c in [(0, 0), (127, 127), (128, 0), (199, 299), (150, 256), (5, 255)]:
        assert d[r, c] == np.float32(e4m3_to_f32(q[r, c])) * s[r // 128, c // 128]
    assert d.dtype == np.float32
    # Each block's largest magnitude maps to 448; E4M3's relative step is 2^-3.
    for br in range(2):
        for bc in range(3):
            blk = w[br * 128:(br + 1) * 128, bc * 128:(bc + 1) * 128]
            got = d[br * 128:(br + 1) * 128, bc * 128:(bc + 1) * 128]
            amax = np.abs(blk).max()
            assert np.abs(got - blk).max() <= amax / 16 + 1e-30
    with pytest.raises(ValueError, match=r"needs \[2, 3\]"):
        dequantize_blocks(q, s[:, :2])


# -- checkpoint folders ---------------------------------------------------------------

def _folder(tmp_path, fp8: bool = False) -> tuple[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    t = {
        "model.layers.0.mlp.gate.weight": rng.standard_normal((4, 8)).astype(np.float32),
        "model.layers.0.mlp.experts.0.up_proj.weight":
            rng.standard_normal((130, 8)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((8, 8)).astype(
            np.float32),
        "model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(np.float32),
    }
    entries, groups = [], []
    for i, (n, a) in enumerate(t.items()):
        if fp8 and n.endswith("up_proj.weight"):
            q, s = quantize_blocks(a)
            entries += [(n, "F8_E4M3", q.shape, lambda q=q: q),
                        (n + "_scale_inv", "F32", s.shape, lambda s=s: s)]
            groups += [1, 1]
            t[n] = dequantize_blocks(q, s)
        else:
            entries.append((n, "f32", a.shape, lambda a=a: a))
            groups.append(min(i, 2))
    d = str(tmp_path / "ckpt")
    save_sharded(d, entries, 3, groups=groups)
    return d, t


def test_folder_reads_by_name_and_opens_only_needed_shards(tmp_path):
    d, t = _folder(tmp_path)
    names = sorted(os.listdir(d))
    assert names == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + [INDEX_NAME]
    with open(os.path.join(d, INDEX_NAME)) as fh:
        index = json.load(fh)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in t.values())
    with Checkpoint(d) as c:
        assert set(c.keys()) == set(t) and "model.norm.weight" not in c
        assert c.opened == []
        up = "model.layers.0.mlp.experts.0.up_proj.weight"
        assert np.array_equal(c.get(up), t[up])
        assert c.opened == [os.path.join(d, "model-00002-of-00003.safetensors")]
        assert c.shape(up) == (130, 8) and c.dtype(up) == "F32"
    # The index file itself works too, and a folder with one model.safetensors.
    with Checkpoint(os.path.join(d, INDEX_NAME)) as c:
        n = "model.layers.0.mlp.gate.weight"
        assert np.array_equal(c.get(n), t[n])
    single = tmp_path / "one"
    single.mkdir()
    save(single / "model.safetensors", {"a": np.ones(3, np.float32)})
    with Checkpoint(single) as c:
        assert list(c.keys()) == ["a"] and c.get("a").sum() == 3


def test_fp8_folder_dequantizes(tmp_path):
    d, t = _folder(tmp_path, fp8=True)
    up = "model.layers.0.mlp.experts.0.up_proj.weight"
    with Checkpoint(d) as c:
        assert c.dtype(up) == "F8_E4M3"
        got = c.get(up)
        assert got.dtype == np.float32 and np.array_equal(got, t[up])
    with SafetensorsFile(os.path.join(d, "model-00002-of-00003.safetensors")) as f:
        with pytest.raises(SafetensorsError, match="is F8_E4M3: read it through"):
            f.get(up)
        assert f.get(up, raw=True).dtype == np.uint8


def test_fp8_scale_errors(tmp_path):
    q = f32_to_e4m3(np.ones((4, 4), np.float32))
    p = tmp_path / "a.safetensors"
    save(p, {"w": q}, dtypes="F8_E4M3")
    with Checkpoint(p) as c, pytest.raises(SafetensorsError,
                                           match="no block scale 'w_scale_inv'"):
        c.get("w")
    save(p, {"w": q, "w_scale_inv": np.ones((2, 1), np.float32)},
         dtypes={"w": "F8_E4M3"})
    with Checkpoint(p) as c, pytest.raises(SafetensorsError, match=r"needs \[1, 1\]"):
        c.get("w")
    save(p, {"w": q, "w_scale_inv": np.full((1, 1), np.inf, np.float32)},
         dtypes={"w": "F8_E4M3"})
    with Checkpoint(p) as c, pytest.raises(SafetensorsError, match="non-finite"):
        c.get("w")


def test_folder_errors_name_the_tensor_and_the_shard(tmp_path):
    d, _ = _folder(tmp_path)
    with Checkpoint(d) as c, pytest.raises(SafetensorsError,
                                           match="missing tensor 'nope': it is in none"):
        c.get("nope")
    os.unlink(os.path.join(d, "model-00001-of-00003.safetensors"))
    with Checkpoint(d) as c:
        # Other shards still read; the missing one is named when needed.
        c.get("model.embed_tokens.weight")
        with pytest.raises(SafetensorsError, match="'model.layers.0.mlp.gate.weight' is in "
                           "shard 'model-00001-of-00003.safetensors', which cannot be read"):
            c.get("model.layers.0.mlp.gate.weight")
    with open(os.path.join(d, INDEX_NAME)) as fh:
        index = json.load(fh)
    index["weight_map"]["ghost"] = "model-00002-of-00003.safetensors"
    with open(os.path.join(d, INDEX_NAME), "w") as fh:
        json.dump(index, fh)
    with Checkpoint(d) as c, pytest.raises(SafetensorsError,
                                           match="puts tensor 'ghost' in this file"):
        c.get("ghost")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SafetensorsError, match="neither is here"):
        Checkpoint(empty)


@pytest.mark.parametrize("text,match", [
    ("[]", "expected a JSON object"),
    ("{}", "no 'weight_map'"),
    ('{"weight_map": {}}', "is empty"),
    ('{"metadata": 1, "weight_map": {"a": "x"}}', "'metadata' must be an object"),
    ('{"weight_map": {"a": "../x"}}', "not to a file name"),
    ('{"weight_map": {"a": "/abs"}}', "not to a file name"),
    ('{"weight_map": {"a": "d\\\\x"}}', "not to a file name"),
    ('{"weight_map": {"a": 3}}', "not to a file name"),
    ('{"weight_map": {"": "x"}}', "empty tensor name"),
    ('{"weight_map": {"a": "x", "a": "y"}}', "duplicate key"),
    ('{"weight_map": ', "not valid UTF-8 JSON"),
])
def test_index_is_validated(tmp_path, text, match):
    p = tmp_path / INDEX_NAME
    p.write_text(text)
    with pytest.raises(SafetensorsError, match=match):
        read_index(p)


def test_init_weights_sharded_and_reference_on_a_folder(tmp_path):
    cfg = str(EXAMPLES / "tiny-deepseek-v3.json")
    w, d = str(tmp_path / "w.safetensors"), str(tmp_path / "ckpt")
    x = str(tmp_path / "x.safetensors")
    assert cli.main(["init-weights", "--hf-config", cfg, "--seed", "5", "-o", w]) == 0
    assert cli.main(["init-weights", "--hf-config", cfg, "--seed", "5", "--shards", "3",
                     "-o", d]) == 0
    assert len(read_index(os.path.join(d, INDEX_NAME))) == len(load(w))
    assert len([f for f in os.listdir(d) if f.endswith(".safetensors")]) == 3
    with Checkpoint(d) as c:
        ref = load(w)
        assert all(np.array_equal(c.get(n), a) for n, a in ref.items())
    # Fewer shards over the same folder: the stale ones go.
    assert cli.main(["init-weights", "--hf-config", cfg, "--seed", "5", "--shards", "2",
                     "-o", d]) == 0
    assert sorted(os.listdir(d)) == ["model-00001-of-00002.safetensors",
                                     "model-00002-of-00002.safetensors", INDEX_NAME]
    assert cli.main(["init-inputs", "--hf-config", cfg, "--tokens", "8", "--seed", "1",
                     "-o", x]) == 0
    outs = []
    for weights in (w, d):
        out = str(tmp_path / f"r{len(outs)}.safetensors")
        assert cli.main(["reference", "--hf-config", cfg, "--weights", weights,
                         "--inputs", x, "-o", out]) == 0
        outs.append(load(out)["hidden_states"])
    assert np.array_equal(outs[0], outs[1])
