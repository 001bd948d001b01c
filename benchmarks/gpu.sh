#!/usr/bin/env bash
# GPU benchmark of issue 12 (about 7.5 minutes on an H200): bertbeam embed at bf16 beside the
# hand-written loop, sentence-transformers, the tokenizer alone and a 4-core restriction, on
# MiniLM, BERT-base and 512-token windows; steady-state rates, MFU, memory, CPU agreement.
#   benchmarks/gpu.sh --out DIR  # on a CUDA machine (see python -m benchmarks.gpu --help)
#   benchmarks/gpu.sh --smoke    # tiny sizes on the CPU, to check the script works
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m benchmarks.gpu "$@"
