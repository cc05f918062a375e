"""`train-reference` and `init-targets` from the command line: the files they write,
resumption through files, and every bad input (one line naming it, exit 1, no file)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES

from moe_compiler.cli import main
from moe_compiler.configs import load_hf_config
from moe_compiler.safetensors import SafetensorsFile, load, save
from moe_compiler.train_reference import forward_backward

V3 = EXAMPLES / "tiny-deepseek-v3.json"


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def files(tmp_path, capsys):
    w, x, t = tmp_path / "w.st", tmp_path / "x.st", tmp_path / "t.st"
    assert run_cli(capsys, "init-weights", "--hf-config", V3, "--seed", 1, "-o", w)[0] == 0
    assert run_cli(capsys, "init-inputs", "--hf-config", V3, "--tokens", 16, "--seed", 2,
                   "-o", x)[0] == 0
    assert run_cli(capsys, "init-targets", "--hf-config", V3, "--tokens", 16, "--seed", 2,
                   "-o", t)[0] == 0
    return w, x, t


def _train(capsys, w, x, t, *extra):
    return run_cli(capsys, "train-reference", "--hf-config", V3, "--weights", w, "--inputs", x,
                   "--targets", t, *extra)


@pytest.mark.parametrize("sub", ["train-reference", "init-targets"])
def test_help(capsys, sub):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_init_targets(files):
    _, x, t = files
    tt, xx = load(t)["hidden_states"], load(x)["hidden_states"]
    assert tt.shape == (16, 32) and tt.dtype == np.float32
    assert not np.array_equal(tt, xx)  # the same seed gives another stream than the inputs


def test_train_writes_gradients_weights_and_state(files, tmp_path, capsys):
    w, x, t = files
    g, w2, s2 = tmp_path / "g.st", tmp_path / "w2.st", tmp_path / "s2.st"
    rc, out, err = _train(capsys, w, x, t, "--steps", 3, "--losses", "--z-loss-coeff", 0.01,
                          "--grads", g, "--save-weights", w2, "--save-optimizer-state", s2,
                          "--json")
    assert rc == 0, err
    rows = json.loads(out)["steps"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all({"loss", "mse", "aux_loss", "z_loss"} <= set(r) for r in rows)
    assert rows[0]["loss"] == rows[0]["mse"] + rows[0]["aux_loss"] + rows[0]["z_loss"]
    cfg = load_hf_config(V3).with_overrides(aux_loss_coeff=cfg_aux(), z_loss_coeff=0.01)
    wts = {k: v.astype(np.float64) for k, v in load(w).items()}
    ref = forward_backward(cfg, load(x)["hidden_states"], load(t)["hidden_states"],
                           wts.__getitem__)
    assert ref.loss == rows[0]["loss"]
    grads = load(g)
    bias = {n for n in wts if n.endswith("e_score_correction_bias")}
    assert len(bias) == 2 and set(grads) == (set(wts) - bias) | {"hidden_states"}
    np.testing.assert_array_equal(grads["hidden_states"], ref.dx.astype(np.float32))
    for n, a in ref.grads.items():
        np.testing.assert_array_equal(grads[n], a.astype(np.float32))
    new = load(w2)
    assert set(new) == set(wts) and all(a.dtype == np.float32 for a in new.values())
    for n in bias:  # moved by +-0.001 per step (or not at all where the load is average)
        d = np.abs(new[n].astype(np.float64) - wts[n])
        assert d.max() <= 0.0031 and d.max() > 0.0009
    state = load(s2)
    assert state["optimizer.step"].tolist() == [3] and state["optimizer.step"].dtype == np.int64
    assert set(state) == {f"{n}.{s}" for n in set(wts) - bias
                          for s in ("exp_avg", "exp_avg_sq")} | {"optimizer.step"}
    with SafetensorsFile(s2) as f:
        assert f.metadata["optimizer"] == "adamw"


def cfg_aux() -> float:
    return load_hf_config(V3).published_aux_loss_coeff


@pytest.mark.parametrize("opt", [["--optimizer", "adamw", "--weight-decay", "0.1"],
                                 ["--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.01"]])
def test_resumed_run_is_bitwise(files, tmp_path, capsys, opt):
    w, x, t = files
    a_w, a_s = tmp_path / "a_w.st", tmp_path / "a_s.st"
    rc, out_a, err = _train(capsys, w, x, t, "--steps", 5, *opt, "--save-weights", a_w,
                            "--save-optimizer-state", a_s, "--json")
    assert rc == 0, err
    b_w, b_s, c_w, c_s = (tmp_path / f"{n}.st" for n in ("b_w", "b_s", "c_w", "c_s"))
    rc, out_b, err = _train(capsys, w, x, t, "--steps", 2, *opt, "--save-weights", b_w,
                            "--save-optimizer-state", b_s, "--json")
    assert rc == 0, err
    rc, out_c, err = _train(capsys, b_w, x, t, "--steps", 3, *opt, "--optimizer-state", b_s,
                            "--save-weights", c_w, "--save-optimizer-state", c_s, "--json")
    assert rc == 0, err
    losses = [r["loss"] for r in json.loads(out_a)["steps"]]
    resumed = json.loads(out_b)["steps"] + json.loads(out_c)["steps"]
    assert [r["loss"] for r in resumed] == losses
    assert [r["optimizer_step"] for r in resumed] == [1, 2, 3, 4, 5]
    for full, part in ((a_w, c_w), (a_s, c_s)):
        fa, fc = load(full), load(part)
        assert sorted(fa) == sorted(fc)
        for n in fa:
            np.testing.assert_array_equal(fa[n], fc[n])


def test_one_sgd_step_is_w_minus_lr_grad(files, tmp_path, capsys):
    w, x, t = files
    w2 = tmp_path / "w2.st"
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    mw = tmp_path / "mw.st"
    assert run_cli(capsys, "init-weights", "--hf-config", EXAMPLES / "tiny-mixtral.json",
                   "--seed", 3, "-o", mw)[0] == 0
    rc, _, err = run_cli(capsys, "train-reference", "--hf-config",
                         EXAMPLES / "tiny-mixtral.json", "--weights", mw, "--inputs", x,
                         "--targets", t, "--steps", 1, "--optimizer", "sgd", "--lr", 0.5,
                         "--save-weights", w2)
    assert rc == 0, err
    wts = {k: v.astype(np.float64) for k, v in load(mw).items()}
    ref = forward_backward(cfg, load(x)["hidden_states"], load(t)["hidden_states"],
                           wts.__getitem__)
    new = load(w2)
    for n, g in ref.grads.items():
        np.testing.assert_array_equal(new[n], (wts[n] - 0.5 * g).astype(np.float32))


BAD = [
    (["--lr", "0"], "lr: must be a finite number > 0"),
    (["--lr", "nan"], "lr: must be a finite number > 0"),
    (["--lr", "inf"], "lr: must be a finite number > 0"),
    (["--lr", "-0.1"], "lr: must be a finite number > 0"),
    (["--betas", "0.9"], "betas: expected two numbers"),
    (["--betas", "0.9,1.5"], "betas: must be a finite number in [0, 1)"),
    (["--eps", "-1"], "eps"),
    (["--momentum", "0.9"], "momentum: applies to sgd only"),
    (["--optimizer", "sgd", "--betas", "0.9,0.99"], "betas/eps: apply to adamw only"),
    (["--optimizer", "sgd", "--momentum", "nan"], "momentum"),
    (["--weight-decay", "-1"], "weight_decay"),
    (["--bias-update-rate", "-1"], "bias-update-rate: must be a finite number >= 0"),
    (["--steps", "0"], "steps: must be at least 1"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_options(files, tmp_path, capsys, extra, message):
    w, x, t = files
    out = tmp_path / "w2.st"
    argv = ["--steps", 2, *extra, "--save-weights", out]
    rc, _, err = _train(capsys, w, x, t, *argv)
    assert rc == 1 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_bad_targets(files, tmp_path, capsys):
    w, x, _ = files
    out = tmp_path / "w2.st"
    cases = {
        "shape": ({"hidden_states": np.zeros((8, 32), np.float32)},
                  "tensor 'hidden_states' has shape [8, 32], expected [16, 32]"),
        "dtype": ({"hidden_states": np.zeros((16, 32), np.int32)},
                  "tensor 'hidden_states' is I32, expected a float tensor"),
        "name": ({"targets": np.zeros((16, 32), np.float32)}, "no tensor 'hidden_states'"),
        "nan": ({"hidden_states": np.full((16, 32), np.nan, np.float32)}, "not finite"),
    }
    for name, (tensors, message) in cases.items():
        t = tmp_path / f"t_{name}.st"
        save(t, tensors)
        rc, _, err = _train(capsys, w, x, t, "--steps", 1, "--save-weights", out)
        assert rc == 1 and message in err and str(t) in err, (name, err)
        assert not out.exists()


def test_bad_optimizer_state(files, tmp_path, capsys):
    w, x, t = files
    s = tmp_path / "s.st"
    assert _train(capsys, w, x, t, "--steps", 1, "--save-optimizer-state", s)[0] == 0
    state = load(s)
    out = tmp_path / "w2.st"
    name = "model.layers.1.mlp.experts.3.up_proj.weight.exp_avg_sq"
    bad = tmp_path / "bad.st"
    save(bad, {k: v for k, v in state.items() if k != name})
    rc, _, err = _train(capsys, w, x, t, "--steps", 1, "--optimizer-state", bad,
                        "--save-weights", out)
    assert rc == 1 and f"missing tensor '{name}'" in err and str(bad) in err, err
    rc, _, err = _train(capsys, w, x, t, "--steps", 1, "--optimizer-state", s,
                        "--optimizer", "sgd", "--save-weights", out)
    assert rc == 1 and "momentum_buffer'" in err, err
    save(bad, dict(state, **{"optimizer.step": np.array([1.0], np.float32)}))
    rc, _, err = _train(capsys, w, x, t, "--steps", 1, "--optimizer-state", bad,
                        "--save-weights", out)
    assert rc == 1 and "'optimizer.step'" in err, err
    assert not out.exists()


def test_nan_loss_stops_naming_the_step_and_writes_nothing(files, tmp_path, capsys):
    w, x, t = files
    outs = [tmp_path / n for n in ("g.st", "w2.st", "s2.st")]
    rc, out, err = _train(capsys, w, x, t, "--steps", 30, "--optimizer", "sgd", "--lr", "1e30",
                          "--grads", outs[0], "--save-weights", outs[1],
                          "--save-optimizer-state", outs[2])
    assert rc == 1 and err.count("\n") == 1, err
    assert "error: step " in err and ("loss" in err or "gradient" in err), err
    step = int(err.split("error: step ")[1].split()[0])
    assert step >= 2 and out.count("\n") == step - 1  # the finite steps were printed
    assert not any(p.exists() for p in outs)


def test_other_bad_inputs(files, tmp_path, capsys):
    w, x, t = files
    rc, _, err = _train(capsys, w, x, t, "--steps", 1, "--save-weights",
                        tmp_path / "no" / "w2.st")
    assert rc == 1 and "does not exist" in err
    rc, _, err = run_cli(capsys, "train-reference", "--hf-config",
                         EXAMPLES / "tiny-mixtral.json", "--weights", w, "--inputs", x,
                         "--targets", t, "--steps", 1, "--bias-update-rate", "0.01")
    assert rc == 1 and "no selection bias" in err
    rc, _, err = _train(capsys, x, x, t, "--steps", 1)  # inputs given as weights
    assert rc == 1 and "no tensor named" in err, err
    rc, _, err = _train(capsys, w, x, t, "--steps", 1, "--grads", tmp_path / "a.st",
                        "--save-weights", tmp_path / "a.st")
    assert rc == 1 and "different files" in err
