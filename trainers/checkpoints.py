"""Which Trainer checkpoint a run can resume from: the newest complete one, never an empty or partial one.

A job killed while writing `checkpoint-24/` leaves a folder that `get_last_checkpoint` would still pick.
`checkpoint_problems` lists what a folder lacks (trainer state, weights, optimizer and scheduler, the
FQLoRA full-FT weights); `last_complete_checkpoint` walks back from the newest and logs each one it skips.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

FULL_FT_WEIGHTS = "full_ft_model.safetensors"
"""Checkpoint file of the fully fine-tuned parameters of a peft-wrapped (FQLoRA) model: peft saves adapters only."""
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin",
)
"""What `Trainer._load_from_checkpoint` accepts as model weights (FSDP folders aside)."""
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            handle.keys()
    except Exception as error:  # safetensors raises its own error types for a torn file
        return f"{path.name} is unreadable ({error})"
    return None


def weights_problem(folder: Path) -> str | None:
    """Why `folder`'s model weights cannot be loaded (none there, a shard missing, a torn file), or None."""
    present = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        if any("fsdp" in p.name for p in folder.iterdir()) or any(
            (p / "adapter_model.safetensors").is_file() for p in folder.iterdir() if p.is_dir()
        ):
            return None  # FSDP shards or one folder per adapter: Trainer checks those itself
        return f"no model weights ({' / '.join(WEIGHT_FILES[:3])})"
    for name in present:
        path = folder / name
        if name.endswith(".index.json"):
            try:
                shards = set(json.loads(path.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError) as error:
                return f"{name} is unreadable ({error})"
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                return f"weight shards {missing[:3]} are missing"
            problems = [_safetensors_problem(folder / s) for s in sorted(shards) if s.endswith(".safetensors")]
            if any(problems):
                return next(p for p in problems if p)
        elif name.endswith(".safetensors"):
            problem = _safetensors_problem(path)
            if problem:
                return problem
    return None


def checkpoint_problems(
    folder: str | os.PathLike, *, full_ft: bool = False, optimizer: bool = True, deepspeed: bool = False
) -> list[str]:
    """What keeps `folder` from being a complete checkpoint (empty list: it is complete).

    `optimizer`: the run saves optimizer and scheduler state (not `save_only_model`, not DeepSpeed, which
    keeps its own). `deepspeed`: the run resumes through DeepSpeed, from its `global_step*` folder (weights too).
    `full_ft`: the model has fully fine-tuned parameters outside peft's adapters (FQLoRA).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return ["it is not a folder"]
    problems = []
    try:
        json.loads((folder / TRAINER_STATE).read_text())
    except FileNotFoundError:
        problems.append(f"no {TRAINER_STATE}")
    except (OSError, ValueError) as error:
        problems.append(f"{TRAINER_STATE} is unreadable ({error})")
    if deepspeed:
        # The trainer resumes a DeepSpeed run from global_step*/ alone, weights included: without
        # stage3_gather_16bit_weights_on_model_save (DeepSpeed's default) ZeRO-3 writes no model file beside it.
        if not any(p.is_dir() and p.name.startswith("global_step") and any(p.glob("*model_states.pt")) for p in folder.iterdir()):
            problems.append("no DeepSpeed state (global_step*/ with its *model_states.pt)")
    elif weights := weights_problem(folder):
        problems.append(weights)
    if optimizer:
        if not any(p.name.startswith("optimizer") for p in folder.iterdir()):
            problems.append("no optimizer state (optimizer.pt)")
        if not (folder / "scheduler.pt").is_file():
            problems.append("no scheduler state (scheduler.pt)")
    if full_ft:
        if not (folder / FULL_FT_WEIGHTS).is_file():
            problems.append(f"no {FULL_FT_WEIGHTS} (the fully fine-tuned FQLoRA layers)")
        else:
            problem = _safetensors_problem(folder / FULL_FT_WEIGHTS)
            if problem:
                problems.append(problem)
    return problems


def checkpoint_requirements(training, *, full_ft: bool = False) -> dict[str, bool]:
    """What a checkpoint of a run with these training arguments must hold to resume it exactly (`checkpoint_problems`'
    keywords): under DeepSpeed its `global_step*/` folder (ZeRO's optimizer and scheduler state: the trainer resumes
    through it), else optimizer and scheduler state unless the run saves only the model; `full_ft`: FQLoRA's fully
    fine-tuned layers, which only the trainer knows of."""
    deepspeed = getattr(training, "deepspeed_plugin", None) is not None or bool(getattr(training, "deepspeed", None))
    optimizer = not getattr(training, "save_only_model", False) and not deepspeed
    return {"full_ft": full_ft, "optimizer": optimizer, "deepspeed": deepspeed}


def checkpoints_newest_first(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-<step>` folders of `output_dir`, highest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str | os.PathLike, **requirements: bool) -> str | None:
    """The newest complete `checkpoint-<step>` of `output_dir` by `requirements` (`checkpoint_problems`' keywords;
    None when there is no checkpoint folder at all).

    Each newer incomplete one is skipped with a logged warning that says why; when every one is
    incomplete, a ValueError lists them all: resuming must never start from a partial state.
    """
    skipped = []
    for folder in checkpoints_newest_first(output_dir):
        problems = checkpoint_problems(folder, **requirements)
        if not problems:
            if skipped:
                logger.warning("resuming from %s (skipped: %s)", folder, "; ".join(skipped))
            else:
                logger.info("resuming from %s", folder)
            return os.fspath(folder)
        reason = f"{folder.name}: {', '.join(problems)}"
        logger.warning("skipping incomplete checkpoint %s (%s)", folder, ", ".join(problems))
        skipped.append(reason)
    if skipped:
        raise ValueError(
            f"no complete checkpoint in {os.fspath(output_dir)!r} to resume from ({'; '.join(skipped)}). "
            "Start the run afresh (without resume) or restore a checkpoint folder."
        )
    return None


class CompleteCheckpointResume:
    """Trainer mixin: `train(resume_from_checkpoint=...)` resumes only from a complete checkpoint.

    `True` takes the newest complete `checkpoint-<step>` of `output_dir` (newer partial ones are skipped with a
    warning); a path must be complete; None/False starts afresh. Put it before the Trainer class in the bases.
    """

    def _checkpoint_requirements(self) -> dict[str, bool]:
        """What a checkpoint of this run must hold to resume it exactly (`checkpoint_problems`' keywords)."""
        return checkpoint_requirements(self.args)

    def resolve_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """`True`: the newest complete checkpoint of `output_dir`; a path: that checkpoint, which must be complete;
        None/False: no resume."""
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        requirements = self._checkpoint_requirements()
        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(self.args.output_dir, **requirements)
            if found is None:
                raise ValueError(
                    f"no checkpoint-* folder in {self.args.output_dir!r} to resume from; start without resume."
                )
            return found
        path = os.fspath(resume_from_checkpoint)
        problems = checkpoint_problems(path, **requirements)
        if problems:
            raise ValueError(
                f"cannot resume from {path!r}: {', '.join(problems)}. Pass resume_from_checkpoint=True (--resume) "
                "to resume from the newest complete checkpoint instead."
            )
        return path

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, resuming only from a complete checkpoint (see `resolve_checkpoint`)."""
        self._resume_checkpoint = self.resolve_checkpoint(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=self._resume_checkpoint, **kwargs)


def resume_point(training) -> str | bool | None:
    """`--resume_from_checkpoint` as `Trainer.train` takes it: a checkpoint folder, `true` for the newest complete one
    in `output_dir`, or `last`: that one if there is any, else a fresh start (one command starts and resumes a run).
    Every rank takes the main process's decision: nodes that see different disks must not part ways. A checkpoint is
    complete by `checkpoint_requirements(training)`, the trainer's own rule (less FQLoRA's layers, which the trainer
    checks when it resumes)."""
    decision = _local_resume_point(training)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return decision
    requirements = checkpoint_requirements(training)
    newest = None  # the main process names the folder `True` means: a rank must not pick another newest one
    if decision is True:
        complete = (f for f in checkpoints_newest_first(training.output_dir) if not checkpoint_problems(f, **requirements))
        newest = next((f.name for f in complete), None)
    agreed = [(decision, newest)]
    dist.broadcast_object_list(agreed, src=0)
    decision, newest = agreed[0]
    if decision is True and newest is None:
        raise ValueError(
            f"no complete checkpoint in {training.output_dir} to resume from (the main process found none): start "
            "without resume, or pass --resume_from_checkpoint last to start afresh when there is none."
        )
    if newest is None:
        return decision  # a fresh start, or the folder the user named
    folder = Path(training.output_dir) / newest
    if not folder.is_dir() or checkpoint_problems(folder, **requirements):
        raise ValueError(
            f"rank {dist.get_rank()}: the main process resumes from {newest} in {training.output_dir}, but this "
            "process finds no complete copy of it there: put output_dir on a disk every node reads, or set "
            "save_on_each_node."
        )
    return str(folder)


def _local_resume_point(training) -> str | bool | None:
    value = training.resume_from_checkpoint
    found = checkpoints_newest_first(training.output_dir)
    if value is None or str(value).lower() in ("", "false", "none", "no"):
        if found:
            logger.warning("%s holds %s from an earlier run: this run starts afresh, replacing only the checkpoints "
                           "whose steps it reaches, and until it passes that step --resume_from_checkpoint last would "
                           "resume the earlier run. Use another output_dir to keep the two apart (or pass "
                           "--resume_from_checkpoint last to continue the earlier run).", training.output_dir, found[0].name)
        return None
    if str(value).lower() == "last":
        requirements, torn = checkpoint_requirements(training), {}
        for folder in found:  # newest first: the first complete one decides
            problems = checkpoint_problems(folder, **requirements)
            if not problems:
                return True
            torn[folder] = problems
        if torn:  # killed during its first save
            logger.warning("no complete checkpoint in %s (%s): the run starts afresh.", training.output_dir,
                           "; ".join(f"{folder.name}: {', '.join(p)}" for folder, p in torn.items()))
        else:
            logger.info("no checkpoint in %s yet: the run starts afresh.", training.output_dir)
        return None
    return True if str(value).lower() in ("true", "yes") else value
