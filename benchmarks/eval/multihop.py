"""Long-context multi-hop QA, RULER-style (paper Figure 4): gold paragraphs among distractors, sub-span EM by length."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from . import protocol
from .config import EvalArguments
from .harness import Example, run
from .loaders import QAItem
from .report import comparison_table, plot_lines, summarize, write_report
from .runtime import build_systems, generate_kwargs, open_store
from .scoring import answer_scores

logger = logging.getLogger(__name__)
DEFAULT_MAX_NEW_TOKENS = 600


def instruction_for(question: str, template: str) -> str:
    """The RULER QA instruction; the RL template asks for `\\boxed{}` itself, so it gets the bare question (Figure 13)."""
    return question if template == "rl" else protocol.MULTIHOP_INSTRUCTION.format(question=question)


def build_examples(tokenizer, datasets: dict[str, list[QAItem]], lengths: list[int], template: str = "chat", seed: int = 0) -> list[Example]:
    """For each item and length: its gold paragraphs at random places among other items' paragraphs, up to `length` tokens."""
    pool = [(name, item.id, p) for name, items in datasets.items() for item in items for p in item.passages]
    pool_tokens = [len(ids) for ids in tokenizer([p for _, _, p in pool], add_special_tokens=False)["input_ids"]]
    examples = []
    for name, items in datasets.items():
        for item in items:
            gold = [item.passages[i] for i in item.supporting] or item.passages
            gold_tokens = sum(len(ids) for ids in tokenizer(gold, add_special_tokens=False)["input_ids"])
            for length in lengths:
                rng = random.Random(f"{seed}/{name}/{item.id}/{length}")
                order = [k for k in range(len(pool)) if pool[k][:2] != (name, item.id)]
                rng.shuffle(order)
                passages, total = [], gold_tokens
                for k in order:
                    if total + pool_tokens[k] > length:
                        continue
                    passages.append(pool[k][2])
                    total += pool_tokens[k]
                if total < 0.9 * length:
                    logger.warning("%s/%s: only %d distractor tokens for length %d; add more data.", name, item.id, total, length)
                for passage in gold:
                    passages.insert(rng.randint(0, len(passages)), passage)
                documents = [f"Document {i + 1}:\n{p}" for i, p in enumerate(passages)]
                examples.append(
                    Example(
                        f"{name}/{item.id}@{length}", documents, instruction_for(item.question, template), item.answers,
                        item.question, meta={"dataset": name, "length": length},
                    )
                )
    return examples


def score(example: Example, generation) -> dict:
    scores = answer_scores(generation.text, example.reference)
    return {**scores, "accuracy": scores["subspan_em"]}


def evaluate(model, args: EvalArguments, datasets: dict[str, list[QAItem]], lengths: list[int]) -> dict:
    """Run the multi-hop stress test for `args.systems` and write the table and the accuracy-vs-length curve."""
    examples = build_examples(model.tokenizer, datasets, lengths, args.template, args.seed)[: args.limit]
    if not examples:
        raise ValueError("no multi-hop examples: check the datasets and lengths arguments.")
    store, settings = open_store(args, "multihop", model)
    records = run(
        examples, build_systems(model, args), score, store, generate_kwargs(args, "multihop", DEFAULT_MAX_NEW_TOKENS),
        batch_size=args.batch_size, seed=args.seed, desc="multihop",
    )
    out = Path(args.output_dir)
    aggregates = {"accuracy_by_length": summarize(records, "accuracy", by="length"), "accuracy_by_dataset": summarize(records, "accuracy", by="dataset")}
    tables = {
        "Sub-span EM (%) by context length": comparison_table(aggregates["accuracy_by_length"], "length", scale=100),
        "Sub-span EM (%) by dataset": comparison_table(aggregates["accuracy_by_dataset"], "dataset", scale=100),
    }
    plots = [plot_lines(aggregates["accuracy_by_length"], out / "multihop_accuracy_vs_length.png", "context length (tokens)", "sub-span EM (%)", "Long-context multi-hop QA", scale=100)]
    return write_report(out, "multihop", settings, records, aggregates, tables, plots)
