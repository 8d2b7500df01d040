#!/usr/bin/env bash
# Probe proof_schedule_end_to_end: examples/configs/synthetic_proof.yaml as one command, run from the repository root.
# Resumable: run it again after a kill or in the next sitting (finished phases and stages are skipped, an interrupted
# stage resumes from its last checkpoint). The ship rule compares the last phase with checkpoints/memcomp-synthetic-tiny.
set -euo pipefail
probe=benchmarks/results/synthetic/probes/proof_schedule_end_to_end
.venv/bin/python examples/train_synthetic_schedule.py --schedule examples/configs/synthetic_proof.yaml \
    --report_dir "${REPORT:-$probe}"
