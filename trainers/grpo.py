"""RL stage: `MemCompGRPOTrainer`, TRL's `GRPOTrainer` run as DAPO on prompts made of precomputed memory + question.

Rows of the training set carry `prompt` (the question), `memory` (its `(k, d)` memory embeddings, made once
by `trainers.precompute` from the SFT checkpoint) and the reference `answer`. Each prompt is built by the
shared `build_prompt` (`rl` template: ChatML + `\\boxed{}` instruction) and the memory fills its `<MEM>`
slots, in rollouts (HF `generate`, or vLLM with prompt embeddings) and in the policy forward alike, so only
the decoder sees gradients; the encoder never runs and `memory_projection` stays frozen.

TRL supplies the rest: GRPO advantages, `loss_type="dapo"` (token-mean), asymmetric clipping, logging.
This subclass adds DAPO's dynamic sampling (all-equal groups dropped and refilled, after a warmup) and the
overlong penalty factor (as a reward, `trainers.rewards.OverlongPenalty`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import RepeatSampler, add_fused_lm_head, ensure_master_addr_port, identity, pad

from modeling_memcomp import MemCompForCausalLM
from modeling_memcomp.prompting import build_prompt, stop_token_ids

from .checkpoints import CompleteCheckpointResume
from .dapo import as_fillers, concat_rollouts, dynamic_sampling_enabled, filter_groups, take_rows
from .distributed import check_launch, fsdp2_unsharded
from .judges import MatchJudge
from .precision import SaveInLoadedDtype, upcast_trainable_weights
from .rewards import JudgeReward, OverlongPenalty
from .stages import RL

logger = logging.getLogger(__name__)

ROLLOUT_BACKENDS = ("hf", "vllm", "auto")


@dataclass
class MemCompGRPOConfig(GRPOConfig):
    """`GRPOConfig` with the paper's DAPO defaults (Table 10) and the memcomp RL options.

    Batches follow VERL, the paper's RL framework: a *rollout batch* of `rollout_batch_prompts` prompts (128) x
    `num_generations` rollouts (16) is generated at once and trained on in mini-batches of `mini_batch_prompts`
    prompts (64), i.e. two optimizer steps per rollout batch, at any world size (`gradient_accumulation_steps` and
    `generation_batch_size` are derived from them). Warm-ups count rollout batches, as VERL's steps do.
    """

    learning_rate: float = field(default=RL.learning_rate, metadata={"help": "Peak learning rate (Table 10)."})
    lr_warmup_rollouts: int | None = field(
        default=RL.lr_warmup_rollouts,
        metadata={"help": "LR warm-up in rollout batches (Table 10's steps of 128 prompts); sets warmup_steps to this "
                  "times the optimizer steps per rollout batch. None keeps warmup_steps as given."},
    )
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "LR schedule after warmup."})
    rollout_batch_prompts: int | None = field(
        default=RL.rollout_batch_prompts,
        metadata={"help": "Prompts per rollout batch (Table 10): generation_batch_size = this x num_generations. "
                  "None leaves generation_batch_size / steps_per_generation to TRL."},
    )
    mini_batch_prompts: int | None = field(
        default=RL.mini_batch_prompts,
        metadata={"help": "Prompts per optimizer step (Table 10's mini-batch) at any world size: "
                  "gradient_accumulation_steps = this x num_generations / (per_device_train_batch_size x world size). "
                  "None keeps gradient_accumulation_steps as given."},
    )
    loss_type: str = field(default="dapo", metadata={"help": "Loss aggregation; 'dapo' is DAPO's token-mean."})
    epsilon: float = field(default=RL.epsilon, metadata={"help": "Lower clip ratio (Table 10)."})
    epsilon_high: float = field(default=RL.epsilon_high, metadata={"help": "Upper clip ratio, DAPO clip-higher (Table 10)."})
    beta: float = field(default=RL.beta, metadata={"help": "KL coefficient (Table 10: none, no reference model)."})
    temperature: float = field(default=RL.temperature, metadata={"help": "Rollout sampling temperature (Table 10)."})
    num_generations: int = field(
        default=RL.num_generations, metadata={"help": "Rollouts per prompt (Table 10: the default for 7B, 8 for 32B)."}
    )
    max_completion_length: int = field(
        default=RL.max_completion_length, metadata={"help": "Maximum response tokens (Table 10)."}
    )
    max_prompt_length: int = field(
        default=RL.max_prompt_length,
        metadata={"help": "Maximum prompt tokens incl. memory slots (Table 10); longer rows are errors."},
    )
    template: str = field(
        default=RL.template, metadata={"help": "Prompt template of build_prompt ('rl' adds the \\boxed{} instruction)."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System prompt; None uses the template's default (the RL one for 'rl')."}
    )
    dynamic_sampling: bool = field(
        default=True, metadata={"help": "DAPO dynamic sampling: train only on prompt groups whose accuracy varies."}
    )
    dynamic_sampling_warmup_rollouts: int = field(
        default=RL.dynamic_sampling_warmup_rollouts,
        metadata={"help": "Rollout batches before dynamic sampling starts (the paper's steps of 128 prompts)."},
    )
    dynamic_sampling_max_tries: int = field(
        default=4,
        metadata={"help": "Safety valve: extra generation rounds per rollout batch to collect varied groups; when spent, "
                  "the step trains on the groups it has (none: the optimizer step is skipped), logged."},
    )
    dynamic_sampling_metric: str | None = field(
        default=None, metadata={"help": "Reward function filtered on (its __name__); None = the first ('judge': accuracy)."}
    )
    overlong_buffer: int = field(
        default=RL.overlong_buffer, metadata={"help": "Soft overlong punishment buffer, tokens (Table 10)."}
    )
    overlong_penalty_factor: float = field(
        default=RL.overlong_penalty_factor,
        metadata={"help": "Overlong penalty factor (Table 10); 0 disables the penalty reward."},
    )
    rollout_backend: str = field(
        default="hf", metadata={"help": "Rollouts by 'hf' generate, 'vllm' (prompt embeddings) or 'auto' (vllm if installed)."}
    )
    vllm_decoder_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Extra vllm.LLM kwargs for the vLLM rollout engine (JSON string from the CLI)."}
    )
    rank_trace_dir: str | None = field(
        default=None,
        metadata={"help": "Write each rank's dynamic-sampling decisions (kept prompt groups per round) here (multi-rank checks)."},
    )

    def __post_init__(self):
        if self.rollout_backend not in ROLLOUT_BACKENDS:
            raise ValueError(f"rollout_backend must be one of {ROLLOUT_BACKENDS}, got {self.rollout_backend!r}.")
        if self.use_vllm:
            raise ValueError(
                "use_vllm=True would make TRL send token ids to vLLM, losing the memory: set rollout_backend='vllm' "
                "(prompt embeddings) instead."
            )
        if self.dynamic_sampling_max_tries < 0:
            raise ValueError(f"dynamic_sampling_max_tries must be >= 0, got {self.dynamic_sampling_max_tries}.")
        if self.beta != 0:
            raise ValueError(
                f"beta={self.beta}: a KL term is not supported here (the paper's DAPO has none, Table 10), and TRL's "
                "reference model, reloaded whole from the checkpoint path, cannot score memory prompts. Set beta=0."
            )
        if self.overlong_penalty_factor < 0:
            raise ValueError(f"overlong_penalty_factor must be >= 0 (0 disables the penalty), got "
                             f"{self.overlong_penalty_factor}.")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"epsilon_high={self.epsilon_high} is below epsilon={self.epsilon}: DAPO's clip-higher "
                             "needs epsilon_high >= epsilon (Table 10: 0.28 and 0.2).")
        if isinstance(self.vllm_decoder_kwargs, str):
            self.vllm_decoder_kwargs = json.loads(self.vllm_decoder_kwargs)
        self._derive_batches(int(os.environ.get("WORLD_SIZE", "1")))
        super().__post_init__()
        if self.lr_warmup_rollouts is not None:
            warmup = self.lr_warmup_rollouts * self.optimizer_steps_per_rollout
            if self.warmup_steps not in (0, warmup):
                raise ValueError(f"warmup_steps={self.warmup_steps} conflicts with lr_warmup_rollouts="
                                 f"{self.lr_warmup_rollouts} ({warmup} optimizer steps): set lr_warmup_rollouts=None to "
                                 "give warmup_steps yourself.")
            self.warmup_steps = warmup
        per_rollout = self.optimizer_steps_per_rollout
        if self.save_strategy == "steps" and 0 < self.save_steps < 1:
            raise ValueError(
                f"save_steps={self.save_steps} (a fraction of max_steps) is not supported here: checkpoints must fall "
                f"between rollout batches. Give save_steps in optimizer steps, a multiple of {per_rollout}."
            )
        if self.save_strategy == "steps" and self.save_steps % per_rollout:
            raise ValueError(
                f"save_steps={self.save_steps} would save checkpoints inside a rollout batch ({per_rollout} optimizer "
                "steps each), whose rollouts a checkpoint does not hold: a run resumed there regenerates them and trains "
                f"on other rollouts than the uninterrupted run. Use a multiple of {per_rollout}."
            )
        if self.save_strategy == "steps" and self.max_steps > 0 and self.max_steps % per_rollout:
            raise ValueError(
                f"max_steps={self.max_steps} would end training, and write its last checkpoint, inside a rollout batch "
                f"({per_rollout} optimizer steps each): the rest of that batch's rollouts would be generated and never "
                f"trained on, and a run resumed from that checkpoint with more steps would not train on them either. Use "
                f"a multiple of {per_rollout}."
            )
        per_process = self.per_device_train_batch_size * self.steps_per_generation
        if self.dynamic_sampling and per_process % self.num_generations:
            raise ValueError(
                f"dynamic sampling keeps or drops whole prompt groups on each process, so the per-process generation "
                f"batch (per_device_train_batch_size x steps_per_generation = {per_process}) must be a multiple of "
                f"num_generations ({self.num_generations}); adjust per_device_train_batch_size."
            )

    def _derive_batches(self, world_size: int) -> None:
        accumulation, generation = derive_batches(
            self.per_device_train_batch_size, self.num_generations, self.rollout_batch_prompts, self.mini_batch_prompts,
            world_size,
        )
        per_step = self.per_device_train_batch_size * world_size
        # Values equal to the derived ones are accepted: dataclasses.replace() passes them back in.
        if generation is not None:
            derived = {"generation_batch_size": generation, "steps_per_generation": generation // per_step}
            for name, value in derived.items():
                if getattr(self, name) not in (None, value):
                    raise ValueError(f"{name}={getattr(self, name)} conflicts with rollout_batch_prompts="
                                     f"{self.rollout_batch_prompts} ({value} at this world size): set "
                                     f"rollout_batch_prompts=None to give {name} yourself.")
            self.steps_per_generation = None  # TRL derives it from generation_batch_size
        elif self.steps_per_generation is not None and self.generation_batch_size == self.steps_per_generation * per_step:
            self.generation_batch_size = None  # TRL refuses both, even when they agree
        if accumulation is not None and self.gradient_accumulation_steps not in (1, accumulation):
            raise ValueError(f"gradient_accumulation_steps={self.gradient_accumulation_steps} conflicts with "
                             f"mini_batch_prompts={self.mini_batch_prompts} ({accumulation} at this world size): set "
                             "mini_batch_prompts=None to give gradient_accumulation_steps yourself.")
        self.gradient_accumulation_steps = accumulation or self.gradient_accumulation_steps
        self.generation_batch_size = generation or self.generation_batch_size

    @property
    def optimizer_steps_per_rollout(self) -> int:
        """Optimizer steps trained on one rollout batch (Table 10: 128 / 64 = 2)."""
        return max(1, self.num_iterations * self.steps_per_generation // self.gradient_accumulation_steps)


def derive_batches(
    per_device_batch_size: int, num_generations: int, rollout_prompts: int | None, mini_batch_prompts: int | None,
    world_size: int,
) -> tuple[int | None, int | None]:
    """(gradient_accumulation_steps, generation_batch_size) giving `mini_batch_prompts` prompts per optimizer step and
    `rollout_prompts` per rollout batch at this world size (None where the corresponding setting is None)."""
    per_step = per_device_batch_size * world_size
    accumulation = generation = None
    if mini_batch_prompts is not None:
        completions = mini_batch_prompts * num_generations
        if completions % per_step:
            raise ValueError(
                f"mini_batch_prompts x num_generations ({completions} completions per optimizer step) is not a multiple "
                f"of per_device_train_batch_size x world size ({per_step}); change per_device_train_batch_size."
            )
        accumulation = completions // per_step
    if rollout_prompts is not None:
        if mini_batch_prompts is not None and rollout_prompts % mini_batch_prompts:
            raise ValueError(
                f"rollout_batch_prompts ({rollout_prompts}) must be a multiple of mini_batch_prompts "
                f"({mini_batch_prompts}): a rollout batch trains in whole mini-batches."
            )
        generation = rollout_prompts * num_generations
    return accumulation, generation


class MemCompGRPOTrainer(CompleteCheckpointResume, SaveInLoadedDtype, GRPOTrainer):
    """DAPO on compressed prompts: a `GRPOTrainer` whose prompts are memory embeddings + question.

    Args:
        model: a `MemCompForCausalLM` (the SFT checkpoint) or its path.
        reward_funcs: TRL reward functions; default `JudgeReward(judge)`. The overlong penalty is appended
            when `args.overlong_penalty_factor > 0`.
        judge: judge for the default reward (`LLMJudge` or `MatchJudge`; default `MatchJudge()`).
        train_dataset: rows with `prompt` (question text), `memory` (`(k, d)` floats) and `answer`, as written
            by `trainers.precompute.precompute_memory`.
    """

    _tag_names = ["trl", "grpo", "dapo", "memcomp"]

    def __init__(
        self,
        model: MemCompForCausalLM | str,
        reward_funcs=None,
        args: MemCompGRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        judge=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if isinstance(model, str):
            model = MemCompForCausalLM.from_pretrained(model)
        if not isinstance(model, MemCompForCausalLM):
            raise TypeError(
                f"model must be a MemCompForCausalLM (the SFT checkpoint) or its path, got {type(model).__name__}."
            )
        args = args or MemCompGRPOConfig(output_dir="memcomp-rl")
        if not isinstance(args, MemCompGRPOConfig):
            raise TypeError(f"args must be a MemCompGRPOConfig, got {type(args).__name__}.")
        if reward_funcs is not None and judge is not None:
            raise ValueError("pass either judge= (for the default judge reward) or reward_funcs=, not both.")
        if reward_funcs is None:
            reward_funcs = [JudgeReward(judge or MatchJudge())]
        reward_funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if args.overlong_penalty_factor > 0:
            penalty = OverlongPenalty(args.max_completion_length, args.overlong_buffer, args.overlong_penalty_factor)
            reward_funcs.append(penalty)
        for dataset in (train_dataset, eval_dataset):
            _check_columns(dataset)
        # Only the decoder learns. The encoder keeps the SFT weights as a frozen copy (it never runs here: memories
        # are precomputed), so the saved RL checkpoint compresses exactly as the SFT one did (paper, Section 3.3.3).
        model.split_encoder()
        for parameter in [*model.memory_projection.parameters(), *model.pooling.parameters()]:
            parameter.requires_grad_(False)
        model.config.prompt_template, model.config.system_prompt = args.template, args.system_prompt
        upcast_trainable_weights(model, args)
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=_with_torch_memory(train_dataset),
            eval_dataset=_with_torch_memory(eval_dataset),
            processing_class=processing_class or model.tokenizer,
            callbacks=[*(callbacks or []), SkipEmptySteps(self)],
            optimizers=optimizers,
        )
        check_launch(self.accelerator.distributed_type.value)  # an engine accelerate dropped is an error, not DDP
        # TRL patches the fused log-prob head onto the model it is given; for memcomp it belongs on the inner LM
        # (MemCompForCausalLM.forward fills the memory slots, then passes `fused_lm_head` through).
        vars(model).pop("forward", None)
        add_fused_lm_head(
            model.language_model,
            temperature=self.temperature,
            cast_lm_head_to_fp32=args.cast_lm_head_to_fp32,
            outputs=("log_probs", "entropy"),
        )
        start, end, mem = model.config.memory_token_ids
        self.generation_config.suppress_tokens = [start, end, mem]
        self.generation_kwargs["suppress_tokens"] = [start, end, mem]
        for token in stop_token_ids(self._tokenizer):
            if token not in self.eos_token_ids:
                self.eos_token_ids.append(token)
        self.generation_config.eos_token_id = list(self.eos_token_ids)
        self.generation_kwargs["eos_token_id"] = list(self.eos_token_ids)
        self._memory: torch.Tensor | None = None  # (B, slots, d) for the rows being generated / scored
        self._memory_lengths: list[int] = []
        self._last_rewards_per_func: torch.Tensor | None = None
        self._refill_iterator = None
        self._refill_epoch, self._refill_drawn, self._refill_skip = -1, 0, 0  # saved with each checkpoint
        self._vllm = None
        self._vllm_step = -1
        self._step_items = 0.0  # completion tokens of the current optimizer step on this process
        if self.args.dynamic_sampling:
            self._filter_column()  # a misspelt dynamic_sampling_metric fails now, not after the warm-up rollouts
        if self.args.rollout_backend != "hf":
            self._vllm = self._start_vllm(required=self.args.rollout_backend == "vllm")

    # ------------------------------------------------------------------ memory plumbing
    @contextlib.contextmanager
    def _using_memory(self, memory: torch.Tensor, lengths: list[int] | None = None):
        """Make `memory` the rows' memory for the prompt building, generation and forwards inside the block."""
        previous = (self._memory, self._memory_lengths)
        self._memory = memory
        if lengths is not None:
            self._memory_lengths = lengths
        try:
            yield
        finally:
            self._memory, self._memory_lengths = previous

    def _batch_memory(self, inputs: list[dict]) -> tuple[torch.Tensor, list[int]]:
        rows = [torch.as_tensor(x["memory"]) for x in inputs]
        lengths = [len(row) for row in rows]
        hidden = self.model.config.text_config.hidden_size
        if any(row.ndim != 2 or row.shape[1] != hidden for row in rows):
            raise ValueError(
                f"each row's memory must be (num_chunks, {hidden}) for this model; re-run "
                "examples/precompute_memory.py with this model's SFT checkpoint."
            )
        memory = torch.zeros(len(rows), max(lengths), hidden, dtype=self.model.dtype)
        for i, row in enumerate(rows):
            memory[i, : len(row)] = row.to(memory.dtype)
        return memory.to(self.accelerator.device), lengths

    def _tokenize_prompts(self, prompts: list):
        """Prompt ids from the shared builder: `<MEM>` slots for each row's memory, then the question."""
        if len(prompts) != len(self._memory_lengths):
            raise RuntimeError("prompts and memories are out of step; prompts must come with their memory rows.")
        unwrapped = self.accelerator.unwrap_model(self.model)
        prompt_ids = []
        for question, slots in zip(prompts, self._memory_lengths):
            if not isinstance(question, str):
                raise TypeError("the `prompt` column must hold the question as a string (the template is added here).")
            ids = build_prompt(
                self._tokenizer, unwrapped.config, slots, question, template=self.args.template,
                system_prompt=self.args.system_prompt,
            ).input_ids
            if len(ids) > self.args.max_prompt_length:
                raise ValueError(
                    f"a prompt needs {len(ids)} tokens ({slots} memory slots) but max_prompt_length is "
                    f"{self.args.max_prompt_length}; drop such rows in precompute_memory (max_prompt_length=) "
                    "or raise it."
                )
            prompt_ids.append(ids)
        return prompt_ids, None, {}

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """Rollouts from memory + prompt ids: vLLM with prompt embeddings when started, else HF `generate`."""
        if self._vllm is not None:
            return self._generate_vllm(prompt_ids), None
        device = self.accelerator.device
        tensors = [torch.tensor(ids) for ids in prompt_ids]
        input_ids = pad(tensors, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        attention_mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left").to(device)
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
            self.accelerator.autocast(),  # weights held in float32 generate in the training precision
        ):
            output = unwrapped.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                memory_embeds=self._memory,
                generation_config=self.generation_config,
            )
        completions = output[:, input_ids.shape[1] :].cpu()
        stops = torch.tensor(self.eos_token_ids)
        result = []
        for row in completions:
            hits = torch.isin(row, stops).nonzero()
            result.append(row[: int(hits[0]) + 1 if len(hits) else len(row)].tolist())
        return result, None

    # ------------------------------------------------------------------ vLLM rollouts
    def _start_vllm(self, required: bool):
        try:
            from modeling_memcomp.vllm_backend import VLLMDecoder, require_vllm

            require_vllm()
        except ImportError as error:
            if required:
                raise ImportError(f"rollout_backend='vllm' needs vLLM: {error}") from error
            logger.warning("vLLM is not available (%s); rollouts use HF generate.", error)
            return None
        if not torch.cuda.is_available() and not required:
            logger.warning("no CUDA GPU: rollouts use HF generate (set rollout_backend='vllm' to force vLLM on CPU).")
            return None
        # In-process engine per rank, as TRL's colocate mode: weights can then be pushed straight into it.
        os.environ.update(
            RANK=str(self.accelerator.process_index),
            LOCAL_RANK=str(self.accelerator.local_process_index),
            WORLD_SIZE=str(self.accelerator.num_processes),
        )
        ensure_master_addr_port()
        settings = dict(
            gpu_memory_utilization=self.args.vllm_gpu_memory_utilization,
            max_model_len=self.args.max_prompt_length + self.args.max_completion_length,
            distributed_executor_backend="external_launcher",
            seed=self.accelerator.process_index,
            max_num_batched_tokens=4096,
        )
        settings.update(self.args.vllm_decoder_kwargs or {})
        self._vllm_export = tempfile.TemporaryDirectory(prefix="memcomp-vllm-")  # lives as long as the trainer
        dtype = None if "dtype" in settings else rollout_dtype(self.args)  # an explicit vLLM dtype wins
        folder = export_rollout_decoder(self.accelerator.unwrap_model(self.model), self._vllm_export.name, dtype)
        return VLLMDecoder(folder, **settings)

    def _decoder_state(self):
        """(name, tensor) of the decoder's full state dict (tied heads included), gathered under ZeRO-3/FSDP."""
        decoder = self.accelerator.unwrap_model(self.model).language_model
        for name, tensor in decoder.state_dict(keep_vars=True).items():
            with self._dist.gather_params([tensor]):
                data = tensor.data
                yield name, data.full_tensor() if hasattr(data, "full_tensor") else data

    def _sync_vllm_weights(self) -> None:
        """Copy the decoder's current weights into the vLLM engine (once per optimizer step)."""
        if self._vllm_step == self.state.global_step:
            return
        runner = self._vllm.llm.llm_engine.model_executor.driver_worker.model_runner
        if hasattr(runner, "reload_weights"):  # vLLM >= 0.11: re-runs the post-load weight processing too
            runner.reload_weights(weights_iterator=self._decoder_state())
        else:
            runner.model.load_weights(self._decoder_state())
        self._vllm.llm.reset_prefix_cache()
        self._vllm_step = self.state.global_step

    def _generate_vllm(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        self._sync_vllm_weights()
        unwrapped = self.accelerator.unwrap_model(self.model)
        device = self._memory.device
        embedding = unwrapped.get_input_embeddings()
        with (  # the prompt embeddings are built outside any forward, where the engines gather parameters
            torch.no_grad(),
            self._dist.gather_params([embedding.weight]),  # ZeRO-3
            self._dist.summon_full_params(self.model_wrapped, recurse=False),  # FSDP1
            fsdp2_unsharded(self.model_wrapped, embedding),
        ):
            embeds = [
                unwrapped.embed_inputs(torch.tensor([ids], device=device), self._memory[i : i + 1, :slots])[0].cpu()
                for i, (ids, slots) in enumerate(zip(prompt_ids, self._memory_lengths))
            ]
        params = self._vllm.sampling_params(
            do_sample=self.generation_kwargs.get("do_sample", True),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k or -1,
            max_new_tokens=self.max_completion_length,
            repetition_penalty=self.repetition_penalty,
        )
        return self._vllm.generate(embeds, params)

    # ------------------------------------------------------------------ forwards
    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
        compute_aux_loss=False, **unused,
    ):
        """Per-token log-probs (and entropies) of the completion, with each row's memory in its `<MEM>` slots."""
        if self._memory is None or len(self._memory) != len(input_ids):
            raise RuntimeError("the rows' memory is not set for this forward; it must run inside _using_memory().")
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with self.accelerator.autocast():
                outputs = model(
                    input_ids=ids,
                    attention_mask=mask,
                    memory_embeds=self._memory[start : start + batch_size],
                    labels=labels,
                    fused_lm_head=True,
                )
            logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(outputs.entropy[:, -logits_to_keep:])
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def _compute_loss(self, model, inputs):
        if self.model.training:
            self._step_items += float(inputs["completion_mask"].sum())
        with self._using_memory(inputs["memory_embeds"]):
            return super()._compute_loss(model, inputs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        judged = [i for i, func in enumerate(self.reward_funcs) if isinstance(func, JudgeReward)]
        rewards, failed = unscore_failed_groups(rewards, judged, group)
        self._metrics[mode]["judge/failed_groups"].append(failed)
        self._last_rewards_per_func = rewards
        return rewards

    # ------------------------------------------------------------------ rollouts + dynamic sampling
    def _score(self, inputs: list[dict]) -> dict:
        """One TRL rollout-and-score round for `inputs`, carrying the rows' memory along."""
        memory, lengths = self._batch_memory(inputs)
        with self._using_memory(memory, lengths):
            output = super()._generate_and_score_completions(inputs)
        output["memory_embeds"] = memory
        return output

    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        if not (training and self.args.dynamic_sampling):
            return self._score(inputs)
        rollouts_done = self.state.global_step // self.args.optimizer_steps_per_rollout
        if not dynamic_sampling_enabled(rollouts_done, self.args.dynamic_sampling_warmup_rollouts):
            self._metrics["train"]["dynamic_sampling/active"].append(0.0)
            return self._score(inputs)
        return self._dynamic_sampling(inputs)

    def _filter_column(self) -> int:
        names = self.reward_func_names
        metric = self.args.dynamic_sampling_metric or names[0]
        if metric not in names:
            raise ValueError(f"dynamic_sampling_metric={metric!r} is not a reward function; choose one of {names}.")
        return names.index(metric)

    def _dynamic_sampling(self, inputs: list[dict]) -> dict:
        """DAPO dynamic sampling (VERL `filter_groups`): keep generating until every process holds `len(inputs)` rows of
        prompt groups whose accuracy reward varies; only those rows train.

        Every process runs the same number of rounds (TRL gathers rewards across processes inside each, so every
        process takes the same keep/drop decision for every group). `dynamic_sampling_max_tries` extra rounds are a
        safety valve: when they are spent, the rest of the batch is filler rows with no completion tokens (zero loss,
        not counted in `num_items_in_batch`), and an optimizer step left with no tokens at all is skipped.
        """
        target, group = len(inputs), self.num_generations
        column = self._filter_column()
        kept, batch, shape_source = [], inputs, None
        seen = num_kept = 0
        for attempt in range(self.args.dynamic_sampling_max_tries + 1):
            output = self._score(batch)
            shape_source = shape_source or output
            rewards = self._last_rewards_per_func[:, column].cpu()
            keep_groups = set(filter_groups(rewards, group))
            self._trace_decision(attempt, sorted(keep_groups), len(rewards) // group)
            first = self.accelerator.process_index * len(batch)  # this process's rows in the gathered reward table
            kept.append(take_rows(output, [i for i in range(len(batch)) if (first + i) // group in keep_groups]))
            seen += len(rewards) // group
            num_kept += len(keep_groups)
            have = sum(len(b["advantages"]) for b in kept)
            done = torch.tensor(float(have >= target), device=self.accelerator.device)
            if bool(self.accelerator.gather(done).min() > 0) or attempt == self.args.dynamic_sampling_max_tries:
                break
            batch = self._next_refill_batch(len(inputs))
        parts = [b for b in kept if len(b["advantages"])]
        rows = take_rows(concat_rollouts(parts, self._pad_values()), range(min(have, target))) if parts else None
        if have < target:
            fillers = as_fillers(take_rows(shape_source, range(target - have)))
            rows = concat_rollouts([p for p in (rows, fillers) if p is not None], self._pad_values())
            logger.warning(
                "dynamic sampling: after %d rounds only %d of %d rows come from groups with varied accuracy; the rest are "
                "fillers that do not train (raise dynamic_sampling_max_tries, or the data is too easy or too hard).",
                attempt + 1, have, target,
            )
        mask = rows["completion_mask"] * rows.get("tool_mask", 1)
        rows["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        filler_groups = self.accelerator.gather(torch.tensor(float(max(target - have, 0) // group), device=self.accelerator.device))
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/active"].append(1.0)
        metrics["dynamic_sampling/rounds"].append(float(attempt + 1))
        metrics["dynamic_sampling/kept_groups"].append(float(num_kept))
        metrics["dynamic_sampling/dropped_groups"].append(float(seen - num_kept))
        metrics["dynamic_sampling/filtered_ratio"].append((seen - num_kept) / seen)
        metrics["dynamic_sampling/filler_groups"].append(float(filler_groups.sum()))
        metrics["dynamic_sampling/limit_hit"].append(float(filler_groups.sum() > 0))
        metrics["dynamic_sampling/nothing_to_train"].append(float(rows["num_items_in_batch"] == 0))
        return rows

    def _trace_decision(self, attempt: int, kept: list[int], groups: int) -> None:
        """Append this rank's keep decision (global group indices) to `rank_trace_dir/rank<i>.jsonl`."""
        if not self.args.rank_trace_dir:
            return
        os.makedirs(self.args.rank_trace_dir, exist_ok=True)
        path = os.path.join(self.args.rank_trace_dir, f"rank{self.accelerator.process_index}.jsonl")
        with open(path, "a") as f:
            f.write(json.dumps({"step": self.state.global_step, "round": attempt, "kept": kept, "groups": groups,
                                "world_size": self.accelerator.num_processes}) + "\n")

    def _pad_values(self) -> dict:
        pad_id = self._tokenizer.pad_token_id
        return {"prompt_ids": pad_id, "completion_ids": pad_id}

    def _next_refill_batch(self, size: int) -> list[dict]:
        """`size` further rows (`size / num_generations` fresh prompts, each repeated) from a private sampler."""
        if size % self.num_generations:
            raise ValueError(
                f"dynamic sampling refills whole prompt groups, so the per-process generation batch ({size}) must be "
                f"a multiple of num_generations ({self.num_generations}); adjust per_device_train_batch_size."
            )
        while True:
            if self._refill_iterator is None:
                self._refill_epoch += 1
                sampler = RepeatSampler(
                    self.train_dataset,
                    mini_repeat_count=self.num_generations,
                    batch_size=size // self.num_generations,
                    shuffle=True,
                    seed=self.args.seed + 1 + self.accelerator.process_index + 1000 * self._refill_epoch,
                )
                loader = DataLoader(
                    self.train_dataset, batch_size=size, sampler=sampler, collate_fn=identity, drop_last=True
                )
                self._refill_iterator = iter(loader)
                self._refill_drawn, skip, self._refill_skip = 0, self._refill_skip, 0
                for _ in range(skip):  # a resumed run goes on where the checkpointed one was in this epoch
                    next(self._refill_iterator, None)
                    self._refill_drawn += 1
            try:
                batch = next(self._refill_iterator)
            except StopIteration:
                if self._refill_drawn == 0:
                    raise ValueError(f"the training set has fewer than {size // self.num_generations} prompts: "
                                     "dynamic sampling cannot draw a refill batch from it.") from None
                self._refill_iterator = None
                continue
            self._refill_drawn += 1
            return batch

    def _refill_state_file(self, folder: str) -> str:
        return os.path.join(folder, f"dynamic_sampling_refill_{self.accelerator.process_index}.json")

    def _save_rng_state(self, output_dir: str) -> None:
        """Trainer's RNG states, and where the refill sampler is, so a resumed run draws the refills it would have."""
        super()._save_rng_state(output_dir)
        with open(self._refill_state_file(output_dir), "w") as f:
            json.dump({"epoch": self._refill_epoch, "drawn": self._refill_drawn}, f)

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)
        path = self._refill_state_file(checkpoint) if checkpoint else ""
        if os.path.isfile(path):  # absent from checkpoints older than this record: the refills start afresh
            with open(path) as f:
                state = json.load(f)
            if state["epoch"] >= 0:
                self._refill_iterator = None
                self._refill_epoch, self._refill_skip = state["epoch"] - 1, state["drawn"]


class SkipEmptySteps(TrainerCallback):
    """Skip an optimizer step that has no completion tokens on any process (dynamic sampling found nothing to train on).

    Its gradient is zero already, but AdamW would still move the weights by its momentum and weight decay and advance its
    moments and step count: the gradients are dropped (`None`: AdamW passes over the parameter, its state untouched), and
    the learning rate is 0 for that step. The LR schedule still advances. Logged as `dynamic_sampling/skipped_steps`.
    Not under DeepSpeed: its engine steps inside the last micro-batch's backward, before this callback runs.
    """

    def __init__(self, trainer: "MemCompGRPOTrainer"):
        self.trainer, self._saved = trainer, None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.is_deepspeed_enabled and args.dynamic_sampling:
            logger.warning(
                "DeepSpeed steps its optimizer inside the last micro-batch's backward, so an optimizer step that dynamic "
                "sampling leaves without tokens (dynamic_sampling/skipped_steps = 1) still runs AdamW: zero gradient, "
                "but momentum and weight decay move the weights. Use FSDP or DDP to skip such steps."
            )

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        trainer = self.trainer
        items = torch.tensor(trainer._step_items, device=trainer.accelerator.device)
        trainer._step_items = 0.0
        empty = bool(trainer.accelerator.gather(items).sum() == 0)
        trainer._metrics["train"]["dynamic_sampling/skipped_steps"].append(float(empty))
        if empty and optimizer is not None:
            trainer.model.zero_grad(set_to_none=True)
            self._saved = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = 0.0

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self._saved is not None and optimizer is not None:
            for group, lr in zip(optimizer.param_groups, self._saved):
                group["lr"] = lr
        self._saved = None


def unscore_failed_groups(rewards: torch.Tensor, judged: list[int], group: int) -> tuple[torch.Tensor, float]:
    """`rewards` (rows x reward functions) with every reward of each prompt group holding a failed judgement (NaN in a
    `judged` column) set to NaN, so TRL gives the group zero advantage; and how many groups that was."""
    if not judged:
        return rewards, 0.0
    failed = torch.isnan(rewards[:, judged]).any(dim=1).view(-1, group).any(dim=1)
    rewards = rewards.clone()
    rewards[failed.repeat_interleave(group)] = torch.nan
    return rewards, float(failed.sum())


def rollout_dtype(args) -> torch.dtype | None:
    """The dtype rollouts run in: the training precision (None: the weights' own)."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None


def export_rollout_decoder(model: MemCompForCausalLM, folder: str, dtype: torch.dtype | None = None):
    """`export_decoder` with the decoder's weights written in `dtype` (its config says so, and vLLM runs in it); the
    model's own weights, float32 masters included, are unchanged after."""
    from modeling_memcomp.vllm_backend import export_decoder

    decoder = model.language_model
    cast = [p for p in decoder.parameters() if dtype is not None and p.is_floating_point() and p.dtype != dtype]
    held = [p.data for p in cast]
    try:
        for parameter in cast:
            parameter.data = parameter.data.to("cpu", dtype)  # no GPU memory taken before vLLM sizes its cache
        return export_decoder(model, folder)
    finally:
        for parameter, data in zip(cast, held):
            parameter.data = data


def _check_columns(dataset) -> None:
    if dataset is None:
        return
    datasets = dataset.values() if isinstance(dataset, dict) else [dataset]
    for part in datasets:
        missing = {"prompt", "memory"} - set(part.column_names or [])
        if missing:
            raise ValueError(
                f"the RL dataset lacks the columns {sorted(missing)}: build it with examples/precompute_memory.py "
                "(rows of prompt = question, memory = (k, d) embeddings, answer)."
            )
        if len(part) == 0:  # training would take no step and save the SFT weights as an "RL checkpoint"
            raise ValueError("the RL dataset has no rows: examples/precompute_memory.py drops rows whose prompt exceeds "
                             "--max_prompt_length (its log says how many); raise it or give other rows.")


def _with_torch_memory(dataset):
    """Serve the `memory` column as tensors (other columns unchanged)."""
    if dataset is None:
        return None
    if isinstance(dataset, dict):
        return {name: _with_torch_memory(part) for name, part in dataset.items()}
    return dataset.with_format("torch", columns=["memory"], output_all_columns=True)
