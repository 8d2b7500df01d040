#!/usr/bin/env bash
# Build .venv-kvpress: a separate environment for the kvpress rows of benchmarks/peers.py (kvpress 0.5.x pins
# transformers < 5.3, which the main .venv does not). Idempotent: re-running only re-checks the installs.
# Usage: bash scripts/make_kvpress_env.sh && .venv/bin/python -m benchmarks.peers   # peers.py finds it
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${KVPRESS_VENV:-.venv-kvpress}"
PIP="$VENV/bin/pip"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$PIP" install --quiet --upgrade pip
# CPU torch first, so that nothing below can pull a CUDA build.
"$PIP" install --quiet torch==2.13.0
# constraints-kvpress.txt pins every package to the version benchmarks/peers.py ran with.
"$PIP" install --quiet -c constraints-kvpress.txt "kvpress==0.5.*" "transformers<5.3" torch==2.13.0
"$VENV/bin/python" -c "import torch, transformers, kvpress; print('torch', torch.__version__, '| transformers', transformers.__version__, '| kvpress', kvpress.__version__ if hasattr(kvpress, '__version__') else 'ok')"
