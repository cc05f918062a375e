#!/usr/bin/env bash
# The sanitizer step of scripts/test.sh: the runtime, moe-run and their tests
# built with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/, made
# by scripts/setup.sh with -DMOE_SANITIZE=address,undefined and without the
# compiler, which links Debian's uninstrumented libMLIR.so; fuzz/ covers the
# compiler under the same sanitizers):
#   1. CTest in build-asan: moe-unittests (every CPU kernel through the C ABI,
#      JSON, manifest, entry graph, safetensors, single-rank collectives),
#      moe-comm-tests under mpirun -np 4, moe-run on the hand-written modules
#      (1 and 2 ranks, every bad-input case) and their training;
#   2. the sanitized moe-run on modules that BUILD_DIR's moe-compile compiles:
#      e2e.py on tiny-mixtral (one rank; ep=2,tp=2 with DTD on 4 ranks) and
#      tiny-switch with capacity drops, train_e2e.py on tiny-mixtral (SGD).
# Every sanitizer report goes to a log file as well, so that a report in a
# process whose failure a test expects (bad-input cases) still fails this
# step; the step lists the reports.
#
#   scripts/test-sanitizers.sh [ASAN_BUILD_DIR [BUILD_DIR]]
#                              (defaults build-asan, build)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ASAN_BUILD=${1:-build-asan}
BUILD=${2:-build}
for f in "$ASAN_BUILD/bin/moe-run" "$BUILD/bin/moe-compile"; do
  if [ ! -x "$f" ]; then
    echo "error: $f not found; run scripts/setup.sh first" >&2
    exit 2
  fi
done
ASAN_BUILD=$(cd "$ASAN_BUILD" && pwd)
BUILD=$(cd "$BUILD" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/moe-sanitize.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/reports" "$work/bin"
# Leak checking is on. OpenMPI and its components keep memory until exit;
# scripts/lsan.supp names those libraries. Two settings make the
# suppressions match: fast_unwind_on_malloc=0 (OpenMPI is built without frame
# pointers, so the fast unwinder stops one frame deep, inside an unnamed
# module) and OpenMPI's mca_base_component_disable_dlclose (its components
# stay loaded, so their frames keep their names at exit).
# allocator_may_return_null: an allocation too large to satisfy must reach
# moe-run as std::bad_alloc (it names the tensor and the bytes; a test checks
# that), not as ASan's own allocation-size-too-big report.
export ASAN_OPTIONS="log_path=$work/reports/asan:detect_leaks=1:fast_unwind_on_malloc=0:strict_string_checks=1:check_initialization_order=1:allocator_may_return_null=1"
export LSAN_OPTIONS="suppressions=$ROOT/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="log_path=$work/reports/ubsan:print_stacktrace=1:halt_on_error=1"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_mca_base_component_disable_dlclose=1

failed=0
step() { # name, command...
  local name=$1; shift
  printf '\n-- %s\n' "$name"
  local start=$(date +%s)
  if "$@"; then
    printf -- '-- %s: ok (%d s)\n' "$name" $(( $(date +%s) - start ))
  else
    printf -- '-- %s: FAILED (%d s)\n' "$name" $(( $(date +%s) - start ))
    failed=1
  fi
}

step "ctest ($ASAN_BUILD)" ctest --test-dir "$ASAN_BUILD" --output-on-failure \
  -E '^moe-layering'

# The compiled-module tests find moe-compile and moe-run on PATH.
ln -s "$BUILD/bin/moe-compile" "$work/bin/moe-compile"
ln -s "$ASAN_BUILD/bin/moe-run" "$work/bin/moe-run"
configs=$ROOT/examples/configs
e2e() { PATH="$work/bin:$PATH" python3 test/Integration/e2e.py "$@"; }
step "e2e tiny-mixtral (1 rank; ep=2,tp=2+dtd on 4 ranks)" e2e \
  --config "$configs/tiny-mixtral.json" --family mixtral --single \
  --mesh ep=2,tp=2+dtd --workdir "$work/e2e-mixtral"
step "e2e tiny-switch (capacity drops, 1 rank)" e2e \
  --config "$configs/tiny-switch.json" --family switch --single \
  --expect-drops --workdir "$work/e2e-switch" \
  -- --capacity 0 --capacity-factor 1.0 --token-groups 4
step "train_e2e tiny-mixtral (SGD, 1 rank)" python3 \
  test/Integration/moe-run-handwritten/train_e2e.py \
  --config "$configs/tiny-mixtral.json" --moe-compile "$work/bin/moe-compile" \
  --moe-run "$work/bin/moe-run" --workdir "$work/train-mixtral" \
  --optimizer sgd -- --lr 0.05 --momentum 0.9

# With allocator_may_return_null ASan still logs a warning for the request
# that the allocation test makes on purpose: a report that holds nothing but
# such warnings is not a finding.
for r in "$work"/reports/*; do
  [ -e "$r" ] || continue
  if ! grep -qv 'WARNING: AddressSanitizer failed to allocate' "$r"; then
    rm -f "$r"
  fi
done
reports=("$work"/reports/*)
if [ -e "${reports[0]}" ]; then
  failed=1
  printf '\n-- %d sanitizer report(s):\n' "${#reports[@]}"
  for r in "${reports[@]}"; do
    echo "---- $(basename "$r")"
    head -60 "$r"
  done
else
  printf '\n-- no sanitizer reports\n'
fi
exit $failed
