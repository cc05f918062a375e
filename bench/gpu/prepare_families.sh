#!/usr/bin/env bash
# Run HERE (the build machine, which has the compiler): compiles every bundled
# family for one device in f32 and bf16, with seeded weights, inputs and the
# float64 reference, into gpu-pack/ (git-ignored). bench/gpu/run.sh then runs
# them with `moe-run --device cuda` on the GPU machine and checks them
# (check_families.py). Carry it: run(..., carry=["gpu-pack", "build-deps"]).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
BUILD_DIR=${BUILD_DIR:-build}
PACK=${PACK:-gpu-pack}
TOKENS=${TOKENS:-128}
export PYTHONPATH=$root/python
MOE="python3 -m moe_compiler"
rm -rf "$PACK" && mkdir -p "$PACK"
grep -qx '/gpu-pack/' .git/info/exclude 2>/dev/null || echo '/gpu-pack/' >> .git/info/exclude
for cfg in examples/configs/tiny-*.json; do
  name=$(basename "$cfg" .json)
  [ "$name" = config ] && name=$(basename "$(dirname "$cfg")")
  extra=()
  case_dir=$PACK/$name
  mkdir -p "$case_dir"
  $MOE init-weights --hf-config "$cfg" --seed 1 -o "$case_dir/w.safetensors" > /dev/null
  $MOE init-inputs --hf-config "$cfg" --tokens "$TOKENS" --seed 2 -o "$case_dir/x.safetensors"
  $MOE reference --hf-config "$cfg" "${extra[@]}" --weights "$case_dir/w.safetensors" \
    --inputs "$case_dir/x.safetensors" -o "$case_dir/ref.safetensors"
  for dtype in f32 bf16; do
    $MOE emit --hf-config "$cfg" "${extra[@]}" --tokens "$TOKENS" --dtype $dtype \
      -o "$case_dir/$dtype.mlir"
    "$BUILD_DIR/bin/moe-compile" "$case_dir/$dtype.mlir" -o "$case_dir/$dtype" --target cuda
  done
  echo "packed $name"
done
du -sh "$PACK"
