#!/usr/bin/env bash
# Probe proof_cpt1_names_early_then_peak: the names-early CPT-1 (which read the subject and the values) trained on,
# unweighted, at the peak LR. Resumable (run it again).
set -euo pipefail
.venv/bin/python examples/train_synthetic.py --output_dir out/proof_cpt1_names_early_then_peak --stages cpt1 --distractors other_kind \
    --reuse '{"data": "out/proof/other_kind/data", "lm": "out/proof/any/lm"}' \
    --start_from '{"cpt1": "out/proof_cpt1_names_early/cpt1"}' \
    --cpt1_steps 5000 \
    --threads_alone 2 --parallel false --max_documents 100 --checkpoint_dir '' \
    --report_dir benchmarks/results/synthetic/probes/proof_cpt1_names_early_then_peak
