"""Long-context multi-hop QA, RULER-style (paper Figure 4): gold paragraphs among distractors, sub-span EM by length."""

from __future__ import annotations

import logging
import random

from . import protocol
from .config import EvalArguments, MultiHopArguments
from .harness import Example, run
from .loaders import QAItem
from .report import comparison_table, plot_lines, summarize, write_report
from .runtime import build_systems, generate_kwargs, open_store, output_dir, resolve_template
from .scoring import F1_RULE, answer_scores

logger = logging.getLogger(__name__)


def instruction_for(question: str, template: str) -> str:
    """The RULER QA instruction; the RL template asks for `\\boxed{}` itself, so it gets the bare question (Figure 13).
    The full-context baseline always gets the RULER instruction (`Example.system_instructions`)."""
    return question if template == "rl" else protocol.MULTIHOP_INSTRUCTION.format(question=question)


def build_examples(
    tokenizer,
    datasets: dict[str, list[QAItem]],
    lengths: list[int],
    samples_per_set: int | None = None,
    template: str = "chat",
    seed: int = 0,
) -> list[Example]:
    """`samples_per_set` questions per dataset, each at every length: its gold paragraphs at random places among
    paragraphs of the dataset's other questions (the distractors), filled up to `length` tokens."""
    examples = []
    for name, items in datasets.items():
        pool = [(item.id, p) for item in items for p in item.passages]
        # Each passage costs its "Document i:" header and blank-line join too (i < 1000 assumed for the header).
        overhead = len(tokenizer("\n\nDocument 999:\n", add_special_tokens=False)["input_ids"])
        pool_tokens = [len(ids) + overhead for ids in tokenizer([p for _, p in pool], add_special_tokens=False)["input_ids"]]
        chosen = items if samples_per_set is None or samples_per_set >= len(items) else random.Random(seed).sample(items, samples_per_set)
        for item in chosen:
            gold = [item.passages[i] for i in item.supporting] or item.passages
            gold_tokens = sum(len(ids) + overhead for ids in tokenizer(gold, add_special_tokens=False)["input_ids"])
            rng = random.Random(f"{seed}/{name}/{item.id}")
            order = [k for k in range(len(pool)) if pool[k][0] != item.id]
            rng.shuffle(order)
            for length in lengths:
                passages, total = [], gold_tokens
                for k in order:  # a prefix of the draw, so contexts of all lengths nest
                    if total + pool_tokens[k] > length:
                        break
                    passages.append(pool[k][1])
                    total += pool_tokens[k]
                if total < 0.9 * length:
                    logger.warning("%s/%s: the distractors fill only %d of %d tokens; use more data.", name, item.id, total, length)
                for passage in gold:
                    passages.insert(rng.randint(0, len(passages)), passage)
                documents = [f"Document {i + 1}:\n{p}" for i, p in enumerate(passages)]
                examples.append(
                    Example(
                        f"{name}/{item.id}@{length}", documents, instruction_for(item.question, template), item.answers,
                        item.question, meta={"dataset": name, "length": length},
                        system_instructions={"full": instruction_for(item.question, "chat")},
                    )
                )
    return examples


def score(example: Example, generation) -> dict:
    scores = answer_scores(generation.text, example.reference, generation.answer_style, example.meta.get("dataset"))
    return {**scores, "accuracy": scores["subspan_em"]}


def evaluate(model, args: EvalArguments, data: MultiHopArguments, datasets: dict[str, list[QAItem]]) -> dict:
    """Run the multi-hop stress test for `args.systems` and write the table and the accuracy-vs-length curve.

    `datasets` holds every item of each set: `data.samples_per_set` of them are asked, all of them supply distractors.
    """
    examples = build_examples(
        model.tokenizer, datasets, data.lengths, data.samples_per_set, resolve_template(model, args), args.seed
    )[: args.limit]
    if not examples:
        raise ValueError("no multi-hop examples: check the datasets and lengths arguments.")
    store, settings = open_store(args, "multihop", model, {"f1": F1_RULE})
    records = run(
        examples, build_systems(model, args), score, store, generate_kwargs(args, "multihop"),
        batch_size=args.batch_size, seed=args.seed, desc="multihop",
    )
    out = output_dir(args, "multihop")
    aggregates = {"accuracy_by_length": summarize(records, "accuracy", by="length", error_score=0.0),
                  "accuracy_by_dataset": summarize(records, "accuracy", by="dataset", error_score=0.0)}
    tables = {
        "Sub-span EM (%) by context length": comparison_table(aggregates["accuracy_by_length"], "length", scale=100),
        "Sub-span EM (%) by dataset": comparison_table(aggregates["accuracy_by_dataset"], "dataset", scale=100),
    }
    plots = [plot_lines(aggregates["accuracy_by_length"], out / "multihop_accuracy_vs_length.png", "context length (tokens)", "sub-span EM (%)", "Long-context multi-hop QA", scale=100, ylim=(0, 100))]
    return write_report(out, "multihop", settings, records, aggregates, tables, plots)
