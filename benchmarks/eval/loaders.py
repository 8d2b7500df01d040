"""Data loading: QA sources by preset, Hub name or local file, normalised to one schema; text documents; LongBench v2.

Normalised QA item: `QAItem(id, question, answers, passages, supporting)`. Local files (.jsonl/.json/.parquet/.csv)
in the documented schema always work:
`{"id", "question", "answers": [str], "context": str | [str], "supporting": [int]}`; the common Hub layouts
(MRQA, HotpotQA, MuSiQue, 2WikiMultihopQA, MS MARCO, SQuAD) are recognised by their fields.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class HubSource:
    """Where a preset lives on the Hub, and which rows to keep (`subset` filters MRQA's `subset` column)."""

    path: str
    split: str
    name: str | None = None
    subset: str | None = None
    data_files: str | None = None


# QA presets (Table 3). MRQA 2019 packs SQuAD, HotpotQA, NQ, TriviaQA and BioASQ with answer-containing contexts.
QA_PRESETS = {
    "hotpotqa": HubSource("mrqa-workshop/mrqa", "validation", subset="HotpotQA"),
    "nq": HubSource("mrqa-workshop/mrqa", "validation", subset="NaturalQuestionsShort"),
    "triviaqa": HubSource("mrqa-workshop/mrqa", "validation", subset="TriviaQA-web"),
    "squad": HubSource("mrqa-workshop/mrqa", "validation", subset="SQuAD"),
    "bioasq": HubSource("mrqa-workshop/mrqa", "test", subset="BioASQ"),
    "msmarco": HubSource("microsoft/ms_marco", "validation", name="v2.1"),
    "musique": HubSource("dgslibisey/MuSiQue", "train", data_files="musique_ans_v1.0_dev.jsonl"),
}
# Multi-hop presets (Figure 4) keep the paragraph structure so distractors can be interleaved.
MULTIHOP_PRESETS = {
    "hotpotqa": HubSource("hotpotqa/hotpot_qa", "validation", name="distractor"),
    "musique": QA_PRESETS["musique"],
}


@dataclass
class QAItem:
    """One QA example: question, accepted answers, context passages, and the indices of the gold passages."""

    id: str
    question: str
    answers: list[str]
    passages: list[str]
    supporting: list[int] = field(default_factory=list)


def read_rows(
    source: str | Path, split: str = "train", name: str | None = None, data_files: str | None = None, subset: str | None = None
) -> list[dict]:
    """Rows of a local .jsonl/.json/.parquet/.csv file or a Hub dataset, through `datasets` (`subset` keeps MRQA's
    rows of one set)."""
    from datasets import load_dataset

    from trainers.data import LOCAL_FORMATS

    path = Path(source)
    if path.suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise ValueError(f"no such file: {path}. Give an existing {'/'.join(LOCAL_FORMATS)} file or a Hub "
                             "dataset name.")
        dataset = load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    else:
        dataset = load_dataset(str(source), name, split=split, data_files=data_files)
    if subset is not None:
        dataset = dataset.filter(lambda value: value == subset, input_columns="subset")
    return list(dataset)


def _answers(row: dict) -> list[str]:
    answers = []
    for key in ("answers", "answer", "golden_answers", "answer_aliases"):
        value = row.get(key)
        if isinstance(value, dict):
            value = value.get("text") or value.get("aliases") or value.get("value")
        if isinstance(value, str):
            value = [value]
        answers += [a for a in value or [] if isinstance(a, str) and a.strip() and a != "No Answer Present."]
    return list(dict.fromkeys(answers))


def _passages(row: dict) -> tuple[list[str], list[int]]:
    """Context passages and gold indices from the layouts in use (plain, HotpotQA, 2Wiki, MuSiQue, MS MARCO)."""
    context = row.get("context", row.get("paragraphs", row.get("passages", row.get("documents"))))
    if isinstance(context, str):
        return [context], list(row.get("supporting", []))
    if isinstance(context, dict) and "sentences" in context:  # HotpotQA: {title: [...], sentences: [[...]]}
        from trainers.data import hotpotqa_passage  # the passages training formats

        passages = [hotpotqa_passage(t, s) for t, s in zip(context["title"], context["sentences"])]
        gold_titles = set((row.get("supporting_facts") or {}).get("title", []))
        return passages, [i for i, t in enumerate(context["title"]) if t in gold_titles]
    if isinstance(context, dict) and "passage_text" in context:  # MS MARCO
        return list(context["passage_text"]), [i for i, s in enumerate(context.get("is_selected", [])) if s]
    if isinstance(context, list) and context and isinstance(context[0], dict):  # MuSiQue
        passages = [f"{p.get('title', '')}\n{p.get('paragraph_text', p.get('text', ''))}".strip() for p in context]
        return passages, [i for i, p in enumerate(context) if p.get("is_supporting")]
    if isinstance(context, list) and context and isinstance(context[0], (list, tuple)):  # 2Wiki: [[title, [sents]]]
        gold_titles = {fact[0] for fact in row.get("supporting_facts", [])}
        passages = [f"{t}\n{' '.join(s)}" for t, s in context]
        return passages, [i for i, (t, _) in enumerate(context) if t in gold_titles]
    if isinstance(context, list) and all(isinstance(p, str) for p in context) and context:
        return list(context), list(row.get("supporting", []))
    raise ValueError(
        f"example {row.get('id', '?')} has no context in a known layout: give 'context' as a string or a list of "
        "passage strings (see docs/evaluation.md)."
    )


def to_qa_item(row: dict, index: int) -> QAItem:
    """Normalise one row; raises ValueError naming the missing field."""
    question = row.get("question", row.get("query", row.get("input")))
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"example {index} has no 'question' string.")
    answers = _answers(row)
    if not answers:
        raise ValueError(f"example {index} has no answers: give 'answers' as a list of strings.")
    passages, supporting = _passages(row)
    example_id = str(row.get("id", row.get("_id", row.get("qid", row.get("query_id", index)))))
    return QAItem(example_id, question.strip(), answers, passages, supporting)


def load_qa(spec: str, samples: int | None = None, seed: int = 0, presets: dict = QA_PRESETS) -> tuple[str, list[QAItem]]:
    """`spec` is a preset name, a local file, or `name=path`; returns (name, items) with `samples` drawn by `seed`."""
    name, _, location = spec.partition("=") if "=" in spec else (None, "", spec)
    if location in presets:
        hub = presets[location]
        rows = read_rows(hub.path, hub.split, hub.name, hub.data_files, hub.subset)
        name = name or location
    else:
        if not Path(location).exists() and "/" not in location:
            raise ValueError(
                f"unknown QA source {location!r}: use a preset ({', '.join(sorted(presets))}), a local .jsonl/.json/"
                ".parquet/.csv file, a Hub dataset name, or name=path."
            )
        rows = read_rows(location, split="validation" if not Path(location).exists() else "train")
        name = name or Path(location).stem
    items = []
    for index, row in enumerate(rows):
        try:
            items.append(to_qa_item(row, index))
        except ValueError:
            if Path(location).exists():
                raise  # a local file is the user's own: report its errors instead of skipping rows
    if samples is not None and samples < len(items):
        items = random.Random(seed).sample(items, samples)
    return name, items


def read_texts(source: str | Path, text_field: str = "text", split: str = "train") -> list[str]:
    """Documents from a .txt file (one document), a folder of .txt files, a .jsonl/.json/.parquet/.csv file or a Hub
    dataset."""
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"folder {path} has no .txt files.")
        return [f.read_text() for f in files]
    if path.suffix == ".txt":
        if not path.exists():
            raise ValueError(f"no such file: {path}.")
        return [path.read_text()]
    rows = read_rows(source, split=split)
    missing = [i for i, r in enumerate(rows) if not isinstance(r.get(text_field), str)]
    if missing:
        raise ValueError(f"row {missing[0]} of {source} has no string field {text_field!r}: set text_field=.")
    return [r[text_field] for r in rows]
