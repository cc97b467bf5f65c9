#!/usr/bin/env bash
# The GPU checks of issues 12 and 20 in one go, for a machine with CUDA (at most 150 + 140 + 2 x 90 s:
# under 8 minutes):
#   1. every test marked `cuda` (tests/test_cuda.py, and the cuda cases of test_devices.py and
#      test_precision.py: placement, float16 skipped steps), which CI without a GPU skips;
#   2. scripts/bench_gpu.py on the GPU, writing bench_results/bench_gpu.json;
#   3. scripts/bench_lm.py on the GPU (the GPT: simulator against a hand-written loop, tokens/s and
#      validation loss), in 32-bit and bf16-mixed, writing bench_results/bench_lm_cuda_{32,bf16-mixed}.json.
# Run from anywhere: scripts/check_gpu.sh   (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}    # deterministic=true needs it before cuBLAS starts

"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'check_gpu.sh: torch sees no CUDA device')"
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| devices:', torch.cuda.device_count(), '| torch', torch.__version__)"

start=$SECONDS
tests=0      # the benchmark runs even when a test fails; the script's status is the tests'
timeout 150 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/test_devices.py \
    tests/test_precision.py || tests=$?
echo "cuda tests: $((SECONDS - start)) s (status $tests)"

start=$SECONDS
timeout 140 "$PY" scripts/bench_gpu.py --device cuda --out bench_results/bench_gpu.json
echo "bench_gpu.py: $((SECONDS - start)) s"

for precision in 32 bf16-mixed; do
  start=$SECONDS
  timeout 90 "$PY" scripts/bench_lm.py --device cuda --precision "$precision" --rounds 2 \
      --out "bench_results/bench_lm_cuda_$precision.json"
  echo "bench_lm.py --precision $precision: $((SECONDS - start)) s"
done
exit $tests
