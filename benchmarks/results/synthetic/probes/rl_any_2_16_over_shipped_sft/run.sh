#!/usr/bin/env bash
# Probe rl_any_2_16_over_shipped_sft: DAPO on default-world rows of 2-16 documents over the shipped checkpoint's SFT.
# Run from the repository root; resumable (run it again after a kill). The checkpoint shipped now is copied to
# out/rl_any16_previous and given as --checkpoint_dir: it is the report's `previous`, and the ship rule can only write
# to the copy (a default-world RL is not shipped on its own world's figures alone; see the README).
set -euo pipefail
probe=benchmarks/results/synthetic/probes/rl_any_2_16_over_shipped_sft
extract=benchmarks/results/synthetic/probes/rl_2_16_over_shipped_sft/extract_sft.py
[ -f out/shipped_sft/model.safetensors ] || .venv/bin/python $extract checkpoints/memcomp-synthetic-tiny out/shipped_sft
[ -d out/rl_any16_previous ] || cp -r checkpoints/memcomp-synthetic-tiny out/rl_any16_previous
.venv/bin/python examples/train_synthetic.py --output_dir out/rl_any16_shipped_sft --eval_questions 240 --max_passages 16 \
    --stages data rl --rl_min_documents 2 --rl_learning_rate 2e-4 --rl_steps 1500 --rl_prompts 12000 \
    --parallel false --threads 2 --threads_alone 2 --reuse '{"sft": "out/shipped_sft"}' \
    --checkpoint_dir out/rl_any16_previous --report_dir "${REPORT:-$probe}"
