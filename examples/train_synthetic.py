"""Train the demo checkpoint from scratch on the synthetic corpus: LM -> CPT-1 -> CPT-2 -> SFT -> RL, a full-context
baseline, held-out evaluation with controls, the report, and the exported checkpoint (docs/synthetic.md).

    python examples/train_synthetic.py --report_dir benchmarks/results/synthetic   # the committed run (CPU, its report)
    python examples/train_synthetic.py --output_dir /tmp/toy --lm_steps 4 --cpt1_steps 4 ...   # any field of
                                                                         # SyntheticRunConfig / ReportArguments
A rerun skips finished stages and resumes an interrupted one from its last checkpoint; without `--report_dir`
the report goes to `<output_dir>/report`.
"""

from benchmarks.synthetic.run import main

if __name__ == "__main__":
    main()
