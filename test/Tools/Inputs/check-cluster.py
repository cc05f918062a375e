#!/usr/bin/env python3
"""Checks the shape of a cluster file (not its timings) and prints its
fields: every number finite, rates and sizes > 0, latencies >= 0."""

import json
import math
import sys


def positive(v, name, allow_zero=False):
    ok = isinstance(v, (int, float)) and math.isfinite(v) and (
        v >= 0 if allow_zero else v > 0)
    if not ok:
        sys.exit("%s: not a valid number: %r" % (name, v))


def link(obj, name):
    if set(obj) != {"alpha_s", "bandwidth_bytes_per_s"}:
        sys.exit("%s: fields %s" % (name, sorted(obj)))
    positive(obj["alpha_s"], name + ".alpha_s", allow_zero=True)
    positive(obj["bandwidth_bytes_per_s"], name + ".bandwidth_bytes_per_s")
    print("link", name)


def main():
    with open(sys.argv[1]) as f:
        c = json.load(f)
    print("version", c["version"], "nodes", c["nodes"], "devices_per_node",
          c["devices_per_node"])
    dev = c["device"]
    for k in ["gemm_flop_per_s", "copy_bytes_per_s", "memory_bytes"]:
        positive(dev[k], "device." + k)
    positive(dev["gemm_latency_s"], "device.gemm_latency_s", allow_zero=True)
    print("device", " ".join(dev))
    for k in sorted(c["links"]):
        link(c["links"][k], "links." + k)
    for k in sorted(c.get("axes", {})):
        link(c["axes"][k], "axes." + k)


if __name__ == "__main__":
    main()
