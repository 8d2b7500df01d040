"""Run a schedule of synthetic runs as one resumable command: phases in their own folders, later ones reusing or
going on from earlier ones' stages; the last is evaluated, reported and exported (docs/synthetic.md).

    python examples/train_synthetic_schedule.py --schedule examples/configs/synthetic_shipped.yaml   # the shipped checkpoint
    python examples/train_synthetic_schedule.py --schedule my.yaml --checkpoint_dir ''                # any ReportArguments field

Run the same command again to resume: finished phases and stages are skipped, an interrupted stage resumes.
"""

from benchmarks.synthetic.schedule import main

if __name__ == "__main__":
    main()
