#!/usr/bin/env bash
# The main job on the bundled example (examples/mixtral-small: a 2-layer,
# 8-expert, top-2 Mixtral-style config): emit the model graph, make seeded
# weights and inputs under Hugging Face names, compute the float64 numpy
# reference, then
#   1. compile for one device and run it, checked against the reference;
#   2. compile for the mesh ep=2,tp=2 with duplicate token dropping and run it
#      on 4 MPI ranks, checked against the same reference, with the
#      statistics of where the bytes went;
#   3. train: compile with --train for the same mesh, run 3 AdamW steps on 4
#      ranks towards targets made by other weights, and compare the losses
#      with the float64 training reference.
# Work files go to ${OUT:-out/demo}.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
export MOE_BUILD_DIR=$PWD/$BUILD_DIR PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
CONFIG=${CONFIG:-examples/mixtral-small/config.json}
TOKENS=${TOKENS:-256}
OUT=${OUT:-out/demo}
MOE="python3 -m moe_compiler"
step() { printf '\n==> %s\n' "$*"; }
mkdir -p "$OUT"

step "model: $CONFIG"
$MOE info "$CONFIG" --tokens "$TOKENS" --mesh ep=2,tp=2
step "emit the graph of $TOKENS tokens, weights, inputs and the float64 reference"
$MOE emit --hf-config "$CONFIG" --tokens "$TOKENS" -o "$OUT/model.mlir"
$MOE init-weights --hf-config "$CONFIG" --seed 1 -o "$OUT/weights.safetensors"
$MOE init-inputs --hf-config "$CONFIG" --tokens "$TOKENS" --seed 2 -o "$OUT/inputs.safetensors"
$MOE reference --hf-config "$CONFIG" --weights "$OUT/weights.safetensors" \
  --inputs "$OUT/inputs.safetensors" -o "$OUT/reference.safetensors"

step "compile for one device and run"
"$BUILD_DIR/bin/moe-compile" "$OUT/model.mlir" -o "$OUT/single" --time
"$BUILD_DIR/bin/moe-run" "$OUT/single" --weights "$OUT/weights.safetensors" \
  --inputs "$OUT/inputs.safetensors" --output "$OUT/single.safetensors" \
  --check "$OUT/reference.safetensors" --rtol 1e-4 --warmup 1 --repeat 5

step "compile for --mesh ep=2,tp=2 --dtd and run on 4 ranks"
"$BUILD_DIR/bin/moe-compile" "$OUT/model.mlir" -o "$OUT/ep2tp2" --mesh ep=2,tp=2 --dtd
mpirun --oversubscribe -np 4 "$BUILD_DIR/bin/moe-run" "$OUT/ep2tp2" \
  --weights "$OUT/weights.safetensors" --inputs "$OUT/inputs.safetensors" \
  --output "$OUT/ep2tp2.safetensors" --check "$OUT/reference.safetensors" \
  --rtol 1e-4 --warmup 1 --repeat 5 --stats "$OUT/ep2tp2.stats.json"

step "train: moe-compile --train --mesh ep=2,tp=2 --dtd, 3 AdamW steps on 4 ranks"
$MOE init-weights --hf-config "$CONFIG" --seed 3 -o "$OUT/other-weights.safetensors"
$MOE reference --hf-config "$CONFIG" --weights "$OUT/other-weights.safetensors" \
  --inputs "$OUT/inputs.safetensors" -o "$OUT/targets.safetensors"
"$BUILD_DIR/bin/moe-compile" "$OUT/model.mlir" -o "$OUT/train-ep2tp2" --train \
  --mesh ep=2,tp=2 --dtd
mpirun --oversubscribe -np 4 "$BUILD_DIR/bin/moe-run" "$OUT/train-ep2tp2" --train \
  --steps 3 --weights "$OUT/weights.safetensors" --inputs "$OUT/inputs.safetensors" \
  --targets "$OUT/targets.safetensors" --lr 1e-3 \
  --save-weights "$OUT/trained.safetensors" | tee "$OUT/train.log"
$MOE train-reference --hf-config "$CONFIG" --steps 3 --lr 1e-3 \
  --weights "$OUT/weights.safetensors" --inputs "$OUT/inputs.safetensors" \
  --targets "$OUT/targets.safetensors" | tee "$OUT/train-reference.log"
python3 - "$OUT/train.log" "$OUT/train-reference.log" <<'PY'
import re, sys
mine = [float(x) for x in re.findall(r"^step \d+/\d+ loss (\S+)", open(sys.argv[1]).read(), re.M)]
ref = [float(x) for x in re.findall(r"^step\s+\d+\s+loss (\S+)", open(sys.argv[2]).read(), re.M)]
bad = len(mine) != len(ref) or any(abs(a - b) > 1e-4 * abs(b) for a, b in zip(mine, ref))
print(("FAIL" if bad else "ok") + f": losses on 4 ranks {mine}, float64 reference {ref}")
sys.exit(1 if bad else 0)
PY
step "done: every run matches the reference; files are in $OUT"
