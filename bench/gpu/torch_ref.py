#!/usr/bin/env python3
"""PyTorch baselines for the MoE layers of moe-gpu-bench.

Two implementations of each layer, timed with CUDA events (median of runs):

* ``hf``: the style of Hugging Face's MixtralSparseMoeBlock / DeepseekV3MoE
  (routing in PyTorch ops, then a Python loop over experts with
  ``index_select`` and ``index_add_``);
* ``grouped_mm``: the same routing, then tokens sorted by expert and the three
  expert GEMMs as ``torch._grouped_mm`` calls (torchtitan style).

The weights are the ones moe-gpu-bench uses: element ``i`` of a tensor is a
hash of ``i`` and the tensor's seed (see ``hash_tensor``), so with ``--dump``
the first tokens of the benchmark's output can be compared with a PyTorch
reference computed here (router in f32, as the runtime specifies).

Prints one JSON object (also written to ``--json``).
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

LAYERS = {
    "mixtral_t4096": dict(T=4096, D=4096, F=14336, E=8, k=2, score="softmax",
                          scaling=1.0, groups=0, kept=0, bias=False,
                          shared_F=0),
    "mixtral_t16384": dict(T=16384, D=4096, F=14336, E=8, k=2,
                           score="softmax", scaling=1.0, groups=0, kept=0,
                           bias=False, shared_F=0),
    "dsv3_t4096": dict(T=4096, D=7168, F=2048, E=256, k=8, score="sigmoid",
                       scaling=2.5, groups=8, kept=4, bias=True,
                       shared_F=2048),
}
# Small stand-ins (moe-gpu-bench --quick uses the same).
QUICK = {
    "mixtral_t4096": dict(LAYERS["mixtral_t4096"], T=512, D=1024, F=2048),
    "dsv3_t4096": dict(LAYERS["dsv3_t4096"], T=512, D=1024, F=256, E=64,
                       shared_F=256),
}

SEEDS = dict(x=1, router=2, gate=3, up=4, down=5, bias=6, shared_gate=7,
             shared_up=8, shared_down=9)
MASK32 = 0xFFFFFFFF


def mix32_int(x):
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


def mix32(x):
    """mix32 of moe_layer_bench.cu on an int64 tensor of uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32  # int64 wraps; the low 32 bits are right
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    x = x ^ (x >> 16)
    return x


def f32(v):
    return torch.tensor(np.float32(v), dtype=torch.float32)


def hash_tensor(seed, shape, scale, dtype, device, chunk=1 << 25):
    """Element i = (2 * (mix32(i + mix32(seed)) >> 8) / 2^24 - 1) * scale,
    in f32, then rounded to `dtype` -- bit-identical to the benchmark."""
    n = math.prod(shape)
    out = torch.empty(n, dtype=dtype, device=device)
    ms = mix32_int(seed)
    s = f32(scale).to(device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        i = torch.arange(start, stop, dtype=torch.int64, device=device)
        h = mix32((i + ms) & MASK32)
        u = (h >> 8).to(torch.float32) * (1.0 / 16777216.0)
        v = (u * 2.0 - 1.0) * s
        out[start:stop] = v.to(dtype)
    return out.view(*shape)


def make_weights(c, device, dtype=torch.bfloat16):
    D, Fd, E = c["D"], c["F"], c["E"]
    sd = np.float32(1.0) / np.sqrt(np.float32(D))
    sf = np.float32(1.0) / np.sqrt(np.float32(Fd))
    w = {
        "x": hash_tensor(SEEDS["x"], (c["T"], D), 1.0, dtype, device),
        "router": hash_tensor(SEEDS["router"], (E, D), sd, dtype, device),
        "gate": hash_tensor(SEEDS["gate"], (E, Fd, D), sd, dtype, device),
        "up": hash_tensor(SEEDS["up"], (E, Fd, D), sd, dtype, device),
        "down": hash_tensor(SEEDS["down"], (E, D, Fd), sf, dtype, device),
    }
    if c["bias"]:
        w["bias"] = hash_tensor(SEEDS["bias"], (E,), np.float32(0.1),
                                torch.float32, device)
    if c["shared_F"]:
        Fs = c["shared_F"]
        ss = np.float32(1.0) / np.sqrt(np.float32(Fs))
        w["shared_gate"] = hash_tensor(SEEDS["shared_gate"], (Fs, D), sd,
                                       dtype, device)
        w["shared_up"] = hash_tensor(SEEDS["shared_up"], (Fs, D), sd, dtype,
                                     device)
        w["shared_down"] = hash_tensor(SEEDS["shared_down"], (D, Fs), ss,
                                       dtype, device)
    return w


# --- Routing ----------------------------------------------------------------


def route_mixtral_hf(x, w, c):
    """MixtralSparseMoeBlock: bf16 gate, softmax in f32, top-k, renormalize."""
    logits = x @ w["router"].t()
    probs = F.softmax(logits, dim=1, dtype=torch.float)
    topw, topi = torch.topk(probs, c["k"], dim=-1)
    topw = topw / topw.sum(dim=-1, keepdim=True)
    return topi, topw.to(x.dtype)


def route_dsv3_hf(x, w, c, masked=0.0):
    """DeepseekV3TopkRouter: f32 router, sigmoid, bias for selection only,
    group-limited (sum of the top 2 per group), renormalize, scale."""
    E, G, M = c["E"], c["groups"], c["kept"]
    logits = F.linear(x.float(), w["router"].float())
    scores = logits.sigmoid()
    sfc = scores + w["bias"]
    group_scores = sfc.view(-1, G, E // G).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=M, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
    sfc = sfc.masked_fill(~score_mask.bool(), masked)
    topi = torch.topk(sfc, k=c["k"], dim=-1, sorted=False)[1]
    topw = scores.gather(1, topi)
    topw = topw / (topw.sum(dim=-1, keepdim=True) + 1e-20)
    return topi, topw * c["scaling"]


def route_spec(x, w, c):
    """The runtime's routing (docs/spec.md items 3.1-3.4): f32 logits, ties to
    the lower index, indices ordered by decreasing selection score."""
    logits = x.float() @ w["router"].float().t()
    if c["score"] == "softmax":
        scores = torch.softmax(logits, dim=-1)
    else:
        scores = torch.sigmoid(logits)
    sel = scores + w["bias"] if c["bias"] else scores.clone()
    if c["groups"] > 1 and c["kept"] < c["groups"]:
        G, E = c["groups"], c["E"]
        gs = sel.view(-1, G, E // G).topk(2, dim=-1)[0].sum(dim=-1)
        gi = torch.topk(gs, k=c["kept"], dim=-1)[1]
        keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gi, True)
        keep = keep.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
        sel = sel.masked_fill(~keep, float("-inf"))
    topi = torch.topk(sel, k=c["k"], dim=-1, sorted=True)[1]
    topw = scores.gather(1, topi)
    topw = topw / topw.sum(dim=-1, keepdim=True)
    return topi, topw * c["scaling"]


# --- Experts ----------------------------------------------------------------


def expert(x, w, e):
    g = x @ w["gate"][e].t()
    u = x @ w["up"][e].t()
    return (F.silu(g) * u) @ w["down"][e].t()


def shared(x, w):
    h = F.silu(x @ w["shared_gate"].t()) * (x @ w["shared_up"].t())
    return h @ w["shared_down"].t()


def layer_hf(x, w, c):
    """Loop over experts with index_select / index_add_ (HF style)."""
    E = c["E"]
    if c["score"] == "softmax":
        topi, topw = route_mixtral_hf(x, w, c)
        final = torch.zeros_like(x)
    else:
        topi, topw = route_dsv3_hf(x, w, c)
        final = torch.zeros(x.shape, dtype=topw.dtype, device=x.device)
    expert_mask = F.one_hot(topi, num_classes=E).permute(2, 1, 0)
    for e in range(E):
        slot, tok = torch.where(expert_mask[e])
        if tok.numel() == 0:
            continue
        cur = x.index_select(0, tok)
        out = expert(cur, w, e) * topw[tok, slot, None]
        final.index_add_(0, tok, out.to(final.dtype))
    final = final.to(x.dtype)
    if c["shared_F"]:
        final = final + shared(x, w)
    return final


ALIGN = 16  # rows per expert for torch._grouped_mm when it needs alignment


def layer_grouped_mm(x, w, c, pad):
    """Sort assignments by expert, three torch._grouped_mm calls, combine."""
    T, D, E, k = c["T"], c["D"], c["E"], c["k"]
    if c["score"] == "softmax":
        topi, topw = route_mixtral_hf(x, w, c)
    else:
        topi, topw = route_dsv3_hf(x, w, c)
    flat = topi.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tok = order // k
    counts = torch.bincount(flat, minlength=E)
    xs = x.index_select(0, tok)
    if pad:
        # Each expert's rows start at a multiple of ALIGN.
        padded = (counts + ALIGN - 1) // ALIGN * ALIGN
        offs = torch.cumsum(padded, 0)
        starts = offs - padded
        first = torch.cumsum(counts, 0) - counts
        e_sorted = flat[order]
        dest = starts[e_sorted] + torch.arange(T * k, device=x.device) \
            - first[e_sorted]
        total = int(offs[-1])  # one host sync; rows past it stay out
        xp = torch.zeros(total, D, dtype=x.dtype, device=x.device)
        xp[dest] = xs
        xs = xp
        offs = offs.to(torch.int32)
    else:
        offs = torch.cumsum(counts, 0).to(torch.int32)
    g = torch._grouped_mm(xs, w["gate_t"], offs=offs)
    u = torch._grouped_mm(xs, w["up_t"], offs=offs)
    o = torch._grouped_mm(F.silu(g) * u, w["down_t"], offs=offs)
    if pad:
        o = o[dest]
    out = torch.zeros(T, D, dtype=torch.float32, device=x.device)
    out.index_add_(0, tok, o.float() * topw.reshape(-1)[order, None].float())
    out = out.to(x.dtype)
    if c["shared_F"]:
        out = out + shared(x, w)
    return out


def reference_tokens(x, w, c, n):
    """The spec's layer on the first n tokens: f32 routing, bf16 experts."""
    xs = x[:n]
    topi, topw = route_spec(xs, w, c)
    out = torch.zeros(n, c["D"], dtype=torch.float32, device=x.device)
    for e in torch.unique(topi).tolist():
        t, j = torch.where(topi == e)
        y = expert(xs.index_select(0, t), w, e)
        out.index_add_(0, t, y.float() * topw[t, j, None])
    out = out.to(x.dtype).float()
    if c["shared_F"]:
        out = (out.to(x.dtype) + shared(xs, w)).float()
    return topi, out


def time_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def grouped_mm_needs_padding(device):
    """True when torch._grouped_mm rejects group sizes not a multiple of 16."""
    if not hasattr(torch, "_grouped_mm"):
        return None
    E, D, N = 3, 64, 32
    a = torch.randn(13, D, dtype=torch.bfloat16, device=device)
    b = torch.randn(E, N, D, dtype=torch.bfloat16,
                    device=device).transpose(-2, -1)
    offs = torch.tensor([5, 5, 13], dtype=torch.int32, device=device)
    try:
        torch._grouped_mm(a, b, offs=offs)
        torch.cuda.synchronize()
        return False
    except Exception:  # noqa: BLE001 - any rejection means: pad
        return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--dump", help="moe-gpu-bench --dump directory")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="one layer name")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {"torch": torch.__version__,
              "device": torch.cuda.get_device_name(0), "layers": {}}
    pad = grouped_mm_needs_padding(dev)
    result["grouped_mm"] = ("missing" if pad is None else
                            "padded to 16 rows" if pad else "unpadded")
    layers = QUICK if args.quick else LAYERS
    for name, c in layers.items():
        if args.only and name != args.only:
            continue
        r = {}
        w = make_weights(c, dev)
        w["gate_t"] = w["gate"].transpose(-2, -1)
        w["up_t"] = w["up"].transpose(-2, -1)
        w["down_t"] = w["down"].transpose(-2, -1)
        x = w["x"]
        with torch.no_grad():
            out_hf = layer_hf(x, w, c)
            r["hf_ms"] = time_ms(lambda x=x, w=w, c=c: layer_hf(x, w, c), 2,
                                 args.runs)
            if pad is not None:
                try:
                    out_gm = layer_grouped_mm(x, w, c, pad)
                    r["grouped_mm_ms"] = time_ms(
                        lambda x=x, w=w, c=c: layer_grouped_mm(x, w, c, pad),
                        2, args.runs)
                    r["grouped_mm_vs_hf_rel_err"] = rel_err(out_gm, out_hf)
                except Exception as e:  # noqa: BLE001 - report, go on
                    r["grouped_mm_error"] = f"{type(e).__name__}: {e}"[:300]
            # Cross-check with moe-gpu-bench's output on the first tokens.
            base = os.path.join(args.dump or "", name)
            if args.dump and os.path.exists(base + ".out.f32"):
                ours = np.fromfile(base + ".out.f32", dtype=np.float32)
                idx = np.fromfile(base + ".idx.i32", dtype=np.int32)
                n = ours.size // c["D"]
                ours = torch.from_numpy(ours).view(n, c["D"]).to(dev)
                idx = torch.from_numpy(idx).view(n, c["k"]).to(dev)
                topi, ref = reference_tokens(x, w, c, n)
                same = (topi.to(torch.int32) == idx).all(dim=1)
                r["check_tokens"] = n
                r["check_route_mismatch"] = int((~same).sum())
                r["check_rel_err"] = rel_err(ours[same], ref[same])
                r["check_rel_err_vs_hf"] = rel_err(ours[same],
                                                   out_hf[:n][same])
                r["check_pass"] = bool(r["check_rel_err"] < 1e-2 and
                                       r["check_route_mismatch"] * 100 <= n)
        result["layers"][name] = r
        print(f"torch {name}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in r.items()), file=sys.stderr, flush=True)
        del w, x, out_hf
        torch.cuda.empty_cache()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
