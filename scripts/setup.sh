#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for moe-compiler and builds it:
#   - apt packages: LLVM/MLIR 22, OpenMPI, OpenBLAS, GoogleTest, Ninja, CMake,
#     Debian's numpy/pytest (and torch for the CPU benchmark's baseline);
#   - numpy + pytest for the default python3 (pip), when it is not Debian's;
#   - configures build/ (CUDA parts too when /usr/local/cuda has nvcc) and
#     builds everything with Ninja;
#   - the two builds scripts/test.sh's checks use: build-asan/ (g++ with
#     AddressSanitizer + UndefinedBehaviorSanitizer: the runtime, moe-run and
#     their tests; scripts/test-sanitizers.sh) and build-fuzz/ (clang-22 with
#     libFuzzer and the same sanitizers: the fuzz targets; fuzz/README.md).
# Safe to run again: installs only what is missing, rebuilds incrementally.
#
# Environment: BUILD_DIR (default build), JOBS (default: number of cores),
#              MOE_SKIP_APT=1 to skip the package step,
#              MOE_SKIP_CHECK_BUILDS=1 to skip build-asan/ and build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
step() { printf '\n==> %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

APT_PACKAGES=(
  libmlir-22-dev mlir-22-tools llvm-22-dev llvm-22-tools
  libopenmpi-dev openmpi-bin libopenblas-dev libopenblas0-openmp libgtest-dev
  cmake ninja-build g++ python3-numpy python3-pytest python3-torch
  clang-22 libclang-rt-22-dev libfuzzer-22-dev libomp-22-dev
)

if [ "${MOE_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
  else
    step "apt packages: all present"
  fi
fi

PY=$(command -v python3)
if [ "$(readlink -f "$PY")" != "$(readlink -f /usr/bin/python3)" ]; then
  if ! "$PY" -c 'import numpy, pytest' 2>/dev/null; then
    step "installing numpy and pytest for $PY"
    "$PY" -m pip install -q numpy pytest
  fi
fi

step "configuring $BUILD_DIR"
mkdir -p "$BUILD_DIR"
cmake -G Ninja -S . -B "$BUILD_DIR" \
  -DMLIR_DIR=/usr/lib/llvm-22/lib/cmake/mlir \
  -DLLVM_EXTERNAL_LIT=/usr/lib/llvm-22/bin/lit \
  -DPython3_EXECUTABLE="$PY" \
  -DCMAKE_BUILD_TYPE=Release -DMOE_WERROR=ON ${MOE_CMAKE_ARGS:-} > "$BUILD_DIR/configure.log" 2>&1 ||
  { cat "$BUILD_DIR/configure.log"; exit 1; }
grep -E "^-- (MPI|CUDA|Compiler|Using MLIR|OpenBLAS)" "$BUILD_DIR/configure.log" || true

step "building with $JOBS jobs"
start=$(date +%s)
ninja -C "$BUILD_DIR" -j "$JOBS"
echo "build finished in $(( $(date +%s) - start )) s"

# The checks' builds: only the targets their tests need, CUDA off.
check_build() { # dir, ninja target or "", cmake arguments...
  local dir=$1 target=$2; shift 2
  step "configuring $dir"
  mkdir -p "$dir"
  cmake -G Ninja -S . -B "$dir" \
    -DMLIR_DIR=/usr/lib/llvm-22/lib/cmake/mlir \
    -DLLVM_EXTERNAL_LIT=/usr/lib/llvm-22/bin/lit \
    -DPython3_EXECUTABLE="$PY" \
    -DCMAKE_BUILD_TYPE=Release -DMOE_ENABLE_CUDA=OFF "$@" > "$dir/configure.log" 2>&1 ||
    { cat "$dir/configure.log"; exit 1; }
  step "building $dir with $JOBS jobs"
  start=$(date +%s)
  ninja -C "$dir" -j "$JOBS" $target
  echo "build finished in $(( $(date +%s) - start )) s"
}
if [ "${MOE_SKIP_CHECK_BUILDS:-0}" != 1 ]; then
  check_build build-asan "" -DMOE_SANITIZE=address,undefined \
    -DMOE_ENABLE_COMPILER=OFF
  check_build build-fuzz moe-fuzzers -DMOE_FUZZ=ON -DMOE_ENABLE_TESTS=OFF \
    -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22
fi
