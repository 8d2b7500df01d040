"""`MemCompTrainer` for CPT and SFT: Table 9 parameter groups, per-task losses, early stopping, frozen projection."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import EarlyStoppingCallback, Trainer, TrainerState, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from modeling_memcomp.prompting import IGNORE_INDEX

from .callbacks import RankTraceCallback, ResumedTokenCount
from .checkpoints import FULL_FT_WEIGHTS, TRAINER_STATE, CompleteCheckpointResume
from .collator import MemCompCollator
from .distributed import check_launch
from .param_groups import parameter_groups, parameter_report
from .precision import SaveInLoadedDtype, upcast_trainable_weights
from .sampling import ResumableLengthGroupedSampler
from .stages import STAGES, TASKS, get_stage

logger = logging.getLogger(__name__)


@dataclass
class MemCompTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the learning rates and switches of the paper's Table 9.

    `learning_rate` / `weight_decay` apply to fully fine-tuned parameters. Build a stage's defaults with
    `MemCompTrainingArguments.for_stage("cpt1", output_dir=...)`.
    """

    stage: str | None = field(default=None, metadata={"help": "Curriculum stage (cpt1, cpt2, sft); informational."})
    projection_learning_rate: float = field(default=3e-4, metadata={"help": "LR of the memory projection (and pooling)."})
    lora_learning_rate: float = field(default=1e-4, metadata={"help": "LR of LoRA adapters."})
    lora_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of LoRA adapters."})
    freeze_projection: bool = field(default=False, metadata={"help": "Freeze the memory projection (SFT)."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without a better eval loss (None: off)."}
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "Examples per optimizer step over all ranks; sets gradient_accumulation_steps (an explicit "
                          "gradient_accumulation_steps other than 1 must agree with it)."},
    )
    rank_trace_dir: str | None = field(
        default=None, metadata={"help": "Write per-rank example ids and gradient checksums here (DDP checks)."}
    )
    emphasis_weight: float = field(
        default=1.0,
        metadata={"help": "Loss weight of target tokens the data marks as emphasized (`emphasis_pattern`); 1: none."},
    )
    emphasis_steps: int = field(
        default=0,
        metadata={"help": "Optimizer steps over which `emphasis_weight` applies, every token weighing 1 after (0: all steps)."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep task/chunks columns for the collator."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluate losses only (no logits gathered)."})
    train_sampling_strategy: str = field(
        default="sequential", metadata={"help": "Sequential: the mixture's seeded order (both kinds per batch)."}
    )

    def __post_init__(self):
        if not self.emphasis_weight > 0:
            raise ValueError(f"emphasis_weight must be > 0, got {self.emphasis_weight}.")
        if self.emphasis_steps < 0:
            raise ValueError(f"emphasis_steps must be >= 0 (0: every step), got {self.emphasis_steps}.")
        if self.global_batch_size is not None:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            per_step = self.per_device_train_batch_size * world
            if self.global_batch_size % per_step:
                raise ValueError(
                    f"global_batch_size={self.global_batch_size} is not a multiple of per_device_train_batch_size "
                    f"({self.per_device_train_batch_size}) x {world} processes; change either."
                )
            derived = self.global_batch_size // per_step
            if self.gradient_accumulation_steps not in (1, derived):  # 1 is the default: it cannot be told from a given 1
                raise ValueError(
                    f"gradient_accumulation_steps={self.gradient_accumulation_steps} and global_batch_size="
                    f"{self.global_batch_size} disagree: {self.global_batch_size} examples per step with "
                    f"per_device_train_batch_size={self.per_device_train_batch_size} on {world} processes takes "
                    f"{derived} accumulation steps. Give only one of the two (the other follows), or make them agree."
                )
            self.gradient_accumulation_steps = derived
        if self.early_stopping_patience is not None:
            self.load_best_model_at_end = True
            self.metric_for_best_model = self.metric_for_best_model or "loss"
            self.greater_is_better = False
        super().__post_init__()

    @classmethod
    def for_stage(cls, stage: str, **overrides) -> "MemCompTrainingArguments":
        """Arguments with the stage's Table 9 defaults (see `trainers.stages`), updated by `overrides`; an explicit
        `gradient_accumulation_steps` without `global_batch_size` replaces the stage's global batch."""
        kwargs = stage_training_defaults(stage, explicit=overrides)
        kwargs.update(overrides)
        return cls(**kwargs)


def stage_training_defaults(stage: str, explicit) -> dict:
    """The stage's Table 9 training defaults, less its global batch size where `explicit` (the names given) holds
    `gradient_accumulation_steps` but not `global_batch_size`: the accumulation given then sets the global batch."""
    defaults = get_stage(stage).training_defaults()
    if "gradient_accumulation_steps" in explicit and "global_batch_size" not in explicit:
        defaults.pop("global_batch_size")
    return defaults


def record_prompt_template(
    model, template: str, system_prompt: str | None = None, keep_system_prompt: bool = False
) -> None:
    """Write how `model` is trained to be prompted into its config (read by `generate`, the CLI, evaluation, the card).

    `keep_system_prompt`: a checkpoint already prompted with `template` keeps its recorded system prompt."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    if config is not None and hasattr(config, "prompt_template"):
        if keep_system_prompt and config.prompt_template == template:
            system_prompt = config.system_prompt
        config.prompt_template, config.system_prompt = template, system_prompt


@contextlib.contextmanager
def full_state_dict_save(trainer, internal_call: bool):
    """Within: a FSDP run set to SHARDED_STATE_DICT saves with FULL_STATE_DICT, so a final `save_model` writes whole
    weights; checkpoints (`internal_call`) keep the sharded type that resuming reads."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if internal_call or plugin is None or "SHARDED_STATE_DICT" not in str(plugin.state_dict_type):
        yield
        return
    kept = plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config
    plugin.state_dict_config = plugin.optim_state_dict_config = None  # set_state_dict_type fills the full ones in
    plugin.set_state_dict_type("FULL_STATE_DICT")  # accelerate's way: train sharded, save the final model full
    try:
        yield
    finally:
        plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config = kept


class MemCompTrainer(CompleteCheckpointResume, SaveInLoadedDtype, Trainer):
    """Trainer for memory-compression tasks: the loss is the token mean over all targets of the batch, and
    the same per-token losses are also averaged per task (logged as `loss_<task>` / `eval_loss_<task>`)."""

    def __init__(self, model=None, args: MemCompTrainingArguments | None = None, data_collator=None, callbacks=None, **kwargs):
        if not isinstance(args, MemCompTrainingArguments):
            raise TypeError("MemCompTrainer needs args=MemCompTrainingArguments(...) (e.g. .for_stage('cpt1', ...)).")
        if data_collator is None and model is not None:
            data_collator = MemCompCollator.for_model(model)
        callbacks = list(callbacks or [])
        if args.early_stopping_patience is not None:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
        if args.freeze_projection and model is not None:
            for name, parameter in model.named_parameters():
                if "memory_projection" in name:
                    parameter.requires_grad_(False)
        if model is not None:
            upcast_trainable_weights(model, args)
            if args.stage in STAGES:  # the stage's prompt format; trainers.run records a config's own template after this
                record_prompt_template(model, get_stage(args.stage).template, keep_system_prompt=True)
        super().__init__(model=model, args=args, data_collator=data_collator, callbacks=callbacks, **kwargs)
        check_launch(self.accelerator.distributed_type.value)
        self._task_totals = {split: torch.zeros(len(TASKS), 2, dtype=torch.float64) for split in ("train", "eval")}
        self._useful_tokens = torch.zeros((), dtype=torch.float64)
        self.resumed_useful_tokens = 0  # the count logged before a resume (ResumedTokenCount)
        self.example_ids_seen: list[int] = []
        self._resume_checkpoint: str | None = None
        self._length_sampler: ResumableLengthGroupedSampler | None = None
        self.parameter_report: str | None = None
        if args.rank_trace_dir:
            self.add_callback(RankTraceCallback(self, args.rank_trace_dir))
        self.add_callback(ResumedTokenCount(self))

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        """AdamW over the Table 9 groups: full fine-tuning, LoRA and projection, each with its LR and decay."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            args = self.args
            groups = parameter_groups(
                opt_model,
                learning_rate=args.learning_rate,
                weight_decay=args.weight_decay,
                lora_learning_rate=args.lora_learning_rate,
                lora_weight_decay=args.lora_weight_decay,
                projection_learning_rate=args.projection_learning_rate,
                decay_names=set(self.get_decay_parameter_names(opt_model)),
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, opt_model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            self.parameter_report = parameter_report(groups)
            if self.is_world_process_zero():
                logger.info("trainable parameters:\n%s", self.parameter_report)
        return self.optimizer

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; under FSDP a final save writes the full weights even when checkpoints are sharded."""
        with full_state_dict_save(self, _internal_call):
            super().save_model(output_dir, _internal_call)

    @contextlib.contextmanager
    def full_parameters(self):
        """Within: every parameter whole on every rank (ZeRO-3 gathers its partitions); a no-op on other engines.
        Every rank must enter it, e.g. around a save that only the main process writes."""
        if not (self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3):
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
            yield

    def _full_ft_model(self):
        """The peft model when it has trainable non-LoRA parameters (FQLoRA) that this trainer checkpoints itself, else
        None. DeepSpeed's checkpoint holds them (it saves every trainable parameter) and restores them itself; FSDP's
        sharded save keeps only the adapters of a peft model, so there the file is still required."""
        from peft import PeftModel

        if self.is_deepspeed_enabled:
            return None
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, PeftModel) and any(p.requires_grad and "lora_" not in n for n, p in model.named_parameters()):
            return model
        return None

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save as Trainer does, plus the fully fine-tuned weights that peft's adapter save leaves out."""
        super()._save(output_dir, state_dict)
        model = self._full_ft_model()
        if model is not None and self.args.should_save:
            from safetensors.torch import save_file

            output_dir = output_dir or self.args.output_dir
            tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
            save_file(tensors, os.path.join(output_dir, FULL_FT_WEIGHTS))

    def _load_full_ft(self, checkpoint: str | None, model=None) -> None:
        """Restore the fully fine-tuned weights; a checkpoint without them raises (they would restart from scratch)."""
        if not checkpoint or self._full_ft_model() is None:
            return
        path = os.path.join(checkpoint, FULL_FT_WEIGHTS)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: without it the fully fine-tuned FQLoRA layers would silently restart from their "
                "initial weights. Restore the file, or resume from an older complete checkpoint "
                "(resume_from_checkpoint=True picks the newest complete one)."
            )
        from safetensors.torch import load_file

        model = model or self.accelerator.unwrap_model(self.model)
        unexpected = model.load_state_dict(load_file(path), strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{path} holds weights this model does not have: {unexpected[:3]}...")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_full_ft(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        self._load_full_ft(self.state.best_model_checkpoint)

    def _checkpoint_requirements(self) -> dict[str, bool]:
        """What a checkpoint of this run must hold to resume it exactly: FQLoRA's full-FT weights too."""
        return {**super()._checkpoint_requirements(), "full_ft": self._full_ft_model() is not None}

    # ------------------------------------------------------------------ data order
    def _get_train_sampler(self, train_dataset=None):
        """Trainer's sampler, with `group_by_length` order kept across a resume (`ResumableLengthGroupedSampler`)."""
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is not LengthGroupedSampler:
            return sampler
        sampler = ResumableLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, generator=sampler.generator)
        if self._resume_checkpoint and not self.args.ignore_data_skip:
            state = TrainerState.load_from_json(os.path.join(self._resume_checkpoint, TRAINER_STATE))
            if not sampler.load(self._resume_checkpoint, self.args.process_index, epoch=int(state.epoch or 0)):
                logger.warning(
                    "%s holds no length-grouped order record (saved by an older version): if it lies past the first "
                    "epoch, the resumed epoch trains on another order than the uninterrupted run.",
                    self._resume_checkpoint,
                )
        self._length_sampler = sampler
        return sampler

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self._length_sampler is not None:
            self._length_sampler.save(output_dir, self.args.process_index)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        task_ids = inputs.pop("task_ids", None)
        example_ids = inputs.pop("example_ids", None)
        labels = inputs.pop("labels")
        emphasis = inputs.pop("emphasis_mask", None)
        if example_ids is not None and model.training:
            self.example_ids_seen.extend(example_ids.tolist())
        if model.training:  # real (non-padding) decoder and encoder tokens, for throughput figures
            tokens = inputs["attention_mask"].sum() + inputs.get("chunk_attention_mask", inputs["attention_mask"][:0]).sum()
            self._useful_tokens = self._useful_tokens + tokens.detach().double()
        outputs = model(**inputs)
        logits = outputs.logits[:, :-1]
        targets = labels[:, 1:].to(logits.device)
        token_loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view_as(targets)
        valid = targets != IGNORE_INDEX
        weighted = token_loss
        emphasized = not self.args.emphasis_steps or self.state.global_step < self.args.emphasis_steps
        if emphasis is not None and self.args.emphasis_weight != 1 and emphasized:
            weights = 1 + (self.args.emphasis_weight - 1) * emphasis[:, 1:].to(token_loss)
            weighted = token_loss * weights  # still divided by the token count: other tokens keep their weight
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            loss = weighted.sum() / valid.sum().clamp(min=1)  # Trainer then scales for gradient accumulation
        else:
            loss = weighted.sum() / num_items_in_batch  # token mean over the whole accumulated global batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        if task_ids is not None:
            self._record_task_losses(token_loss.detach(), valid, task_ids, "train" if model.training else "eval")
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    def _record_task_losses(self, token_loss, valid, task_ids, split):
        per_row = torch.stack([(token_loss * valid).sum(1), valid.sum(1)], dim=1).double()
        totals = self._task_totals[split] = self._task_totals[split].to(per_row.device)  # no host sync per step
        totals.index_add_(0, task_ids.to(per_row.device), per_row)

    def _task_metrics(self, split: str, prefix: str) -> dict[str, float]:
        totals = self._task_totals[split].to(self.accelerator.device)
        totals = self.accelerator.reduce(totals, reduction="sum").cpu()
        self._task_totals[split].zero_()
        return {f"{prefix}loss_{task}": round(float(s / n), 4) for task, (s, n) in zip(TASKS, totals.tolist()) if n > 0}

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add per-task losses: `loss_<task>` to training logs, `eval_loss_<task>` to evaluation metrics."""
        if "loss" in logs:
            logs.update(self._task_metrics("train", ""))
            tokens = self.accelerator.reduce(self._useful_tokens.to(self.accelerator.device), reduction="sum")
            logs["useful_tokens"] = self.resumed_useful_tokens + int(tokens)  # non-padding decoder + encoder tokens so far
        eval_keys = [key for key in logs if key.endswith("_loss") and key != "loss" and not key.startswith("train")]
        if eval_keys:
            prefix = eval_keys[0][: -len("loss")]
            logs.update(self._task_metrics("eval", prefix))
        super().log(logs, *args, **kwargs)
