#!/usr/bin/env bash
# The expert FFN with the runtime's row-independent GEMM (RowGemm) against
# OpenBLAS, in one process, on the layer of run.sh (T=2048, D=1024, F=3584,
# E=8, top-2, SwiGLU, dropless, f32): builds bench/cpu/ffn_gemm.cpp against
# $MOE_BUILD_DIR (default <repo>/build) and runs it; see that file for the
# contenders and the output. Arguments go to ffn_gemm:
#   [--tokens T] [--d D] [--f F] [--experts E] [--top K] [--threads N]
#   [--rounds R] [--repeat N] [--json FILE]
# MOERT_ROWGEMM=portable times RowGemm's portable path instead of AVX2.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${MOE_BUILD_DIR:-$root/build}
[ -f "$build/lib/libmoert.so" ] || {
  echo "ffn_gemm.sh: $build/lib/libmoert.so not found: build the project first" >&2
  exit 1
}
blas_lib=$(sed -n 's/^OPENBLAS_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt")
blas_inc=$(sed -n 's/^OPENBLAS_INCLUDE_DIR:PATH=//p' "$build/CMakeCache.txt")
work=$(mktemp -d "${TMPDIR:-/tmp}/moe-ffn-gemm.XXXXXX")
trap 'rm -rf "$work"' EXIT
g++ -O2 -std=c++17 -fopenmp -I"$root/runtime" -I"$root/runtime/include" -I"$blas_inc" \
  "$root/bench/cpu/ffn_gemm.cpp" -o "$work/ffn_gemm" -L"$build/lib" -lmoert \
  -Wl,-rpath,"$build/lib" "$blas_lib"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$work/ffn_gemm" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
