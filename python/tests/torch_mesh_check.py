"""One rank of test_torch_module's mesh test (run under mpirun by the test).

  torch_mesh_check.py MODULE_DIR CONFIG TOKENS

Every rank builds the same HF-style Mixtral block (moe_compiler.torch_reference,
seed 0) and the same global batch, wraps the compiled module (a mesh) in a
CompiledMoEBlock with the block's state_dict, runs its own tokens, and checks its
output rows, its rows of dX and every (whole) parameter gradient against the block
on the global batch, then three SGD steps of both. Prints "OK rank R" or
"FAIL rank R: why" and exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from moe_compiler import torch_reference as tr  # noqa: E402
from moe_compiler.configs import load_hf_config  # noqa: E402
from moe_compiler.runtime import Module  # noqa: E402
from moe_compiler.torch_module import CompiledMoEBlock  # noqa: E402

RTOL = 1e-4


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = got.detach().double(), want.detach().double()
    atol = 1e-6 * float(want.abs().max()) if want.numel() else 0.0
    if got.shape != want.shape or not bool(((got - want).abs() <= atol + RTOL * want.abs()).all()):
        raise AssertionError(f"{what}: max |diff| {float((got - want).abs().max()):.3g}")


def main() -> int:
    moddir, config, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = load_hf_config(config)
    torch.manual_seed(0)
    hf = tr.MixtralSparseMoeBlock(cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
                                  cfg.top_k)
    blk = CompiledMoEBlock(moddir, router_logits=True)
    rank = blk._rt.rank
    try:
        blk.load_state_dict(hf.state_dict())
        x = torch.randn(tokens, cfg.hidden_size)
        g = torch.randn(tokens, cfg.hidden_size)
        rows = blk._rt.index(blk._x_spec, [tokens, cfg.hidden_size])
        with torch.no_grad():
            y = blk(x[rows])[0]
        close(y, hf(x[None])[0][0][rows], "forward")
        xh, xc = x.clone().requires_grad_(True), x[rows].clone().requires_grad_(True)
        (hf(xh[None])[0][0] * g).sum().backward()
        (blk(xc)[0] * g[rows]).sum().backward()
        close(xc.grad, xh.grad[rows], "dX")
        hp = dict(hf.named_parameters())
        for n, p in blk.named_parameters():
            close(p.grad, hp[n].grad if hp[n].grad is not None else torch.zeros_like(p), "d" + n)
        # Three SGD steps: each rank steps whole (identical) parameters.
        for m in (hf, blk):
            m.zero_grad()
        oh = torch.optim.SGD(hf.parameters(), lr=0.5)
        oc = torch.optim.SGD(blk.parameters(), lr=0.5)
        for _ in range(3):
            oh.zero_grad()
            oc.zero_grad()
            (hf(x[None])[0][0] - g).square().mean().backward()
            # The mean over the global batch: this rank's share of it.
            ((blk(x[rows])[0] - g[rows]).square().sum() / g.numel()).backward()
            for p in list(hf.parameters()) + list(blk.parameters()):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            oh.step()
            oc.step()
        hsd = hf.state_dict()
        for k, v in blk.state_dict().items():
            close(v, hsd[k], f"{k} after 3 steps")
    except AssertionError as e:
        print(f"FAIL rank {rank}: {e}", flush=True)
        Module.finalize()
        return 1
    print(f"OK rank {rank}", flush=True)
    Module.finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
