#!/usr/bin/env python3
"""End-to-end tests of moe-run with a hand-written module (no compiler).

Builds module.c into two module directories (one rank, and a dp=2 mesh),
writes weights / inputs / reference safetensors with numpy, runs moe-run on
one rank and under mpirun -np 2, and checks the outputs; then runs every bad
input case and checks that moe-run exits non-zero, names the file or tensor,
and leaves no output file behind.

usage: run_tests.py --moe-run BIN --cc CC --include DIR --workdir DIR
                    [--mpiexec MPIEXEC]
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
T, D, E = 8, 16, 2
TIMEOUT = 120  # seconds per moe-run; more means a hang

failures = []


# ---------------------------------------------------------------- files


def bf16_bits(a):
    """float32 array -> bfloat16 bit patterns (round to nearest even)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounding = 0x7FFF + ((u >> 16) & 1)
    return ((u + rounding) >> 16).astype(np.uint16)


def write_safetensors(path, tensors, raw_header=None):
    """tensors: name -> (dtype string, numpy array)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        if dtype == "BF16":
            data = bf16_bits(arr).tobytes()
        else:
            np_type = {"F32": np.float32, "F16": np.float16,
                       "I32": np.int32, "I64": np.int64}[dtype]
            data = np.ascontiguousarray(arr, dtype=np_type).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = raw_header if raw_header is not None else json.dumps(header)
    text = text.encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        assert info["dtype"] == "F32", info
        out[name] = np.frombuffer(data[b:e], np.float32).reshape(info["shape"])
    return out


def fnv1a64(path):
    h = 0xCBF29CE484222325
    with open(path, "rb") as f:
        for byte in f.read():
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def runtime_abi_version(include):
    """MOERT_ABI_VERSION of the runtime under test (from its moert.h)."""
    with open(os.path.join(include, "moert", "moert.h")) as f:
        for line in f:
            words = line.split()
            if words[:2] == ["#define", "MOERT_ABI_VERSION"]:
                return int(words[2])
    raise RuntimeError(f"no MOERT_ABI_VERSION in {include}/moert/moert.h")


# ---------------------------------------------------------------- model


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, D)).astype(np.float32)
    # Multiples of 1/16 in [0.5, 1.5): exact in bf16.
    norm = (0.5 + rng.integers(0, 16, D) / 16.0).astype(np.float32)
    bias = rng.standard_normal((E, D)).astype(np.float32)
    proj = rng.standard_normal((D, D)).astype(np.float32)
    return x, norm, bias, proj


def reference(x, norm, bias, proj):
    y = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-6) * norm
    y = y + bias[np.arange(T) // (T // E)]
    out = y @ proj.T
    return out.astype(np.float32)


def weights_tensors(norm, bias, proj):
    t = {"norm.weight": ("BF16", norm)}
    for e in range(E):
        t[f"experts.{e}.bias"] = ("F32", bias[e])
    # The transpose flag: the file holds proj^T.
    t["proj.weight"] = ("F32", np.ascontiguousarray(proj.T))
    return t


def manifest(mesh_axes, mesh_shape, module_hash):
    n = 1
    for s in mesh_shape:
        n *= s
    tok = [["dp"], []] if mesh_axes else [[], []]
    exp = [["dp"], []] if mesh_axes else [[], []]

    def spec(index, role, name, shape, local, shard, **kw):
        d = {"index": index, "name": name, "dtype": "f32", "shape": shape,
             "local_shape": local, "shard": shard}
        if role:
            d["role"] = role
        d.update(kw)
        return d

    args = [
        spec(0, "input", "hidden_states", [T, D], [T // n, D], tok),
        spec(1, "weight", "norm.weight", [D], [D], [[]]),
        spec(2, "weight", "experts.{e}.bias", [E, D], [E // n, D], exp),
        spec(3, "weight", "proj.weight", [D, D], [D, D], [[], []],
             transpose=True),
    ]
    results = [
        spec(0, None, "hidden_states", [T, D], [T // n, D], tok),
        spec(1, None, "all_hidden", [T, D], [T, D], [[], []]),
    ]
    return {"format": "moe-compiler-module", "version": 1,
            "module_hash": module_hash, "library": "module.so",
            "target": "cpu",
            "mesh": {"axes": mesh_axes, "shape": mesh_shape},
            "entries": [{"name": "forward", "symbol": "moe_entry_forward",
                         "arena_bytes": T * D * 4, "args": args,
                         "results": results}]}


def description_flags(out_dir, m):
    """Like every compiled module, the library carries its own description
    (manifest.json's mesh and entries) as `const char moe_manifest[]`:
    writes it as a C header and returns the flags that include it."""
    desc = {"mesh": m["mesh"], "entries": m["entries"]}
    text = json.dumps(desc, separators=(",", ":"))
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    path = os.path.join(out_dir, "moe_manifest.h")
    with open(path, "w") as f:
        f.write(f'const char moe_manifest[] = "{text}";\n')
    return ["-include", path]


def build_module(out_dir, cc, include, mesh_axes, mesh_shape, extra=(),
                 edit=None):
    """`edit` changes the manifest and the description the library embeds
    alike."""
    os.makedirs(out_dir, exist_ok=True)
    n = 1
    for s in mesh_shape:
        n *= s
    lib = os.path.join(out_dir, "module.so")
    desc = manifest(mesh_axes, mesh_shape, "0" * 16)
    if edit:
        edit(desc)
    cmd = [cc, "-shared", "-fPIC", "-O1", "-I", include,
           f"-DLT={T // n}", f"-DLE={E // n}",
           f"-DMASK={1 if mesh_axes else 0}", *extra,
           *description_flags(out_dir, desc),
           os.path.join(HERE, "module.c"), "-o", lib]
    subprocess.run(cmd, check=True)
    m = manifest(mesh_axes, mesh_shape, fnv1a64(lib))
    if edit:
        edit(m)
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(m, f, indent=1)


# ---------------------------------------------------------------- running


def run(cmd, what):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True,
                           timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        failures.append(f"{what}: moe-run hung (more than {TIMEOUT} s)")
        return None
    return p


def check_good(cmd, what, out_path, expected):
    p = run(cmd, what)
    if p is None:
        return
    if p.returncode != 0:
        failures.append(f"{what}: exit {p.returncode}\n{p.stdout}{p.stderr}")
        return
    got = read_safetensors(out_path)
    for name, want in expected.items():
        if name not in got:
            failures.append(f"{what}: output lacks {name}")
        elif not np.allclose(got[name], want, rtol=1e-4, atol=1e-5):
            err = np.abs(got[name] - want).max()
            failures.append(f"{what}: {name} differs (max abs err {err:g})")
    print(f"ok   {what}")
    return p


def check_bad(cmd, what, must_name, out_path, code=None):
    """Runs a case that must fail: non-zero exit (`code` if given), a
    message naming every word of `must_name`, no output file, no crash."""
    if out_path and os.path.exists(out_path):
        os.unlink(out_path)
    p = run(cmd, what)
    if p is None:
        return
    text = p.stdout + p.stderr
    problems = []
    if p.returncode == 0:
        problems.append("exited 0")
    elif code is not None and p.returncode != code:
        problems.append(f"exited {p.returncode}, not {code}")
    for word in must_name:
        if word not in text:
            problems.append(f"message does not name {word!r}")
    if out_path and os.path.exists(out_path):
        problems.append("left an output file behind")
    if "Segmentation" in text or "core dumped" in text:
        problems.append("crashed")
    if problems:
        failures.append("{}: {}\n--- output:\n{}".format(what, "; ".join(problems), text))
    else:
        print(f"ok   {what} (exit {p.returncode})")


# ---------------------------------------------------------------- cases


def good_cases(a, w, single, dp2, files, expected):
    mr = a.moe_run
    out = os.path.join(w, "out1.safetensors")
    stats = os.path.join(w, "stats1.json")
    cmd = [mr, single, "--weights", files["weights"], "--inputs",
           files["inputs"], "--output", out, "--check", files["ref"],
           "--stats", stats, "--repeat", "2", "--warmup", "1"]
    p = check_good(cmd, "single rank", out, expected)
    if p is not None and p.returncode == 0:
        s = json.load(open(stats))
        if not (isinstance(s, list) and len(s) == 1 and s[0]["rank"] == 0
                and "run_seconds" in s[0] and "load_seconds" in s[0]):
            failures.append(f"single rank: bad stats file {s!r}")
        if "rmsnorm" not in p.stdout:
            failures.append("single rank: no phase table:\n" + p.stdout)
        if "threads per rank: " not in p.stdout:
            failures.append("single rank: no threads line:\n" + p.stdout)
    if not a.mpiexec:
        print("skip mpirun cases (no MPI)")
        return
    out = os.path.join(w, "out2.safetensors")
    stats = os.path.join(w, "stats2.json")
    trace = os.path.join(w, "trace2.json")
    cmd = [a.mpiexec, "--allow-run-as-root", "--oversubscribe", "-np", "2",
           mr, dp2, "--weights", files["weights"], "--inputs",
           files["inputs"], "--output", out, "--check", files["ref"],
           "--stats", stats, "--trace", trace, "--timeout", "60"]
    p = check_good(cmd, "mpirun -np 2, sharded input", out, expected)
    if p is not None and p.returncode == 0:
        s = json.load(open(stats))
        coll = [c for c in s[1]["collectives"] if c["op"] == "all_gather"]
        want = (T // 2) * D * 4  # one local block to the one other rank
        if len(s) != 2 or not coll or coll[0]["bytes_sent"] != want:
            failures.append(f"mpirun: stats {s!r} (want all_gather {want} bytes)")
        json.load(open(trace))
        if "collectives" not in p.stdout:
            failures.append("mpirun: no collectives table:\n" + p.stdout)
        if "threads per rank: " not in p.stdout or "2 ranks on this node" not in p.stdout:
            failures.append("mpirun: no threads line naming 2 local ranks:\n" + p.stdout)
    # The same run over an emulated dp link: same outputs, the link named,
    # the transfers on the trace's communication track.
    cmd = cmd[:-2] + ["--timeout", "60", "--net", "dp:alpha=2ms,bw=1GB/s"]
    p = check_good(cmd, "mpirun -np 2, --net dp:alpha=2ms,bw=1GB/s", out,
                   expected)
    if p is not None and p.returncode == 0:
        events = json.load(open(trace))
        if "network emulation: dp:alpha=2ms,bw=1GB/s" not in p.stdout:
            failures.append("--net: not reported:\n" + p.stdout)
        if not any(e.get("tid") == 1 and "over [dp]" in e.get("name", "")
                   for e in events):
            failures.append("--net: no transfer on the communication track")


def bad_file_cases(a, w, single, files, x, norm, bias, proj):
    """Each: (what, weights tensors or None, input tensors or None, names)."""
    good_w = weights_tensors(norm, bias, proj)
    good_x = {"hidden_states": ("F32", x)}
    no_proj = dict(good_w)
    del no_proj["proj.weight"]
    misnamed = dict(good_w)
    misnamed["experts.1.biass"] = misnamed.pop("experts.1.bias")
    wrong_shape = dict(good_w)
    wrong_shape["proj.weight"] = ("F32", np.zeros((D, D + 1), np.float32))
    wrong_expert = dict(good_w)
    wrong_expert["experts.0.bias"] = ("F32", np.zeros(D + 1, np.float32))
    wrong_dtype = dict(good_w)
    wrong_dtype["norm.weight"] = ("I32", np.zeros(D, np.int32))
    cases = [
        ("missing weight", no_proj, None, ["proj.weight"]),
        ("misnamed expert weight", misnamed, None, ["experts.1.bias"]),
        ("wrong weight shape", wrong_shape, None, ["proj.weight"]),
        ("wrong expert shape", wrong_expert, None, ["experts.0.bias"]),
        ("wrong weight dtype", wrong_dtype, None, ["norm.weight", "I32"]),
        ("input D mismatch", None,
         {"hidden_states": ("F32", np.zeros((T, D - 4), np.float32))},
         ["hidden_states"]),
    ]
    for what, wt, xt, names in cases:
        wp = os.path.join(w, "bad_w.safetensors")
        xp = os.path.join(w, "bad_x.safetensors")
        write_safetensors(wp, wt if wt is not None else good_w)
        write_safetensors(xp, xt if xt is not None else good_x)
        out = os.path.join(w, "bad_out.safetensors")
        check_bad([a.moe_run, single, "--weights", wp, "--inputs", xp,
                   "--output", out], what, names, out)


def corrupt_file_cases(a, w, single, files):
    out = os.path.join(w, "bad_out.safetensors")
    base = [a.moe_run, single, "--inputs", files["inputs"], "--output", out]
    data = open(files["weights"], "rb").read()
    trunc = os.path.join(w, "truncated.safetensors")
    open(trunc, "wb").write(data[:-10])
    check_bad(base + ["--weights", trunc], "truncated weights",
              ["truncated.safetensors", "truncated"], out)
    tiny = os.path.join(w, "tiny.safetensors")
    open(tiny, "wb").write(data[:5])
    check_bad(base + ["--weights", tiny], "file shorter than its header",
              ["tiny.safetensors"], out)
    corrupt = os.path.join(w, "corrupt.safetensors")
    write_safetensors(corrupt, {}, raw_header='{"norm.weight": {"dtype": ')
    check_bad(base + ["--weights", corrupt], "corrupt header",
              ["corrupt.safetensors", "header"], out)
    oob = os.path.join(w, "oob.safetensors")
    hdr = json.dumps({"norm.weight": {"dtype": "F32", "shape": [D],
                                      "data_offsets": [4096, 4096 + 4 * D]}})
    write_safetensors(oob, {}, raw_header=hdr)
    check_bad(base + ["--weights", oob], "offsets out of bounds",
              ["oob.safetensors", "norm.weight"], out)
    missing = os.path.join(w, "does-not-exist.safetensors")
    check_bad(base + ["--weights", missing], "missing weights file",
              ["does-not-exist.safetensors"], out)
    bad_out = "/nonexistent-dir-moe-run/out.safetensors"
    check_bad([a.moe_run, single, "--weights", files["weights"], "--inputs",
               files["inputs"], "--output", bad_out], "unwritable output",
              ["/nonexistent-dir-moe-run/out.safetensors"], None)


def module_cases(a, w, single, files):
    out = os.path.join(w, "bad_out.safetensors")
    args = ["--weights", files["weights"], "--inputs", files["inputs"],
            "--output", out]
    bad_manifest = os.path.join(w, "bad_manifest")
    shutil.copytree(single, bad_manifest, dirs_exist_ok=True)
    m = json.load(open(os.path.join(single, "manifest.json")))
    m["entries"][0]["args"][0]["shard"] = [["xp"], []]
    json.dump(m, open(os.path.join(bad_manifest, "manifest.json"), "w"))
    check_bad([a.moe_run, bad_manifest] + args, "manifest with unknown axis",
              ["manifest.json", "xp"], out)
    open(os.path.join(bad_manifest, "manifest.json"), "w").write('{"format"')
    check_bad([a.moe_run, bad_manifest] + args, "manifest not JSON",
              ["manifest.json"], out)
    bad_lib = os.path.join(w, "bad_lib")
    shutil.copytree(single, bad_lib, dirs_exist_ok=True)
    open(os.path.join(bad_lib, "module.so"), "wb").write(b"not an ELF")
    check_bad([a.moe_run, bad_lib] + args, "library that fails to load",
              ["module.so"], out)
    check_bad([a.moe_run, single, "--entry", "backward"] + args,
              "unknown entry", ["backward"], out)
    check_bad([a.moe_run, single, "--net", "dp:alpha=50"] + args,
              "--net without a unit", ["--net", "dp:alpha=50", "unit"], out,
              code=2)
    check_bad([a.moe_run, single, "--net", "dp:alpha=5us,speed=1GB/s"] + args,
              "--net with an unknown parameter", ["--net", "speed"], out,
              code=2)
    # A module built for another kernel ABI, or that does not say which, is
    # refused before it runs (exit 1: an error, docs/module-format.md).
    abi = runtime_abi_version(a.include)
    other_abi = os.path.join(w, "other_abi")
    build_module(other_abi, a.cc, a.include, [], [],
                 [f"-DABI_VERSION={abi + 1}"])
    check_bad([a.moe_run, other_abi] + args,
              "module built for another runtime ABI",
              [os.path.join(other_abi, "module.so"),
               f"runtime ABI version {abi + 1}",
               f"this runtime is version {abi}", "recompile"], out, code=1)
    no_abi = os.path.join(w, "no_abi")
    build_module(no_abi, a.cc, a.include, [], [], ["-DNO_ABI_VERSION"])
    check_bad([a.moe_run, no_abi] + args,
              "module without an ABI version",
              [os.path.join(no_abi, "module.so"), "moe_abi_version",
               f"this runtime is version {abi}"], out, code=1)
    check = os.path.join(w, "wrong_ref.safetensors")
    write_safetensors(check, {"hidden_states": ("F32", np.zeros((T, D))),
                              "all_hidden": ("F32", np.zeros((T, D)))})
    p = run([a.moe_run, single, "--check", check] + args, "check mismatch")
    if p is not None and (p.returncode != 1 or "MISMATCH" not in p.stdout):
        failures.append(f"check mismatch: exit {p.returncode}\n{p.stdout}{p.stderr}")
    elif p is not None:
        print("ok   check mismatch (exit 1)")


def edited_copy(w, src, name, edit):
    """A copy of module directory `src` whose manifest.json `edit` changed
    (the library stays the same)."""
    d = os.path.join(w, name)
    shutil.copytree(src, d, dirs_exist_ok=True)
    path = os.path.join(d, "manifest.json")
    m = json.load(open(path))
    edit(m)
    json.dump(m, open(path, "w"))
    return d


def hostile_cases(a, w, single, dp2, files):
    """A careless or hostile manifest.json, module.so or file name: each ends
    in a named error (exit 1), no crash, no hang, no output (issue 15)."""
    out = os.path.join(w, "bad_out.safetensors")
    args = ["--weights", files["weights"], "--inputs", files["inputs"],
            "--output", out]

    def case(what, d, words, extra=(), inputs=None):
        cmd = [a.moe_run, d] + args + list(extra)
        if inputs:
            cmd[cmd.index(files["inputs"])] = inputs
        check_bad(cmd, what, words, out, code=1)

    def mesh(m):
        m["mesh"] = {"axes": ["a", "b"], "shape": [2**32, 2**32]}
        for t in m["entries"][0]["args"] + m["entries"][0]["results"]:
            t["shard"] = [[] for _ in t["shape"]]
        m["entries"][0]["args"][0]["shard"] = [["a", "b"], []]
    case("mesh of 2^32 x 2^32 ranks", edited_copy(w, single, "h_mesh", mesh),
         ["manifest.json", "mesh.shape", "overflows"])

    def result(m):
        r = m["entries"][0]["results"][0]
        r["shape"] = r["local_shape"] = [T // 2, D]
    case("result smaller than the library writes",
         edited_copy(w, single, "h_result", result),
         ["manifest.json", "results[0].shape", "hidden_states",
          f"[{T // 2}, {D}]", f"[{T}, {D}]", "module library"])

    def shrunk(m):
        x = m["entries"][0]["args"][0]
        x["shape"] = x["local_shape"] = [T // 2, D]
    small_x = os.path.join(w, "small_x.safetensors")
    write_safetensors(small_x, {"hidden_states": (
        "F32", np.zeros((T // 2, D), np.float32))})
    case("input shape shrunk in the manifest (and the inputs)",
         edited_copy(w, single, "h_shrunk", shrunk),
         ["manifest.json", "args[0].shape", "hidden_states"], inputs=small_x)

    def f16(m):
        for t in m["entries"][0]["args"][1:]:
            t["dtype"] = "f16"
    case("weight dtypes changed to f16", edited_copy(w, single, "h_f16", f16),
         ["manifest.json", "args[1].dtype", "norm.weight", "f16", "f32"])

    def huge(m):
        x = m["entries"][0]["args"][0]
        x["shape"] = x["local_shape"] = [2**40, 32]
    case("input shape [2^40, 32] in the manifest",
         edited_copy(w, single, "h_huge", huge),
         ["manifest.json", "args[0].shape", "hidden_states"])

    def overflow(m):
        x = m["entries"][0]["args"][0]
        x["shape"] = x["local_shape"] = [2**62, 64]
    case("input byte size overflowing 64 bits",
         edited_copy(w, single, "h_overflow", overflow),
         ["manifest.json", "args[0].shape", "overflows"])

    trunc = os.path.join(w, "h_trunc")
    shutil.copytree(single, trunc, dirs_exist_ok=True)
    lib = os.path.join(trunc, "module.so")
    data = open(lib, "rb").read()
    open(lib, "wb").write(data[:len(data) // 2])
    for quiet in ([], ["--quiet"]):
        case("module.so truncated" + (" (--quiet)" if quiet else ""), trunc,
             [lib, "module_hash", "recompile"], quiet)

    other = os.path.join(w, "h_other")
    shutil.copytree(single, other, dirs_exist_ok=True)
    shutil.copy(os.path.join(dp2, "module.so"),
                os.path.join(other, "module.so"))
    case("module.so of another model", other,
         [os.path.join(other, "module.so"), "module_hash"], ["--quiet"])
    # The same library with the manifest's hash edited to match it: the
    # library's own description still tells them apart.
    lib_hash = fnv1a64(os.path.join(other, "module.so"))
    forged = edited_copy(w, other, "h_forged",
                         lambda m: m.update(module_hash=lib_hash))
    case("module.so of another model, hash forged", forged,
         ["manifest.json", "mesh", "module library"])

    # A module whose library agrees that a result is 2^40 x 16 f32 (64 TiB):
    # the allocation fails, naming the tensor and the bytes.
    def big_result(m):
        r = m["entries"][0]["results"][1]
        r["shape"] = r["local_shape"] = [2**40, D]
    big = os.path.join(w, "h_big")
    build_module(big, a.cc, a.include, [], [], edit=big_result)
    case("result too large to allocate", big,
         ["all_hidden", str(2**40 * D * 4), "allocate"])

    fifo = os.path.join(w, "inputs.fifo")
    os.mkfifo(fifo)
    case("--inputs naming a FIFO", single, [fifo, "not a regular file"],
         inputs=fifo)


def mpi_cases(a, w, single, dp2, files):
    if not a.mpiexec:
        return
    mpi = [a.mpiexec, "--allow-run-as-root", "--oversubscribe"]
    out = os.path.join(w, "bad_out.safetensors")
    args = ["--weights", files["weights"], "--inputs", files["inputs"],
            "--output", out, "--timeout", "20"]
    check_bad(mpi + ["-np", "2", a.moe_run, single] + args,
              "mpirun -np 2 with a one-rank module", ["mesh"], out)
    check_bad(mpi + ["-np", "2", a.moe_run, dp2] + args +
              ["--net", "ep:alpha=1us"],
              "--net on an axis the mesh lacks", ["--net", "'ep'", "[dp]"],
              out)
    other = os.path.join(w, "dp2_other")
    build_module(other, a.cc, a.include, ["dp"], [2], ["-DVARIANT=1"])
    check_bad(mpi + ["-np", "1", a.moe_run, dp2] + args +
              [":", "-np", "1", a.moe_run, other] + args,
              "ranks running different modules", ["same module"], out)
    trunc = os.path.join(w, "truncated.safetensors")
    check_bad(mpi + ["-np", "1", a.moe_run, dp2] + args +
              [":", "-np", "1", a.moe_run, dp2, "--weights", trunc,
               "--inputs", files["inputs"], "--output", out],
              "one rank fails alone", ["truncated.safetensors"], out)


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
    single = os.path.join(w, "single")
    dp2 = os.path.join(w, "dp2")
    build_module(single, a.cc, a.include, [], [])
    build_module(dp2, a.cc, a.include, ["dp"], [2])
    x, norm, bias, proj = make_data()
    out = reference(x, norm, bias, proj)
    files = {k: os.path.join(w, k + ".safetensors")
             for k in ("weights", "inputs", "ref")}
    write_safetensors(files["weights"], weights_tensors(norm, bias, proj))
    write_safetensors(files["inputs"], {"hidden_states": ("F32", x)})
    write_safetensors(files["ref"], {"hidden_states": ("F32", out),
                                     "all_hidden": ("F32", out)})
    expected = {"hidden_states": out, "all_hidden": out}
    good_cases(a, w, single, dp2, files, expected)
    bad_file_cases(a, w, single, files, x, norm, bias, proj)
    corrupt_file_cases(a, w, single, files)
    module_cases(a, w, single, files)
    hostile_cases(a, w, single, dp2, files)
    mpi_cases(a, w, single, dp2, files)
    for f in failures:
        print("FAIL " + f)
    print(f"moe-run handwritten: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
