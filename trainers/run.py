"""Run one curriculum stage from a config file: build the model and the mixture, train, save.

Used by `examples/train_cpt.py` and `examples/train_sft.py` under `accelerate launch`.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import torch

from modeling_memcomp.extras import require_extra

require_extra("train", "training (trainers.run, examples/train_cpt.py, examples/train_sft.py)")  # before the imports below need it

from .checkpoints import resume_point  # noqa: E402
from .config import StageConfig, parse_stage_args  # noqa: E402
from .data import stage_streams  # noqa: E402
from .distributed import process_group_teardown  # noqa: E402
from .fqlora import apply_fqlora, is_deepspeed_zero3_enabled, load_fqlora_model, save_fqlora  # noqa: E402
from .mixture import StageMixture, build_stage_dataset  # noqa: E402
from .precision import final_save_context  # noqa: E402
from .stages import get_stage  # noqa: E402
from .tasks import TaskBuilder  # noqa: E402
from .trainer import MemCompTrainer, record_prompt_template  # noqa: E402

EVAL_SEED_OFFSET = 10_000


def uses_fsdp(training) -> bool:
    """Whether the run is launched under FSDP (`accelerate launch` with an FSDP config, or `--fsdp`)."""
    return bool(getattr(training, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_engine(config: StageConfig) -> None:
    """Refuse FQLoRA under FSDP before anything loads: neither its checkpoints nor its final merged save can hold the
    fully fine-tuned layers there."""
    if config.model.fqlora and uses_fsdp(config.training):
        raise ValueError(
            "FQLoRA does not run under FSDP: FSDP's checkpoints keep only the LoRA adapters of a peft model and the final "
            "merged save needs the whole model on one rank. Use examples/accelerate/deepspeed_zero3.yaml or "
            "multi_gpu.yaml for FQLoRA, or --fqlora false (full fine-tuning) with fsdp.yaml."
        )


def build_model(config: StageConfig):
    """The model to train: tiny random (CPU runs), a base LM to wrap, or the previous stage's checkpoint."""
    from transformers import AutoConfig

    from modeling_memcomp import MemCompConfig, MemCompForCausalLM

    args = config.model
    if args.tiny:
        from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer

        corpus = Path(args.tiny_corpus).read_text().splitlines()
        tokenizer = train_tokenizer(corpus, vocab_size=args.tiny_vocab_size)
        model = build_tiny_memcomp(
            tokenizer, chunk_size=args.chunk_size, seed=config.training.seed, hidden_size=args.tiny_hidden_size,
            num_layers=args.tiny_layers, wrap=args.wrap,
        )
        return apply_fqlora(model, config.fqlora) if args.fqlora else model
    try:
        base_config = AutoConfig.from_pretrained(args.base)
    except OSError as error:
        raise ValueError(f"base {args.base!r} could not be read ({error}); give a model folder or a Hub id.") from None
    if isinstance(base_config, MemCompConfig):
        check_inherited_settings(args, base_config)
    load_kwargs = {"dtype": getattr(torch, args.dtype)}
    if args.attn_implementation:
        load_kwargs["attn_implementation"] = args.attn_implementation
    if args.fqlora:
        if config.fqlora.quantize and torch.cuda.is_available() and not is_deepspeed_zero3_enabled():
            # bitsandbytes quantizes while loading: each rank loads its copy straight onto its own GPU. ZeRO-3 refuses
            # a device_map; there the quantizer loads onto the rank's current GPU by itself.
            load_kwargs["device_map"] = {"": config.training.local_process_index}
        return load_fqlora_model(args.base, config.fqlora, chunk_size=args.chunk_size, wrap=args.wrap, **load_kwargs)
    if isinstance(base_config, MemCompConfig):
        return MemCompForCausalLM.from_pretrained(args.base, **load_kwargs)
    return MemCompForCausalLM.from_base(args.base, chunk_size=args.chunk_size, wrap=args.wrap, **load_kwargs)


def check_inherited_settings(args, base_config) -> None:
    """A stage that continues a memcomp checkpoint keeps its chunk size and wrapping: refuse another one given
    explicitly (it would be ignored without a word)."""
    from dataclasses import fields

    defaults = {f.name: f.default for f in fields(args)}
    for name in ("chunk_size", "wrap"):
        given, kept = getattr(args, name), getattr(base_config, name)
        if given != kept and given != defaults[name]:
            raise ValueError(f"{name}={given!r} is given, but the base {args.base!r} is a memcomp checkpoint with "
                             f"{name}={kept!r}, which the stage keeps: drop {name}, or start from a base LM.")


def _stat(path: str) -> tuple[int, int]:
    """Size and modification time of a local source: an edited file gets a fresh cached mixture."""
    stat = Path(path).stat()
    return stat.st_size, stat.st_mtime_ns


def build_datasets(config: StageConfig, model):
    """Train (and eval) mixtures of the stage, materialised with `datasets` (rank 0 first, the others reuse)."""
    data = config.data
    stage = data.mixture(get_stage(config.training.stage))
    unwrapped = model.get_base_model() if hasattr(model, "get_base_model") else model

    template = data.template or stage.template
    # Validation from the training sources holds out one record in ten (by content) that training never sees.
    shared = bool(data.eval_samples) and not data.eval_sources

    def mixture(sources, num_samples, seed, split=None):
        builder = TaskBuilder(
            unwrapped.tokenizer, unwrapped.config, template=template,
            max_length=data.max_length or stage.max_length, system_prompt=data.system_prompt,
            rng=random.Random(seed), emphasis=data.emphasis_pattern,
        )
        streams = stage_streams(sources, seed, split, disjoint_lm=data.disjoint_lm_documents)
        mix = StageMixture(stage, builder, streams, num_samples, config.training.per_device_train_batch_size, seed)
        files = [(s["path"], *_stat(s["path"])) for s in sources if Path(s["path"]).is_file()]
        extra = {"sources": sources, "files": files, "split": split}
        if data.disjoint_lm_documents:
            extra["disjoint_lm_documents"] = True
        return build_stage_dataset(mix, extra_fingerprint=extra, cache_dir=data.cache_dir)

    with config.training.main_process_first(desc="build stage mixture"):
        train = mixture(data.sources, data.num_samples, data.mixture_seed, "train" if shared else None)
        evaluation = None
        if data.eval_samples:
            evaluation = mixture(data.eval_sources or data.sources, data.eval_samples, data.mixture_seed + EVAL_SEED_OFFSET,
                                 "eval" if shared else None)
        if config.training.train_sampling_strategy == "group_by_length":
            train = with_lengths(train, config.training.length_column_name)
    return train, evaluation


def with_lengths(dataset, column: str = "length"):
    """`dataset` with the cost of each example (decoder plus encoder tokens) in `column`, for length-grouped batches."""
    if column in dataset.column_names:
        return dataset
    return dataset.map(
        lambda ids, chunks: {column: [len(i) + sum(len(c) for c in ch) for i, ch in zip(ids, chunks)]},
        input_columns=["input_ids", "chunks"], batched=True, desc="example lengths",
    )


def run_stage(
    config: StageConfig, resume_from_checkpoint: str | bool | None = None, callbacks: list | None = None
) -> MemCompTrainer:
    """Train one stage and save the result to `training.output_dir` (adapters merged unless configured)."""
    check_engine(config)
    model = build_model(config)
    train, evaluation = build_datasets(config, model)
    trainer = MemCompTrainer(
        model=model, args=config.training, train_dataset=train, eval_dataset=evaluation, callbacks=callbacks
    )
    # The checkpoint records how it is trained to be prompted: the default of generate, the CLI, evaluation and the card.
    template = config.data.template or get_stage(config.training.stage).template
    record_prompt_template(model, template, config.data.system_prompt)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if not config.model.fqlora:
        trainer.save_model()  # under FSDP: the full weights, whatever the checkpoints' state dict type
    else:  # the best model is already loaded when load_best_model_at_end
        with trainer.full_parameters():  # every rank: ZeRO-3 gathers the partitions rank 0 merges and saves
            if trainer.is_world_process_zero():
                with final_save_context(trainer, internal_call=False):  # the weights in their loaded dtype
                    save_fqlora(trainer.model, config.training.output_dir, merge=config.model.save_merged)
    return trainer


def main(argv: list[str] | None = None, expected_stages: tuple[str, ...] = ("cpt1", "cpt2", "sft")) -> None:
    """Command line: `--config stage.yaml [--field value ...]` (every field: `--help`)."""
    config = parse_stage_args(argv, expected_stages)
    logging.basicConfig(level=logging.INFO if config.training.process_index == 0 else logging.WARNING)
    with process_group_teardown():
        run_stage(config, resume_from_checkpoint=resume_point(config.training))
