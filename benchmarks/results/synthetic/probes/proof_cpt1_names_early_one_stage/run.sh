#!/usr/bin/env bash
# Probe proof_cpt1_names_early_one_stage: the two legs that freed the AVX2 draw, as one CPT-1 stage of 13,000 steps.
# Resumable (run it again).
set -euo pipefail
.venv/bin/python examples/train_synthetic.py --output_dir out/proof_cpt1_names_early_one_stage --stages cpt1 --distractors other_kind \
    --reuse '{"data": "out/proof/other_kind/data", "lm": "out/proof/any/lm"}' \
    --cpt1_steps 13000 --cpt1_name_weight 4 --cpt1_name_weight_steps 4000 \
    --threads_alone 2 --parallel false --max_documents 100 --checkpoint_dir '' \
    --report_dir benchmarks/results/synthetic/probes/proof_cpt1_names_early_one_stage
