"""Reads the moe.manifest attribute(s) of printed MLIR, for lit.

  manifest-attr.py FILE.mlir                  prints the facts one per line (FileCheck)
  manifest-attr.py FILE.mlir --same-as M.json checks that manifest.json is the
                                              attribute plus what the driver adds
FILE may be - (stdin) and may hold several modules (-split-input-file).
"""
import argparse
import json
import re
import sys

# What moe-compile adds to the attribute's description (docs/module-format.md).
DRIVER_KEYS = {"format", "version", "module_hash", "library", "target", "source"}


def mlir_string(text):
    """Undoes MLIR's string escapes (\\\\ and \\XX hex)."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "\\":
            if text[i + 1] == "\\":
                out += b"\\"
                i += 2
            else:
                out.append(int(text[i + 1:i + 3], 16))
                i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode()


def shard(spec):
    """[["dp", "ep"], []] -> "dp*ep x -" (FileCheck reads [[ as a variable)."""
    return " x ".join("*".join(axes) or "-" for axes in spec)


def summarize(m):
    mesh = " ".join(f"{a}={s}" for a, s in zip(m["mesh"]["axes"], m["mesh"]["shape"]))
    print("mesh", mesh or "none")
    for e in m["entries"]:
        print(f"entry {e['name']} symbol {e['symbol']} keys {','.join(sorted(e))}")
        for a in e["args"]:
            extra = f" transpose {a['transpose']}" if "transpose" in a else ""
            print(f"arg {a['index']} {a['role']} {a['name']} {a['dtype']} global {a['shape']} "
                  f"local {a['local_shape']} shard {shard(a['shard'])}{extra}")
        for r in e["results"]:
            print(f"result {r['index']} {r['name']} {r['dtype']} global {r['shape']} "
                  f"local {r['local_shape']} shard {shard(r['shard'])}")
        for c in e["collectives"]:
            bound = " (upper bound)" if c["upper_bound"] else ""
            print(f"collective {c['op']} over {c['axis']} calls {c['calls']} "
                  f"bytes {c['bytes_sent']}{bound}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mlir")
    p.add_argument("--same-as", metavar="MANIFEST_JSON")
    a = p.parse_args()
    text = sys.stdin.read() if a.mlir == "-" else open(a.mlir, encoding="utf-8").read()
    attrs = [json.loads(mlir_string(s)) for s in re.findall(r'moe\.manifest = "([^"]*)"', text)]
    if not a.same_as:
        for m in attrs:
            print("manifest")
            summarize(m)
        return 0
    if len(attrs) != 1:
        print(f"expected one moe.manifest, found {len(attrs)}")
        return 1
    with open(a.same_as, encoding="utf-8") as fh:
        manifest = json.load(fh)
    expected = dict(attrs[0])
    expected.update({k: manifest.get(k) for k in DRIVER_KEYS})
    for got, want in zip(manifest.get("entries", []), expected["entries"]):
        want["arena_bytes"] = got.get("arena_bytes")
    # Training modules: the checkpoint plan (moe.checkpoint, completed with
    # the arenas of forward_train and backward).
    plan = manifest.get("checkpoint")
    if plan is not None:
        arenas = {e["name"]: e["arena_bytes"] for e in manifest["entries"]}
        if plan.get("peak_bytes") != plan.get("saved_bytes", -1) + max(
                arenas.get("forward_train", 0), arenas.get("backward", 0)):
            print(f"checkpoint peak_bytes is not saved + the larger arena: {plan}")
            return 1
        expected["checkpoint"] = plan
    if manifest != expected or not all(isinstance(e["arena_bytes"], int)
                                       for e in manifest["entries"]):
        print(f"manifest.json differs from moe.manifest:\n{json.dumps(manifest)}\n"
              f"{json.dumps(expected)}")
        return 1
    print(f"manifest.json = moe.manifest + arena_bytes + {','.join(sorted(DRIVER_KEYS))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
