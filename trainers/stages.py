"""The paper's curriculum (Tables 1, 2, 9, 10; Section 3.3) in one place: every stage default is read from here."""

from __future__ import annotations

from dataclasses import dataclass, field

COMPRESSION_TASKS = ("reconstruction", "continuation", "summarization", "qa")
STANDARD_TASK = "language_modeling"
TASKS = COMPRESSION_TASKS + (STANDARD_TASK,)
"""Every task name; a task's index here is its `task_ids` value in a collated batch."""

LORA_DEFAULTS = dict(r=64, lora_alpha=16, lora_dropout=0.05)
"""LoRA rank / alpha / dropout shared by all stages (Table 9)."""

FULL_FT_FRACTION = 10 / 28
"""Share of layers FQLoRA fully fine-tunes (Appendix I.1: 10 of Qwen2.5-7B's 28 layers, 23 of 32B's 64)."""


@dataclass(frozen=True)
class StageSpec:
    """One curriculum stage: its task mixture (data side) and its Table 9 optimisation defaults."""

    name: str
    task_weights: dict[str, float]  # share of each compression task among compression examples
    compression_ratio: float  # share of compression examples; the rest is plain full-context LM
    bridge_chunks: tuple[int, int]  # inclusive range of uncompressed 16-token bridge chunks in continuation
    template: str  # prompt template of modeling_memcomp.prompting: "plain" (flat, both CPT phases) or "chat" (SFT)
    learning_rate: float  # fully fine-tuned parameters (FQLoRA full layers, embeddings, LM head)
    projection_learning_rate: float | None  # memory projection; None freezes it
    global_batch_size: int
    warmup_ratio: float
    min_lr_ratio: float  # cosine floor as a fraction of the peak LR
    max_length: int  # decoder sequence length
    lora_learning_rate: float = 1e-4
    weight_decay: float = 0.1  # full fine-tuning
    lora_weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    extra: dict = field(default_factory=dict)

    def training_defaults(self) -> dict:
        """Keyword arguments of `MemCompTrainingArguments` for this stage (before any user override)."""
        return dict(
            stage=self.name,
            learning_rate=self.learning_rate,
            projection_learning_rate=self.projection_learning_rate or 0.0,
            freeze_projection=self.projection_learning_rate is None,
            lora_learning_rate=self.lora_learning_rate,
            weight_decay=self.weight_decay,
            lora_weight_decay=self.lora_weight_decay,
            max_grad_norm=self.max_grad_norm,
            warmup_steps=self.warmup_ratio,  # a float below 1 is a ratio of the total steps
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": self.min_lr_ratio},
            global_batch_size=self.global_batch_size,
        )


STAGES: dict[str, StageSpec] = {
    "cpt1": StageSpec(
        name="cpt1",
        task_weights={"reconstruction": 0.5, "continuation": 0.5},
        compression_ratio=0.7,
        bridge_chunks=(1, 1),
        template="plain",
        learning_rate=5e-5,
        projection_learning_rate=3e-4,
        global_batch_size=256,  # 512 for 32B on 8 GPUs
        warmup_ratio=0.04,
        min_lr_ratio=0.10,
        max_length=2048,
    ),
    "cpt2": StageSpec(
        name="cpt2",
        task_weights={"continuation": 0.40, "qa": 0.275, "summarization": 0.175, "reconstruction": 0.15},
        compression_ratio=0.6,
        bridge_chunks=(0, 4),
        template="plain",  # Figure 11: continual pretraining, both phases, is a flat sequence
        learning_rate=5e-5,
        projection_learning_rate=2e-4,
        global_batch_size=128,
        warmup_ratio=0.03,
        min_lr_ratio=0.02,
        max_length=2048,
    ),
    "sft": StageSpec(
        name="sft",
        task_weights={"qa": 1.0},
        compression_ratio=1.0,
        bridge_chunks=(0, 0),
        template="chat",
        learning_rate=2e-5,
        projection_learning_rate=None,
        global_batch_size=64,
        warmup_ratio=0.03,
        min_lr_ratio=0.10,
        max_length=4096,
    ),
}


def get_stage(name: str) -> StageSpec:
    """The `StageSpec` called `name`, with an error listing the valid names."""
    if name not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {name!r}.")
    return STAGES[name]


@dataclass(frozen=True)
class RLSpec:
    """The RL stage: DAPO on the decoder (Table 10; Section 3.3.3), batches counted as VERL counts them."""

    learning_rate: float = 1e-6
    lr_warmup_rollouts: int = 10  # rollout batches
    rollout_batch_prompts: int = 128
    mini_batch_prompts: int = 64  # two optimizer steps per rollout batch
    epsilon: float = 0.2
    epsilon_high: float = 0.28  # clip-higher
    beta: float = 0.0  # no KL term, no reference model
    temperature: float = 1.0
    num_generations: int = 16  # 8 for 32B
    max_completion_length: int = 600
    max_prompt_length: int = 1024  # memory slots included
    dynamic_sampling_warmup_rollouts: int = 25
    overlong_buffer: int = 100
    overlong_penalty_factor: float = 0.5
    template: str = "rl"  # adds the \boxed{} answer instruction


RL = RLSpec()
