#!/usr/bin/env bash
# GPU benchmark (under five minutes on one GPU): bertbeam embed at bf16 on MiniLM and a
# BERT-base-sized random model, tokens/s and model-FLOP utilisation.
#   benchmarks/gpu.sh            # on a CUDA machine
#   benchmarks/gpu.sh --smoke    # tiny sizes on the CPU, to check the script works
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec "$PYTHON" -m benchmarks.gpu "$@"
