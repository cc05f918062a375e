"""moe_compiler.torch_module: a compiled sparse block as a torch nn.Module.

Against Hugging Face's Mixtral and Qwen2-MoE blocks (moe_compiler.torch_reference)
and the spec in torch ops for every family: outputs and gradients (through the
module's forward_train / backward entries) at rtol 1e-4, a few training steps of a
tiny model, the state_dict round trip, zero-copy operands and the errors. Skips
without torch (Debian: python3-torch) or without the built moe-compile and libmoert.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import EXAMPLES

torch = pytest.importorskip("torch")
tm = pytest.importorskip("moe_compiler.torch_module")
tr = pytest.importorskip("moe_compiler.torch_reference")

from moe_compiler.configs import load_hf_config  # noqa: E402
from moe_compiler.driver import ToolNotFound, find_tool  # noqa: E402
from moe_compiler.runtime import RuntimeError_, find_runtime_library  # noqa: E402

try:
    find_tool("moe-compile")
    find_runtime_library()
except (ToolNotFound, RuntimeError_) as e:
    pytest.skip(f"needs the built tools: {e}", allow_module_level=True)

RTOL = 1e-4
TOKENS = 32
FAMILIES = sorted(p.stem[len("tiny-"):] for p in EXAMPLES.glob("tiny-*.json"))


def _close(got, want, what, atol_rel=1e-6):
    """|got - want| <= atol + RTOL |want| with atol = atol_rel times max |want|."""
    got = got.detach().double().numpy()
    want = want.detach().double().numpy()
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    atol = atol_rel * float(np.abs(want).max()) if want.size else 0.0
    err = np.abs(got - want) - (atol + RTOL * np.abs(want))
    assert (err <= 0).all(), (f"{what}: max |diff| {np.abs(got - want).max():.3g}, "
                              f"max |ref| {np.abs(want).max():.3g}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("torch_module")


def _block(cfg, workdir, name, tokens=TOKENS):
    torch.manual_seed(0)
    blk = tm.from_config(cfg, tokens, workdir=str(workdir / name))
    with torch.no_grad():
        for n, p in blk.named_parameters():
            if n.endswith("e_score_correction_bias"):
                p.copy_(0.1 * torch.randn(p.shape))
    return blk


def _spec_block(cfg, blk, x):
    """The spec's sparse block (torch_reference._moe) in float64 on the block's
    parameters: (y, leaf tensors by parameter name, x leaf)."""
    e_n, specs = tm.block_specs(cfg)
    leaves = {n: p.detach().double().clone().requires_grad_(p.requires_grad)
              for n, p in blk.named_parameters()}
    xd = x.detach().double().clone().requires_grad_(True)
    w = {s.role: tr._operand(s, leaves.__getitem__) for s in specs}
    y, _aux, _z = tr._moe(cfg.with_overrides(aux_loss_coeff=0.0, z_loss_coeff=0.0), xd, w, e_n)
    return y, leaves, xd


@pytest.mark.parametrize("family", FAMILIES)
def test_family_outputs_and_gradients(family, workdir):
    cfg = load_hf_config(EXAMPLES / f"tiny-{family}.json")
    blk = _block(cfg, workdir, family)
    torch.manual_seed(1)
    x = torch.randn(TOKENS, cfg.hidden_size)
    g = torch.randn(TOKENS, cfg.hidden_size)
    with torch.no_grad():
        out = blk(x)
    y0 = out[0] if isinstance(out, tuple) else out
    want, leaves, xd = _spec_block(cfg, blk, x)
    _close(y0, want, f"{family} forward")
    # Training path: forward_train's output, then backward with an arbitrary dL/dy.
    xc = x.clone().requires_grad_(True)
    out = blk(xc)
    y = out[0] if isinstance(out, tuple) else out
    _close(y, want, f"{family} forward_train")
    (y * g).sum().backward()
    (want * g.double()).sum().backward()
    _close(xc.grad, xd.grad, f"{family} dX")
    for n, p in blk.named_parameters():
        if n.endswith("e_score_correction_bias"):
            assert p.grad is None and leaves[n].grad is None
            continue
        ref = leaves[n].grad if leaves[n].grad is not None else torch.zeros_like(leaves[n])
        _close(p.grad, ref, f"{family} d{n}")


def _hf(cls_name, cfg):
    torch.manual_seed(2)
    if cls_name == "mixtral":
        return tr.MixtralSparseMoeBlock(cfg.hidden_size, cfg.moe_intermediate_size,
                                        cfg.num_experts, cfg.top_k)
    return tr.Qwen2MoeSparseMoeBlock(cfg.hidden_size, cfg.moe_intermediate_size,
                                     cfg.shared_intermediate_size, cfg.num_experts, cfg.top_k,
                                     cfg.renormalize)


@pytest.mark.parametrize("family", ["mixtral", "qwen2-moe"])
def test_hf_block_state_dict_outputs_gradients(family, workdir):
    cfg = load_hf_config(EXAMPLES / f"tiny-{family}.json")
    hf = _hf(family.split("-")[0], cfg)
    blk = _block(cfg, workdir, "hf-" + family)
    blk.load_state_dict(hf.state_dict())
    sd, hsd = blk.state_dict(), hf.state_dict()
    assert sorted(sd) == sorted(hsd)  # the same names (registered in another order)
    assert all(torch.equal(sd[k], hsd[k]) for k in sd)
    # ... and back: the compiled block's weights load into the HF block.
    hf2 = _hf(family.split("-")[0], cfg)
    hf2.load_state_dict(blk.state_dict())
    assert all(torch.equal(v, sd[k]) for k, v in hf2.state_dict().items())

    torch.manual_seed(3)
    x = torch.randn(2, TOKENS // 2, cfg.hidden_size)
    g = torch.randn(2, TOKENS // 2, cfg.hidden_size)
    xh, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yh, lh = hf(xh)
    yc, lc = blk(xc)
    assert blk.copies == 0  # every operand passed as the parameters' own memory
    _close(yc, yh, f"{family} hidden_states")
    _close(lc, lh, f"{family} router_logits")
    ((yh * g).sum() + lh.square().sum()).backward()
    ((yc * g).sum() + lc.square().sum()).backward()
    _close(xc.grad, xh.grad, f"{family} dX")
    hp = dict(hf.named_parameters())
    for n, p in blk.named_parameters():
        ref = hp[n].grad if hp[n].grad is not None else torch.zeros_like(hp[n])
        _close(p.grad, ref, f"{family} d{n}")


class _TinyModel(torch.nn.Module):
    """Two FFN sublayers as in HF's MixtralDecoderLayer: h + block(norm(h))."""

    def __init__(self, cfg):
        super().__init__()
        d, f, e, k = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.top_k)
        self.norms = torch.nn.ModuleList(
            [tr.MixtralRMSNorm(d, float(np.float32(cfg.norm_eps))) for _ in range(2)])
        self.blocks = torch.nn.ModuleList(
            [tr.MixtralSparseMoeBlock(d, f, e, k) for _ in range(2)])

    def forward(self, x):
        for norm, block in zip(self.norms, self.blocks):
            x = x + block(norm(x))[0]
        return x


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_tiny_model_trains_like_torch(opt, workdir):
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    torch.manual_seed(4)
    ref = _TinyModel(cfg)
    model = copy.deepcopy(ref)
    names = tm.replace_moe_blocks(model, cfg, TOKENS, workdir=str(workdir / ("train-" + opt)))
    assert names == ["blocks.0", "blocks.1"]
    assert all(isinstance(b, tm.CompiledMoEBlock) for b in model.blocks)
    assert sorted(model.state_dict()) == sorted(ref.state_dict())
    x = torch.randn(4, TOKENS // 4, cfg.hidden_size)
    t = torch.randn(4, TOKENS // 4, cfg.hidden_size)

    def make(m):
        if opt == "adamw":
            return torch.optim.AdamW(m.parameters(), lr=1e-2)
        return torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)

    losses = {}
    for name, m in (("torch", ref), ("compiled", model)):
        o = make(m)
        losses[name] = []
        for _ in range(5):
            o.zero_grad()
            loss = (m(x) - t).square().mean()
            loss.backward()
            for p in m.parameters():  # an expert without tokens: a zero gradient
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            o.step()
            losses[name].append(float(loss))
    assert losses["torch"][-1] < losses["torch"][0]
    np.testing.assert_allclose(losses["compiled"], losses["torch"], rtol=RTOL)
    rsd = ref.state_dict()
    for k, v in model.state_dict().items():
        _close(v, rsd[k], f"{opt} {k} after 5 steps", atol_rel=1e-4)


def test_zero_copy_and_copies(workdir):
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    blk = _block(cfg, workdir, "zc")
    w1 = [blk.get_parameter(f"experts.{e}.w1.weight") for e in range(cfg.num_experts)]
    step = w1[0].numel() * 4
    assert all(p.data_ptr() == w1[0].data_ptr() + e * step for e, p in enumerate(w1))
    x = torch.randn(TOKENS, cfg.hidden_size)
    with torch.no_grad():
        y0 = blk(x)[0]
        assert blk.copies == 0
        # A parameter replaced by a tensor of its own: copied into the operand, same result.
        blk.experts[3].w1.weight = torch.nn.Parameter(w1[3].detach().clone())
        assert torch.equal(blk(x)[0], y0) and blk.copies == 1
    # DBRX stores w2 transposed: that operand is copied, the fused w1/v1 are not.
    dbrx = _block(load_hf_config(EXAMPLES / "tiny-dbrx.json"), workdir, "zc-dbrx")
    with torch.no_grad():
        dbrx(torch.randn(TOKENS, dbrx._x_spec["local_shape"][1]))
    assert dbrx.copies == 1


def test_errors_name_the_tensor(workdir):
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    blk = _block(cfg, workdir, "err")
    d = cfg.hidden_size
    with pytest.raises(RuntimeError_, match=r"hidden_states: dtype torch.float64"):
        blk(torch.randn(TOKENS, d, dtype=torch.float64))
    with pytest.raises(RuntimeError_, match=r"hidden_states: shape \[7, 32\]"):
        blk(torch.randn(7, d))
    with pytest.raises(RuntimeError_, match=r"hidden_states: shape \[32, 16\]"):
        blk(torch.randn(TOKENS, 16))
    with pytest.raises(RuntimeError_, match=r"hidden_states: on meta"):
        blk(torch.empty(TOKENS, d, device="meta"))
    if torch.cuda.is_available():  # pragma: no cover (no GPU here)
        with pytest.raises(RuntimeError_, match=r"hidden_states: on cuda"):
            blk(torch.randn(TOKENS, d, device="cuda"))
    with pytest.raises(RuntimeError_, match=r"parameter 'gate.weight': dtype torch.float64"):
        copy.deepcopy(blk).double()(torch.randn(TOKENS, d, dtype=torch.float32))
    bad = copy.deepcopy(blk)
    bad.experts[2].w2.weight = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(RuntimeError_, match=r"parameter 'experts.2.w2.weight': shape \[3, 3\]"):
        with torch.no_grad():
            bad(torch.randn(TOKENS, d))
    # load_state_dict: torch's own error names the key.
    sd = blk.state_dict()
    sd["experts.0.w1.weight"] = torch.zeros(2, 2)
    with pytest.raises(RuntimeError, match="experts.0.w1.weight"):
        blk.load_state_dict(sd)


def test_refuses_mesh_modules_and_modules_without_training(workdir):
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    base = workdir / "mesh"
    tm.compile_block(cfg, TOKENS, str(base / "inference"), train=False)
    blk = tm.CompiledMoEBlock(base / "inference")
    x = torch.randn(TOKENS, cfg.hidden_size)
    with torch.no_grad():
        assert blk(x).shape == x.shape
    with pytest.raises(RuntimeError_, match="compile with moe-compile --train"):
        blk(x.requires_grad_(True))
    # A module for a mesh of 2 ranks (hand-edited manifest: no MPI launch needed to
    # see the refusal, which comes before any runtime context).
    manifest = json.loads((base / "inference" / "manifest.json").read_text())
    manifest["mesh"] = {"axes": ["ep"], "shape": [2]}
    (base / "two").mkdir()
    (base / "two" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError_, match="mesh of 2 ranks"):
        tm.CompiledMoEBlock(base / "two")
    manifest["mesh"] = {"axes": [], "shape": []}
    manifest["target"] = "cuda"
    (base / "two" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError_, match="target 'cuda'"):
        tm.CompiledMoEBlock(base / "two")


@pytest.mark.parametrize("mesh,ranks", [(["--mesh", "ep=2"], 2),
                                        (["--mesh", "ep=2,tp=2", "--expert-tp"], 4)],
                         ids=["ep2", "ep2-tp2-expert-tp"])
def test_mesh_under_mpirun(mesh, ranks, workdir):
    """Each rank runs its tokens with its slices of the whole parameters; its output
    rows, dX rows and the gathered gradients equal the HF block on the global batch,
    and three SGD steps keep the ranks' parameters equal to the torch-only run's
    (python/tests/torch_mesh_check.py)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("needs mpirun")
    cfg = load_hf_config(EXAMPLES / "tiny-mixtral.json")
    moddir = tm.compile_block(cfg, TOKENS, str(workdir / ("mesh-" + "-".join(mesh))),
                              extra=mesh)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    script = Path(__file__).with_name("torch_mesh_check.py")
    p = subprocess.run([mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(ranks),
                        sys.executable, str(script), moddir,
                        str(EXAMPLES / "tiny-mixtral.json"), str(TOKENS)],
                       capture_output=True, text=True, timeout=300, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert sorted(ln.strip() for ln in p.stdout.replace("OK", "\nOK").splitlines()
                  if ln.strip().startswith("OK")) == [f"OK rank {r}" for r in range(ranks)], out
