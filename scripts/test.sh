#!/usr/bin/env bash
# Runs every test of moe-compiler against the build made by scripts/setup.sh:
#   1. lit: dialect round trips and diagnostics, every pass, the lowering,
#      and the integration tests that compile, run (1 to 8 MPI ranks) and
#      compare with the numpy reference;
#   2. GoogleTest suites through CTest (runtime kernels, communicators under
#      mpirun, moe-run on hand-written modules, the dialect's C++ API);
#   3. pytest for the Python package, with the default python3 and with
#      Debian's /usr/bin/python3 (numpy 2.x and 1.24);
#   4. the sanitizers: the runtime, moe-run and their unit and integration
#      tests built with ASan + UBSan (build-asan/, scripts/test-sanitizers.sh);
#   5. the fuzz targets, FUZZ_SECONDS (30) seconds each, all at once
#      (build-fuzz/, fuzz/run.sh; fuzz/README.md).
# 4 and 5 need the builds scripts/setup.sh makes (unless
# MOE_SKIP_CHECK_BUILDS=1); without them their lines say "not built".
# Prints each summary and exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
LIT=${LIT:-/usr/lib/llvm-22/bin/lit}
if [ ! -x "$BUILD_DIR/bin/moe-compile" ]; then
  echo "error: $BUILD_DIR/bin/moe-compile not found; run scripts/setup.sh first" >&2
  exit 2
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export MOE_BUILD_DIR=$PWD/$BUILD_DIR

declare -a names results
run() { # name, command...
  local name=$1; shift
  printf '\n==> %s\n' "$name"
  local start=$(date +%s)
  "$@"
  local rc=$?
  names+=("$name"); results+=("$rc ($(( $(date +%s) - start )) s)")
  return 0
}

run "lit ($BUILD_DIR/test)" "$LIT" -sv -j "$(nproc)" "$BUILD_DIR/test"
run "unit tests (ctest)" ctest --test-dir "$BUILD_DIR" --output-on-failure
run "pytest ($(command -v python3))" python3 -m pytest -q python/tests
if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import numpy, pytest' 2>/dev/null; then
  run "pytest (/usr/bin/python3)" /usr/bin/python3 -m pytest -q python/tests
fi

if [ -x build-asan/bin/moe-run ]; then
  run "sanitizers (build-asan, ASan+UBSan)" scripts/test-sanitizers.sh \
    build-asan "$BUILD_DIR"
else
  names+=("sanitizers (build-asan, ASan+UBSan)"); results+=("not built")
fi
fuzz_table=$(mktemp)
if [ -x build-fuzz/bin/moe-fuzz-json ]; then
  run "fuzz (build-fuzz, ${FUZZ_SECONDS:-30} s per target)" \
    env FUZZ_TABLE="$fuzz_table" fuzz/run.sh build-fuzz
else
  names+=("fuzz (build-fuzz)"); results+=("not built")
fi

printf '\n==> summary (exit status and time)\n'
failed=0
for i in "${!names[@]}"; do
  printf '  %-40s %s\n' "${names[$i]}" "${results[$i]}"
  case "${results[$i]}" in 0\ * | "not built") ;; *) failed=1 ;; esac
  case "${names[$i]}" in fuzz*) sed 's/^/      /' "$fuzz_table" ;; esac
done
rm -f "$fuzz_table"
exit $failed
