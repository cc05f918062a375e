#!/usr/bin/env bash
# CPU benchmark of one training step of the Mixtral-shaped MoE FFN sublayer of
# bench/cpu/run.sh (see bench/README.md, "Training step"): T=2048 tokens,
# D=1024, F=3584, E=8, top-2, SwiGLU, dropless, f32; loss mean((y - t)^2);
# AdamW (lr 1e-3, betas 0.9,0.999, eps 1e-8, weight decay 0.01).
#
# In one run, with the same weights, inputs and targets, it times
#   (a) the compiled module: moe-compile --train -> moe-run --train; a step is
#       the entries forward_train + backward + step_adamw (moe-run's trace)
#   (b) PyTorch eager autograd of the Hugging Face style block with
#       torch.optim.AdamW (bench/cpu/torch_train.py, /usr/bin/python3)
#   (c) the float64 numpy reference (moe_compiler train-reference), one step,
#       once: also the correctness reference (loss and first-step gradients)
#   (d) the GEMM floor (gemm_floor --train): the expert GEMMs of the forward
#       and of the backward (data and weight gradients, and the recomputed
#       forward GEMMs), cblas_sgemm alone
# All with the same thread count. Prints a table and writes
# bench/cpu/results/train-<UTC timestamp>.json (or --out FILE).
#
# usage: bench/cpu/train.sh [--quick] [--threads N] [--out FILE] [--rounds R]
#                           [--warmup W] [--repeat N] [--tokens T]
#                           [--no-reference] [--no-profile] [--keep-work]
#   --quick        T=256, 1 round of 1 + 2 steps: a smoke test (under a minute)
#   --threads N    threads of every contender (default: nproc)
#   --rounds R     contenders run R times, interleaved (default 5); each time
#                  W untimed + N timed steps (default W=1, N=2). Medians are
#                  over all R*N timed steps; the ratios also per round (short
#                  rounds: the contenders of one round see the same load).
#   --tokens T     tokens (default 2048, --quick 256)
#   --no-reference skip (c); correctness is then module against torch only
#   --no-profile   skip the extra moe-run under sgemm_timer.so that splits
#                  expert_ffn_grad into OpenBLAS time and the rest
#   --keep-work    keep the work directory (weights, module, traces)
# Environment: MOE_BUILD_DIR (default <repo>/build), MOE_COMPILE (default
# $MOE_BUILD_DIR/bin/moe-compile), PYTHON (default /usr/bin/python3; runs the
# front end, the reference and the report), TORCH_PYTHON (default
# /usr/bin/python3), WORK_DIR (default: mktemp -d).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/bench/cpu
cmdline="bench/cpu/train.sh $*"

die() {
  echo "train.sh: error: $*" >&2
  exit 1
}
usage() {
  local text
  text=$(sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//')
  if [ "${1:-0}" = 0 ]; then echo "$text"; else echo "$text" >&2; fi
  exit "${1:-0}"
}

threads=$(nproc)
quick=0
out=""
rounds=""
warmup=""
repeat=""
tokens=""
keep=0
reference=1
profile=1
while [ $# -gt 0 ]; do
  case "$1" in
  --quick) quick=1 ;;
  --threads) threads=${2:?--threads needs a value}; shift ;;
  --out) out=${2:?--out needs a value}; shift ;;
  --rounds) rounds=${2:?--rounds needs a value}; shift ;;
  --warmup) warmup=${2:?--warmup needs a value}; shift ;;
  --repeat) repeat=${2:?--repeat needs a value}; shift ;;
  --tokens) tokens=${2:?--tokens needs a value}; shift ;;
  --no-reference) reference=0 ;;
  --no-profile) profile=0 ;;
  --keep-work) keep=1 ;;
  -h | --help) usage 0 ;;
  *) echo "train.sh: unknown argument '$1'" >&2; usage 2 ;;
  esac
  shift
done
if [ $quick = 1 ]; then
  : "${tokens:=256}" "${rounds:=1}" "${warmup:=1}" "${repeat:=2}"
else
  : "${tokens:=2048}" "${rounds:=5}" "${warmup:=1}" "${repeat:=2}"
fi
for v in threads rounds repeat tokens; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--$v must be a positive integer (got '${!v}')"
done
[[ $warmup =~ ^[0-9]+$ ]] || die "--warmup must be a non-negative integer"
D=1024 F=3584 E=8 K=2
steps=$((warmup + repeat))

# -- tools --------------------------------------------------------------------
build=${MOE_BUILD_DIR:-$root/build}
compiler=${MOE_COMPILE:-$build/bin/moe-compile}
PY=${PYTHON:-/usr/bin/python3}
TORCH_PY=${TORCH_PYTHON:-/usr/bin/python3}
[ -f "$build/lib/libmoert.so" ] || die "$build/lib/libmoert.so not found: build the project first"
[ -x "$build/bin/moe-run" ] || die "$build/bin/moe-run not found: build the project first" \
  "(cmake --build build) or point MOE_BUILD_DIR at a build directory"
[ -x "$compiler" ] || die "$compiler not found: build the project first (or set MOE_COMPILE)"
"$compiler" --help 2>&1 | grep -q -- '--train' ||
  die "$compiler has no --train (training needs moe-compile --train; set MOE_COMPILE)"
command -v g++ > /dev/null || die "g++ not found (apt-get install g++)"
command -v gcc > /dev/null || die "gcc not found (apt-get install gcc)"
[ -x "$PY" ] || command -v "$PY" > /dev/null || die "python '$PY' not found (set PYTHON)"
[ -x "$TORCH_PY" ] || command -v "$TORCH_PY" > /dev/null ||
  die "python '$TORCH_PY' not found (set TORCH_PYTHON)"
"$PY" -c 'import numpy' 2> /dev/null || die "$PY cannot import numpy (apt-get install python3-numpy)"
PYTHONPATH=$root/python${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH
"$PY" -c 'import moe_compiler' 2> /dev/null || die "$PY cannot import moe_compiler from $root/python"
"$TORCH_PY" -c 'import torch, numpy' 2> /dev/null ||
  die "$TORCH_PY cannot import torch (apt-get install python3-torch) or numpy"
blas_inc=""
for d in /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas \
  /usr/include/x86_64-linux-gnu /usr/include; do
  if [ -f "$d/cblas.h" ]; then blas_inc=$d; break; fi
done
[ -n "$blas_inc" ] || die "cblas.h not found (apt-get install libopenblas-dev)"
ldconfig -p | grep -q 'libopenblas\.so ' || [ -e /usr/lib/x86_64-linux-gnu/libopenblas.so ] ||
  die "libopenblas.so not found (apt-get install libopenblas-dev)"

export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

work=${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/moe-bench-train.XXXXXX")}
mkdir -p "$work"
cleanup() { if [ $keep = 0 ] && [ -z "${WORK_DIR:-}" ]; then rm -rf "$work"; fi; }
trap cleanup EXIT
stamp=$(date -u +%Y%m%dT%H%M%SZ)
[ -n "$out" ] || out=$here/results/train-$stamp.json
t0=$(date +%s)
step() { printf '[%4d s] %s\n' $(($(date +%s) - t0)) "$*"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(loadavg)

step "T=$tokens D=$D F=$F E=$E top-$K, threads $threads, work dir $work"

# -- inputs: config, graph, weights, targets, module ---------------------------
# As bench/cpu/run.sh's config. router_aux_loss_coef is what the model was
# trained with (info only): the emitted graph has no aux loss, so the training
# loss is the mse alone, as in the PyTorch step.
cat > "$work/config.json" << EOF
{
  "model_type": "mixtral",
  "hidden_size": $D,
  "intermediate_size": $F,
  "num_hidden_layers": 1,
  "num_attention_heads": 8,
  "num_key_value_heads": 8,
  "num_local_experts": $E,
  "num_experts_per_tok": $K,
  "hidden_act": "silu",
  "rms_norm_eps": 1e-05,
  "vocab_size": 32000,
  "tie_word_embeddings": false,
  "router_aux_loss_coef": 0.02
}
EOF
mc() { "$PY" -m moe_compiler "$@"; }
step "emit, init-weights, init-inputs, init-targets"
mc emit --hf-config "$work/config.json" --tokens "$tokens" -o "$work/model.mlir"
mc init-weights --hf-config "$work/config.json" --seed 1 -o "$work/w.safetensors" 2> /dev/null
mc init-inputs --hf-config "$work/config.json" --tokens "$tokens" --seed 2 -o "$work/x.safetensors"
mc init-targets --hf-config "$work/config.json" --tokens "$tokens" --seed 3 -o "$work/t.safetensors"
step "moe-compile --train"
"$compiler" "$work/model.mlir" -o "$work/module" --train
# moe-run and libmoert.so are copied: a rebuild of $build during the run must
# not change the code under test between rounds.
mkdir -p "$work/bin" "$work/lib"
cp "$build/bin/moe-run" "$work/bin/"
cp "$build/lib/libmoert.so" "$work/lib/"
moert_sum=$(md5sum "$work/lib/libmoert.so" | cut -c1-12)
step "g++ -O2 gemm_floor.cpp -lopenblas; gcc sgemm_timer.c (LD_PRELOAD shim)"
g++ -O2 -std=c++17 -I"$blas_inc" "$here/gemm_floor.cpp" -o "$work/gemm_floor" -lopenblas
gcc -O2 -shared -fPIC -I"$blas_inc" "$here/sgemm_timer.c" -o "$work/sgemm_timer.so" -ldl

# -- routing counts and the float64 reference step ----------------------------
step "routing counts (float64 spec)"
"$PY" "$here/train_bench.py" prep --config "$work/config.json" --weights "$work/w.safetensors" \
  --inputs "$work/x.safetensors" --work "$work"
if [ $reference = 1 ]; then
  step "(c) float64 reference: train-reference --steps 1 --grads"
  s0=$(date +%s%N)
  mc train-reference --hf-config "$work/config.json" --weights "$work/w.safetensors" \
    --inputs "$work/x.safetensors" --targets "$work/t.safetensors" --steps 1 \
    --grads "$work/ref_grads.safetensors" --json > "$work/reference.json"
  s1=$(date +%s%N)
  echo "{\"seconds\": $(((s1 - s0) / 1000000)).0e-3}" > "$work/reference_time.json"
fi

# -- the contenders, interleaved by round -------------------------------------
run_module() { # TAG [VAR=VALUE...]: TAG is r<round> or profile; the rest is env
  local tag=$1
  shift
  local grads=()
  [ "$tag" = r1 ] && grads=(--grads "$work/module_grads.safetensors")
  echo "$tag $(loadavg)" >> "$work/loadavg_module.txt"
  env LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@" \
    "$work/bin/moe-run" "$work/module" --train --steps "$steps" \
    --weights "$work/w.safetensors" --inputs "$work/x.safetensors" \
    --targets "$work/t.safetensors" --threads "$threads" --json "${grads[@]}" \
    --stats "$work/module_$tag.stats.json" --trace "$work/module_$tag.trace.json" \
    > "$work/module_$tag.losses.json"
}
run_torch() {
  local grads=()
  [ "$1" = r1 ] && grads=(--grads "$work/torch_grads.safetensors")
  echo "$1 $(loadavg)" >> "$work/loadavg_torch.txt"
  "$TORCH_PY" "$here/torch_train.py" --config "$work/config.json" \
    --weights "$work/w.safetensors" --inputs "$work/x.safetensors" \
    --targets "$work/t.safetensors" --threads "$threads" \
    --warmup "$warmup" --repeat "$repeat" --json "$work/torch_$1.json" "${grads[@]}"
}
run_floor() {
  echo "$1 $(loadavg)" >> "$work/loadavg_floor.txt"
  "$work/gemm_floor" "$work/counts.txt" "$D" "$F" --train --warmup "$warmup" \
    --repeat "$repeat" --threads "$threads" --json "$work/floor_$1.json" | tail -1
}
order=(module torch floor)
for ((r = 1; r <= rounds; ++r)); do
  for c in "${order[@]}"; do
    step "round $r/$rounds: $c"
    "run_$c" "r$r" || die "$c failed in round $r"
  done
  order=("${order[@]:1}" "${order[0]}") # rotate: no contender always goes first
done
if [ $profile = 1 ]; then
  # Not timed for the table: the module once more with every cblas_sgemm call
  # timed, to split expert_ffn_grad into GEMM time and the rest.
  step "profile: moe-run --train under sgemm_timer.so"
  run_module profile SGEMM_TIMER_OUT="$work/profile.sgemm.txt" \
    LD_PRELOAD="$work/sgemm_timer.so" || die "moe-run under sgemm_timer.so failed"
fi
load_end=$(loadavg)

# -- report -------------------------------------------------------------------
git_rev=$(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo unknown)
git_dirty=$(git -C "$root" status --porcelain 2> /dev/null | grep -c . || true)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
ncpu=$(nproc)
export BM_CMD="$cmdline" BM_T=$tokens BM_D=$D BM_F=$F BM_E=$E BM_K=$K BM_THREADS=$threads \
  BM_ROUNDS=$rounds BM_WARMUP=$warmup BM_REPEAT=$repeat BM_QUICK=$quick BM_STAMP=$stamp \
  BM_GIT="$git_rev" BM_DIRTY="$git_dirty" BM_CPU="$cpu" BM_NPROC=$ncpu \
  BM_LOAD0="$load_start" BM_LOAD1="$load_end" BM_BUILD="$build" BM_COMPILER="$compiler" \
  BM_PY="$PY" BM_TORCH_PY="$TORCH_PY" BM_MOERT="$moert_sum" BM_SECONDS=$(($(date +%s) - t0))
"$PY" "$here/train_bench.py" meta --out "$work/meta.json"
step "report"
echo
"$PY" "$here/train_bench.py" report --work "$work" --meta "$work/meta.json" --out "$out"
