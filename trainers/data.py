"""Training sources through `datasets`: Table 2 corpora by Hub name (streamed) or local JSONL/Parquet files.

Every source is normalised to one schema per kind, so task builders never see source-specific columns:

    document   {"text": str}                                    reconstruction, continuation, plain LM
    standard   {"text": str}                                    plain LM only (e.g. OpenHermes-2.5 in CPT)
    summary    {"text": str, "summary": str}                    summarization
    qa         {"context": list[str], "question": str, "answer": str}   QA (a string context becomes one passage)

Columns named differently in a source are mapped with `columns` ({schema name: source column}); the
QA corpora of Table 2 whose contexts are nested have a `preset` that flattens them (see `PRESETS`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets

SCHEMAS: dict[str, datasets.Features] = {
    "document": datasets.Features({"text": datasets.Value("string")}),
    "standard": datasets.Features({"text": datasets.Value("string")}),
    "summary": datasets.Features({"text": datasets.Value("string"), "summary": datasets.Value("string")}),
    "qa": datasets.Features(
        {
            "context": datasets.List(datasets.Value("string")),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    ),
}


def hotpotqa_passage(title: str, sentences: list[str]) -> str:
    """One HotpotQA paragraph as a passage: the title on its own line, then the sentences one space apart (the Hub's
    sentences carry their leading space). Training and `benchmarks.eval.loaders` both format passages with it."""
    return f"{title}\n{' '.join(s.strip() for s in sentences if s.strip())}"


def _hotpotqa(record: dict) -> dict:
    """hotpotqa/hotpot_qa: one passage per titled paragraph of `context`."""
    context = record["context"]
    passages = [hotpotqa_passage(title, sentences) for title, sentences in zip(context["title"], context["sentences"])]
    return {"context": passages, "question": record["question"], "answer": record["answer"]}


def _trivia_qa(record: dict) -> dict:
    """mandarjoshi/trivia_qa (rc): Wikipedia pages, then search results, as passages; the answer's value."""
    passages = list(record["entity_pages"]["wiki_context"]) + list(record["search_results"]["search_context"])
    return {"context": passages, "question": record["question"], "answer": record["answer"]["value"]}


def _ragbench(record: dict) -> dict:
    """rungalileo/ragbench: retrieved `documents` as passages, the reference `response` as the answer."""
    return {"context": list(record["documents"]), "question": record["question"], "answer": record["response"]}


def _openhermes(record: dict) -> dict:
    """teknium/OpenHermes-2.5: the conversation as one text, a `role: message` line per turn."""
    return {"text": "\n".join(f"{turn['from']}: {turn['value']}" for turn in record["conversations"])}


PRESETS = {"hotpotqa": _hotpotqa, "trivia_qa": _trivia_qa, "ragbench": _ragbench, "openhermes": _openhermes}
"""Flatteners of nested sources into a schema, by name."""
PRESET_KINDS = {"hotpotqa": "qa", "trivia_qa": "qa", "ragbench": "qa", "openhermes": "standard"}

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class SourceConfig:
    """One data source of a stage."""

    path: str  # Hub dataset id (e.g. "mlfoundations/dclm-baseline-1.0") or a local .jsonl/.json/.parquet/.csv file
    kind: str = "document"  # schema the source provides: document | standard | summary | qa
    name: str | None = None  # Hub dataset configuration
    split: str = "train"
    streaming: bool | None = None  # default: streamed from the Hub, read in full from local files
    weight: float = 1.0  # sampling weight among the sources of the same kind
    columns: dict[str, str] = field(default_factory=dict)  # schema column -> source column
    preset: str | None = None  # flattener of a nested source: hotpotqa | trivia_qa | ragbench | openhermes

    def __post_init__(self):
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r} for {self.path!r}.")
            if self.kind != PRESET_KINDS[self.preset]:
                raise ValueError(
                    f"preset {self.preset!r} gives {PRESET_KINDS[self.preset]} records: set kind: "
                    f"{PRESET_KINDS[self.preset]} for {self.path!r}."
                )
        if self.kind not in SCHEMAS:
            raise ValueError(f"source kind must be one of {sorted(SCHEMAS)}, got {self.kind!r} for {self.path!r}.")
        if self.weight <= 0:
            raise ValueError(f"source weight must be > 0, got {self.weight} for {self.path!r}.")
        if Path(self.path).suffix in LOCAL_FORMATS and not Path(self.path).exists():
            raise FileNotFoundError(f"source file {self.path!r} does not exist (a {Path(self.path).suffix} path is read "
                                    "as a local file; a Hub dataset is named owner/name).")

    @property
    def is_local(self) -> bool:
        return Path(self.path).suffix in LOCAL_FORMATS and Path(self.path).exists()


def _normalise(record: dict, kind: str, columns: dict[str, str], preset: str | None = None) -> dict:
    if preset is not None:
        record = PRESETS[preset](record)
    out = {key: record[columns.get(key, key)] for key in SCHEMAS[kind]}
    if kind == "qa" and isinstance(out["context"], str):
        out["context"] = [out["context"]]
    return out


def load_source(source: SourceConfig) -> datasets.IterableDataset:
    """The source as an `IterableDataset` in its kind's schema (local files are read, Hub ids streamed)."""
    if source.is_local:
        if Path(source.path).is_file() and Path(source.path).stat().st_size == 0:
            raise ValueError(f"local data file {source.path!r} is empty: give it rows or leave it out of `sources`.")
        data = datasets.load_dataset(
            LOCAL_FORMATS[Path(source.path).suffix], data_files=source.path, split=source.split,
            streaming=bool(source.streaming),
        )
    elif Path(source.path).suffix in LOCAL_FORMATS:
        raise ValueError(f"local data file {source.path!r} does not exist.")
    else:
        streaming = True if source.streaming is None else source.streaming
        data = datasets.load_dataset(source.path, source.name, split=source.split, streaming=streaming)
    if isinstance(data, datasets.Dataset):
        data = data.to_iterable_dataset()
    present = data.column_names or []  # None: a streamed source whose features are not declared
    missing = [source.columns.get(k, k) for k in SCHEMAS[source.kind] if source.columns.get(k, k) not in present]
    if data.column_names is not None and missing and source.preset is None:
        raise ValueError(
            f"source {source.path!r} ({source.kind}) has no column(s) {missing}; it has {data.column_names}. "
            f"Map them with columns={{schema name: source column}}."
        )
    return data.map(
        _normalise,
        fn_kwargs={"kind": source.kind, "columns": source.columns, "preset": source.preset},
        remove_columns=data.column_names,
        features=SCHEMAS[source.kind],
    )


HOLDOUT_EVERY = 10
"""With `split`, one record in this many (by a hash of its content) is held out for evaluation, the rest train."""


def in_holdout(record: dict) -> bool:
    """Whether `record` belongs to the held-out evaluation part of its source (a stable hash of its content)."""
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") % HOLDOUT_EVERY == 0


def in_lm_half(record: dict) -> bool:
    """Whether a document record goes to plain LM rather than to compression (`stage_streams(disjoint_lm=True)`): a
    stable hash of its content, salted so the halves are independent of `in_holdout`."""
    digest = hashlib.sha256(b"lm\0" + json.dumps(record, sort_keys=True, default=str).encode()).digest()
    return digest[-1] % 2 == 1


def record_stream(
    sources: list[SourceConfig], seed: int = 0, split: str | None = None, lm_half: bool | None = None
) -> Iterator[dict]:
    """Endless records from `sources` (all one kind), interleaved by weight and cycled epoch after epoch.

    `split="train"` leaves out the held-out records (`in_holdout`) and `split="eval"` yields only them, so a
    validation set drawn from the training sources never holds a training record; None yields every record.
    `lm_half` True / False keeps only the document sources' records that `in_lm_half` assigns / does not assign to
    plain LM (other kinds are kept whole); None keeps every record."""
    if split not in (None, "train", "eval"):
        raise ValueError(f"split must be None, 'train' or 'eval', got {split!r}.")
    if not sources:
        raise ValueError("record_stream needs at least one source.")
    schemas = {tuple(SCHEMAS[s.kind]) for s in sources}
    if len(schemas) > 1:
        raise ValueError(f"sources mixed in one stream must share a schema, got kinds {sorted({s.kind for s in sources})}.")
    loaded = [load_source(s) for s in sources]
    if lm_half is not None:
        loaded = [d.filter(lambda r: in_lm_half(r) == lm_half) if s.kind == "document" else d for s, d in zip(sources, loaded)]
    total = sum(s.weight for s in sources)
    mixed = (
        loaded[0]
        if len(loaded) == 1
        else datasets.interleave_datasets(
            loaded, probabilities=[s.weight / total for s in sources], seed=seed, stopping_strategy="all_exhausted"
        )
    )
    for epoch in itertools.count():
        mixed.set_epoch(epoch)
        empty = True
        for record in mixed:
            if split is not None and in_holdout(record) != (split == "eval"):
                continue
            empty = False
            yield record
        if empty:
            part = "" if split is None else f" in their {split} part (one record in {HOLDOUT_EVERY} is held out)"
            if lm_half is not None:
                part += f" in the {'plain-LM' if lm_half else 'compression'} half of the documents (disjoint_lm_documents)"
            raise ValueError(f"sources {[s.path for s in sources]} yielded no records{part}.")


def sources_by_kind(sources: list[SourceConfig | dict]) -> dict[str, list[SourceConfig]]:
    """Group source configs (or their dicts, e.g. from YAML) by kind."""
    groups: dict[str, list[SourceConfig]] = {}
    for source in sources:
        source = source if isinstance(source, SourceConfig) else SourceConfig(**source)
        groups.setdefault(source.kind, []).append(source)
    return groups


def stage_streams(
    sources: list[SourceConfig | dict], seed: int = 0, split: str | None = None, disjoint_lm: bool = False
) -> dict[str, Iterator[dict]]:
    """One record stream per kind; `standard` (plain LM) draws from the document and standard sources (`split`: see
    `record_stream`). `disjoint_lm`: where a `standard` stream reads the documents, it takes only their `in_lm_half`
    records and the document stream the others, so plain LM never shows a document the compression tasks use."""
    groups = sources_by_kind(sources)
    split_documents = disjoint_lm and "standard" in groups and "document" in groups
    compression_half = False if split_documents else None
    streams = {
        kind: record_stream(group, seed, split, lm_half=compression_half if kind == "document" else None)
        for kind, group in groups.items() if kind != "standard"
    }
    if "standard" in groups:
        lm_half = True if split_documents else None
        streams["standard"] = record_stream(groups.get("document", []) + groups["standard"], seed, split, lm_half=lm_half)
    return streams
