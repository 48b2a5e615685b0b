#!/usr/bin/env bash
# The test suite on the device machine's GPU (docs/benchmark.md):
#   run(command="bash benchmarks/gpu_tests.sh", timeout_s=600)
# Writes $OUT/tests.txt. Tests that need packages the machine lacks (tensorboardX,
# tensorflow-datasets) skip themselves; the GPU-only ones (tests/test_precision.py's
# TF32 check) run only there.
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/lenet_gpu_tests}
mkdir -p "$OUT"
{ date -Is; nvidia-smi --query-gpu=name,driver_version --format=csv 2>&1 || true; } | tee "$OUT/tests.txt"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -k 10 "${TESTS_TIMEOUT_S:-540}" \
  python3 -m pytest -n "${WORKERS:-8}" -q tests 2>&1 | tee -a "$OUT/tests.txt"
