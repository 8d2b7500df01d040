"""Stage arguments: `ModelArguments`, `FQLoRAConfig`, `DataArguments` and `MemCompTrainingArguments`, parsed together by
TRL's `TrlParser` from a YAML file (`--config stage.yaml`, flat keys) and command-line fields (`--learning_rate 1e-5`).

Training fields the YAML and the command line leave out take the stage's Table 9 defaults (`trainers.stages`), so a
config names only what differs from the paper. `--help` lists every field with its help text.

    python examples/train_cpt.py --config examples/configs/cpt1_tiny.yaml --max_steps 8
    python examples/train_sft.py --config examples/configs/sft_tiny.yaml --resume_from_checkpoint last
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .fqlora import FQLoRAConfig
from .stages import COMPRESSION_TASKS, STAGES, StageSpec, get_stage
from .trainer import MemCompTrainingArguments, stage_training_defaults


class JSONObject(dict):
    """A mapping field: a mapping in YAML, a JSON object on the command line."""

    what = "a mapping"

    def __init__(self, value=()):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.what} on the command line must be a JSON object, got {value!r} ({error}).") from None
        super().__init__(value)


class SourceSpec(JSONObject):
    """One data source (`trainers.data.SourceConfig` fields)."""

    what = "a source"


class TaskWeights(JSONObject):
    """Shares of the compression tasks in a stage's mixture, e.g. {"reconstruction": 1.0}."""

    what = "task weights"


@dataclass
class ModelArguments:
    """Which model to train and how (FQLoRA or full fine-tuning)."""

    base: str | None = field(
        default=None,
        metadata={"help": "Hub id or folder of the base LM (CPT-1), or the previous stage's memcomp checkpoint (CPT-2, SFT)."},
    )
    chunk_size: int = field(default=16, metadata={"help": "Tokens per memory embedding of a new model (16x compression)."})
    wrap: str = field(default="each", metadata={"help": "Memory wrapping of a new model: 'each' (paper) or 'block'."})
    dtype: str = field(default="bfloat16", metadata={"help": "Weights dtype when loading `base`."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel, e.g. 'sdpa' or 'flash_attention_2'; None: transformers' default."}
    )
    fqlora: bool = field(
        default=False, metadata={"help": "Train with FQLoRA (the FQLoRA fields below); False trains every parameter in full."}
    )
    save_merged: bool = field(
        default=True, metadata={"help": "Merge LoRA adapters into the saved model (else saved under <output_dir>/adapter)."}
    )
    tiny: bool = field(
        default=False, metadata={"help": "Build a tiny random Qwen2 and a local tokenizer instead of loading `base` (CPU runs)."}
    )
    tiny_corpus: str | None = field(default=None, metadata={"help": "Text file the tiny tokenizer is trained on (one document per line)."})
    tiny_layers: int = field(default=2, metadata={"help": "Layers of the tiny model."})
    tiny_hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny model."})
    tiny_vocab_size: int = field(default=512, metadata={"help": "Vocabulary size of the tiny tokenizer."})

    def __post_init__(self):
        if not self.tiny and not self.base:
            raise ValueError("base is required (a Hub id or folder, --base ...) unless tiny is true.")
        if self.tiny and not self.tiny_corpus:
            raise ValueError("tiny needs tiny_corpus: a local text file to train the tokenizer on.")


@dataclass
class DataArguments:
    """Where examples come from and how many the stage mixture draws."""

    sources: list[SourceSpec] = field(
        default_factory=list,
        metadata={"help": "Training sources (trainers.data.SourceConfig: path, kind, weight, columns, ...); YAML mappings or JSON objects."},
    )
    eval_sources: list[SourceSpec] | None = field(
        default=None, metadata={"help": "Validation sources; default: the training sources' held-out tenth (one record in ten, by content, that training never sees)."}
    )
    num_samples: int = field(default=1000, metadata={"help": "Training examples drawn from the mixture."})
    eval_samples: int = field(default=0, metadata={"help": "Validation examples (0: no evaluation)."})
    max_length: int | None = field(default=None, metadata={"help": "Decoder sequence length; default: the stage's (Table 9)."})
    template: str | None = field(default=None, metadata={"help": "Prompt template ('plain' or 'chat'); default: the stage's."})
    system_prompt: str | None = field(default=None, metadata={"help": "Chat system prompt; default: the template's."})
    mixture_seed: int = field(default=0, metadata={"help": "Mixture seed (task choice, instructions, bridges)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where materialised mixtures are cached (default: datasets' cache)."})
    task_weights: TaskWeights | None = field(
        default=None,
        metadata={"help": f"Shares of the compression tasks {list(COMPRESSION_TASKS)}, e.g. '{{\"reconstruction\": 1.0}}'; default: the stage's (Table 1)."},
    )
    compression_ratio: float | None = field(
        default=None, metadata={"help": "Share of compression examples, the rest plain LM; default: the stage's (Table 1)."}
    )
    emphasis_pattern: str | None = field(
        default=None,
        metadata={"help": "Regular expression: reconstruction target tokens overlapping a match weigh `emphasis_weight` "
                          "in the loss (e.g. the names a memory must carry); None: every target token weighs 1."},
    )
    disjoint_lm_documents: bool = field(
        default=False,
        metadata={"help": "Plain LM reads one half of the document records (by a hash of their content) and the "
                          "compression tasks the other, so no document is seen whole before it is compressed; False: "
                          "both read every document (what the synthetic toy pipeline was built with)."},
    )

    def __post_init__(self):
        self.sources = [SourceSpec(s) for s in self.sources]
        if self.eval_sources is not None:
            self.eval_sources = [SourceSpec(s) for s in self.eval_sources]
        if self.task_weights is not None:
            self.task_weights = TaskWeights(self.task_weights)
            unknown = sorted(set(self.task_weights) - set(COMPRESSION_TASKS))
            weights = self.task_weights.values()
            numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
            if unknown or not numbers or any(w < 0 for w in weights) or not sum(weights) > 0:
                raise ValueError(
                    f"task_weights must give non-negative shares, not all zero, to tasks among {list(COMPRESSION_TASKS)}; "
                    f"got {dict(self.task_weights)}."
                )
        if self.compression_ratio is not None and not 0 <= self.compression_ratio <= 1:
            raise ValueError(f"compression_ratio must be in [0, 1], got {self.compression_ratio}.")

    def mixture(self, stage: StageSpec) -> StageSpec:
        """`stage` with this config's mixture overrides (task weights, compression ratio) applied."""
        weights = None if self.task_weights is None else dict(self.task_weights)
        overrides = {"task_weights": weights, "compression_ratio": self.compression_ratio}
        return replace(stage, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class StageConfig:
    model: ModelArguments
    fqlora: FQLoRAConfig
    data: DataArguments
    training: MemCompTrainingArguments

    def __post_init__(self):
        if self.training.emphasis_weight != 1 and self.data.emphasis_pattern is None:
            raise ValueError(f"emphasis_weight={self.training.emphasis_weight} weighs the tokens `emphasis_pattern` "
                             "marks, but no emphasis_pattern is given: give one, or leave emphasis_weight at 1.")


ARGUMENT_CLASSES = (ModelArguments, FQLoRAConfig, DataArguments, MemCompTrainingArguments)


def _parser():
    from trl import TrlParser

    return TrlParser(ARGUMENT_CLASSES)


def _config_file(argv: list[str]) -> dict:
    """The `--config` YAML's mapping ({} without one)."""
    import yaml

    if "--config" not in argv:
        return {}
    return yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) or {}


def _given(argv: list[str], name: str) -> bool:
    """Whether field `name` is given on the command line or in the `--config` YAML."""
    flag = f"--{name}"
    return any(item == flag or item.startswith(flag + "=") for item in argv) or name in _config_file(argv)


def _stage_of(argv: list[str]) -> str:
    """The stage named on the command line (`--stage`) or in the `--config` YAML, before the full parse."""
    for i, item in enumerate(argv):
        if item == "--stage" and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith("--stage="):
            return item.split("=", 1)[1]
    stage = _config_file(argv).get("stage")
    if stage is not None:
        return stage
    raise ValueError(f"stage is required (one of {sorted(STAGES)}): set `stage:` in the config file or pass --stage.")


def parse_stage_args(argv: list[str] | None = None, expected_stages: tuple[str, ...] | None = None) -> StageConfig:
    """Parse a stage's YAML (`--config`) and command-line fields into a `StageConfig`, over the stage's Table 9 defaults."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if "-h" in argv or "--help" in argv:
        parser.parse_args_and_config(argv)  # prints every field's help and exits
    stage = get_stage(_stage_of(argv)).name
    if expected_stages is not None and stage not in expected_stages:
        raise ValueError(f"this script trains {expected_stages}, but the config's stage is {stage!r}.")
    given = [name for name in ("gradient_accumulation_steps", "global_batch_size") if _given(argv, name)]
    parser.set_defaults(**stage_training_defaults(stage, explicit=given))
    model, fqlora, data, training = parser.parse_args_and_config(argv)
    return StageConfig(model=model, fqlora=fqlora, data=data, training=training)


def stage_config(stage: str, model: dict | None = None, fqlora: dict | None = None, data: dict | None = None, **training) -> StageConfig:
    """A `StageConfig` from Python: the stage's Table 9 training defaults updated by `training`."""
    return StageConfig(
        model=ModelArguments(**(model or {})),
        fqlora=FQLoRAConfig(**(fqlora or {})),
        data=DataArguments(**(data or {})),
        training=MemCompTrainingArguments.for_stage(stage, **training),
    )
