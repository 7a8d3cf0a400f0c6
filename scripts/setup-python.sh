#!/usr/bin/env bash
# Creates .pyref/, the Python environment of the reference scripts (fixture recording, PyTorch
# Bitune reference, transformers benchmarks). Never needed by CI: fixtures are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .pyref/bin/python ] || python3 -m venv .pyref
.pyref/bin/pip install --quiet --upgrade pip
.pyref/bin/pip install --quiet torch==2.15.0 transformers==4.57.1 peft==0.21.2 gguf==0.19.0 \
    numpy safetensors sentencepiece tokenizers
echo ".pyref ready: $(.pyref/bin/python -c 'import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)')"
