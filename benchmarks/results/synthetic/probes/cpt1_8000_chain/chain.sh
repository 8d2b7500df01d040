#!/usr/bin/env bash
# Probe cpt1_8000_chain (README.md here): the proof chain (examples/configs/synthetic_proof.yaml) after its CPT-1,
# started from the 8,000-step default-world CPT-1 that read every name (probe cpt1_name_weight, control, 0.947).
# Each step is resumable: run this script again to go on. Run from the repository root; OUT holds the runs.
set -euo pipefail
OUT=${OUT:-/work/out}
REPORT=${REPORT:-benchmarks/results/synthetic/probes/cpt1_8000_chain}
run() { python examples/train_synthetic.py --threads 2 --threads_alone 2 --parallel false --checkpoint_dir '' \
        --cpt1_steps 8000 --cpt1_lr_decay 0.2 --sft_lr_decay 0.2 "$@"; }
BASE="\"lm\": \"$OUT/nw/lm\", \"cpt1\": \"$OUT/nw_w1_s0/cpt1\""

# CPT-2 on the default world's rows.
run --output_dir "$OUT/c8_cpt2" --stages cpt2 --reuse "{\"data\": \"$OUT/nw/data\", $BASE}"
# SFT 15,000 steps on the default world's rows (peak LR held to step 12,000).
run --output_dir "$OUT/c8_sft_any" --stages sft --sft_steps 15000 \
    --reuse "{\"data\": \"$OUT/nw/data\", $BASE, \"cpt2\": \"$OUT/c8_cpt2/cpt2\"}"
# Then 5,000 steps on other_kind rows (training seed 1).
run --output_dir "$OUT/c8_sft_ok" --distractors other_kind --stages data sft --sft_steps 5000 --training_seed 1 \
    --reuse "{$BASE, \"cpt2\": \"$OUT/c8_cpt2/cpt2\"}" --start_from "{\"sft\": \"$OUT/c8_sft_any/sft\"}"
# DAPO on other_kind rows of 2-16 documents, 1,500 steps at 2e-4 on 12,000 prompts; 240 questions per cell.
run --output_dir "$OUT/c8_rl" --distractors other_kind --max_passages 16 --eval_questions 240 --stages data rl \
    --rl_min_documents 2 --rl_learning_rate 2e-4 --rl_steps 1500 --rl_prompts 12000 \
    --reuse "{$BASE, \"cpt2\": \"$OUT/c8_cpt2/cpt2\", \"sft\": \"$OUT/c8_sft_ok/sft\"}" --report_dir "$REPORT"
