"""RL with DAPO on precomputed memories (paper Section 3.3.3, Table 10): only the decoder is trained.

    accelerate launch --config_file examples/accelerate/rl_multi_gpu.yaml examples/train_rl.py --config examples/configs/rl.yaml
    python examples/train_rl.py --config examples/configs/rl_tiny.yaml

Any field of `MemCompGRPOConfig`, `RLScriptArguments` or `JudgeArguments` can be set in the YAML or on the command line.
"""

import logging
from dataclasses import dataclass, field

from modeling_memcomp.extras import require_extra

require_extra("rl", "RL training (examples/train_rl.py)")  # before the imports below need it

import torch  # noqa: E402
from datasets import load_from_disk  # noqa: E402
from trl import TrlParser  # noqa: E402

from modeling_memcomp import MemCompForCausalLM  # noqa: E402
from trainers import MemCompGRPOConfig, MemCompGRPOTrainer  # noqa: E402
from trainers.checkpoints import resume_point  # noqa: E402
from trainers.distributed import process_group_teardown  # noqa: E402
from trainers.judges import JudgeArguments, build_judge  # noqa: E402
from trainers.precompute import check_memory_source  # noqa: E402


@dataclass
class RLScriptArguments:
    """The SFT checkpoint and its precomputed memories."""

    model: str = field(metadata={"help": "SFT checkpoint (folder or Hub id): the policy to train."})
    memory_dataset: str = field(metadata={"help": "Folder written by examples/precompute_memory.py with this checkpoint."})


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    script, judge_args, args = TrlParser((RLScriptArguments, JudgeArguments, MemCompGRPOConfig)).parse_args_and_config()
    model = MemCompForCausalLM.from_pretrained(script.model, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    check_memory_source(script.memory_dataset, model, script.model)
    with process_group_teardown():
        trainer = MemCompGRPOTrainer(
            model, args=args, train_dataset=load_from_disk(script.memory_dataset), judge=build_judge(judge_args)
        )
        trainer.train(resume_from_checkpoint=resume_point(args))
        trainer.save_model(args.output_dir)
        del trainer  # its reference cycles hold DDP's gloo work: free it before the process group goes


if __name__ == "__main__":
    main()
