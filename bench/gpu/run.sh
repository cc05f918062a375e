#!/usr/bin/env bash
# One script for a session lent a GPU (H200, sm_90) for a few minutes:
# builds the runtime with the CUDA backend (no compiler, no MLIR), runs the
# CUDA unit tests, the whole-layer benchmark (moe-gpu-bench: correctness
# against the CPU backend, then timings) and the PyTorch baselines
# (torch_ref.py), and prints one table. Everything lands in $OUT:
#   run.log  build.log  unittests.xml  families.json  bench.json  torch.json
#   summary.txt
#
# Before: bench/gpu/prepare_families.sh here (modules of every family, compiled
# with the MLIR compiler the GPU machine lacks), then carry gpu-pack/.
# Usage (repository root on the GPU machine):
#   bench/gpu/run.sh            # full sizes (about 5 to 7 minutes)
#   bench/gpu/run.sh --quick    # small layers, for a smoke test
# Environment: OUT (default out/gpu), BUILD_DIR (default build-gpu),
# BUDGET_S (450), CUDA_ARCHS (90).
# Each step runs under `timeout`; the whole script stays inside BUDGET_S
# seconds (default 450). A failing step is reported and the next one runs.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$root/out/gpu}
mkdir -p "$OUT"
build=${BUILD_DIR:-$root/build-gpu}
budget=${BUDGET_S:-450}
quick=""
[ "${1:-}" = "--quick" ] && quick="--quick"
exec > >(tee "$OUT/run.log") 2>&1
t0=$(date +%s)
deadline=$((t0 + budget))
status=0

step() { echo; echo "=== [$(($(date +%s) - t0)) s] $*"; }
# limit CAP: the smaller of CAP and what is left of the budget (>= 5 s).
limit() {
  local left=$((deadline - $(date +%s) - 5))
  [ "$left" -lt 5 ] && left=5
  [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}
run() { # run CAP LABEL CMD...: timeout + report
  local cap=$1 label=$2
  shift 2
  local t
  t=$(limit "$cap")
  timeout --kill-after=10 "$t" "$@"
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "!!! $label: timed out after $t s"
  elif [ $rc -ne 0 ]; then
    echo "!!! $label: exit status $rc"
  fi
  return $rc
}

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
  --format=csv 2>&1 | head -3
nvcc --version 2>&1 | tail -1
cmake --version | head -1
python3 -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1

step "dependencies"
cmake_args=(-G Ninja -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
  -DMOE_ENABLE_COMPILER=OFF -DMOE_ENABLE_CUDA=ON
  "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-90}")
if command -v mpicc > /dev/null 2>&1; then
  cmake_args+=(-DMOE_ENABLE_MPI=ON)
else
  echo "no MPI on this machine: -DMOE_ENABLE_MPI=OFF"
  cmake_args+=(-DMOE_ENABLE_MPI=OFF)
fi
deps=$root/build-deps
unpack() {
  [ -d "$deps/root" ] && return 0
  ls "$deps"/*.deb > /dev/null 2>&1 || return 1
  for d in "$deps"/*.deb; do dpkg-deb -x "$d" "$deps/root" || return 1; done
}
have_blas=0
for h in /usr/include/cblas.h /usr/include/x86_64-linux-gnu/cblas.h \
  /usr/include/openblas/cblas.h \
  /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h; do
  [ -f "$h" ] && ldconfig -p | grep -q libopenblas && have_blas=1
done
if [ $have_blas -eq 0 ]; then
  if unpack; then
    blas=$deps/root/usr/lib/x86_64-linux-gnu/openblas-pthread
    echo "OpenBLAS from build-deps"
    cmake_args+=(-DOPENBLAS_LIBRARY="$blas/libopenblas.so"
      -DOPENBLAS_INCLUDE_DIR="$deps/root/usr/include/x86_64-linux-gnu/openblas-pthread")
    # The build tree's RUNPATH finds libopenblas; its libgfortran comes from
    # build-deps only when the system has none (never shadow the system's).
    if ! ldconfig -p | grep -q "libgfortran.so.5 "; then
      export LD_LIBRARY_PATH="$deps/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
  else
    echo "!!! no OpenBLAS here and no build-deps (run bench/gpu/fetch-deps.sh" \
      "on the build machine and carry build-deps): configure will fail"
  fi
fi
tests=ON
have_gtest=0
for g in /usr/lib/x86_64-linux-gnu/cmake/GTest /usr/lib/cmake/GTest \
  /usr/local/lib/cmake/GTest /usr/local/lib64/cmake/GTest; do
  [ -f "$g/GTestConfig.cmake" ] && have_gtest=1
done
if [ $have_gtest -eq 0 ]; then
  if unpack && [ -d "$deps/root/usr/lib/x86_64-linux-gnu/cmake/GTest" ]; then
    echo "GoogleTest from build-deps"
    cmake_args+=(-DGTest_DIR="$deps/root/usr/lib/x86_64-linux-gnu/cmake/GTest")
  else
    echo "!!! no GoogleTest: building without the unit tests"
    tests=OFF
  fi
fi
cmake_args+=("-DMOE_ENABLE_TESTS=$tests")

step "configure"
run 90 configure cmake "${cmake_args[@]}" > "$OUT/build.log" 2>&1 ||
  { tail -30 "$OUT/build.log"; status=1; }

step "build"
targets=(moert moe-gpu-bench moe-run)
[ $tests = ON ] && targets+=(moe-unittests)
if [ $status -eq 0 ]; then
  # -k 0: a broken test file does not keep the benchmark from building.
  run 330 build ninja -C "$build" -k 0 -j16 "${targets[@]}" \
    >> "$OUT/build.log" 2>&1 ||
    grep -E "error|FAILED" "$OUT/build.log" | head -30
fi
[ -x "$build/bin/moe-gpu-bench" ] || status=1
[ $tests = ON ] && [ ! -x "$build/bin/moe-unittests" ] && tests=FAILED
tail -3 "$OUT/build.log"

if [ $status -eq 0 ] && [ $tests = ON ]; then
  step "CUDA unit tests"
  run 120 unittests "$build/bin/moe-unittests" \
    --gtest_filter='CudaBackendTest.*:CudaBackward*:NcclCommunicatorTest.*' \
    --gtest_output="xml:$OUT/unittests.xml" 2>&1 | tail -60
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [ -d "$root/gpu-pack" ] && [ -x "$build/bin/moe-run" ]; then
  step "every family, compiled here, run with moe-run --device cuda"
  run 120 families python3 "$root/bench/gpu/check_families.py" \
    --pack "$root/gpu-pack" --moe-run "$build/bin/moe-run" --device cuda \
    --json "$OUT/families.json" || status=1
else
  echo "(no gpu-pack: run bench/gpu/prepare_families.sh on the build machine and carry it)"
fi

dump=$build/dump
mkdir -p "$dump"
if [ $status -le 1 ] && [ -x "$build/bin/moe-gpu-bench" ]; then
  step "layer benchmark"
  run 240 moe-gpu-bench "$build/bin/moe-gpu-bench" $quick \
    --json "$OUT/bench.json" --dump "$dump" --runs 20 || status=1
fi

step "PyTorch baselines"
run 180 torch_ref python3 "$root/bench/gpu/torch_ref.py" $quick \
  --json "$OUT/torch.json" --dump "$dump" --runs 10 > /dev/null || status=1

step "summary"
python3 - "$OUT" > "$OUT/summary.txt" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET

out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except Exception as e:  # noqa: BLE001
        print(f"({name}: {e})")
        return {}

try:
    t = ET.parse(os.path.join(out, "unittests.xml")).getroot()
    cases = list(t.iter("testcase"))
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    failed = sum(1 for c in cases if c.find("failure") is not None)
    print(f"CUDA unit tests: {len(cases)} run, {failed} failed, "
          f"{skipped} skipped")
    for case in t.iter("testcase"):
        for f in case.findall("failure"):
            msg = (f.get("message") or "").splitlines()
            print(f"  FAIL {case.get('classname')}.{case.get('name')}: "
                  f"{msg[0] if msg else ''}")
except Exception as e:  # noqa: BLE001
    print(f"CUDA unit tests: no result ({e})")

bench, torch = load("bench.json"), load("torch.json")
for c in bench.get("checks", []):
    print(f"check {c['layer']:<24} {c['dtype']:<5} {c['metric']} "
          f"{c['value']:.3g} route-mismatch {c['route_mismatch']} "
          f"{'PASS' if c['pass'] else 'FAIL'}")
print()
hdr = ("layer", "ours ms", "best gemm", "HF ms", "gmm ms", "vs HF",
       "vs gmm", "GEMM TF/s", "dense TF/s", "GEMM/dense", "move GB/s",
       "torch check")
rows = [hdr]
tl = torch.get("layers", {})
for L in bench.get("layers", []):
    modes = {m["gemm"]: m for m in L["modes"]}
    ours = modes.get("auto")
    best = min(L["modes"], key=lambda m: m["total_ms"])
    tr = tl.get(L["name"], {})
    hf, gm = tr.get("hf_ms"), tr.get("grouped_mm_ms")
    fmt = lambda v, f="{:.2f}": f.format(v) if v else "-"
    check = "-"
    if "check_rel_err" in tr:
        check = (f"{'PASS' if tr['check_pass'] else 'FAIL'} "
                 f"err {tr['check_rel_err']:.1e} "
                 f"({tr['check_route_mismatch']}/{tr['check_tokens']} "
                 f"rerouted)")
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
    rows.append((L["name"], fmt(ours["total_ms"]),
                 f"{best['gemm']} {best['total_ms']:.2f}", fmt(hf), fmt(gm),
                 ratio(hf, ours["total_ms"]), ratio(gm, ours["total_ms"]),
                 f"{best['expert_tflops']:.0f}", f"{L['dense_tflops']:.0f}",
                 f"{best['expert_tflops'] / L['dense_tflops']:.2f}",
                 f"{ours['move_gbps']:.0f}", check))
    phases = ", ".join(f"{k} {v:.3f}" for k, v in ours["phases_ms"].items())
    print(f"{L['name']} phases (ms, gemm=auto): {phases}")
print()
w = [max(len(str(r[i])) for r in rows) for i in range(len(hdr))]
for r in rows:
    print("  ".join(str(v).ljust(w[i]) for i, v in enumerate(r)))
print()
print("vs HF / vs gmm: PyTorch time / our time (>1: we are faster); gmm = "
      f"torch._grouped_mm ({torch.get('grouped_mm', '?')}); GEMM TF/s: "
      "expert FFN rate of the best mode; dense: cublasGemmEx of the same "
      "FLOPs; move GB/s: router+topk+assign+dispatch+combine bytes / time.")
for name, tr in tl.items():
    if "grouped_mm_error" in tr:
        print(f"{name}: torch._grouped_mm failed: {tr['grouped_mm_error']}")
print(f"bench checks: {'PASS' if bench.get('pass') else 'FAIL or missing'}")
EOF
cat "$OUT/summary.txt"
echo
echo "=== done in $(($(date +%s) - t0)) s, status $status; files in $OUT:"
ls -l "$OUT"
exit $status
