#!/usr/bin/env bash
# The GPU benchmark (docs/benchmark.md), prepared for the device machine: about 5 minutes.
#
# Here, before the call (neither the data nor ../shared travels with the working tree;
# tmp/ is git-ignored, so it goes only where `carry` names it; about 31 MB):
#   mkdir -p tmp/device/fashion-mnist
#   cp /usr/share/datasets/fashion-mnist/*.gz tmp/device/fashion-mnist/
#   cp ../shared/bench/torch_lenet_gpu.py tmp/device/
# Then the device tool: run(command="bash benchmarks/gpu.sh", carry=["tmp/device"], timeout_s=420)
#
# Writes to $OUT: bench.txt (everything printed), bench.json (the throughput table, the
# PyTorch peers, the profile's place), e2e.json (run.py end to end), profile.tar.gz
# (the jax.profiler trace). First the table with the peers, within TABLE_BUDGET_S; then
# the end-to-end runs with what is left of TOTAL_S. Every knob below is an environment
# variable; e.g. PRECISIONS=float32,bfloat16 MODELS=256,1024 for a second pass.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/lenet_gpu_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-300}                # the whole script
TABLE_BUDGET_S=${TABLE_BUDGET_S:-190}  # the table, the peers and the profile
MODELS=${MODELS:-1,64,256,1024,8}      # measured in this order (printed so too)
FORMS=${FORMS:-patches,xla}
PRECISIONS=${PRECISIONS:-tf32,float32,bfloat16}
STEPS=${STEPS:-50}
REPEATS=${REPEATS:-3}
TIMEOUT_S=${TIMEOUT_S:-45}             # one measurement, in its own process
TORCH_TIMEOUT_S=${TORCH_TIMEOUT_S:-100}  # one peer run (one precision)
MAX_CALL_IMAGES=${MAX_CALL_IMAGES:-4000000}
COST_MODELS=${COST_MODELS:-64}         # XLA cost analysis (one more compile) at these counts
E2E_EPOCHS=${E2E_EPOCHS:-15}
E2E_SEEDS=${E2E_SEEDS:-64}
start=$SECONDS

idx=${IDX_DIR:-}
for d in tmp/device/fashion-mnist data/fashion-mnist /usr/share/datasets/fashion-mnist; do
  if [ -z "$idx" ] && [ -f "$d/train-images-idx3-ubyte.gz" ]; then idx=$d; fi
done
if [ -z "$idx" ]; then
  echo "no Fashion-MNIST IDX files: copy them to tmp/device/fashion-mnist and carry" \
       "tmp/device (see the top of $0)" | tee "$OUT/bench.txt"
  exit 2
fi
peers=${PEERS:-}
for f in tmp/device/torch_lenet_gpu.py shared/bench/torch_lenet_gpu.py \
         ../shared/bench/torch_lenet_gpu.py; do
  if [ -z "$peers" ] && [ -f "$f" ]; then peers=$f; fi
done

{
  date -Is
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  else
    echo "nvidia-smi: not on this machine"
  fi
  echo "data: $idx; PyTorch peers script: ${peers:-none (the peers are skipped)}"
} 2>&1 | tee "$OUT/bench.txt"

rm -rf /tmp/lenet_profile
timeout -k 10 $((TABLE_BUDGET_S + 90)) "$PY" -m lenet_jax.bench --suite=gpu --noe2e \
  --idx_dir="$idx" ${peers:+--torch_gpu_script="$peers"} \
  --models="$MODELS" --forms="$FORMS" --precisions="$PRECISIONS" \
  --steps="$STEPS" --repeats="$REPEATS" --timeout="$TIMEOUT_S" \
  --torch_timeout="$TORCH_TIMEOUT_S" --max_call_images="$MAX_CALL_IMAGES" \
  --cost_models="$COST_MODELS" --budget_s="$TABLE_BUDGET_S" \
  --profile_dir=/tmp/lenet_profile --json_out="$OUT/bench.json" 2>&1 | tee -a "$OUT/bench.txt"
rc=$?
if [ -d /tmp/lenet_profile ]; then
  tar -czf "$OUT/profile.tar.gz" -C /tmp lenet_profile  # $OUT keeps 2 folder levels only
fi

left=$((TOTAL_S - (SECONDS - start) - 10))
if [ "$left" -ge 60 ]; then
  timeout -k 10 $((left + 30)) "$PY" -m lenet_jax.bench --suite=gpu --nothroughput \
    --idx_dir="$idx" --e2e_epochs="$E2E_EPOCHS" --e2e_seeds="$E2E_SEEDS" \
    --e2e_timeout="$left" --budget_s="$left" --json_out="$OUT/e2e.json" \
    2>&1 | tee -a "$OUT/bench.txt"
else
  echo "end to end: skipped, ${left}s left of TOTAL_S=${TOTAL_S}" | tee -a "$OUT/bench.txt"
fi
echo "gpu.sh: $((SECONDS - start))s; outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')" \
  | tee -a "$OUT/bench.txt"
exit $rc
