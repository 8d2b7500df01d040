"""Training for memcomp: curriculum tasks, collator, Trainers (CPT/SFT), FQLoRA, the DAPO GRPOTrainer, rewards.

Names are resolved lazily so that importing one stage does not import the heavy dependencies of another
(e.g. `trl` for RL).
"""

import importlib

_EXPORTS = {
    "MemCompTrainer": "trainers.trainer",
    "MemCompTrainingArguments": "trainers.trainer",
    "MemCompGRPOTrainer": "trainers.grpo",
    "MemCompGRPOConfig": "trainers.grpo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainers' has no attribute {name!r}")
