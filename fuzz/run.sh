#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ for a bounded time each, all at once, on
# their corpus (fuzz/corpus/<target>; inputs found on the way go to a scratch
# directory, not into the repository). scripts/test.sh runs it on every
# change; fuzz/README.md says how to run them for hours.
#
#   fuzz/run.sh [BUILD_DIR]        (default build-fuzz, made by scripts/setup.sh)
#
# Environment: FUZZ_SECONDS   seconds per target at most (default 30)
#              FUZZ_SEED      libFuzzer's -seed (default 1, so that CI on one
#                             change runs the same inputs every time; 0 draws
#                             a new seed each run, for exploring)
#              FUZZ_RUNS      executions per target at most (default: the
#                             table below, about 30 s each on a CI machine;
#                             0 for no limit but the time)
#              FUZZ_TARGETS   which targets (default: pipeline manifest
#                             safetensors json)
#              FUZZ_TABLE     a file that receives the table of results
#                             (scripts/test.sh puts it in its summary)
#              FUZZ_ARTIFACTS where crashing inputs go (default
#                             BUILD_DIR/fuzz-artifacts/<date and time>)
# Prints one line per target with its executions; on a crash, the input (hex)
# and the command that reproduces it. Exits non-zero if any target failed.
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD=${1:-build-fuzz}
SECS=${FUZZ_SECONDS:-30}
TARGETS=${FUZZ_TARGETS:-pipeline manifest safetensors json}
ARTIFACTS=${FUZZ_ARTIFACTS:-$BUILD/fuzz-artifacts/$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$ARTIFACTS"
ARTIFACTS=$(cd "$ARTIFACTS" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/moe-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

SEED=${FUZZ_SEED:-1}

runs_of() { # target -> executions (CI's budget: ~30 s each on 2 cores)
  case ${FUZZ_RUNS:-} in
  '') ;;
  0) echo -1; return ;; # libFuzzer: no limit
  *) echo "$FUZZ_RUNS"; return ;;
  esac
  case $1 in
  pipeline) echo 8000 ;;
  *) echo 120000 ;;
  esac
}

dict_of() { # target -> dictionary
  case $1 in
  pipeline) echo fuzz/dict/pipeline.dict ;;
  *) echo fuzz/dict/json.dict ;;
  esac
}

for t in $TARGETS; do
  bin=$BUILD/bin/moe-fuzz-$t
  if [ ! -x "$bin" ]; then
    echo "error: $bin not found; scripts/setup.sh builds $BUILD" >&2
    exit 2
  fi
  mkdir -p "$work/$t"
  # -timeout: an input that takes this long is a hang (a finding too);
  # -rss_limit_mb: so is one that needs this much memory.
  # A fixed seed and a bounded number of executions make the run a prefix
  # of one fixed sequence of inputs: a slower machine runs fewer of the same
  # inputs (the time bound), never different ones. (Coverage feedback can
  # still differ in rare cases: MLIR iterates some pointer-keyed maps.)
  TMPDIR=$work "$bin" -seed="$SEED" -runs="$(runs_of "$t")" \
    -max_total_time="$SECS" -print_final_stats=1 \
    -timeout=20 -rss_limit_mb=2560 -dict="$(dict_of "$t")" \
    -artifact_prefix="$ARTIFACTS/$t-" "$work/$t" "fuzz/corpus/$t" \
    > "$work/$t.log" 2>&1 &
  echo $! > "$work/$t.pid"
done

failed=0
table=${FUZZ_TABLE:-/dev/null}
printf '%-12s %-6s %12s %10s %9s\n' target result executions exec/s "new" |
  tee "$table"
for t in $TARGETS; do
  wait "$(cat "$work/$t.pid")"
  rc=$?
  log=$work/$t.log
  final() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  runs=$(final number_of_executed_units)
  if [ "$rc" = 0 ]; then
    printf '%-12s %-6s %12s %10s %9s\n' "$t" ok "${runs:-?}" \
      "$(final average_exec_per_sec)" "$(final new_units_added)" |
      tee -a "$table"
    continue
  fi
  failed=1
  printf '%-12s %-6s %12s   (exit %s)\n' "$t" FAILED "${runs:-?}" "$rc" |
    tee -a "$table"
  echo "---- $t: end of the log"
  grep -v '^#[0-9]' "$log" | tail -60
  for a in "$ARTIFACTS/$t-"*; do
    [ -f "$a" ] || continue
    echo "---- $t: input $a ($(wc -c < "$a") bytes; reproduce: $BUILD/bin/moe-fuzz-$t $a)"
    od -A d -c "$a" | head -40
  done
  echo "----"
done
exit $failed
