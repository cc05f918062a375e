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
#      factor 1 in 4 token groups (T=$OVL_TOKENS, default 4096: Tutel's tokens
#      per step) for --mesh ep=4 at --overlap-degree 1, 2, 4, 8 and
#      auto (cluster file from moe-run --calibrate under the same link), run over
#      an emulated slow ep link; "compute only" is degree 1 without the
#      emulation. The link ($OVL_NET, default: measured) has alpha=100us and
#      the bandwidth at which the two exchanges of a run take as long as the
#      expert FFN in a first compute-only run (the issue's setting).
#      hidden = 1 - (t_d - t_compute) / (t_1 - t_compute).
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
OVL_TOKENS=${OVL_TOKENS:-4096} OVL_NET=${OVL_NET:-}
ONLY_OVERLAP=0
for a in "$@"; do
  case $a in
  --quick) TOKENS=256 REPS=3 REPEAT=2 OVL_TOKENS=512 ;;
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

step "overlap degrees: Mixtral-shaped layer, capacity factor 1, T=$OVL_TOKENS, ep=4"
mc emit --hf-config "$work/config.json" --tokens "$OVL_TOKENS" \
  --capacity-factor 1.0 --token-groups 4 -o "$work/ovl.mlir"
mc init-inputs --hf-config "$work/config.json" --tokens "$OVL_TOKENS" --seed 2 \
  -o "$work/ovl-x.safetensors"
"$BUILD_DIR/bin/moe-compile" "$work/ovl.mlir" -o "$work/ovl-1" --mesh ep=4 \
  > "$work/ovl-1.log"
ovl_run() { # NAME MODULE [moe-run options]
  local name=$1 module=$2; shift 2
  $MPIRUN "$BUILD_DIR/bin/moe-run" "$work/$module" "$@" \
    --weights "$work/w.safetensors" --inputs "$work/ovl-x.safetensors" \
    --output "$work/$name.safetensors" --warmup 1 --repeat "$REPEAT" \
    --stats "$work/$name.stats.json" --quiet
}
if [ -z "$OVL_NET" ]; then
  # The link: alpha = 100 us per message, and the bandwidth at which the
  # exchanges of a run (messages x alpha + bytes / bw, the emulator's time)
  # take as long as the slowest rank's expert FFN.
  ovl_run probe ovl-1
  OVL_NET=$(python3 - "$work/probe.stats.json" "$REPEAT" << 'PY'
import json, sys
ranks, runs = json.load(open(sys.argv[1])), int(sys.argv[2]) + 1  # + warm-up
ffn = max(p["seconds"] for r in ranks for p in r["phases"]
          if p["name"] == "expert_ffn") / runs
a2a = [c for r in ranks for c in r["collectives"] if c["op"] == "all_to_all"]
sent = max(c["bytes_sent"] for c in a2a) / runs
messages = max(c["messages"] for c in a2a) / runs
alpha = 100e-6
bw = sent / max(ffn - messages * alpha, ffn / 2)
print(f"ep:alpha=100us,bw={bw / 1e6:.3f}MB/s")
PY
  )
  echo "expert FFN of the compute-only run -> emulated link --net $OVL_NET"
fi
$MPIRUN "$BUILD_DIR/bin/moe-run" --calibrate "$work/ovl-cluster.json" \
  --net "$OVL_NET" > "$work/calibrate.log"
for d in 2 4 8 auto; do
  "$BUILD_DIR/bin/moe-compile" "$work/ovl.mlir" -o "$work/ovl-$d" --mesh ep=4 \
    --overlap-degree "$d" --cluster "$work/ovl-cluster.json" > "$work/ovl-$d.log"
done
# Two started all-to-alls per chunk (out and back), one exchange.
echo "auto chose degree $(( $(grep -c 'call @moert_all_to_all_start' "$work/ovl-auto/module.mlir") / 2 ))"
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
print(f"compute only (degree 1, no emulation): {tc*1e3:.1f} ms per run; "
      f"the emulated exchanges add {(t1 - tc)*1e3:.1f} ms at degree 1")
for n in ("d1", "d2", "d4", "d8", "dauto"):
    hidden = 1 - (t[n] - tc) / (t1 - tc) if t1 > tc else float("nan")
    print(f"degree {n[1:]:>4}: {t[n]*1e3:8.1f} ms  hidden {hidden:6.1%}")
best = min(("d2", "d4", "d8"), key=lambda n: t[n])
print(f"best degree {best[1:]}; auto / best = {t['dauto']/t[best]:.3f}")
PY
