#!/usr/bin/env python3
"""End-to-end tests of moe-run --train with a hand-written training module.

train_module.c implements forward_train, backward, step_adamw and step_sgd of
a model whose gradients are written out here in numpy (x * scale[e] . W^T, an
mse loss and an aux loss, a selection bias updated from counts). The tests run
moe-run --train on one rank and under mpirun -np 2 (dp=2: W's gradient is
all-reduced), and check: the printed losses and the first step's gradients
against numpy; AdamW and SGD against the optimizer of the float64 reference
(moe_compiler.train_reference); one SGD step without momentum writing exactly
W - lr*grad; a resumed run equal bit for bit to an uninterrupted one; the
saved files' names, shapes and dtypes; --stats per entry; and every bad input
(exit non-zero, message naming the problem, nothing written).

usage: train_tests.py --moe-run BIN --cc CC --include DIR --workdir DIR
                      [--mpiexec MPIEXEC]
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "python"))
from run_tests import description_flags, fnv1a64, write_safetensors  # noqa: E402,E501

from moe_compiler.train_reference import Optimizer, OptimizerConfig, update_selection_bias  # noqa: E402

T, D, E = 8, 16, 2
AUX = 0.01
TIMEOUT = 120
failures = []


def fail(what, msg):
    failures.append(f"{what}: {msg}")


# ---------------------------------------------------------------- files


def read_st(path):
    """name -> (dtype string, array); and the metadata."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    types = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[b:e], types[info["dtype"]])
        out[name] = (info["dtype"], arr.reshape(info["shape"]))
    return out, meta


def arrays(path):
    return {k: v for k, (_, v) in read_st(path)[0].items()}


# ---------------------------------------------------------------- module


def manifest(dp, module_hash):
    n = 2 if dp else 1
    tok = [["dp"], []] if dp else [[], []]
    rep2, rep1 = [[], []], [[]]

    def t(index, name, shape, local, shard, role=None, **kw):
        d = {"index": index, "name": name, "dtype": "f32", "shape": shape,
             "local_shape": local, "shard": shard}
        if role:
            d["role"] = role
        d.update(kw)
        return d

    W, S, B = "proj.weight", "experts.{e}.scale", "router.bias"
    sshape = ([E, D], [E // n, D], [["dp"], []] if dp else rep2)
    one = ([1], [1], rep1)

    def weights(role="weight", start=0, suffix=""):
        return [t(start, W + suffix, [D, D], [D, D], rep2, role,
                  transpose=True),
                t(start + 1, S + suffix, *sshape, role)]

    ft = {"name": "forward_train", "symbol": "moe_entry_forward_train",
          "args": [t(0, "hidden_states", [T, D], [T // n, D], tok, "input"),
                   t(1, "targets", [T, D], [T // n, D], tok, "input"),
                   *weights(start=2), t(4, B, [E], [E], rep1, "weight")],
          "results": [t(0, "loss", *one), t(1, "mse_loss", *one),
                      t(2, "aux_loss", *one),
                      t(3, "saved.0", [T, D], [T // n, D], tok),
                      t(4, "saved.1", [T, D], [T // n, D], tok),
                      t(5, "load." + B, [E], [E], rep1)]}
    bw = {"name": "backward", "symbol": "moe_entry_backward",
          "args": [t(0, "saved.0", [T, D], [T // n, D], tok, "saved"),
                   t(1, "saved.1", [T, D], [T // n, D], tok, "saved"),
                   *weights(start=2)],
          "results": [t(0, "grad.hidden_states", [T, D], [T // n, D], tok),
                      t(1, "grad." + W, [D, D], [D, D], rep2),
                      t(2, "grad." + S, *sshape)]}

    def step(opt, slots):
        args = weights() + [t(2, B, [E], [E], rep1, "weight"),
                            t(3, "grad." + W, [D, D], [D, D], rep2, "grad"),
                            t(4, "grad." + S, *sshape, "grad")]
        results = [t(0, W, [D, D], [D, D], rep2), t(1, S, *sshape)]
        for i in range(2):  # W's state, then scale's (train_module.c)
            for slot in slots:
                st = dict(weights("state", 0, "." + slot)[i], index=len(args))
                if slot == "exp_avg_sq":  # a state is read like its weight,
                    st.pop("transpose", None)  # whether flagged or not
                args.append(st)
                results.append(dict(st, index=len(results)))
                results[-1].pop("role")
                results[-1].pop("transpose", None)
        args.append(t(len(args), "optimizer.hparams", [8], [8], rep1,
                      "hparams"))
        args.append(t(len(args), "load." + B, [E], [E], rep1, "saved"))
        results.append(t(len(results), B, [E], [E], rep1))
        return {"name": "step_" + opt, "symbol": "moe_entry_step_" + opt,
                "args": args, "results": results}

    return {"format": "moe-compiler-module", "version": 1,
            "module_hash": module_hash, "library": "module.so",
            "target": "cpu",
            "mesh": {"axes": ["dp"] if dp else [], "shape": [2] if dp else []},
            "entries": [ft, bw, step("adamw", ["exp_avg", "exp_avg_sq"]),
                        step("sgd", ["momentum_buffer"])]}


def build(out_dir, a, dp, extra=(), edit=None):
    os.makedirs(out_dir, exist_ok=True)
    n = 2 if dp else 1
    lib = os.path.join(out_dir, "module.so")
    flags = description_flags(out_dir, manifest(dp, "0" * 16))
    subprocess.run([a.cc, "-shared", "-fPIC", "-O1", "-ffp-contract=off",
                    "-I", a.include, f"-DLT={T // n}", f"-DLE={E // n}",
                    f"-DMASK={1 if dp else 0}", *extra, *flags,
                    os.path.join(HERE, "train_module.c"), "-o", lib, "-lm"],
                   check=True)
    m = manifest(dp, fnv1a64(lib))
    if edit:
        edit(m)
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(m, f, indent=1)
    return out_dir


# ---------------------------------------------------------------- numpy model


def make_data(seed=3):
    rng = np.random.default_rng(seed)
    f = np.float32
    x = rng.standard_normal((T, D)).astype(f)
    tgt = rng.standard_normal((T, D)).astype(f)
    w = {"proj.weight": (rng.standard_normal((D, D)) / 4).astype(f),
         "router.bias": (rng.standard_normal(E) / 2).astype(f)}
    for e in range(E):
        w[f"experts.{e}.scale"] = (1 + rng.standard_normal(D) / 4).astype(f)
    return x, tgt, w


def model(x, tgt, w):
    """Loss terms, gradients (file names and layouts) and loads, float64."""
    W = w["proj.weight"].astype(np.float64).T  # the file holds W^T
    s = np.stack([w[f"experts.{e}.scale"] for e in range(E)]).astype(np.float64)
    e_of = np.arange(T) // (T // E)
    u = x * s[e_of]
    diff = u @ W.T - tgt
    mse = float(np.mean(diff * diff))
    aux = AUX * float(np.sum(s * s)) / (E * D)
    dy = 2 * diff / (T * D)
    du = dy @ W
    ds = np.stack([(du * x)[e_of == e].sum(0) for e in range(E)])
    ds += 2 * AUX * s / (E * D)
    grads = {"proj.weight": (dy.T @ u).T}
    for e in range(E):
        grads[f"experts.{e}.scale"] = ds[e]
    load = np.array([np.sum(x[:, e] + w["router.bias"][e] > 0)
                     for e in range(E)], np.float64)
    return mse + aux, mse, aux, du * s[e_of], grads, load


def reference_train(x, tgt, w0, cfg, steps, rate=0.001):
    w = {k: v.astype(np.float64) for k, v in w0.items()}
    shapes = {k: v.shape for k, v in w.items() if k != "router.bias"}
    opt = Optimizer(cfg, shapes)
    losses = []
    for _ in range(steps):
        f32w = {k: v.astype(np.float32) for k, v in w.items()}
        loss, mse, aux, _, grads, load = model(x, tgt, f32w)
        losses.append((loss, mse, aux))
        opt.step(w, grads)
        w["router.bias"] = update_selection_bias(w["router.bias"], load, T, 1,
                                                 rate)
    return losses, w, opt


# ---------------------------------------------------------------- running


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None


STEP = re.compile(r"^step (\d+)/(\d+) loss (\S+) mse (\S+) aux (\S+) "
                  r"grad_norm (\S+) \(([0-9.]+) ms\)$", re.M)


def train(what, cmd):
    """Runs a good case; returns the printed (loss, mse, aux) rows or None."""
    p = run(cmd)
    if p is None or p.returncode != 0:
        fail(what, "hung" if p is None else
             f"exit {p.returncode}\n{p.stdout}{p.stderr}")
        return None
    rows = [tuple(float(v) for v in m.groups()[2:5])
            for m in STEP.finditer(p.stdout)]
    print(f"ok   {what}")
    return rows, p.stdout


def expect_bad(what, cmd, words, outputs=(), code=None):
    for o in outputs:
        if os.path.exists(o):
            os.unlink(o)
    p = run(cmd)
    if p is None:
        return fail(what, "hung")
    text = p.stdout + p.stderr
    problems = [f"message does not name {w!r}" for w in words
                if w not in text]
    if p.returncode == 0:
        problems.append("exited 0")
    elif code is not None and p.returncode != code:
        problems.append(f"exited {p.returncode}, not {code}")
    problems += [f"wrote {o}" for o in outputs if os.path.exists(o)]
    if "Segmentation" in text or "core dumped" in text:
        problems.append("crashed")
    if problems:
        fail(what, "; ".join(problems) + "\n--- output:\n" + text)
    else:
        print(f"ok   {what} (exit {p.returncode})")


def close(what, got, want, rtol, atol=1e-7):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return fail(what, f"shape {got.shape}, expected {want.shape}")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        fail(what, f"max abs err {np.abs(got - want).max():g}")


def same_files(what, a, b):
    ta, tb = read_st(a)[0], read_st(b)[0]
    if ta.keys() != tb.keys():
        return fail(what, f"names differ: {sorted(ta)} vs {sorted(tb)}")
    for k in ta:
        if ta[k][0] != tb[k][0] or ta[k][1].tobytes() != tb[k][1].tobytes():
            fail(what, f"tensor {k} differs")


# ---------------------------------------------------------------- cases


class Ctx:
    def __init__(self, a, w):
        self.a, self.w = a, w
        self.x, self.tgt, self.w0 = make_data()
        self.files = {}
        for name, tensors in [
                ("weights", {k: ("F32", v) for k, v in self.w0.items()}),
                ("inputs", {"hidden_states": ("F32", self.x)}),
                ("targets", {"hidden_states": ("F32", self.tgt)})]:
            self.files[name] = self.path(name + ".safetensors")
            write_safetensors(self.files[name], tensors)
        self.single = build(self.path("single"), a, False)

    def path(self, name):
        return os.path.join(self.w, name)

    def cmd(self, module=None, weights=None, targets=None, steps=3, *extra):
        return [self.a.moe_run, module or self.single, "--train", "--steps",
                str(steps), "--weights", weights or self.files["weights"],
                "--inputs", self.files["inputs"], "--targets",
                targets or self.files["targets"], *extra]


def adamw_case(c):
    wp, sp, gp, st = (c.path(n) for n in ("aw.safetensors", "as.safetensors",
                                          "ag.safetensors", "stats.json"))
    trace = c.path("trace.json")
    got = train("adamw, 3 steps", c.cmd(None, None, None, 3, "--save-weights",
                                        wp, "--save-optimizer-state", sp,
                                        "--grads", gp, "--stats", st,
                                        "--trace", trace))
    if got is None:
        return
    rows, out = got
    cfg = OptimizerConfig.make("adamw")
    losses, w, opt = reference_train(c.x, c.tgt, c.w0, cfg, 3)
    if len(rows) != 3:
        return fail("adamw", f"{len(rows)} step lines:\n{out}")
    close("adamw: printed losses", rows, losses, 1e-5)
    _, _, _, dx, g, _ = model(c.x, c.tgt, c.w0)
    grads = arrays(gp)
    if set(grads) != {"hidden_states", *g}:
        fail("adamw: --grads names", sorted(grads))
    else:
        close("adamw: gradient of hidden_states", grads["hidden_states"], dx,
              1e-5)
        for k in g:
            close(f"adamw: gradient of {k}", grads[k], g[k], 1e-5)
    saved = arrays(wp)
    for k in w:
        close(f"adamw: saved weight {k}", saved.get(k, np.zeros(0)), w[k],
              1e-4, 1e-6)
    # The state file: train-reference's names, shapes and dtypes.
    mine, meta = read_st(sp)
    ref = opt.state_tensors()
    want = {k: ({np.float32: "F32", np.int64: "I64"}[v.dtype.type], v.shape)
            for k, v in ref.items()}
    have = {k: (d, v.shape) for k, (d, v) in mine.items()}
    if have != want:
        fail("adamw: state file", f"{have} != {want}")
    elif mine["optimizer.step"][1][0] != 3 or meta.get("optimizer") != "adamw":
        fail("adamw: state file", f"step {mine['optimizer.step']} meta {meta}")
    else:
        for k in ref:
            close(f"adamw: state {k}", mine[k][1], ref[k], 1e-4, 1e-7)
    s = json.load(open(st))
    names = [e["name"] for e in s[0]["entries"]]
    phases = {p["name"] for p in s[0]["entries"][0]["phases"]}
    if names != ["forward_train", "backward", "step_adamw"] or \
            s[0].get("device") != "cpu" or s[0].get("steps") != 3 or \
            "router" not in phases or s[0]["entries"][1]["runs"] != 3:
        fail("adamw: --stats per entry", json.dumps(s))
    if "entry backward" not in out:
        fail("adamw: tables per entry", out)
    events = json.load(open(trace))
    if sum(e.get("name") == "router" for e in events) != 3:
        fail("adamw: --trace", "not one router event per forward_train")


def sgd_cases(c):
    wp, sp, gp = (c.path(n) for n in ("sw.safetensors", "ss.safetensors",
                                      "sg.safetensors"))
    lr = np.float32(0.05)
    got = train("sgd, one step, no momentum",
                c.cmd(None, None, None, 1, "--optimizer", "sgd", "--lr",
                      "0.05", "--save-weights", wp, "--save-optimizer-state",
                      sp, "--grads", gp))
    if got is not None:
        grads, saved, state = arrays(gp), arrays(wp), arrays(sp)
        for k in ("proj.weight", "experts.0.scale", "experts.1.scale"):
            want = (c.w0[k].astype(np.float64)
                    + grads[k].astype(np.float64) * -float(lr)).astype(
                        np.float32)
            if saved[k].tobytes() != want.tobytes():
                fail(f"sgd: {k} is not exactly W - lr*grad",
                     f"max diff {np.abs(saved[k] - want).max():g}")
            if state[k + ".momentum_buffer"].tobytes() != grads[k].tobytes():
                fail(f"sgd: {k}.momentum_buffer", "is not the gradient")
        if state["optimizer.step"].tolist() != [1]:
            fail("sgd: optimizer.step", state["optimizer.step"])
    got = train("sgd, momentum and weight decay, 3 steps",
                c.cmd(None, None, None, 3, "--optimizer", "sgd", "--lr", "0.1",
                      "--momentum", "0.9", "--weight-decay", "0.01",
                      "--bias-update-rate", "0.25", "--save-weights", wp))
    if got is not None:
        cfg = OptimizerConfig.make("sgd", 0.1, momentum=0.9, weight_decay=0.01)
        losses, w, _ = reference_train(c.x, c.tgt, c.w0, cfg, 3, 0.25)
        close("sgd momentum: printed losses", got[0], losses, 1e-5)
        saved = arrays(wp)
        for k in w:
            close(f"sgd momentum: saved weight {k}", saved[k], w[k], 1e-4, 1e-6)


def json_case(c):
    p = run(c.cmd(None, None, None, 2, "--optimizer", "sgd", "--json"))
    if p is None or p.returncode != 0:
        return fail("--json", "no run" if p is None else p.stdout + p.stderr)
    try:
        out = json.loads(p.stdout)
    except ValueError:
        return fail("--json", "stdout is not one JSON object:\n" + p.stdout)
    losses, _, _ = reference_train(c.x, c.tgt, c.w0,
                                   OptimizerConfig.make("sgd"), 2)
    rows = [(r["loss"], r["mse"], r["aux_loss"]) for r in out["steps"]]
    if out["optimizer"] != "sgd" or [r["step"] for r in out["steps"]] != [1, 2]:
        fail("--json", p.stdout)
    close("--json: losses", rows, losses, 1e-5)
    print("ok   --json")


def resume_cases(c):
    for opt, extra in (("adamw", ["--lr", "0.01"]),
                       ("sgd", ["--lr", "0.1", "--momentum", "0.5"])):
        base = ["--optimizer", opt, *extra]
        k = [c.path(f"{opt}-{n}.safetensors") for n in ("w2", "s2", "w5",
                                                        "s5", "w5b", "s5b")]
        a = train(f"{opt}: 2 steps", c.cmd(None, None, None, 2, *base,
                                           "--save-weights", k[0],
                                           "--save-optimizer-state", k[1]))
        b = train(f"{opt}: 3 more steps from the saved files",
                  c.cmd(None, k[0], None, 3, *base, "--optimizer-state", k[1],
                        "--save-weights", k[2], "--save-optimizer-state",
                        k[3]))
        d = train(f"{opt}: 5 steps", c.cmd(None, None, None, 5, *base,
                                           "--save-weights", k[4],
                                           "--save-optimizer-state", k[5]))
        if None in (a, b, d):
            continue
        same_files(f"{opt}: resumed weights", k[2], k[4])
        same_files(f"{opt}: resumed state", k[3], k[5])
        if a[0] + b[0] != d[0]:
            fail(f"{opt}: resumed losses", f"{a[0] + b[0]} != {d[0]}")


def bad_cases(c):
    outs = [c.path(n) for n in ("bad_w.safetensors", "bad_s.safetensors",
                                "bad_g.safetensors")]
    save = ["--save-weights", outs[0], "--save-optimizer-state", outs[1],
            "--grads", outs[2]]

    def file(name, tensors):
        p = c.path(name)
        write_safetensors(p, tensors)
        return p

    tp = file("t_shape.safetensors",
              {"hidden_states": ("F32", np.zeros((T, D - 1), np.float32))})
    expect_bad("targets of the wrong shape", c.cmd(None, None, tp, 2, *save),
               ["t_shape.safetensors", "hidden_states", f"[{T}, {D - 1}]"],
               outs)
    tp = file("t_dtype.safetensors",
              {"hidden_states": ("I32", np.zeros((T, D), np.int32))})
    expect_bad("targets of the wrong dtype", c.cmd(None, None, tp, 2, *save),
               ["t_dtype.safetensors", "hidden_states", "I32"], outs)
    tp = file("t_none.safetensors", {"y": ("F32", c.tgt)})
    expect_bad("targets without hidden_states", c.cmd(None, None, tp, 2,
                                                      *save),
               ["t_none.safetensors", "hidden_states"], outs)
    full = {f"{k}.{s}": ("F32", np.zeros_like(v)) for k, v in c.w0.items()
            if k != "router.bias" for s in ("exp_avg", "exp_avg_sq")}
    full["proj.weight.exp_avg"] = ("F32", np.zeros((D, D), np.float32))
    full["optimizer.step"] = ("I64", np.array([4], np.int64))
    for what, drop, words in [
            ("missing state tensor", "experts.1.scale.exp_avg_sq",
             ["experts.1.scale.exp_avg_sq"]),
            ("state without optimizer.step", "optimizer.step",
             ["optimizer.step"])]:
        st = dict(full)
        del st[drop]
        sp = file("state_" + drop + ".safetensors", st)
        expect_bad(what, c.cmd(None, None, None, 2, "--optimizer-state", sp,
                               *save), [sp] + words, outs)
    st = dict(full)
    st["experts.0.scale.exp_avg"] = ("F32", np.full(D, np.nan, np.float32))
    sp = file("state_nan.safetensors", st)
    expect_bad("state that is not finite", c.cmd(None, None, None, 2,
                                                 "--optimizer-state", sp,
                                                 *save),
               ["experts.0.scale.exp_avg", "not finite"], outs)
    usage = [
        (["--lr", "0"], ["--lr", "> 0"]), (["--lr", "-1"], ["--lr"]),
        (["--lr", "nan"], ["--lr", "nan"]), (["--lr", "inf"], ["--lr"]),
        (["--lr", "x"], ["--lr"]), (["--lr", "1e-50"], ["--lr", "in f32"]),
        (["--lr", "1e39"], ["--lr", "in f32"]),
        (["--momentum", "0.9"], ["--momentum"]),
        (["--optimizer", "sgd", "--betas", "0.9,0.99"], ["--betas"]),
        (["--optimizer", "sgd", "--eps", "1e-8"], ["--eps"]),
        (["--optimizer", "sgd", "--momentum", "-1"], ["--momentum"]),
        (["--betas", "1,0.9"], ["--betas", "[0, 1)"]),
        (["--betas", "0.9"], ["--betas", "B1,B2"]),
        (["--eps", "-1"], ["--eps"]), (["--weight-decay", "nan"],
                                       ["--weight-decay"]),
        (["--bias-update-rate", "-0.5"], ["--bias-update-rate"]),
        (["--clip-grad-norm", "0"], ["--clip-grad-norm", "> 0"]),
        (["--clip-grad-norm", "nan"], ["--clip-grad-norm", "nan"]),
        (["--optimizer", "lion"], ["lion"]),
        (["--output", outs[0]], ["--output"]),
        (["--save-weights", outs[1]], ["different files"]),
    ]
    for extra, words in usage:
        code = None if "--save-weights" in extra else 2
        expect_bad("option " + " ".join(extra),
                   c.cmd(None, None, None, 2, *save[2:], *extra), words, outs,
                   code)
    expect_bad("--steps -1", c.cmd(None, None, None, -1, *save), ["--steps"],
               outs, 2)
    expect_bad("--steps 0 with --grads", c.cmd(None, None, None, 0, *save),
               ["--grads", "--steps 0"], outs, 2)
    expect_bad("training option without --train",
               [c.a.moe_run, c.single, "--weights", c.files["weights"],
                "--inputs", c.files["inputs"], "--output", outs[0],
                "--steps", "2"], ["--steps", "--train"], outs, 2)
    expect_bad("--json without --train",
               [c.a.moe_run, c.single, "--weights", c.files["weights"],
                "--inputs", c.files["inputs"], "--output", outs[0],
                "--json"], ["--json", "--train"], outs, 2)
    expect_bad("NaN in the loss", c.cmd(None, None, None, 3, "--optimizer",
                                        "sgd", "--lr", "1e30", *save),
               ["step 2/3", "loss", "nothing was written"], outs, 1)
    nan = build(c.path("nan_grad"), c.a, False, ["-DNAN_GRAD=2"])
    expect_bad("NaN in a gradient", c.cmd(nan, None, None, 3, *save),
               ["step 2/3", "gradient of 'experts.1.scale'"], outs, 1)


def manifest_cases(c):
    def edited(name, fn):
        return build(c.path(name), c.a, False, edit=fn)

    def arg(m, entry, name):
        return next(a for e in m["entries"] if e["name"] == entry
                    for a in e["args"] if a["name"] == name)

    cases = [
        ("saved argument nothing provides",
         lambda m: arg(m, "backward", "saved.1").update(name="saved.7"),
         ["saved.7", "nothing provides it"]),
        ("no backward entry",
         lambda m: m["entries"].pop(1), ["backward"]),
        ("unknown role",
         lambda m: arg(m, "backward", "saved.1").update(role="activation"),
         ["activation"]),
        ("state of no weight",
         lambda m: arg(m, "step_adamw", "proj.weight.exp_avg").update(
             name="proj.weights.exp_avg"), ["proj.weights.exp_avg"]),
        ("saved tensor of another shape",
         lambda m: arg(m, "backward", "saved.1").update(
             shape=[T, D + 1], local_shape=[T, D + 1]), ["saved.1"]),
        ("hyperparameters of the wrong shape",
         lambda m: arg(m, "step_sgd", "optimizer.hparams").update(
             shape=[7], local_shape=[7]), ["optimizer.hparams"]),
    ]
    out = c.path("bad_w.safetensors")
    for what, fn, words in cases:
        d = edited("m_" + what.replace(" ", "_"), fn)
        expect_bad("manifest: " + what, c.cmd(d, None, None, 1,
                                              "--save-weights", out),
                   ["manifest.json"] + words, [out], 1)
    no_targets = edited("m_no_targets", lambda m: arg(
        m, "forward_train", "targets").update(name="labels"))
    expect_bad("forward_train without targets",
               c.cmd(no_targets, None, None, 1), ["targets"], [], 1)
    no_sgd = edited("m_no_sgd", lambda m: m["entries"].pop(3))
    expect_bad("module without step_sgd",
               c.cmd(no_sgd, None, None, 1, "--optimizer", "sgd"),
               ["step_sgd"], [], 1)


def mpi_cases(c):
    if not c.a.mpiexec:
        print("skip mpirun cases (no MPI)")
        return
    mpi = [c.a.mpiexec, "--allow-run-as-root", "--oversubscribe", "-np", "2"]
    dp2 = build(c.path("dp2"), c.a, True)
    wp, sp, gp, st = (c.path(n) for n in ("mw.safetensors", "ms.safetensors",
                                          "mg.safetensors", "mstats.json"))
    got = train("mpirun -np 2 (dp=2), adamw, 3 steps",
                mpi + c.cmd(dp2, None, None, 3, "--save-weights", wp,
                            "--save-optimizer-state", sp, "--grads", gp,
                            "--stats", st, "--timeout", "60"))
    if got is not None:
        losses, w, opt = reference_train(c.x, c.tgt, c.w0,
                                         OptimizerConfig.make("adamw"), 3)
        close("dp2: printed losses", got[0], losses, 1e-5)
        saved = arrays(wp)
        for k in w:
            close(f"dp2: saved weight {k}", saved[k], w[k], 1e-4, 1e-6)
        _, _, _, dx, g, _ = model(c.x, c.tgt, c.w0)
        grads = arrays(gp)
        close("dp2: gradient of hidden_states", grads["hidden_states"], dx,
              1e-5)
        for k in g:
            close(f"dp2: gradient of {k}", grads[k], g[k], 1e-5)
        ref = opt.state_tensors()
        state = arrays(sp)
        for k in ref:
            close(f"dp2: state {k}", state[k], ref[k], 1e-4, 1e-7)
        s = json.load(open(st))
        coll = {x["op"]: x["bytes_sent"]
                for x in s[1]["entries"][1]["collectives"]}
        if coll.get("all_reduce", 0) <= 0:
            fail("dp2: --stats", "backward has no all_reduce bytes: "
                 + json.dumps(s[1]["entries"][1]))
        # The printed per-rank table names every rank (0 and 1), per entry.
        table = re.findall(r"^collectives per rank, entry (\S+)\n.*\n((?:  \S+ .*\n)+)",
                           got[1], re.M)
        ranks = {e: sorted({row.split()[0] for row in rows.splitlines()})
                 for e, rows in table}
        if not table or any(r != ["0", "1"] for r in ranks.values()):
            fail("dp2: per-rank collectives table", f"ranks per entry {ranks}")
        else:
            print(f"ok   dp2: per-rank collectives table names ranks 0 and 1 "
                  f"({', '.join(sorted(ranks))})")
    k = [c.path(f"dp2-{n}.safetensors") for n in ("w1", "s1", "w3", "s3")]
    a = train("dp2: 1 step, saved", mpi + c.cmd(
        dp2, None, None, 1, "--save-weights", k[0], "--save-optimizer-state",
        k[1], "--timeout", "60"))
    b = train("dp2: 2 more steps from the saved files", mpi + c.cmd(
        dp2, k[0], None, 2, "--optimizer-state", k[1], "--save-weights", k[2],
        "--save-optimizer-state", k[3], "--timeout", "60"))
    if a is not None and b is not None and got is not None:
        same_files("dp2: resumed weights", k[2], wp)
        same_files("dp2: resumed state", k[3], sp)
    nan = build(c.path("dp2_nan"), c.a, True, ["-DNAN_GRAD=2"])
    out = c.path("bad_w.safetensors")
    expect_bad("dp2: NaN in a gradient on rank 1",
               mpi + c.cmd(nan, None, None, 3, "--save-weights", out,
                           "--timeout", "30"),
               ["step 2/3", "gradient of 'experts.1.scale'", "rank 1"],
               [out], 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe-run", required=True)
    ap.add_argument("--cc", required=True)
    ap.add_argument("--include", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mpiexec", default="")
    a = ap.parse_args()
    w = os.path.abspath(a.workdir)
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    c = Ctx(a, w)
    adamw_case(c)
    sgd_cases(c)
    json_case(c)
    resume_cases(c)
    bad_cases(c)
    manifest_cases(c)
    mpi_cases(c)
    for f in failures:
        print("FAIL " + f)
    print(f"moe-run --train handwritten: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
