"""Callbacks for MemCompTrainer runs."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback


class RankTraceCallback(TrainerCallback):
    """Writes one JSON line per optimizer step and rank: world size, engine, example ids seen, gradient checksum.

    Evidence that a data-parallel run really is one: ranks see different examples yet step with the same
    (all-reduced) gradients. Files: `<trace_dir>/rank<r>.jsonl`.
    """

    def __init__(self, trainer, trace_dir: str | Path):
        self.trainer = trainer
        self.trace_dir = Path(trace_dir)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        checksum = float(sum(g.double().sum() for g in grads)) if grads else 0.0
        record = {
            "step": state.global_step + 1,
            "rank": args.process_index,
            "world_size": args.world_size,
            "engine": self.trainer.accelerator.distributed_type.value,  # e.g. MULTI_CPU (DDP), DEEPSPEED, FSDP
            "example_ids": self.trainer.example_ids_seen[:],
            "grad_checksum": checksum,
        }
        self.trainer.example_ids_seen.clear()
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        with open(self.trace_dir / f"rank{args.process_index}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")


class ResumedTokenCount(TrainerCallback):
    """Continues the logged `useful_tokens` count of a resumed run from its checkpoint's last logged value.

    The counter itself lives in the trainer (per rank, summed at each log); a resumed process starts it at zero, so
    without this the log after a resume would count only the tokens trained since.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self._pending = True

    def on_step_begin(self, args, state, control, **kwargs):
        if self._pending:  # the first step: by now a resumed run has loaded its TrainerState
            logged = [entry["useful_tokens"] for entry in state.log_history if "useful_tokens" in entry]
            self.trainer.resumed_useful_tokens = logged[-1] if logged else 0
            self._pending = False
