"""Prints the facts of a module manifest one per line, for FileCheck."""
import json
import sys

m = json.load(open(sys.argv[1]))
mesh = " ".join(f"{a}={s}" for a, s in zip(m["mesh"]["axes"], m["mesh"]["shape"]))
print("mesh", mesh or "none")
print(f"library {m['library']} hash {m['module_hash']} ({len(m['module_hash'])} digits)")
def shard(spec):
    """[["dp", "ep"], []] -> "dp*ep x -" (FileCheck reads [[ as a variable)."""
    return " x ".join("*".join(axes) or "-" for axes in spec)


for e in m["entries"]:
    role = f" role {e['role']}" if "role" in e else ""
    print(f"entry {e['name']} symbol {e['symbol']} arena {e['arena_bytes']} bytes{role}")
    for a in e["args"]:
        extra = f" transpose {a['transpose']}" if "transpose" in a else ""
        print(f"arg {a['index']} {a['role']} {a['name']} {a['dtype']} global {a['shape']} "
              f"local {a['local_shape']} shard {shard(a['shard'])}{extra}")
    for r in e["results"]:
        print(f"result {r['index']} {r['name']} {r['dtype']} global {r['shape']} "
              f"local {r['local_shape']} shard {shard(r['shard'])}")
