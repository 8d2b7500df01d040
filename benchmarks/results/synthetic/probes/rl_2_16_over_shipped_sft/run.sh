#!/usr/bin/env bash
# Probe rl_2_16_over_shipped_sft: DAPO on other_kind rows of 2-16 documents over the shipped checkpoint's own SFT.
# Run from the repository root; resumable (run it again after a kill).
set -euo pipefail
probe=benchmarks/results/synthetic/probes/rl_2_16_over_shipped_sft
[ -f out/shipped_sft/model.safetensors ] || .venv/bin/python $probe/extract_sft.py checkpoints/memcomp-synthetic-tiny out/shipped_sft
.venv/bin/python examples/train_synthetic.py --output_dir out/rl_shipped_sft --distractors other_kind --max_passages 16 \
    --eval_questions 240 --stages data rl --rl_min_documents 2 --rl_learning_rate 2e-4 --rl_steps 1500 \
    --rl_prompts 12000 --parallel false --threads 2 --threads_alone 2 --reuse '{"sft": "out/shipped_sft"}' \
    --report_dir "${REPORT:-$probe}"
