#!/usr/bin/env bash
# bench/comm/run.sh: communication on one machine (docs/runtime.md, "Overlap
# and network emulation").
#   1. overlap.c through the C ABI: a started all-to-all over ep=4 and a host
#      compute loop of about the same length; the fraction of the all-to-all
#      hidden, with the MPI progress thread on and off (MOERT_MPI_PROGRESS=0),
#      without emulation and over an emulated slow ep link (--net).
#   2. the Mixtral-shaped layer (D=1024, F=3584, E=8, top-2, T=$TOKENS) compiled
#      for --mesh ep=4 on 4 ranks vs for one device on 1 rank, default options
#      (threads per rank: the node's cores / the ranks on it).
#   3. the overlap degree sweep (issue aims: 80% of the all-to-all hidden at the
#      best degree, auto within 5% of the best): the same layer with capacity
#      factor 1 in 4 token groups (T=$OVL_TOKENS) for --mesh ep=4 at --overlap-degree 1, 2, 4, 8 and
#      auto (cluster file from moe-run --calibrate under the same link), run over
#      an emulated slow ep link ($OVL_NET); "compute only" is degree 1 without
#      the emulation. hidden = 1 - (t_d - t_compute) / (t_1 - t_compute).
# Usage: bench/comm/run.sh [--quick] [--only-overlap]
#        (needs build/ and python3 -m moe_compiler)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
work=${OUT:-out/bench-comm}
mkdir -p "$work"
TOKENS=2048 REPS=7 REPEAT=5
OVL_TOKENS=${OVL_TOKENS:-512} OVL_NET=${OVL_NET:-ep:alpha=1ms,bw=20MB/s}
ONLY_OVERLAP=0
for a in "$@"; do
  case $a in
  --quick) TOKENS=256 REPS=3 REPEAT=2 OVL_TOKENS=128 ;;
  --only-overlap) ONLY_OVERLAP=1 ;;
  *) echo "usage: bench/comm/run.sh [--quick] [--only-overlap]" >&2; exit 2 ;;
  esac
done
MPIRUN="mpirun --oversubscribe -np 4"
step() { printf '\n==> %s\n' "$*"; }

# The Mixtral-shaped layer of steps 2 and 3, and its weights.
cat > "$work/config.json" << JSON
{"model_type": "mixtral", "hidden_size": 1024, "intermediate_size": 3584,
 "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 8,
 "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_act": "silu",
 "rms_norm_eps": 1e-05, "vocab_size": 32000, "tie_word_embeddings": false}
JSON
mc() { python3 -m moe_compiler "$@"; }
mc init-weights --hf-config "$work/config.json" --seed 1 -o "$work/w.safetensors"

if [ "$ONLY_OVERLAP" = 0 ]; then
step "overlap.c: all-to-all vs compute on 4 ranks"
gcc -O2 -Iruntime/include bench/comm/overlap.c -o "$work/overlap" \
  -L"$BUILD_DIR/lib" -lmoert -Wl,-rpath,"$PWD/$BUILD_DIR/lib" -lm
for net in "" "ep:alpha=1ms,bw=100MB/s"; do
  for progress in 1 0; do
    $MPIRUN -x MOERT_MPI_PROGRESS=$progress "$work/overlap" 4 "$net" "$REPS"
  done
done

step "Mixtral-shaped layer: ep=4 on 4 ranks vs 1 rank, default options"
mc emit --hf-config "$work/config.json" --tokens "$TOKENS" -o "$work/model.mlir"
mc init-inputs --hf-config "$work/config.json" --tokens "$TOKENS" --seed 2 \
  -o "$work/x.safetensors"
"$BUILD_DIR/bin/moe-compile" "$work/model.mlir" -o "$work/single"
"$BUILD_DIR/bin/moe-compile" "$work/model.mlir" -o "$work/ep4" --mesh ep=4
run() { # NAME LAUNCHER... MODULE
  local name=$1; shift
  "$@" --weights "$work/w.safetensors" --inputs "$work/x.safetensors" \
    --output "$work/$name.safetensors" --warmup 1 --repeat "$REPEAT" \
    --stats "$work/$name.stats.json" | tee "$work/$name.log"
}
run single "$BUILD_DIR/bin/moe-run" "$work/single"
run ep4 $MPIRUN "$BUILD_DIR/bin/moe-run" "$work/ep4"
python3 - "$work" "$REPEAT" << 'PY'
import json, sys
w, repeat = sys.argv[1], int(sys.argv[2])
# run_seconds: the timed runs of a rank; the slowest rank sets the pace.
t = {n: max(r["run_seconds"] for r in json.load(open(f"{w}/{n}.stats.json"))) / repeat
     for n in ("single", "ep4")}
print(f"per run: 1 rank {t['single']*1e3:.1f} ms, ep=4 on 4 ranks "
      f"{t['ep4']*1e3:.1f} ms: {t['ep4']/t['single']:.2f}x")
PY
fi # ONLY_OVERLAP

step "overlap degrees: Mixtral-shaped layer, capacity factor 1, T=$OVL_TOKENS, ep=4, --net $OVL_NET"
mc emit --hf-config "$work/config.json" --tokens "$OVL_TOKENS" \
  --capacity-factor 1.0 --token-groups 4 -o "$work/ovl.mlir"
mc init-inputs --hf-config "$work/config.json" --tokens "$OVL_TOKENS" --seed 2 \
  -o "$work/ovl-x.safetensors"
$MPIRUN "$BUILD_DIR/bin/moe-run" --calibrate "$work/ovl-cluster.json" \
  --net "$OVL_NET" > "$work/calibrate.log"
for d in 1 2 4 8 auto; do
  "$BUILD_DIR/bin/moe-compile" "$work/ovl.mlir" -o "$work/ovl-$d" --mesh ep=4 \
    --overlap-degree "$d" --cluster "$work/ovl-cluster.json" > "$work/ovl-$d.log"
done
ovl_run() { # NAME MODULE [moe-run options]
  local name=$1 module=$2; shift 2
  $MPIRUN "$BUILD_DIR/bin/moe-run" "$work/$module" "$@" \
    --weights "$work/w.safetensors" --inputs "$work/ovl-x.safetensors" \
    --output "$work/$name.safetensors" --warmup 1 --repeat "$REPEAT" \
    --stats "$work/$name.stats.json" --quiet
}
# Rounds in rotating order, so that a slow minute of a shared machine does not
# land on one configuration.
names="compute d1 d2 d4 d8 dauto"
for round in 1 2 3; do
  for n in $names; do
    case $n in
    compute) ovl_run "compute.$round" ovl-1 ;;
    d*) ovl_run "$n.$round" "ovl-${n#d}" --net "$OVL_NET" ;;
    esac
  done
  names="${names#* } ${names%% *}"
done
python3 - "$work" "$REPEAT" << 'PY'
import json, statistics, sys
w, repeat = sys.argv[1], int(sys.argv[2])
def per_run(name):  # the slowest rank sets the pace; median over the rounds
    return statistics.median(
        max(r["run_seconds"] for r in json.load(open(f"{w}/{name}.{k}.stats.json"))) / repeat
        for k in (1, 2, 3))
t = {n: per_run(n) for n in ("compute", "d1", "d2", "d4", "d8", "dauto")}
tc, t1 = t["compute"], t["d1"]
print(f"compute only (degree 1, no emulation): {tc*1e3:.1f} ms per run")
for n in ("d1", "d2", "d4", "d8", "dauto"):
    hidden = 1 - (t[n] - tc) / (t1 - tc) if t1 > tc else float("nan")
    print(f"degree {n[1:]:>4}: {t[n]*1e3:8.1f} ms  hidden {hidden:6.1%}")
best = min(("d2", "d4", "d8"), key=lambda n: t[n])
print(f"best degree {best[1:]}; auto / best = {t['dauto']/t[best]:.3f}")
PY
