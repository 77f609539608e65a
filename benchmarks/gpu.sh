#!/usr/bin/env bash
# The decisive figures of the performance work on an accelerator, sized for about 5 minutes on an H100/
# H200 class GPU; the same scripts as on CPU, unchanged -- memory from XLA's memory_analysis(),
# no profiler):
#   1. the Transformer step, threefry2x32 and rbg: step time with dropout on/off for stoax's
#      default (scanned Stack), the unrolled model, the plain scan (remat=False), Flax NNX and
#      Equinox; temporary memory on/off; compile time;
#   2. the 12-layer d512 seq256 model: memory only;
#   3. the 8-layer MLP and the Sequential with Dropout before Linear: memory on/off;
#   4. broadcast dropout (one mask shared along an axis), fwd and fwd+bwd vs the peers.
# Usage: bash benchmarks/gpu.sh [python]     (output also in benchmarks/results_gpu.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
ROWS="stoax,stoax unrolled,stoax remat=False,flax nnx,equinox"
{
    "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
    "$PY" benchmarks/run.py --reps 7 --rows "$ROWS"
    "$PY" benchmarks/run.py --reps 7 --impl rbg --skip-elementwise --rows "$ROWS"
    "$PY" benchmarks/run.py --memory-only --layers 12 --d-model 512 --seq 256 --rows "$ROWS"
    "$PY" benchmarks/mlp_memory.py
    "$PY" benchmarks/broadcast_dropout.py --reps 25
} 2>&1 | tee benchmarks/results_gpu.txt
