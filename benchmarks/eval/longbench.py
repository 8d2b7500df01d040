"""LongBench v2 (paper Figure 5): multiple-choice accuracy for contexts under 100K tokens, by length bucket."""

from __future__ import annotations

import bisect

from tqdm.auto import tqdm

from . import protocol
from .config import EvalArguments, LongBenchArguments
from .harness import Example, run
from .report import comparison_table, plot_lines, summarize, write_report
from .runtime import build_systems, generate_kwargs, open_store, output_dir
from .scoring import parse_choice

REQUIRED = ("question", "choice_A", "choice_B", "choice_C", "choice_D", "answer", "context")


def bucket_of(num_tokens: int, edges: list[int]) -> tuple[int, str]:
    """The bucket of a length: its lower edge and label, e.g. (8000, "8K-16K") for edges (0, 8000, 16000, ...)."""
    k = bisect.bisect_right(edges, num_tokens) - 1
    if k < 0 or k >= len(edges) - 1:
        raise ValueError(f"{num_tokens} tokens fall outside the bucket edges {edges}.")
    fmt = lambda n: f"{n // 1000}K" if n >= 1000 else str(n)  # noqa: E731
    return edges[k], f"{fmt(edges[k])}-{fmt(edges[k + 1])}"


def build_examples(tokenizer, rows: list[dict], data: LongBenchArguments) -> list[Example]:
    """Examples in the official schema (`_id`, `question`, `choice_A`..`choice_D`, `answer`, `context`) under `max_tokens`."""
    edges = sorted(data.buckets)
    if edges[-1] < data.max_tokens:
        edges.append(data.max_tokens)
    examples = []
    for index, row in enumerate(tqdm(rows, desc="longbench: measure contexts", unit="ex", disable=len(rows) < 50)):
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ValueError(f"LongBench v2 row {index} lacks {missing}: use the official schema (see docs/evaluation.md).")
        num_tokens = len(tokenizer(row["context"], add_special_tokens=False)["input_ids"])
        if num_tokens >= data.max_tokens:
            continue
        instruction = protocol.LONGBENCH_INSTRUCTION.format(
            question=row["question"].strip(), **{c: row[f"choice_{c}"].strip() for c in "ABCD"}
        )
        start, label = bucket_of(num_tokens, edges)
        examples.append(
            Example(
                str(row.get("_id", index)), row["context"], instruction, row["answer"].strip().upper(), row["question"],
                meta={"bucket": label, "bucket_start": start, "domain": row.get("domain", ""), "difficulty": row.get("difficulty", "")},
            )
        )
    return examples


def score(example: Example, generation) -> dict:
    choice = parse_choice(generation.text)
    return {"choice": choice, "accuracy": float(choice == example.reference)}


def evaluate(model, args: EvalArguments, data: LongBenchArguments, rows: list[dict]) -> dict:
    """Run LongBench v2 for `args.systems` and write accuracy by length bucket and by difficulty."""
    examples = build_examples(model.tokenizer, rows, data)[: args.limit]
    if not examples:
        raise ValueError(f"no LongBench v2 example is under {data.max_tokens} tokens.")
    store, settings = open_store(args, "longbench", model)
    records = run(
        examples, build_systems(model, args), score, store, generate_kwargs(args, "longbench"),
        batch_size=args.batch_size, seed=args.seed, desc="longbench",
    )
    out = output_dir(args, "longbench")
    starts = {r["bucket"]: r["bucket_start"] for r in records}
    by_bucket = dict(sorted(summarize(records, "accuracy", by="bucket", error_score=0.0).items(), key=lambda kv: starts.get(kv[0], float("inf"))))
    aggregates = {"accuracy_by_bucket": by_bucket, "accuracy_by_difficulty": summarize(records, "accuracy", by="difficulty", error_score=0.0)}
    tables = {
        "Accuracy (%) by context length": comparison_table(by_bucket, "length", scale=100),
        "Accuracy (%) by difficulty": comparison_table(aggregates["accuracy_by_difficulty"], "difficulty", scale=100),
    }
    plots = [plot_lines(by_bucket, out / "longbench_accuracy_vs_length.png", "context length (tokens)", "accuracy (%)", "LongBench v2", scale=100, ylim=(0, 100))]
    return write_report(out, "longbench", settings, records, aggregates, tables, plots)
