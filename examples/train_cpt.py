"""Continual pretraining (CPT-1, CPT-2) of a memcomp model from a stage config.

    accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml examples/train_cpt.py --config examples/configs/cpt1.yaml
    python examples/train_cpt.py --config examples/configs/cpt1_tiny.yaml --max_steps 8
"""

from trainers.run import main

if __name__ == "__main__":
    main(expected_stages=("cpt1", "cpt2"))
