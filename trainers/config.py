"""Stage config files: YAML with `model`, `data` and `training` sections, each parsed into a dataclass.

`training` holds `MemCompTrainingArguments` fields; anything it leaves out comes from the stage's Table 9
defaults (`trainers.stages`). Command-line overrides look like `training.learning_rate=1e-5`
(quote YAML's booleans where a string is meant: `training.eval_strategy='"no"'`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .fqlora import FQLoRAConfig
from .stages import get_stage
from .trainer import MemCompTrainingArguments


@dataclass
class ModelArguments:
    """Which model to train and how (FQLoRA or full fine-tuning)."""

    base: str | None = None  # Hub id or folder of the base LM (CPT-1), or a memcomp checkpoint (CPT-2, SFT)
    chunk_size: int = 16  # tokens per memory embedding (16x compression)
    wrap: str = "each"  # memory wrapping of a new model: "each" (paper) or "block"
    dtype: str = "bfloat16"  # weights dtype when loading `base`
    attn_implementation: str | None = None  # e.g. "flash_attention_2"; None: transformers' default
    fqlora: FQLoRAConfig | None = None  # FQLoRA settings; None trains every parameter in full
    save_merged: bool = True  # merge LoRA adapters into the saved model (else saved under <output>/adapter)
    tiny: bool = False  # build a tiny random Qwen2 and a local tokenizer instead of loading `base` (CPU runs)
    tiny_corpus: str | None = None  # text file the tiny tokenizer is trained on (one document per line)
    tiny_layers: int = 2
    tiny_hidden_size: int = 64
    tiny_vocab_size: int = 512

    def __post_init__(self):
        if isinstance(self.fqlora, dict):
            self.fqlora = FQLoRAConfig(**self.fqlora)
        if not self.tiny and not self.base:
            raise ValueError("model.base is required (a Hub id or folder) unless model.tiny is true.")
        if self.tiny and not self.tiny_corpus:
            raise ValueError("model.tiny needs model.tiny_corpus: a local text file to train the tokenizer on.")


@dataclass
class DataArguments:
    """Where examples come from and how many the stage mixture draws."""

    sources: list[dict] = field(default_factory=list)  # SourceConfig dicts (path, kind, weight, columns, ...)
    eval_sources: list[dict] | None = None  # validation sources; default: the training sources, another seed
    num_samples: int = 1000  # training examples drawn from the mixture
    eval_samples: int = 0  # validation examples (0: no evaluation)
    max_length: int | None = None  # decoder length; default: the stage's (Table 9)
    template: str | None = None  # "plain" or "chat"; default: the stage's
    system_prompt: str | None = None  # ChatML system prompt; default: modeling_memcomp's
    seed: int = 0  # mixture seed (task choice, instructions, bridges)
    cache_dir: str | None = None  # where materialised mixtures are cached (default: datasets' cache)


@dataclass
class StageConfig:
    model: ModelArguments
    data: DataArguments
    training: MemCompTrainingArguments


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _floats(tree):
    """YAML 1.1 reads `5e-5` as a string; read it as the float everyone means."""
    if isinstance(tree, dict):
        return {key: _floats(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_floats(value) for value in tree]
    return float(tree) if isinstance(tree, str) and _FLOAT.match(tree) else tree


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> StageConfig:
    """Parse a stage YAML (plus `section.key=value` overrides, values read as YAML) into a `StageConfig`."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. training.max_steps=10).")
        key, value = item.split("=", 1)
        _set(raw, key.lstrip("-"), yaml.safe_load(value))
    raw = _floats(raw)
    unknown = set(raw) - {"model", "data", "training"}
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}; use model, data and training.")
    training = dict(raw.get("training") or {})
    stage = training.pop("stage", None)
    if stage is None:
        raise ValueError("training.stage is required: one of cpt1, cpt2, sft.")
    get_stage(stage)
    for name, cls in (("model", ModelArguments), ("data", DataArguments)):
        allowed = {f.name for f in fields(cls)}
        bad = set(raw.get(name) or {}) - allowed
        if bad:
            raise ValueError(f"unknown {name} keys {sorted(bad)}; allowed: {sorted(allowed)}.")
    return StageConfig(
        model=ModelArguments(**(raw.get("model") or {})),
        data=DataArguments(**(raw.get("data") or {})),
        training=MemCompTrainingArguments.for_stage(stage, **training),
    )
