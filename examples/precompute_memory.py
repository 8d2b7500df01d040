"""Compress the RL prompts' contexts once with the SFT checkpoint, so RL never runs the encoder.

    python examples/precompute_memory.py --model out/sft --dataset data/rl_qa.jsonl --output_dir out/rl_memory
    python examples/precompute_memory.py --model out/tiny/sft --dataset tests/fixtures/rl/qa.jsonl --output_dir out/tiny/rl_memory
    accelerate launch --config_file examples/accelerate/multi_gpu.yaml examples/precompute_memory.py ...  # a shard per GPU

Under `accelerate launch` each process compresses a contiguous shard and rank 0 merges them in order.

Writes a `datasets` folder (`load_from_disk`) with prompt/question/answer/memory rows and `memcomp_memory.json`.
"""

import logging
import os

from transformers import HfArgumentParser

from trainers.distributed import process_group_teardown
from trainers.precompute import PrecomputeArguments, run

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    (args,) = HfArgumentParser(PrecomputeArguments).parse_args_into_dataclasses()
    with process_group_teardown():
        dataset = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{len(dataset)} rows with memories written to {args.output_dir}")
