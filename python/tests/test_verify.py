"""`verify`: one model on two layouts (or one against the float64 reference), compared.

The runs need the C++ tools (skipped with the reason until they are built) and, for
meshes, mpirun; the usage errors need neither.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import EXAMPLES

from moe_compiler.cli import main
from moe_compiler.driver import ToolNotFound, find_tool
from moe_compiler.safetensors import load, save

MIXTRAL = EXAMPLES / "tiny-mixtral.json"
QWEN2 = EXAMPLES / "tiny-qwen2-moe.json"


def _tools_or_skip() -> None:
    for tool in ("moe-compile", "moe-run"):
        try:
            find_tool(tool)
        except ToolNotFound as e:
            pytest.skip(f"{tool} is not built yet: {e}")
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (multi-rank runs)")


def _verify(capsys, *argv):
    rc = main(["verify", *[str(a) for a in argv]])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _report(capsys, *argv):
    rc, out, err = _verify(capsys, *argv, "--json")
    return rc, json.loads(out) if out.strip() else None, err


def test_forward_two_layouts(capsys):
    _tools_or_skip()
    rc, rep, err = _report(capsys, MIXTRAL, "--mesh", "ep=2,tp=2+dtd", "--mesh", "1")
    assert rc == 0, err
    assert rep["ok"] and rep["a"] == "ep=2,tp=2+dtd" and rep["b"] == "one device"
    (row,) = rep["rows"]
    assert row["name"] == "hidden_states" and row["kind"] == "output"
    assert row["shape"] == [32, 32] and row["rel"] <= 1e-5


def test_forward_against_reference_with_losses(capsys):
    _tools_or_skip()
    rc, rep, err = _report(capsys, QWEN2, "--mesh", "dp=2,ep=2", "--aux-loss-coeff", 0.01,
                           "--z-loss-coeff", 0.001, "--tokens", 16)
    assert rc == 0, err
    assert rep["b"] == "the float64 reference"
    assert {r["name"] for r in rep["rows"]} == {"hidden_states", "aux_loss", "z_loss"}


def test_same_layout_is_bitwise(capsys):
    """One module run twice: no difference at all, so --tol 0 passes."""
    _tools_or_skip()
    rc, rep, err = _report(capsys, MIXTRAL, "--mesh", "ep=2", "--mesh", "ep=2", "--tol", 0,
                           "--train")
    assert rc == 0, err
    assert all(r["max_abs_diff"] == 0 and r["differing"] == 0 for r in rep["rows"])


def test_train_layouts(capsys, tmp_path):
    """Expert TP against ZeRO-1: losses, every gradient, the updates of 2 steps."""
    _tools_or_skip()
    rc, rep, err = _report(capsys, MIXTRAL, "--mesh", "tp=2+expert-tp",
                           "--mesh", "dp=2,ep=2+zero1", "--train", "--steps", 2,
                           "--optimizer", "adamw", "--workdir", tmp_path)
    assert rc == 0, err
    kinds = {r["kind"] for r in rep["rows"]}
    assert kinds == {"loss", "grad", "update after 2 steps"}
    names = {r["name"] for r in rep["rows"]}
    weights = set(load(tmp_path / "W.safetensors"))
    assert {"step 1 loss", "step 2 loss", "hidden_states"} <= names
    assert weights <= names and {f"update of {w}" for w in weights} <= names
    for r in rep["rows"]:
        assert r["rel"] <= (rep["update_tol"] if r["kind"].startswith("update")
                            else rep["tol"]), r


def test_train_against_reference_text(capsys):
    _tools_or_skip()
    rc, out, err = _verify(capsys, MIXTRAL, "--mesh", "ep=2,tp=2+dtd", "--train")
    assert rc == 0, err
    assert "against the float64 reference" in out and "step 1 loss" in out
    assert "model.layers.1.block_sparse_moe.experts.7.w2.weight" in out
    assert out.splitlines()[-1].startswith("PASS: largest rel")


def test_real_difference_fails(capsys, tmp_path):
    """Other weights for the second side (one element of one expert changed by 1%):
    exit 1, and the rows beyond tolerance are that expert's gradient and the outputs."""
    _tools_or_skip()
    w, w2 = tmp_path / "w.st", tmp_path / "w2.st"
    assert main(["init-weights", "--hf-config", str(MIXTRAL), "--seed", "1", "-o",
                 str(w)]) == 0
    tensors = load(w)
    name = "model.layers.1.block_sparse_moe.experts.3.w2.weight"
    a = tensors[name].copy()
    a[5, 7] *= 1.01
    tensors[name] = a
    save(w2, tensors)
    capsys.readouterr()
    rc, rep, err = _report(capsys, MIXTRAL, "--mesh", "ep=2", "--mesh", "1", "--train",
                           "--weights", w, "--weights-b", w2)
    assert rc == 1, err
    bad = {r["name"] for r in rep["rows"] if not r["ok"]}
    assert name in bad and "hidden_states" in bad
    assert not rep["ok"]
    rc, out, _ = _verify(capsys, MIXTRAL, "--mesh", "ep=2", "--weights", w, "--weights-b", w2)
    assert rc == 1 and "BEYOND TOLERANCE" in out and out.splitlines()[-1].startswith("FAIL")
    # The same weights on both sides pass.
    assert _verify(capsys, MIXTRAL, "--mesh", "ep=2", "--weights", w2, "--weights-b", w2)[0] == 0


@pytest.mark.parametrize("argv,words", [
    (["--mesh", "ep=2"] * 3, ["one --mesh", "not 3"]),
    ([], ["one --mesh", "not 0"]),
    (["--mesh", "ep=2+zero1"], ["zero1", "--train"]),
    (["--mesh", "ep=2+fast"], ["unknown flag 'fast'"]),
    (["--mesh", "ep=2+cpu+cuda"], ["more than one device"]),
    (["--mesh", "ep=3"], ["ep"]),
    (["--mesh", "xp=2"], ["unknown axis 'xp'"]),
    (["--mesh", "ep=2", "--tol", "nan"], ["tol"]),
    (["--mesh", "ep=2", "--steps", "2"], ["steps", "--train"]),
])
def test_usage_errors(capsys, argv, words):
    rc, out, err = _verify(capsys, MIXTRAL, *argv)
    assert rc == 1 and out == ""
    assert err.startswith("python3 -m moe_compiler verify: error:")
    for w in words:
        assert w in err, err


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["verify", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "--weights-b" in text and "--tol" in text



def test_given_inputs_set_the_tokens(capsys, tmp_path):
    _tools_or_skip()
    x = tmp_path / "x.st"
    assert main(["init-inputs", "--hf-config", str(MIXTRAL), "--tokens", "8", "--seed", "5",
                 "-o", str(x)]) == 0
    capsys.readouterr()
    rc, rep, err = _report(capsys, MIXTRAL, "--mesh", "ep=2", "--inputs", x)
    assert rc == 0, err
    assert rep["rows"][0]["shape"] == [8, 32]


def test_device_flag(capsys):
    """+cpu runs moe-run --device cpu: the same bits as the default device."""
    _tools_or_skip()
    rc, rep, err = _report(capsys, MIXTRAL, "--mesh", "1+cpu", "--mesh", "1", "--tol", 0)
    assert rc == 0, err
    assert rep["a"] == "one device+cpu" and rep["rows"][0]["differing"] == 0
