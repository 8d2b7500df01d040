"""Command-line / programmatic settings: `EvalArguments` shared by every benchmark, plus one dataclass per benchmark.

Defaults are the paper's protocol (`protocol.py`); `None` means "the benchmark's paper default".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import protocol
from .loaders import MULTIHOP_PRESETS, QA_PRESETS

SYSTEMS = ("memcomp", "full")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def with_preset(names, presets: dict) -> list[str]:
    """The paper's sets that load by name alone (2WikiMultihopQA has no preset: give it as `2wiki=PATH`)."""
    return [name for name in names if name in presets]


def check_sources(datasets: list[str], presets: dict) -> None:
    """Refuse, before any download, a source that is no preset, existing file, `name=path` or Hub dataset name."""
    for spec in datasets:
        location = spec.partition("=")[2] if "=" in spec else spec
        if location in presets or Path(location).exists():
            continue
        if Path(location).suffix in DATA_SUFFIXES:
            raise ValueError(f"--datasets {spec}: no such file {location}.")
        if "/" not in location:
            raise ValueError(f"--datasets {spec}: no preset of that name ({', '.join(sorted(presets))}); give a local "
                             f"file as name=PATH (e.g. 2wiki=/data/2wiki/dev.json) or a Hub dataset name.")


@dataclass
class EvalArguments:
    """Settings every benchmark shares: model, systems, prompt, sampling, judge, output."""

    model: str | None = field(default=None, metadata={"help": "memcomp checkpoint (folder or Hub id); 'tiny' = untrained random model for smoke runs"})
    output_dir: str | None = field(default=None, metadata={"help": "folder for records.jsonl, results.json, table.md and plots (default: eval_results/<benchmark>)"})
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS), metadata={"help": "systems to run: memcomp (compressed memory) and/or full (full-context baseline)"})
    full_context_model: str | None = field(default=None, metadata={"help": "baseline LM (e.g. Qwen/Qwen2.5-7B-Instruct); default: the checkpoint's own base LM"})
    full_context_yarn_factor: float | None = field(default=None, metadata={"help": "YaRN factor for the baseline's positions (Qwen2.5 at 120K tokens: 4.0)"})
    template: str | None = field(default=None, metadata={"help": "prompt template (plain, chat or rl); default: the one the checkpoint records (config.prompt_template)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt for memcomp; default: the one the checkpoint records"})
    encoder_model: str | None = field(default=None, metadata={"help": "compress with this checkpoint instead (experiments; an RL checkpoint already compresses with its SFT encoder)"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N examples (smoke runs)"})
    seed: int = field(default=0, metadata={"help": "seed for sampling examples and for generation"})
    batch_size: int = field(default=1, metadata={"help": "examples per generate call"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "answer length cap; default: the benchmark's"})
    temperature: float | None = field(default=None, metadata={"help": "sampling temperature; default: the paper's for the benchmark (0 = greedy)"})
    judge_model: str | None = field(default=None, metadata={"help": "LLM judge: HF model id/folder, or the served model name with --judge_url"})
    judge_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint of the judge, e.g. http://localhost:8000/v1"})
    judge_api_key: str | None = field(default=None, metadata={"help": "API key for --judge_url (default: $OPENAI_API_KEY)"})
    judge_timeout: float = field(default=60.0, metadata={"help": "seconds per judge request"})
    dtype: str = field(default="auto", metadata={"help": "model dtype: auto, bfloat16, float16 or float32"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run Python code saved with a checkpoint that needs it (off: memcomp checkpoints load with the installed classes, other code is refused)"})

    def __post_init__(self):
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown or not self.systems:
            raise ValueError(f"systems must be a non-empty subset of {SYSTEMS}, got {self.systems}.")
        if self.template is not None and self.template not in ("plain", "chat", "rl"):
            raise ValueError(f"template must be 'plain', 'chat' or 'rl', got {self.template!r}.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive number of examples, got {self.limit}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.full_context_yarn_factor is not None and self.full_context_yarn_factor <= 1:
            raise ValueError(f"full_context_yarn_factor must be > 1 (e.g. 4.0), got {self.full_context_yarn_factor}.")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")

    def run_settings(self, benchmark: str) -> dict:
        """What changes an example's output: hashed into each record so a changed setting is rerun, not reused."""
        skip = {"output_dir", "limit", "batch_size", "systems", "judge_api_key", "judge_timeout", "trust_remote_code"}
        return {"benchmark": benchmark, **{k: v for k, v in asdict(self).items() if k not in skip}}


@dataclass
class ReconstructionArguments:
    """Reconstruction (Table 4, Figure 6): ROUGE F1 of the reconstructed text per context length."""

    documents: str = field(default="examples/data/document.txt", metadata={"help": ".txt file, folder of .txt, .jsonl with a text field, or a Hub dataset name"})
    text_field: str = field(default="text", metadata={"help": "text column for .jsonl / Hub sources"})
    split: str = field(default="train", metadata={"help": "split of a Hub dataset"})
    lengths: list[int] = field(default_factory=lambda: list(protocol.RECONSTRUCTION_LENGTHS), metadata={"help": "context lengths in tokens"})
    samples_per_length: int = field(default=100, metadata={"help": "documents per length"})


@dataclass
class QAArguments:
    """QA (Tables 3 and 6): judge accuracy (or EM/F1) per dataset, in- and out-of-distribution."""

    datasets: list[str] = field(
        default_factory=lambda: with_preset(protocol.QA_IN_DISTRIBUTION + protocol.QA_OUT_OF_DISTRIBUTION, QA_PRESETS),
        metadata={"help": "preset names (hotpotqa, nq, ...), local .jsonl/.json files, or name=path pairs (2wiki has no preset: 2wiki=PATH)"},
    )
    samples_per_set: int = field(default=protocol.QA_SAMPLES_PER_SET, metadata={"help": "examples sampled per dataset (seeded)"})

    def __post_init__(self):
        check_sources(self.datasets, QA_PRESETS)


@dataclass
class NIAHArguments:
    """Needle in a haystack (Table 8, Figure 3): 1-10 score per context length x needle depth."""

    haystack: str = field(default="examples/data/document.txt", metadata={"help": "haystack text: a .txt file or a folder of .txt (the paper: Paul Graham essays)"})
    lengths: list[int] = field(default_factory=lambda: list(protocol.NIAH_LENGTHS), metadata={"help": "context lengths in tokens"})
    depths: list[int] = field(default_factory=lambda: list(protocol.NIAH_DEPTHS), metadata={"help": "needle depths in percent of the context"})


@dataclass
class MultiHopArguments:
    """Long-context multi-hop QA, RULER-style (Figure 4): sub-span EM per context length."""

    datasets: list[str] = field(default_factory=lambda: with_preset(protocol.MULTIHOP_SETS, MULTIHOP_PRESETS), metadata={"help": "QA sources whose context is a list of paragraphs (presets or files; 2wiki has no preset: 2wiki=PATH)"})
    samples_per_set: int = field(default=protocol.MULTIHOP_SAMPLES_PER_SET, metadata={"help": "questions sampled per dataset (seeded)"})
    lengths: list[int] = field(default_factory=lambda: list(protocol.MULTIHOP_LENGTHS), metadata={"help": "context lengths in tokens, filled with distractor paragraphs"})

    def __post_init__(self):
        check_sources(self.datasets, MULTIHOP_PRESETS)


@dataclass
class LongBenchArguments:
    """LongBench v2 (Figure 5): multiple-choice accuracy per context-length bucket."""

    source: str = field(default="THUDM/LongBench-v2", metadata={"help": "Hub dataset name or local .jsonl/.json in the official schema"})
    max_tokens: int = field(default=protocol.LONGBENCH_MAX_TOKENS, metadata={"help": "keep contexts shorter than this many tokens"})
    buckets: list[int] = field(default_factory=lambda: list(protocol.LONGBENCH_BUCKETS), metadata={"help": "bucket edges in tokens"})


@dataclass
class ResponseLengthArguments:
    """Response length (Table 6): average answer tokens per system, from finished evaluations."""

    results: list[str] = field(default_factory=list, metadata={"help": "results.json files (or their folders) of finished evaluations"})
    output_dir: str = field(default="eval_results/response_length", metadata={"help": "folder for response_length.{json,md,png}"})
