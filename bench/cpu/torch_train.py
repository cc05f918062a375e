"""PyTorch eager baseline of the CPU training benchmark: one training step of the
Mixtral FFN sublayer (bench/cpu/train.sh).

The model is the one bench/cpu/torch_moe.py times, the Hugging Face style
``FfnSublayer`` of python/moe_compiler/torch_reference.py (MixtralRMSNorm +
MixtralSparseMoeBlock + residual, as transformers' modeling_mixtral.py computes
them). One step, as a user of transformers writes it and as moe-run --train runs
it (docs/spec.md 7):

  y = layer(x)                        # forward (autograd records the graph)
  loss = F.mse_loss(y, t)             # mean((y - t)^2) over every element
  loss.backward()                     # gradients of every weight and of x
  opt.step()                          # torch.optim.AdamW
  opt.zero_grad(set_to_none=True)     # (and x.grad = None), not timed

with ``torch.optim.AdamW(params, lr, betas, eps, weight_decay)`` (the defaults of
moe-run --train: 1e-3, (0.9, 0.999), 1e-8, 0.01) on every parameter. x requires
grad, since the compiled backward also returns grad.hidden_states. Run with
Debian's /usr/bin/python3 (python3-torch 1.13, CPU):

  /usr/bin/python3 bench/cpu/torch_train.py --config config.json --weights W \\
      --inputs X --targets T --threads N --warmup W --repeat R --json out.json \\
      [--grads G.safetensors]

Writes per-step seconds (forward, loss, backward, step, total) and every step's
loss as JSON; --grads writes the first step's gradients under the names
moe-run --train --grads uses ('hidden_states' and the Hugging Face weight names).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "python"))
from moe_compiler.safetensors import SafetensorsFile, save  # noqa: E402
from moe_compiler.torch_reference import FfnSublayer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="HF-style mixtral config.json")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--targets", required=True)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--betas", default="0.9,0.999")
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--foreach", action="store_true",
                    help="AdamW(foreach=True): the multi-tensor implementation "
                    "(torch 1.13's default on CPU is the per-tensor loop)")
    ap.add_argument("--json", required=True, help="write per-step timings here")
    ap.add_argument("--grads", help="write the first step's gradients here (safetensors)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    with open(a.config, encoding="utf-8") as fh:
        cfg = json.load(fh)
    d, f = cfg["hidden_size"], cfg["intermediate_size"]
    e, k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    eps = cfg.get("rms_norm_eps", 1e-5)
    layer = FfnSublayer(d, f, e, k, eps)
    prefix = f"model.layers.{a.layer}."
    names = ["post_attention_layernorm.weight", "block_sparse_moe.gate.weight"]
    names += [f"block_sparse_moe.experts.{i}.{w}.weight" for i in range(e)
              for w in ("w1", "w2", "w3")]
    with SafetensorsFile(a.weights) as wf:
        state = {n: torch.from_numpy(np.ascontiguousarray(wf.get(prefix + n),
                                                          dtype=np.float32))
                 for n in names}
    layer.load_state_dict(state)
    layer.train()

    def read(path: str) -> torch.Tensor:
        with SafetensorsFile(path) as xf:
            v = np.ascontiguousarray(xf.get("hidden_states"), dtype=np.float32)
        return torch.from_numpy(v).reshape(1, -1, d)  # [batch, seq, D]

    x = read(a.inputs).requires_grad_(True)
    t = read(a.targets)
    b1, b2 = (float(v) for v in a.betas.split(","))
    opt = torch.optim.AdamW(layer.parameters(), lr=a.lr, betas=(b1, b2), eps=a.eps,
                            weight_decay=a.weight_decay, foreach=a.foreach or None)

    parts = ("forward", "loss", "backward", "step")
    runs: list[float] = []
    times: dict[str, list[float]] = {p: [] for p in parts}
    sub: dict[str, list[float]] = {}
    losses: list[float] = []
    for i in range(a.warmup + a.repeat):
        t0 = time.perf_counter()
        y = layer(x)
        t1 = time.perf_counter()
        loss = F.mse_loss(y, t)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        losses.append(float(loss.detach()))
        if i == 0 and a.grads:
            grads = {"hidden_states": x.grad.reshape(-1, d).numpy().copy()}
            for n, p in layer.named_parameters():
                grads[prefix + n] = p.grad.numpy().copy()
            save(a.grads, grads)
        opt.zero_grad(set_to_none=True)
        x.grad = None
        if i < a.warmup:
            continue
        runs.append(t4 - t0)
        for p, s in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[p].append(s)
        for n, s in layer.times.items():
            sub.setdefault("forward." + n, []).append(s)
    with open(a.json, "w", encoding="utf-8") as fh:
        json.dump({"runs_s": runs, "parts_s": times, "forward_parts_s": sub,
                   "losses": losses, "warmup": a.warmup,
                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "adamw_foreach": bool(a.foreach), "tokens": int(x.shape[1])}, fh)
    med = sorted(runs)[len(runs) // 2]
    print(f"torch eager train step: {len(runs)} runs, median {med * 1e3:.1f} ms "
          f"(threads {torch.get_num_threads()}); losses "
          + " ".join(f"{v:.6e}" for v in losses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
