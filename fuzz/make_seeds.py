#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/README.md) from the
repository's test inputs: fuzz/corpus/<target>/seed-*.

  pipeline     models emitted from examples/configs (with moe-compile-pipeline
               option lines) and every split of the lit tests' .mlir files;
  manifest     manifest.json of modules moe-compile compiles from those models
               (one device, a mesh, training);
  safetensors  small files of every dtype, empty and rank-0 tensors, metadata,
               and the inputs `init-inputs` writes;
  json         the configs, the manifests, the safetensors headers and a few
               edge cases of the grammar.

Run from anywhere: fuzz/make_seeds.py --build build (needs moe-compile there).
Files the fuzzers add (fuzz/README.md: regression inputs) are left alone; only
seed-* files are rewritten.
"""

import argparse
import glob
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")

# (config, emit options, pipeline options) of the emitted models.
MODELS = [
    ("tiny-mixtral", [], ""),
    ("tiny-mixtral", [], "mesh=ep=2,tp=2 dtd"),
    ("tiny-mixtral", ["--dtype", "bf16"], "mesh=ep=2"),
    ("tiny-switch", ["--capacity-factor", "1.25", "--token-groups", "2"],
     "mesh=dp=2,ep=2"),
    ("tiny-switch", ["--losses"], "train"),
    ("tiny-gshard", [], "mesh=ep=2,tp=2 expert-tp"),
    ("tiny-qwen2-moe", [], "mesh=ep=2 train"),
    ("tiny-qwen3-moe", [], ""),
    ("tiny-olmoe", [], "mesh=dp=2,ep=2 train zero1"),
    ("tiny-deepseek-v2", [], "mesh=tp=2 expert-tp"),
    ("tiny-deepseek-v3", [], "mesh=ep=2,tp=2 dtd"),
    ("tiny-pr-moe", [], ""),
    ("tiny-dbrx", ["--norm", "rmsnorm", "--dtype", "f16"], ""),
]

# Larger manifests (two training modules) only slow the fuzzers down.
MAX_MANIFEST = 32 * 1024

# Lit test files split into seeds, each also tried with these options.
LIT_GLOBS = ["test/Dialect/MoE/*.mlir", "test/Transforms/*.mlir",
             "test/Conversion/*.mlir", "test/Pipelines/*.mlir",
             "test/Tools/Inputs/*.mlir", "test/Integration/Inputs/*.mlir"]


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def strip_comments(text):
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("//")]
    return "\n".join(ln for ln in lines if ln.strip()) + "\n"


def emit(config, opts, tmp):
    out = os.path.join(tmp, "model.mlir")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    subprocess.run([sys.executable, "-m", "moe_compiler", "emit", "--hf-config",
                    os.path.join(ROOT, "examples", "configs", config + ".json"),
                    "--tokens", "8", "--layers", "0:1", "-o", out] + opts,
                   check=True, env=env)
    with open(out) as f:
        return strip_comments(f.read())


def compile_manifest(build, model, pipeline, tmp):
    path = os.path.join(tmp, "in.mlir")
    with open(path, "w") as f:
        f.write(model)
    args = [os.path.join(build, "bin", "moe-compile"), path,
            "-o", os.path.join(tmp, "mod")]
    for opt in pipeline.split():
        if opt.startswith("mesh="):
            args.append("--mesh=" + opt[5:])
        else:
            args.append("--" + opt)
    subprocess.run(["rm", "-rf", os.path.join(tmp, "mod")], check=True)
    subprocess.run(args, check=True)
    with open(os.path.join(tmp, "mod", "manifest.json")) as f:
        return f.read()


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data, h


def safetensors_seeds(tmp):
    f32 = struct.pack("<6f", 1.0, -2.5, 0.0, 3.25, -0.0, 1e-30)
    f16 = struct.pack("<4H", 0x3C00, 0xC000, 0x7C00, 0x0001)
    bf16 = struct.pack("<4H", 0x3F80, 0xC020, 0x7F80, 0x0001)
    i32 = struct.pack("<3i", 1, -7, 2**31 - 1)
    i64 = struct.pack("<3q", 5, -(2**40), 2**31)
    files = [
        safetensors([("w", "F32", [2, 3], f32)], {"format": "pt"}),
        safetensors([("a", "F16", [2, 2], f16), ("b", "BF16", [4], bf16),
                     ("experts.0.w", "F32", [3, 2], f32)]),
        safetensors([("i", "I32", [3], i32), ("j", "I64", [1, 3], i64)]),
        safetensors([("scalar", "F32", [], f32[:4]),
                     ("empty", "F32", [0, 4], b""),
                     ("d", "F64", [1], struct.pack("<d", 2.0)),
                     ("u", "U8", [2], b"\x01\x02")], {"k": "v", "n": "1"}),
        safetensors([("x.{e}", "F32", [2, 1, 3], f32 + f32)]),
    ]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    out = os.path.join(tmp, "inputs.safetensors")
    subprocess.run([sys.executable, "-m", "moe_compiler", "init-inputs",
                    "--hf-config", os.path.join(ROOT, "examples", "configs",
                                                "tiny-switch.json"),
                    "--tokens", "4", "--seed", "1", "-o", out], check=True, env=env)
    with open(out, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    files.append((raw, raw[8:8 + n]))
    return files


JSON_EDGES = [
    '{"a": [1, -0, -0.0, 1.5e300, 1e400, 9223372036854775807, '
    '-9223372036854775808, 9223372036854775808, 0.1]}',
    '["\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/", "\\u0000", "plain \xc3\xa9"]',
    '{"nested": ' + "[" * 200 + "]" * 200 + ', "t": true, "f": false, '
    '"n": null}',
    '  {"dup": 1, "dup": 2, "": {}}  ',
]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"),
                   help="build directory with bin/moe-compile")
    a = p.parse_args()
    for t in ("pipeline", "manifest", "safetensors", "json"):
        for old in glob.glob(os.path.join(CORPUS, t, "seed-*")):
            os.remove(old)
    with tempfile.TemporaryDirectory() as tmp:
        for config, opts, pipeline in MODELS:
            model = emit(config, opts, tmp)
            write("pipeline", (f"// options: {pipeline}\n" if pipeline else "")
                  + model)
            manifest = compile_manifest(a.build, model, pipeline, tmp)
            if len(manifest) <= MAX_MANIFEST:
                write("manifest", manifest)
                write("json", manifest)
        for pattern in LIT_GLOBS:
            for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
                with open(path) as f:
                    for chunk in f.read().split("// -----"):
                        body = strip_comments(chunk)
                        if body.strip():
                            write("pipeline", body)
        for raw, header in safetensors_seeds(tmp):
            write("safetensors", raw)
            write("json", header)
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "configs",
                                              "*.json"))):
        with open(path) as f:
            write("json", f.read())
    for text in JSON_EDGES:
        write("json", text)
    for t in ("pipeline", "manifest", "safetensors", "json"):
        files = glob.glob(os.path.join(CORPUS, t, "*"))
        print(f"{t}: {len(files)} files, "
              f"{sum(os.path.getsize(f) for f in files)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
