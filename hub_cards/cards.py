"""Model and dataset cards for memcomp repositories, rendered by `huggingface_hub` from the Jinja templates here."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from modeling_memcomp.prompting import memory_block_ids
from trainers.stages import STAGES as RECIPE

from .evaluation import load_evaluation

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_LICENSE = "apache-2.0"
"""The package's licence and that of the paper's Qwen2.5-7B/32B bases; pass the base model's licence when it differs."""
REFERENCE_CONTEXT_TOKENS = 4096
"""Context length at which the card states the effective compression rate."""
MODEL_TAGS = ("memcomp", "context-compression", "soft-prompt-compression", "custom_code")
DATASET_TAGS = ("memcomp", "memory-embeddings", "context-compression")


@dataclass(frozen=True)
class Stage:
    """A point of the training recipe (paper Section 3.3) as the card describes it."""

    summary: str
    example_question: str = "What is the main finding of the document?"
    trained: bool = True


def _recipe(name: str) -> str:
    """One sentence of a CPT/SFT stage's defaults, read from `trainers.stages` (the recipe's one home)."""
    spec = RECIPE[name]
    parts = [", ".join(f"{task} {weight * 100:g}%" for task, weight in spec.task_weights.items())]
    if spec.compression_ratio < 1:
        compressed = spec.compression_ratio * 100
        parts.append(f"mixed {compressed:g}:{100 - compressed:g} with plain language modelling")
    low, high = spec.bridge_chunks
    if high:
        parts.append(f"{low}-{high} bridge chunks" if low != high else f"{low} bridge chunk{'s' * (low > 1)}")
    parts.append(f"`{spec.template}` template")
    parts.append("projection frozen" if spec.projection_learning_rate is None else "projection trained")
    return "; ".join(parts) + "."


STAGES = {
    "untrained": Stage(
        "This is `MemCompForCausalLM.from_base(...)` before any training: the memory projection is random.",
        trained=False,
    ),
    "cpt1": Stage(
        f"Continual pretraining, stage 1 (recipe defaults): {_recipe('cpt1')}",
        example_question="Reconstruct the original text from the compressed memory provided above.",
    ),
    "cpt2": Stage(f"Continual pretraining, stage 2 (recipe defaults): {_recipe('cpt2')}"),
    "sft": Stage(f"Instruction tuning on QA (recipe defaults): {_recipe('sft')}"),
    "rl": Stage(
        "DAPO reinforcement learning from the SFT checkpoint with a binary judge reward; memories precomputed by the "
        "SFT encoder, only the decoder trained.",
    ),
}
"""Recipe stages a checkpoint can come from (the prompt template it was trained with is in its config)."""


@dataclass(frozen=True)
class CompressionRates:
    """Nominal rate (context tokens per memory embedding) and effective rate (per decoder position)."""

    nominal: int
    effective: float
    decoder_positions: int
    context_tokens: int


def compression_rates(config, context_tokens: int = REFERENCE_CONTEXT_TOKENS) -> CompressionRates:
    """Rates for a `context_tokens` context, counting the decoder positions the prompt builder really uses.

    `wrap="each"` spends 3 positions per embedding (C/3, ~5.3x at C=16); `wrap="block"` spends one per
    embedding plus 2 wrapper tokens (close to C).
    """
    if not isinstance(context_tokens, int) or context_tokens < 1:
        raise ValueError(f"context_tokens must be a positive integer, got {context_tokens!r}.")
    positions = len(memory_block_ids(math.ceil(context_tokens / config.chunk_size), config))
    return CompressionRates(config.chunk_size, context_tokens / positions, positions, context_tokens)


def check_stage(stage: str) -> Stage:
    """The `Stage` named `stage`; a ValueError lists the valid names."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {tuple(STAGES)} (the recipe stage the checkpoint comes from), got {stage!r}.")
    return STAGES[stage]


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def model_card(
    config,
    repo_id: str,
    stage: str,
    *,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    license: str = DEFAULT_LICENSE,
    tags: Sequence[str] = (),
    evaluation: str | os.PathLike | dict | None = None,
    num_parameters: int | None = None,
) -> ModelCard:
    """The README.md of a memcomp model repo: Hub metadata (with `model-index` from `evaluation`) and usage.

    `config` is the checkpoint's `MemCompConfig`; `evaluation` is a JSON path or dict in the shape
    `hub_cards.evaluation` documents.
    """
    info = check_stage(stage)
    model_name, results = load_evaluation(evaluation) if evaluation is not None else (None, [])
    model_name = model_name or repo_id.split("/")[-1]
    rates = compression_rates(config)
    stage_tags = [stage] if info.trained else ["untrained"]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base_model,
        datasets=list(datasets) or None,
        license=license,
        tags=list(dict.fromkeys([*MODEL_TAGS, *stage_tags, *tags])),
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    text = config.text_config
    layout = (
        "`<MEM_START> m <MEM_END>` around every embedding"
        if config.wrap == "each"
        else "one `<MEM_START> ... <MEM_END>` around the whole memory"
    )
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "model_card.md"),
        title=model_name,
        repo_id=repo_id,
        stage=stage,
        stage_summary=info.summary,
        trained=info.trained,
        example_question=info.example_question,
        prompt_template=config.prompt_template,
        separate_encoder=config.separate_encoder,
        base_architecture=text.model_type,
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        num_parameters=_human_count(num_parameters) if num_parameters else "see the weights",
        chunk_size=config.chunk_size,
        nominal_rate=rates.nominal,
        effective_rate=f"{rates.effective:.2f}",
        reference_tokens=rates.context_tokens,
        decoder_positions=f"{layout} ({rates.decoder_positions} decoder positions for {rates.context_tokens} context tokens)",
        wrap=config.wrap,
        pooling=config.pooling,
        encoder_batch_size=config.encoder_batch_size,
        results=results,
    )


@dataclass
class DatasetContents:
    """What a precomputed-memory dataset folder holds, as the card reports it.

    `layout` is `"splits"` (parquet per split, loadable with `load_dataset`) or `"files"` (memory files);
    `compressor` is the precompute step's record of the model that made the memories, when there is one.
    """

    layout: str
    rows: dict[str, int]
    features: dict[str, str] = field(default_factory=dict)
    chunk_size: int | None = None
    hidden_size: int | None = None
    compressor: dict = field(default_factory=dict)


SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                   "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T")


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` label for `num_rows` examples."""
    if num_rows < 1000:
        return SIZE_CATEGORIES[0]
    return SIZE_CATEGORIES[min(int(math.log10(num_rows)) - 2, len(SIZE_CATEGORIES) - 1)]


MEMORY_MODEL_PLACEHOLDER = "<the model that computed these memories>"
"""Stands in the dataset card's usage snippet for the model id when the publisher named none (`--memory-model`)."""


def _dataset_usage(repo_id: str, contents: DatasetContents, memory_model: str | None = None) -> str:
    """The card's snippet; memory files load through the model's own remote code (`load_memory`), no memcomp needed."""
    if contents.layout == "splits":
        split = next(iter(contents.rows))
        return f'from datasets import load_dataset\n\nmemories = load_dataset("{repo_id}", split="{split}")'
    name = next(iter(contents.rows))
    return (
        "from huggingface_hub import hf_hub_download\nfrom transformers import AutoModel\n\n"
        f'model = AutoModel.from_pretrained("{memory_model or MEMORY_MODEL_PLACEHOLDER}", trust_remote_code=True, '
        'dtype="auto")\n'
        f'path = hf_hub_download("{repo_id}", "{name}", repo_type="dataset")\n'
        "memory = model.load_memory(path)  # refused unless the model's hidden and chunk size match\n"
        'answer = model.generate(memory=memory, question="What is the main finding of the document?")'
    )


def dataset_card(
    repo_id: str,
    contents: DatasetContents,
    *,
    memory_model: str | None = None,
    source_datasets: Sequence[str] = (),
    license: str = DEFAULT_LICENSE,
    tags: Sequence[str] = (),
) -> DatasetCard:
    """The README.md of a precomputed-memory dataset repo (the RL stage's input)."""
    if contents.layout not in ("splits", "files"):
        raise ValueError(f"contents.layout must be 'splits' or 'files', got {contents.layout!r}.")
    if not contents.rows:
        raise ValueError("the dataset has no rows or memory files to describe.")
    extra = {}
    if contents.layout == "splits":
        extra["configs"] = [
            {"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in contents.rows]}
        ]
    data = DatasetCardData(
        license=license,
        pretty_name=repo_id.split("/")[-1],
        task_categories=["question-answering"],
        size_categories=size_category(sum(contents.rows.values())),
        source_datasets=list(source_datasets) or None,
        tags=list(dict.fromkeys([*DATASET_TAGS, *tags])),
        **extra,
    )
    return DatasetCard.from_template(
        data,
        template_path=str(TEMPLATES / "dataset_card.md"),
        title=repo_id.split("/")[-1],
        memory_model=memory_model,
        usage=_dataset_usage(repo_id, contents, memory_model),
        parts=list(contents.rows.items()),
        features=list(contents.features.items()),
        chunk_size=contents.chunk_size,
        hidden_size=contents.hidden_size,
        compressor=contents.compressor,
    )
