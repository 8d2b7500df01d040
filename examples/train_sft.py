"""Supervised fine-tuning (QA over compressed contexts, projection frozen) from a stage config.

    accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml examples/train_sft.py --config examples/configs/sft.yaml
    accelerate launch --config_file examples/accelerate/cpu_2proc.yaml examples/train_sft.py --config examples/configs/sft_tiny.yaml
"""

from trainers.run import main

if __name__ == "__main__":
    main(expected_stages=("sft",))
