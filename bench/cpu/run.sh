#!/usr/bin/env bash
# CPU benchmark of one Mixtral-shaped MoE FFN sublayer (see bench/README.md):
# T=2048 tokens, D=1024, F=3584, E=8, top-2, SwiGLU, dropless, f32.
#
# In one run, with the same weights and inputs, it times
#   (a) the compiled module: moe_compiler emit -> moe-compile -> moe-run
#   (b) PyTorch eager, Hugging Face MixtralSparseMoeBlock style (/usr/bin/python3,
#       python3-torch)
#   (c) the float64 numpy reference (python/moe_compiler/reference.py), once
#   (d) the GEMM floor: the same per-expert gate/up/down GEMMs alone, cblas_sgemm
# (a), (b) and (c) time the whole FFN sublayer h + moe(rmsnorm(h)), as emitted;
# (d) only the expert GEMMs. All with the same thread count. Prints a table and
# writes bench/cpu/results/<UTC timestamp>.json (or --out FILE).
#
# usage: bench/cpu/run.sh [--quick] [--threads N] [--out FILE] [--rounds R]
#                         [--warmup W] [--repeat N] [--tokens T] [--ref-tokens N]
#                         [--keep-work] [--no-passive]
#   --quick        T=256, 1 round of 1 + 2 runs: a smoke test (20-40 s)
#   --threads N    threads of every contender (default: nproc)
#   --rounds R     contenders run R times, interleaved (default 3); each time
#                  W untimed + N timed runs (default W=1, N=3). Medians are over
#                  all R*N timed runs.
#   --tokens T     tokens (default 2048, --quick 256)
#   --ref-tokens N time the reference on the first N tokens only and scale by
#                  T/N (default: all T tokens, one run)
#   --keep-work    keep the work directory (weights, module, traces)
#   --no-passive   skip the diagnostic row: the module again with
#                  OMP_WAIT_POLICY=passive (see bench/README.md, findings)
#   --train        the training-step benchmark instead: runs
#                  bench/cpu/train.sh with the other arguments (see its --help)
# Environment: MOE_BUILD_DIR (default <repo>/build), PYTHON (default
# /usr/bin/python3; runs the front end, the reference and the report),
# TORCH_PYTHON (default /usr/bin/python3), WORK_DIR (default: mktemp -d).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/bench/cpu
cmdline="bench/cpu/run.sh $*"

die() {
  echo "run.sh: error: $*" >&2
  exit 1
}
usage() {
  local text
  text=$(sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//')
  if [ "${1:-0}" = 0 ]; then echo "$text"; else echo "$text" >&2; fi
  exit "${1:-0}"
}

for arg in "$@"; do # --train: the training step, bench/cpu/train.sh
  if [ "$arg" = --train ]; then
    args=()
    for a in "$@"; do [ "$a" = --train ] || args+=("$a"); done
    exec "$here/train.sh" "${args[@]}"
  fi
done

threads=$(nproc)
quick=0
out=""
rounds=""
warmup=""
repeat=""
tokens=""
ref_tokens=0
keep=0
passive=1
while [ $# -gt 0 ]; do
  case "$1" in
  --quick) quick=1 ;;
  --threads) threads=${2:?--threads needs a value}; shift ;;
  --out) out=${2:?--out needs a value}; shift ;;
  --rounds) rounds=${2:?--rounds needs a value}; shift ;;
  --warmup) warmup=${2:?--warmup needs a value}; shift ;;
  --repeat) repeat=${2:?--repeat needs a value}; shift ;;
  --tokens) tokens=${2:?--tokens needs a value}; shift ;;
  --ref-tokens) ref_tokens=${2:?--ref-tokens needs a value}; shift ;;
  --keep-work) keep=1 ;;
  --no-passive) passive=0 ;;
  -h | --help) usage 0 ;;
  *) echo "run.sh: unknown argument '$1'" >&2; usage 2 ;;
  esac
  shift
done
if [ $quick = 1 ]; then
  : "${tokens:=256}" "${rounds:=1}" "${warmup:=1}" "${repeat:=2}"
else
  : "${tokens:=2048}" "${rounds:=3}" "${warmup:=1}" "${repeat:=3}"
fi
for v in threads rounds repeat tokens; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--$v must be a positive integer (got '${!v}')"
done
[[ $warmup =~ ^[0-9]+$ ]] || die "--warmup must be a non-negative integer"
[[ $ref_tokens =~ ^[0-9]+$ ]] || die "--ref-tokens must be a non-negative integer"
D=1024 F=3584 E=8 K=2

# -- tools --------------------------------------------------------------------
build=${MOE_BUILD_DIR:-$root/build}
PY=${PYTHON:-/usr/bin/python3}
TORCH_PY=${TORCH_PYTHON:-/usr/bin/python3}
[ -f "$build/lib/libmoert.so" ] || die "$build/lib/libmoert.so not found: build the project first"
for t in moe-compile moe-run; do
  [ -x "$build/bin/$t" ] || die "$build/bin/$t not found: build the project first" \
    "(cmake --build build) or point MOE_BUILD_DIR at a build directory"
done
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

work=${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/moe-bench-cpu.XXXXXX")}
mkdir -p "$work"
cleanup() { if [ $keep = 0 ] && [ -z "${WORK_DIR:-}" ]; then rm -rf "$work"; fi; }
trap cleanup EXIT
stamp=$(date -u +%Y%m%dT%H%M%SZ)
[ -n "$out" ] || out=$here/results/$stamp.json
t0=$(date +%s)
step() { printf '[%4d s] %s\n' $(($(date +%s) - t0)) "$*"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(loadavg)

step "T=$tokens D=$D F=$F E=$E top-$K, threads $threads, work dir $work"

# -- inputs: config, graph, weights, module ----------------------------------
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
step "emit, init-weights, init-inputs"
mc emit --hf-config "$work/config.json" --tokens "$tokens" -o "$work/model.mlir"
mc init-weights --hf-config "$work/config.json" --seed 1 -o "$work/w.safetensors" 2> /dev/null
mc init-inputs --hf-config "$work/config.json" --tokens "$tokens" --seed 2 -o "$work/x.safetensors"
step "moe-compile"
"$build/bin/moe-compile" "$work/model.mlir" -o "$work/module"
# moe-run and libmoert.so are copied: a rebuild of $build during the run must
# not change the code under test between rounds (moe-run's RUNPATH yields to
# LD_LIBRARY_PATH).
mkdir -p "$work/bin" "$work/lib"
cp "$build/bin/moe-run" "$work/bin/"
cp "$build/lib/libmoert.so" "$work/lib/"
moert_sum=$(md5sum "$work/lib/libmoert.so" | cut -c1-12)
step "g++ -O2 gemm_floor.cpp -lopenblas; gcc sgemm_timer.c (LD_PRELOAD shim)"
g++ -O2 -std=c++17 -I"$blas_inc" "$here/gemm_floor.cpp" -o "$work/gemm_floor" -lopenblas
gcc -O2 -shared -fPIC -I"$blas_inc" "$here/sgemm_timer.c" -o "$work/sgemm_timer.so" -ldl

# -- routing counts and the reference ----------------------------------------
step "routing counts + float64 reference (python/moe_compiler/reference.py)"
"$PY" "$here/bench.py" prep --config "$work/config.json" --weights "$work/w.safetensors" \
  --inputs "$work/x.safetensors" --work "$work" --ref-tokens "$ref_tokens"

# -- the contenders, interleaved by round -------------------------------------
run_module() { # TAG [VAR=VALUE...]: TAG is r<round> or profile; the rest is env
  local tag=$1
  shift
  echo "$tag $(loadavg)" >> "$work/loadavg_module.txt"
  env LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@" \
    "$work/bin/moe-run" "$work/module" --weights "$work/w.safetensors" \
    --inputs "$work/x.safetensors" --output "$work/module_y.safetensors" \
    --warmup "$warmup" --repeat "$repeat" --threads "$threads" --quiet \
    --stats "$work/module_$tag.stats.json" --trace "$work/module_$tag.trace.json"
}
run_passive() { # diagnostic: the module with libgomp's workers sleeping, not spinning
  run_module "passive_$1" OMP_WAIT_POLICY=passive
}
run_torch() {
  echo "$1 $(loadavg)" >> "$work/loadavg_torch.txt"
  "$TORCH_PY" "$here/torch_moe.py" --config "$work/config.json" \
    --weights "$work/w.safetensors" --inputs "$work/x.safetensors" --threads "$threads" \
    --warmup "$warmup" --repeat "$repeat" --json "$work/torch_$1.json" \
    --output "$work/torch_y.npy"
}
run_floor() {
  echo "$1 $(loadavg)" >> "$work/loadavg_floor.txt"
  "$work/gemm_floor" "$work/counts.txt" "$D" "$F" --warmup "$warmup" --repeat "$repeat" \
    --threads "$threads" --json "$work/floor_$1.json" | tail -1
}
order=(module torch floor)
[ $passive = 1 ] && order+=(passive)
for ((r = 1; r <= rounds; ++r)); do
  for c in "${order[@]}"; do
    step "round $r/$rounds: $c"
    "run_$c" "r$r" || die "$c failed in round $r"
  done
  order=("${order[@]:1}" "${order[0]}") # rotate: no contender always goes first
done
# Not timed for the table: the module once more with every cblas_sgemm call
# timed (sgemm_timer.so), to split expert_ffn into GEMM time and the rest.
step "profile: moe-run under sgemm_timer.so"
run_module profile SGEMM_TIMER_OUT="$work/profile.sgemm.txt" LD_PRELOAD="$work/sgemm_timer.so" ||
  die "moe-run under sgemm_timer.so failed"
load_end=$(loadavg)

# -- report -------------------------------------------------------------------
git_rev=$(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo unknown)
git_dirty=$(git -C "$root" status --porcelain 2> /dev/null | grep -c . || true)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
ncpu=$(nproc)
export BM_CMD="$cmdline" BM_T=$tokens BM_D=$D BM_F=$F BM_E=$E BM_K=$K BM_THREADS=$threads \
  BM_ROUNDS=$rounds BM_WARMUP=$warmup BM_REPEAT=$repeat BM_QUICK=$quick BM_STAMP=$stamp \
  BM_GIT="$git_rev" BM_DIRTY="$git_dirty" BM_CPU="$cpu" BM_NPROC=$ncpu \
  BM_LOAD0="$load_start" BM_LOAD1="$load_end" BM_BUILD="$build" BM_PY="$PY" \
  BM_TORCH_PY="$TORCH_PY" BM_MOERT="$moert_sum" BM_SECONDS=$(($(date +%s) - t0))
"$PY" - "$work/meta.json" << 'EOF'
import json, os, sys
e = os.environ
meta = {
    "command": e["BM_CMD"], "timestamp_utc": e["BM_STAMP"],
    "tokens": int(e["BM_T"]), "hidden": int(e["BM_D"]), "ffn": int(e["BM_F"]),
    "experts": int(e["BM_E"]), "top_k": int(e["BM_K"]), "activation": "swiglu",
    "dtype": "f32", "dropless": True, "threads": int(e["BM_THREADS"]),
    "rounds": int(e["BM_ROUNDS"]), "warmup": int(e["BM_WARMUP"]),
    "repeat": int(e["BM_REPEAT"]), "quick": e["BM_QUICK"] == "1",
    "git": e["BM_GIT"], "git_dirty_files": int(e["BM_DIRTY"] or 0), "cpu": e["BM_CPU"],
    "nproc": int(e["BM_NPROC"]), "loadavg_start": e["BM_LOAD0"],
    "loadavg_end": e["BM_LOAD1"], "build_dir": e["BM_BUILD"], "python": e["BM_PY"],
    "torch_python": e["BM_TORCH_PY"], "libmoert_md5": e["BM_MOERT"], "bench_seconds": int(e["BM_SECONDS"]),
}
with open(sys.argv[1], "w") as fh:
    json.dump(meta, fh, indent=1)
EOF
step "report"
echo
"$PY" "$here/bench.py" report --work "$work" --meta "$work/meta.json" --out "$out"
