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
# Usage: bench/comm/run.sh [--quick]   (needs build/ and python3 -m moe_compiler)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
work=${OUT:-out/bench-comm}
mkdir -p "$work"
TOKENS=2048 REPS=7 REPEAT=5
if [ "${1:-}" = "--quick" ]; then TOKENS=256 REPS=3 REPEAT=2; fi
MPIRUN="mpirun --oversubscribe -np 4"
step() { printf '\n==> %s\n' "$*"; }

step "overlap.c: all-to-all vs compute on 4 ranks"
gcc -O2 -Iruntime/include bench/comm/overlap.c -o "$work/overlap" \
  -L"$BUILD_DIR/lib" -lmoert -Wl,-rpath,"$PWD/$BUILD_DIR/lib" -lm
for net in "" "ep:alpha=1ms,bw=100MB/s"; do
  for progress in 1 0; do
    $MPIRUN -x MOERT_MPI_PROGRESS=$progress "$work/overlap" 4 "$net" "$REPS"
  done
done

step "Mixtral-shaped layer: ep=4 on 4 ranks vs 1 rank, default options"
cat > "$work/config.json" << JSON
{"model_type": "mixtral", "hidden_size": 1024, "intermediate_size": 3584,
 "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 8,
 "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_act": "silu",
 "rms_norm_eps": 1e-05, "vocab_size": 32000, "tie_word_embeddings": false}
JSON
mc() { python3 -m moe_compiler "$@"; }
mc emit --hf-config "$work/config.json" --tokens "$TOKENS" -o "$work/model.mlir"
mc init-weights --hf-config "$work/config.json" --seed 1 -o "$work/w.safetensors"
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
