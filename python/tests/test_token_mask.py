"""The token mask (emit --token-mask) in the emitter and the float64 references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import EXAMPLES

from moe_compiler.configs import ConfigError, load_hf_config
from moe_compiler.emit import emit_module
from moe_compiler.reference import model_forward
from moe_compiler.routing import load_routing
from moe_compiler.safetensors import SafetensorsFile, save
from moe_compiler.token_mask import check_token_mask, read_token_mask
from moe_compiler.train_reference import forward_backward
from moe_compiler.weights import init_weights

# 16 tokens, 4 of them padding, 2 in each half (so that two token groups of the
# masked batch hold the same real tokens as two groups of the real batch).
T = 16
PADDING = [2, 3, 9, 15]


def _mask() -> np.ndarray:
    m = np.ones(T, dtype=np.int32)
    m[PADDING] = 0
    return m


def _model(tmp_path, name: str, **overrides):
    cfg = dataclasses.replace(load_hf_config(EXAMPLES / f"{name}.json"), **overrides)
    p = tmp_path / "w.safetensors"
    init_weights(cfg, p, seed=3)
    return cfg, p


CASES = [
    ("tiny-mixtral", {"aux_loss_coeff": 0.02, "z_loss_coeff": 0.001}),
    ("tiny-qwen2-moe", {"aux_loss_coeff": 0.001, "z_loss_coeff": 0.001}),
    # Capacity: C = 2 per group of the static T / 2 tokens, slot-major; the groups
    # of the masked and of the real batch hold the same real tokens in order.
    ("tiny-gshard", {"capacity": 2, "token_groups": 2, "z_loss_coeff": 0.001,
                     "aux_loss_coeff": 0.01}),
]


@pytest.mark.parametrize("name,overrides", CASES)
def test_reference_masked_equals_the_real_tokens(tmp_path, name, overrides):
    cfg, p = _model(tmp_path, name, **overrides)
    x = np.random.default_rng(4).standard_normal((T, cfg.hidden_size))
    m = _mask()
    real = m.astype(bool)
    with SafetensorsFile(p) as f:
        masked = model_forward(cfg, x, f.get, token_mask=m)
        alone = model_forward(cfg, x[real], f.get)
    np.testing.assert_allclose(masked["hidden_states"][real], alone["hidden_states"],
                               rtol=1e-12, atol=1e-12)
    # Padding leaves every sublayer as its residual: the input itself.
    assert np.array_equal(masked["hidden_states"][~real], x[~real])
    for loss in ("aux_loss", "z_loss"):
        assert masked[loss] == pytest.approx(float(alone[loss]), rel=1e-12), loss


@pytest.mark.parametrize("name,overrides", CASES)
def test_train_reference_masked_gradients_are_the_real_tokens(tmp_path, name, overrides):
    cfg, p = _model(tmp_path, name, **overrides)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, cfg.hidden_size))
    t = rng.standard_normal((T, cfg.hidden_size))
    m = _mask()
    real = m.astype(bool)
    with SafetensorsFile(p) as f:
        masked = forward_backward(cfg, x, t, f.get, token_mask=m)
        alone = forward_backward(cfg, x[real], t[real], f.get)
    assert masked.loss == pytest.approx(alone.loss, rel=1e-12)
    assert sorted(masked.grads) == sorted(alone.grads)
    for n in alone.grads:
        np.testing.assert_allclose(masked.grads[n], alone.grads[n], rtol=1e-10,
                                   atol=1e-13, err_msg=n)
    np.testing.assert_allclose(masked.dx[real], alone.dx, rtol=1e-10, atol=1e-13)
    assert not np.any(masked.dx[~real])
    # The forward of the training reference is the reference's, bit for bit.
    with SafetensorsFile(p) as f:
        ref = model_forward(cfg, x, f.get, token_mask=m)
    assert np.array_equal(ref["hidden_states"], masked.outputs["hidden_states"])


def test_capacity_stays_from_the_static_tokens(tmp_path):
    # capacity_factor: C comes from T (padding included), so a masked batch keeps
    # more than its real tokens alone would: the masked run differs from the
    # real tokens run here, and equals the real-only run with C forced.
    cfg, p = _model(tmp_path, "tiny-gshard", token_groups=1, capacity_factor=1.0)
    x = np.random.default_rng(6).standard_normal((T, cfg.hidden_size))
    m = _mask()
    real = m.astype(bool)
    c_static = T * cfg.top_k // cfg.num_experts  # 4; the 12 real tokens alone: 3
    with SafetensorsFile(p) as f:
        masked = model_forward(cfg, x, f.get, token_mask=m)
        forced = model_forward(dataclasses.replace(cfg, capacity=c_static), x[real], f.get)
        own = model_forward(cfg, x[real], f.get)
    np.testing.assert_allclose(masked["hidden_states"][real], forced["hidden_states"],
                               rtol=1e-12, atol=1e-12)
    assert not np.allclose(masked["hidden_states"][real], own["hidden_states"])


def test_mask_values_are_checked():
    with pytest.raises(ConfigError, match=r"token 3 has mask 2: 1 marks a real token"):
        check_token_mask(np.array([1, 0, 1, 2, 1]), 5)
    with pytest.raises(ConfigError, match=r"shape \[4\], expected \[5\]"):
        check_token_mask(np.ones(4), 5)


def test_read_token_mask(tmp_path):
    p = tmp_path / "x.safetensors"
    save(p, {"hidden_states": np.zeros((4, 2), np.float32)})
    assert read_token_mask(str(p), 4) is None
    save(p, {"hidden_states": np.zeros((4, 2), np.float32),
             "token_mask": np.array([1, 1, 0, 1], np.int32)})
    assert list(read_token_mask(str(p), 4)) == [True, True, False, True]
    save(p, {"hidden_states": np.zeros((4, 2), np.float32),
             "token_mask": np.ones(4, np.float32)})
    with pytest.raises(ConfigError, match="'token_mask' is F32, expected an integer"):
        read_token_mask(str(p), 4)


def test_emit_token_mask():
    cfg = load_hf_config(EXAMPLES / "tiny-gshard.json")
    text = emit_module(cfg, 8, token_mask=True)
    assert '%arg1: tensor<8xi32> {moe.input = "token_mask"}' in text
    # Every MoE layer takes the mask; every dense MLP's output is masked.
    assert text.count("token_mask %arg1 {") == 2
    assert text.count("moe.mask_rows") == 2
    assert "token_mask" not in emit_module(cfg, 8)


def test_replayed_padding_rows(tmp_path):
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    p = tmp_path / "r.safetensors"
    experts = np.array([[0, 1], [-1, -1], [2, 3], [-1, -1]], np.int32)
    save(p, {"routing.0.experts": experts, "routing.1.experts": experts})
    r = load_routing(str(p), cfg, None, 4)
    assert np.array_equal(r["0"], experts)
    save(p, {"routing.0.experts": np.array([[0, -1]] * 4, np.int32),
             "routing.1.experts": experts})
    with pytest.raises(ConfigError, match=r"token 0, choice 1: expert -1"):
        load_routing(str(p), cfg, None, 4)


def test_cli_reference_and_train_reference_read_the_mask(tmp_path):
    from moe_compiler.cli import main
    from moe_compiler.safetensors import load

    cfg_path = str(EXAMPLES / "tiny-mixtral.json")
    w = tmp_path / "w.safetensors"
    assert main(["init-weights", "--hf-config", cfg_path, "--seed", "1", "-o", str(w)]) == 0
    x = np.random.default_rng(7).standard_normal((T, 32)).astype(np.float32)
    xm = tmp_path / "xm.safetensors"
    save(xm, {"hidden_states": x, "token_mask": _mask()})
    ref = tmp_path / "ref.safetensors"
    assert main(["reference", "--hf-config", cfg_path, "--losses", "--weights", str(w),
                 "--inputs", str(xm), "-o", str(ref)]) == 0
    y = load(ref)["hidden_states"]
    pad = ~_mask().astype(bool)
    assert np.array_equal(y[pad], x[pad])
    assert not np.array_equal(y[~pad], x[~pad])
    g = tmp_path / "g.safetensors"
    assert main(["train-reference", "--hf-config", cfg_path, "--losses", "--steps", "1",
                 "--weights", str(w), "--inputs", str(xm), "--targets", str(xm),
                 "--grads", str(g)]) == 0
    assert not np.any(load(g)["hidden_states"][pad])
    mlir = tmp_path / "m.mlir"
    assert main(["emit", "--hf-config", cfg_path, "--tokens", str(T), "--token-mask",
                 "-o", str(mlir)]) == 0
    assert "token_mask" in mlir.read_text()
