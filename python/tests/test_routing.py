"""Replayed routing in the float64 references (moe_compiler.routing)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import EXAMPLES

from moe_compiler.configs import ConfigError, load_hf_config
from moe_compiler.layout import sublayers
from moe_compiler.reference import model_forward, route
from moe_compiler.routing import layer_keys, load_routing
from moe_compiler.safetensors import SafetensorsFile, save
from moe_compiler.train_reference import forward_backward
from moe_compiler.weights import init_weights


def _natural(cfg, x, get):
    """Every MoE layer's own choice, by layer key (from the training reference)."""
    res = forward_backward(cfg, x, np.zeros_like(x), get, backward=False)
    subs = [s for s in sublayers(cfg) if s.kind == "moe"]
    return {k: idx for k, (idx, _) in zip(layer_keys(subs), res.routing)}


def test_layer_keys_follow_the_router_names():
    cfg = load_hf_config(EXAMPLES / "tiny-deepseek-v3.json")
    subs = sublayers(cfg)
    moe = [s for s in subs if s.kind == "moe"]
    assert layer_keys(subs) == [s.get("router").name.split(".")[2] for s in moe]
    switch = load_hf_config(EXAMPLES / "tiny-switch.json")
    # encoder.block.1.layer.1.mlp.router...: the first number is the block.
    assert layer_keys(sublayers(switch)) == ["1", "3"]


@pytest.mark.parametrize("name", ["tiny-mixtral", "tiny-deepseek-v3", "tiny-gshard"])
def test_replaying_the_own_choice_changes_nothing(tmp_path, name):
    cfg = load_hf_config(EXAMPLES / f"{name}.json")
    p = tmp_path / "w.safetensors"
    init_weights(cfg, p, seed=3)
    x = np.random.default_rng(4).standard_normal((8, cfg.hidden_size))
    with SafetensorsFile(p) as f:
        natural = _natural(cfg, x, f.get)
        a = model_forward(cfg, x, f.get)
        b = model_forward(cfg, x, f.get, routing=natural)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_forced_weights_come_from_the_scores():
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, cfg.hidden_size))
    wr = rng.standard_normal((cfg.num_experts, cfg.hidden_size))
    forced = np.array([[3, 0], [1, 2], [0, 1], [2, 3], [3, 1]])
    r = route(x, wr, cfg, cfg.num_experts, forced=forced)
    assert np.array_equal(r.idx, forced)
    rho = np.take_along_axis(r.scores, forced, axis=1)
    np.testing.assert_allclose(r.weights, rho / rho.sum(axis=1, keepdims=True), rtol=1e-15)


def test_a_changed_routing_changes_the_output_and_gradients(tmp_path):
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    p = tmp_path / "w.safetensors"
    init_weights(cfg, p, seed=3)
    x = np.random.default_rng(4).standard_normal((8, cfg.hidden_size))
    t = np.random.default_rng(5).standard_normal((8, cfg.hidden_size))
    with SafetensorsFile(p) as f:
        forced = {k: (v + 1) % cfg.num_experts for k, v in _natural(cfg, x, f.get).items()}
        a = forward_backward(cfg, x, t, f.get)
        b = forward_backward(cfg, x, t, f.get, forced_routing=forced)
    assert not np.allclose(a.outputs["hidden_states"], b.outputs["hidden_states"])
    for (idx, _), want in zip(b.routing, forced.values()):
        assert np.array_equal(idx, want)
    # The expert a token no longer chooses gets no gradient from it: the
    # gradients differ.
    assert any(not np.allclose(a.grads[n], b.grads[n]) for n in a.grads)


def _file(tmp_path, tensors):
    p = tmp_path / "r.safetensors"
    save(p, tensors)
    return str(p)


@pytest.mark.parametrize("tensor,message", [
    (np.zeros((8, 2), dtype=np.float32), "expected an integer tensor"),
    (np.zeros((7, 2), dtype=np.int32), "has shape [7, 2], expected [8, 2]"),
    (np.array([[0, 9]] * 8, dtype=np.int32), "token 0, choice 1: expert 9 is not in [0, 8)"),
    (np.array([[0, 1]] * 7 + [[4, 4]], dtype=np.int32), "token 7 chooses expert 4 twice"),
])
def test_bad_routing_files_are_named(tmp_path, tensor, message):
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    keys = layer_keys(sublayers(cfg))
    tensors = {f"routing.{k}.experts": np.array([[0, 1]] * 8, dtype=np.int32) for k in keys}
    tensors[f"routing.{keys[-1]}.experts"] = tensor
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_routing(_file(tmp_path, tensors), cfg, None, 8)
    del tensors[f"routing.{keys[0]}.experts"]
    with pytest.raises(ConfigError, match=f"missing tensor 'routing.{keys[0]}.experts'"):
        load_routing(_file(tmp_path, tensors), cfg, None, 8)
