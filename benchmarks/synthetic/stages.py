"""The run's training stages: the LM, CPT-1/CPT-2/SFT through `trainers.run.run_stage`, the full-context baseline and
DAPO, each resuming from its last complete checkpoint."""

from __future__ import annotations

import random

import torch

from trainers.checkpoints import resume_point
from trainers.synthetic import NAME_PATTERN, lexicon_texts, read_jsonl

from .clock import StageClock, record_stage
from .config import MEMCOMP_STAGES, SyntheticRunConfig
from .data import qa_text, write_name_lists


def lr_schedule(steps: int, decay_share: float = 1.0) -> dict:
    """Scheduler arguments: warmup over 5% of the steps, then a cosine to 10% of the peak over the last `decay_share`."""
    if decay_share >= 1:
        return dict(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1})
    return dict(
        lr_scheduler_type="warmup_stable_decay",
        lr_scheduler_kwargs={"num_decay_steps": max(1, round(steps * decay_share)), "min_lr_ratio": 0.1},
    )


def training_args(config: SyntheticRunConfig, stage: str, steps: int, learning_rate: float, **overrides):
    from trainers.trainer import MemCompTrainingArguments

    settings = dict(
        output_dir=str(config.stage_dir(stage)),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        global_batch_size=config.batch_size,
        learning_rate=learning_rate,
        warmup_steps=0.05,
        **lr_schedule(steps),
        weight_decay=0.01,
        train_sampling_strategy="group_by_length",  # batches of similar lengths: little padding
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        seed=config.train_seed,
        data_seed=config.train_seed,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        resume_from_checkpoint="last",  # the newest complete checkpoint, if any (a rerun goes on)
    )
    settings.update(overrides)
    kind = stage.split("_c")[0]
    if kind in MEMCOMP_STAGES:
        return MemCompTrainingArguments.for_stage(kind, **settings)
    return MemCompTrainingArguments(stage=None, **settings)


def train_with_clock(trainer, clock: StageClock, callbacks: tuple = ()) -> float:
    """Train (resuming from the stage's last checkpoint if any); returns the stage's seconds, earlier processes' too.
    The `clock` starts where the stage does, so the time spent building its examples (again on a resume) counts."""
    for callback in (clock, *callbacks):
        trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=resume_point(trainer.args))
    return clock.elapsed()


def examples_dataset(examples: list[dict], seed: int):
    from datasets import Dataset

    from trainers.mixture import EXAMPLE_FEATURES
    from trainers.run import with_lengths

    rows = [{"example_id": i, **e} for i, e in enumerate(e for e in examples if e is not None)]
    random.Random(seed).shuffle(rows)
    return with_lengths(Dataset.from_list(rows, features=EXAMPLE_FEATURES))


def pretrain_lm(config: SyntheticRunConfig) -> None:
    """Plain next-token pretraining of a fresh tiny Qwen2 on episodes (and QA rows as text); saves the base LM."""
    from modeling_memcomp.tiny import build_tiny_memcomp
    from modeling_memcomp.tokenizer_io import load_tokenizer
    from trainers.tasks import TaskBuilder
    from trainers.trainer import MemCompTrainer

    clock = StageClock(config, "lm")
    tokenizer = load_tokenizer(str(config.root / "data" / "tokenizer"))
    model = build_tiny_memcomp(
        tokenizer, chunk_size=config.chunk_size, seed=config.train_seed, hidden_size=config.hidden_size,
        num_layers=config.num_layers, wrap=config.wrap,
    ).train()
    texts = [r["text"] for r in read_jsonl(config.data_file("train", "standard"))]
    if config.lm_qa_text:
        texts += [qa_text(r) for r in read_jsonl(config.data_file("train", "qa"))]
    texts += lexicon_texts(config.lm_lexicon_texts, config.seed)
    builder = TaskBuilder(tokenizer, model.config, max_length=config.max_length)
    dataset = examples_dataset([builder.language_modeling(t) for t in texts], config.train_seed)
    args = training_args(config, "lm", config.lm_steps, config.learning_rate)
    trainer = MemCompTrainer(model=model, args=args, train_dataset=dataset)
    seconds = train_with_clock(trainer, clock)
    model.language_model.save_pretrained(config.stage_dir("lm"))
    tokenizer.save_pretrained(config.stage_dir("lm"))
    record_stage(config, "lm", seconds, trainer)


STAGE_SOURCES = {
    "cpt1": (("document", "document"), ("multidoc", "document"), ("standard", "standard")),
    "cpt2": (("document", "document"), ("multidoc", "document"), ("summary", "summary"), ("qa", "qa"), ("standard", "standard")),
    "sft": (("qa", "qa"),),
}
"""(file, kind) of the corpus files each memcomp stage draws from (kinds of `trainers.data`)."""


def stage_config(config: SyntheticRunConfig, stage: str):
    """The `StageConfig` of a memcomp stage (or a `cpt1_c<C>` curve stage): previous stage (or its `start_from` folder)
    as base, corpus as sources."""
    from trainers.config import DataArguments, ModelArguments, StageConfig
    from trainers.fqlora import FQLoRAConfig

    kind, _, size = stage.partition("_c")
    chunk_size = int(size) if size else config.chunk_size
    previous = {"cpt1": "lm", "cpt2": "cpt1", "sft": "cpt2"}[kind]
    base = config.start_from.get(stage) or str(config.stage_dir(previous))
    steps = config.recon_steps if size else getattr(config, f"{kind}_steps")
    sft = kind == "sft"
    sources = [{"path": config.data_file("train", f), "kind": k} for f, k in STAGE_SOURCES[kind]]
    if kind == "cpt1" and config.cpt1_name_lists:
        sources.append({"path": str(config.name_lists_file), "kind": "document"})
    return StageConfig(
        model=ModelArguments(base=base, chunk_size=chunk_size, wrap=config.wrap, dtype="float32"),
        fqlora=FQLoRAConfig(),
        data=DataArguments(
            sources=sources,
            num_samples=steps * config.batch_size,
            max_length=config.max_length,
            system_prompt=config.system_prompt if sft else None,
            mixture_seed=config.train_seed,
            cache_dir=str(config.root / "cache"),
            task_weights=config.cpt1_task_weights if kind == "cpt1" else None,
            compression_ratio=config.cpt1_compression_ratio if kind == "cpt1" else None,
            emphasis_pattern=NAME_PATTERN if kind == "cpt1" and config.cpt1_name_weight != 1 else None,
        ),
        training=training_args(
            config, stage, steps, config.sft_learning_rate if sft else config.learning_rate,
            **({} if sft else {"projection_learning_rate": config.projection_learning_rate}),
            **lr_schedule(steps, {"cpt1": config.cpt1_lr_decay, "sft": config.sft_lr_decay}.get(kind, 1.0)),
            **({"emphasis_weight": config.cpt1_name_weight, "emphasis_steps": config.cpt1_name_weight_steps}
               if kind == "cpt1" else {}),
        ),
    )


def train_memcomp_stage(config: SyntheticRunConfig, stage: str, callbacks: tuple = ()) -> None:
    """CPT-1, CPT-2, SFT (or a CPT-1 curve stage) through the stage runner every curriculum run uses."""
    from trainers.run import run_stage

    from benchmarks.eval.synthetic import ReconstructionProbe

    clock = StageClock(config, stage)
    callbacks = [clock, *callbacks]
    if stage.startswith("cpt1") and config.cpt1_name_lists:
        write_name_lists(config)
    if stage.startswith("cpt1") and config.probe_steps:
        documents = [r["text"] for r in read_jsonl(config.data_file("heldout", "document"))[: config.probe_documents]]
        callbacks.append(ReconstructionProbe(documents, config.probe_steps, config.batch_size))
    stage_settings = stage_config(config, stage)
    trainer = run_stage(stage_settings, resume_point(stage_settings.training), callbacks=callbacks)
    record_stage(config, stage, clock.elapsed(), trainer)


def baseline_examples(
    tokenizer, model_config, rows: list[dict], max_length: int, query_aware: bool = False
) -> list[dict]:
    """Full-context QA examples: the evaluation's baseline prompt (context as text), loss on the answer only."""
    from benchmarks.eval.protocol import FULL_CONTEXT_SYSTEM_PROMPT
    from benchmarks.eval.systems import full_context_instruction
    from modeling_memcomp.prompting import build_prompt

    examples = []
    for row in rows:
        prompt = build_prompt(
            tokenizer, model_config, 0, full_context_instruction(row["context"], row["question"], query_aware),
            template="chat",
            target=tokenizer(row["answer"], add_special_tokens=False)["input_ids"],
            system_prompt=FULL_CONTEXT_SYSTEM_PROMPT,
        )
        if len(prompt.input_ids) <= max_length:
            examples.append({"task": "qa", "input_ids": prompt.input_ids, "labels": prompt.labels, "chunks": []})
    return examples


def baseline_arguments(config: SyntheticRunConfig):
    """The baseline's training arguments: SFT's learning rate, its own steps and LR decay."""
    steps = config.baseline_steps
    return training_args(
        config, "baseline", steps, config.sft_learning_rate, **lr_schedule(steps, config.baseline_lr_decay)
    )


def train_baseline(config: SyntheticRunConfig, callbacks: tuple = ()) -> None:
    """The full-context baseline: the pretrained base (or its `start_from` model) fine-tuned on the SFT QA rows with
    the context as text."""
    from benchmarks.eval.synthetic import QUERY_AWARE_ATTRIBUTE
    from modeling_memcomp import MemCompForCausalLM
    from trainers.trainer import MemCompTrainer

    clock = StageClock(config, "baseline")
    if "baseline" in config.start_from:  # a trained baseline goes on training (e.g. in another world)
        model = MemCompForCausalLM.from_pretrained(config.start_from["baseline"], dtype=torch.float32).train()
    else:
        model = MemCompForCausalLM.from_base(
            str(config.stage_dir("lm")), chunk_size=config.chunk_size, wrap=config.wrap, dtype=torch.float32
        ).train()
    rows = read_jsonl(config.data_file("train", "qa"))
    examples = baseline_examples(model.tokenizer, model.config, rows, config.max_length, config.baseline_query_aware)
    dataset = examples_dataset(examples, config.train_seed)
    args = baseline_arguments(config)
    trainer = MemCompTrainer(model=model, args=args, train_dataset=dataset)
    seconds = train_with_clock(trainer, clock, callbacks)
    model.config.prompt_template = "chat"
    setattr(model.config, QUERY_AWARE_ATTRIBUTE, config.baseline_query_aware)  # the evaluation prompts the same way
    trainer.save_model()
    record_stage(config, "baseline", seconds, trainer)


def rl_rows(config: SyntheticRunConfig):
    """The RL prompts: `rl_prompts` shuffled training QA rows with `rl_min_documents`..`rl_max_documents` documents."""
    from trainers.precompute import load_rows

    rows = load_rows(config.data_file("train", "qa"))
    most = config.rl_max_documents or config.max_passages
    if config.rl_min_documents > 1 or most < config.max_passages:
        rows = rows.filter(lambda row: config.rl_min_documents <= row["k"] <= most)
    rows = rows.shuffle(seed=config.train_seed)
    return rows.select(range(min(config.rl_prompts, len(rows))))


def rl_arguments(config: SyntheticRunConfig):
    """The RL stage's `MemCompGRPOConfig`: one optimizer step per rollout batch, exact-match answers of <= 3 tokens."""
    from trainers.grpo import MemCompGRPOConfig

    prompts = config.rl_batch_size // config.rl_generations
    return MemCompGRPOConfig(
        output_dir=str(config.stage_dir("rl")),
        template=config.rl_template,
        system_prompt=config.system_prompt,
        num_generations=config.rl_generations,
        temperature=config.rl_temperature,
        per_device_train_batch_size=config.rl_batch_size,
        rollout_batch_prompts=prompts,  # one optimizer step per rollout batch
        mini_batch_prompts=prompts,
        max_completion_length=8,  # answers are at most 3 tokens; the rest is room for the overlong penalty
        overlong_buffer=4,
        max_prompt_length=config.max_length,
        max_steps=config.rl_steps,
        learning_rate=config.rl_learning_rate,
        lr_warmup_rollouts=10,
        dynamic_sampling_warmup_rollouts=0,  # the toy keeps SFT's template: no answer format to learn first
        dynamic_sampling_max_tries=2,
        seed=config.train_seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=5,
        save_strategy="steps",
        save_steps=config.save_steps,  # one optimizer step per rollout batch: any step is a whole-batch boundary
        save_total_limit=1,
        report_to=[],
        disable_tqdm=True,
        resume_from_checkpoint="last",
    )


def train_rl(config: SyntheticRunConfig, callbacks: tuple = ()) -> None:
    """DAPO on the SFT checkpoint: memories precomputed by the SFT encoder, rewards by exact match; saves the RL folder."""
    from modeling_memcomp import MemCompForCausalLM
    from trainers.grpo import MemCompGRPOTrainer
    from trainers.judges import MatchJudge
    from trainers.precompute import precompute_memory

    clock = StageClock(config, "rl")
    model = MemCompForCausalLM.from_pretrained(str(config.stage_dir("sft")), dtype=torch.float32)
    dataset = precompute_memory(
        model.eval(), rl_rows(config), template=config.rl_template, max_prompt_length=config.max_length,
    )
    args = rl_arguments(config)
    trainer = MemCompGRPOTrainer(model.train(), args=args, train_dataset=dataset, judge=MatchJudge(mode="exact"))
    seconds = train_with_clock(trainer, clock, callbacks)
    trainer.save_model(str(config.stage_dir("rl")))
    record_stage(config, "rl", seconds, trainer)
