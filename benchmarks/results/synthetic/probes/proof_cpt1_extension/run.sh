#!/usr/bin/env bash
# Probe proof_cpt1_extension: the proof chain's plateau-bound CPT-1 trained on at a low LR. Resumable (run it again).
set -euo pipefail
.venv/bin/python examples/train_synthetic.py --output_dir out/proof_cpt1_ext --stages cpt1 --distractors other_kind \
    --reuse '{"data": "out/proof/other_kind/data", "lm": "out/proof/any/lm"}' \
    --start_from '{"cpt1": "out/proof/other_kind/cpt1"}' \
    --cpt1_steps 4000 --learning_rate 2e-4 --projection_learning_rate 2e-4 \
    --threads_alone 2 --parallel false --max_documents 100 --checkpoint_dir '' \
    --report_dir benchmarks/results/synthetic/probes/proof_cpt1_extension
