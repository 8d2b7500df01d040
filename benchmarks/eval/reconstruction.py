"""Reconstruction (paper Appendix A, Table 4, Figure 6): ROUGE-1 / ROUGE-L F1 of the text rebuilt from memory, by length."""

from __future__ import annotations

import dataclasses
import logging

from . import protocol
from .config import EvalArguments, ReconstructionArguments
from .harness import Example, run
from .report import comparison_table, plot_lines, summarize, write_report
from .runtime import build_systems, generate_kwargs, open_store, output_dir
from .scoring import rouge_f1

logger = logging.getLogger(__name__)


def build_examples(tokenizer, documents: list[str], lengths: list[int], samples_per_length: int) -> list[Example]:
    """The first `length` tokens of each document long enough, up to `samples_per_length` per length."""
    token_lists = tokenizer(documents, add_special_tokens=False)["input_ids"]
    examples = []
    for length in lengths:
        eligible = [i for i, ids in enumerate(token_lists) if len(ids) >= length][:samples_per_length]
        if not eligible:
            logger.warning("no document has %d tokens: length %d is skipped.", length, length)
        for i in eligible:
            text = tokenizer.decode(token_lists[i][:length])
            examples.append(
                Example(f"doc{i}@{length}", text, protocol.RECONSTRUCTION_INSTRUCTION, text, meta={"length": length})
            )
    return examples


CAP_MARGIN = 16
"""Tokens a reconstruction may run past 1.25 x its context's length (ours: room for a stop token and tokenizer drift)."""
CAP_RULE = f"per example: int({protocol.RECONSTRUCTION_LENGTH_FACTOR} x length) + {CAP_MARGIN}"
"""The answer cap, in the records' settings hash: records made under another cap are not reused."""


def max_new_tokens_for(length: int) -> int:
    """The answer cap of a `length`-token context: 1.25 x its length (the protocol) plus `CAP_MARGIN`."""
    return int(length * protocol.RECONSTRUCTION_LENGTH_FACTOR) + CAP_MARGIN


def score(example: Example, generation) -> dict:
    return rouge_f1(generation.text, example.reference)


def evaluate(model, args: EvalArguments, data: ReconstructionArguments, documents: list[str]) -> dict:
    """Run reconstruction for `args.systems` (plain template, paper temperature 0.1) and write the report."""
    examples = build_examples(model.tokenizer, documents, data.lengths, data.samples_per_length)[: args.limit]
    if not examples:
        raise ValueError(f"no document reaches any of the lengths {data.lengths}: give longer documents or shorter lengths.")
    args = dataclasses.replace(args, template="plain")  # the paper's Stage-1 format
    store, settings = open_store(args, "reconstruction", model, {"max_new_tokens_rule": CAP_RULE})
    systems = build_systems(model, args)
    records = run(  # one cap per length: 1.25 x each context's length
        examples, systems, score, store, lambda e: generate_kwargs(args, "reconstruction", max_new_tokens_for(e.meta["length"])),
        batch_size=args.batch_size, seed=args.seed, desc="reconstruction",
    )
    out = output_dir(args, "reconstruction")
    summaries = {m: summarize(records, m, by="length", error_score=0.0) for m in ("rouge1", "rougeL")}
    tables = {f"{m} F1 by context length (tokens)": comparison_table(s, "length") for m, s in summaries.items()}
    plots = [
        plot_lines(s, out / f"{m}_vs_length.png", "context length (tokens)", f"{m} F1", f"Reconstruction {m} F1", ylim=(0, 1))
        for m, s in summaries.items()
    ]
    return write_report(out, "reconstruction", settings, records, summaries, tables, plots)
