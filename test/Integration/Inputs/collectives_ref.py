"""Inputs and the numpy result of Inputs/collectives.mlir on a 2 x 2 mesh
(ep, tp; rank = 2 * ep + tp): each rank holds 8 rows of x and b."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "python"))
from moe_compiler import safetensors as st  # noqa: E402

out = sys.argv[1]
rng = np.random.default_rng(7)
x = rng.standard_normal((32, 16)).astype(np.float32)
b = rng.standard_normal((32, 16)).astype(np.float32)
local = [x[8 * r:8 * r + 8] for r in range(4)]
rank = {(ep, tp): 2 * ep + tp for ep in range(2) for tp in range(2)}


def ep_group(r):  # ranks sharing tp, ordered by ep
    return [rank[(e, r % 2)] for e in range(2)]


def tp_group(r):  # ranks sharing ep, ordered by tp
    return [rank[(r // 2, t)] for t in range(2)]


a2a, sums, gathers, scatters = [], [], [], []
for r in range(4):
    g, me = ep_group(r), r // 2
    # split dim 0 into 2 chunks, chunk p to peer p; concat received in peer order
    a2a.append(np.concatenate([local[q][4 * me:4 * me + 4] for q in g]))
    sums.append(sum(local[q].astype(np.float64) for q in tp_group(r)))
    gathers.append(np.concatenate([local[q] for q in tp_group(r)]))
    total = sum(local[q].astype(np.float64) for q in g)
    scatters.append(total[4 * me:4 * me + 4])
cat = np.concatenate
ref = {"a2a_sync": cat(a2a), "a2a_async": cat(a2a), "sum_sync": cat(sums),
       "sum_async": cat(sums), "gather_async": cat(gathers),
       "scatter_async": cat(scatters), "overlapped": 2.0 * b}
st.save(os.path.join(out, "x.safetensors"), {"x": x, "b": b})
st.save(os.path.join(out, "ref.safetensors"),
        {k: v.astype(np.float32) for k, v in ref.items()})
