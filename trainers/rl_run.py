"""Run the RL stage from a config: the SFT checkpoint as policy, its precomputed memories, DAPO, save.

Used by `examples/train_rl.py` under `accelerate launch`; every field of `MemCompGRPOConfig`, `RLScriptArguments` and
`JudgeArguments` can be set in the YAML (`--config`) or on the command line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from modeling_memcomp.extras import require_extra

require_extra("rl", "RL training (trainers.rl_run, examples/train_rl.py)")  # before the imports below need it

import torch  # noqa: E402
from datasets import load_from_disk  # noqa: E402

from .checkpoints import resume_point  # noqa: E402
from .distributed import process_group_teardown  # noqa: E402
from .grpo import MemCompGRPOConfig, MemCompGRPOTrainer  # noqa: E402
from .judges import JudgeArguments, build_judge  # noqa: E402
from .precompute import check_memory_source  # noqa: E402


@dataclass
class RLScriptArguments:
    """The SFT checkpoint and its precomputed memories."""

    model: str = field(metadata={"help": "SFT checkpoint (folder or Hub id): the policy to train."})
    memory_dataset: str = field(metadata={"help": "Folder written by examples/precompute_memory.py with this checkpoint."})


def run_rl(script: RLScriptArguments, judge_args: JudgeArguments, args: MemCompGRPOConfig) -> None:
    """Train the decoder with DAPO on memories the checkpoint's own encoder made (checked first), resuming as
    `args.resume_from_checkpoint` says, and save the RL checkpoint (SFT encoder + RL decoder) to `args.output_dir`."""
    from modeling_memcomp import MemCompForCausalLM

    model = MemCompForCausalLM.from_pretrained(script.model, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    memory = load_from_disk(script.memory_dataset)
    check_memory_source(script.memory_dataset, model, script.model, num_rows=len(memory))
    with process_group_teardown():
        trainer = MemCompGRPOTrainer(model, args=args, train_dataset=memory, judge=build_judge(judge_args))
        trainer.train(resume_from_checkpoint=resume_point(args))
        trainer.save_model(args.output_dir)
        del trainer  # its reference cycles hold DDP's gloo work: free it before the process group goes


def main(argv: list[str] | None = None) -> None:
    """Command line: `--config rl.yaml [--field value ...]` (every field: `--help`)."""
    from trl import TrlParser

    logging.basicConfig(level=logging.INFO)
    parser = TrlParser((RLScriptArguments, JudgeArguments, MemCompGRPOConfig))
    script, judge_args, args = parser.parse_args_and_config(argv)
    run_rl(script, judge_args, args)
