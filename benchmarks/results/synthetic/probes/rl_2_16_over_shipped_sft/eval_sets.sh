#!/usr/bin/env bash
# Evaluation only: the shipped SFT, this probe's RL (`rl`) and the checkpoint shipped before it (`previous`) on the
# held-out sets the README tables use: the default world's (the committed run's) and the `other_kind` 60-question set
# (probe rl_5_16_documents_other_kind's). Run from the repository root after run.sh; out/rl_shipped_ckpt is a copy of
# this probe's RL (the shipped checkpoint), out/previous_ckpt a copy of the checkpoint shipped before it (git show
# 58d9ff5:checkpoints/memcomp-synthetic-tiny), the ship rule's export target, so nothing in checkpoints/ is touched.
set -euo pipefail
probe=benchmarks/results/synthetic/probes/rl_2_16_over_shipped_sft
for world in default_world other_kind_60; do
  extra=(); [ $world = other_kind_60 ] && extra=(--distractors other_kind --max_passages 16)
  .venv/bin/python examples/train_synthetic.py --output_dir out/eval_$world "${extra[@]}" --stages data \
    --reuse '{"sft": "out/shipped_sft", "rl": "out/rl_shipped_ckpt"}' --threads 2 --threads_alone 2 \
    --checkpoint_dir out/previous_ckpt --report_dir $probe/${world}_set
done
