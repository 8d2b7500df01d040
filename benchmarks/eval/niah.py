"""Needle in a haystack (paper Appendix F, Table 8, Figure 3): 1-10 retrieval score per context length x depth."""

from __future__ import annotations

from . import protocol
from .config import EvalArguments, NIAHArguments
from .harness import Example, run
from .report import comparison_table, plot_heatmap, plot_lines, summarize, write_report
from .runtime import build_systems, generate_kwargs, open_store, output_dir
from .scoring import needle_recall_score


def insert_needle(tokenizer, haystack_ids: list[int], needle: str, length: int, depth: int, sentence_ends: set[int]) -> str:
    """A `length`-token context of repeated haystack with the needle at `depth`% (moved back to a sentence end)."""
    budget = length - len(tokenizer(" " + needle, add_special_tokens=False)["input_ids"])
    if budget <= 0:
        raise ValueError(f"length {length} is too short to hold the needle: use lengths above {length}.")
    ids = (haystack_ids * (budget // len(haystack_ids) + 1))[:budget]
    cut = budget * depth // 100
    if 0 < cut < budget:
        while cut > 0 and ids[cut - 1] not in sentence_ends:
            cut -= 1
    before, after = tokenizer.decode(ids[:cut]), tokenizer.decode(ids[cut:])
    return " ".join(part for part in (before.rstrip(), needle, after.lstrip()) if part)


def build_examples(tokenizer, haystack: str, lengths: list[int], depths: list[int]) -> list[Example]:
    """One example per (length, depth), with the paper's needle and question."""
    if not haystack.strip():
        raise ValueError("haystack is empty: give a text file to fill the context with.")
    if any(not 0 <= d <= 100 for d in depths):
        raise ValueError(f"depths are percentages in [0, 100], got {depths}.")
    haystack_ids = tokenizer(haystack, add_special_tokens=False)["input_ids"]
    sentence_ends = {t for t in set(haystack_ids) if tokenizer.decode([t]).rstrip().endswith((".", "!", "?"))}
    return [
        Example(
            f"len{length}/depth{depth}",
            insert_needle(tokenizer, haystack_ids, protocol.NIAH_NEEDLE, length, depth, sentence_ends),
            protocol.NIAH_QUESTION,
            protocol.NIAH_ANSWER,
            protocol.NIAH_QUESTION,
            meta={"length": length, "depth": depth},
        )
        for length in lengths
        for depth in depths
    ]


def make_scorer(judge=None):
    """A 1-10 score: the `ScoreJudge`'s when given, else the rule-based needle recall score."""

    def score(example: Example, generation) -> dict:
        if judge is None:
            return {"score": needle_recall_score(generation.text, example.reference)}
        result = judge.score(example.question, generation.text, example.reference)
        return {"score": result.score, "judge_failed": result.failed, "judge_raw": result.raw}

    return score


def evaluate(model, args: EvalArguments, data: NIAHArguments, haystack: str, judge=None) -> dict:
    """Run NIAH (greedy, paper protocol) for `args.systems` and write the table, curve and one heatmap per system."""
    examples = build_examples(model.tokenizer, haystack, data.lengths, data.depths)[: args.limit]
    store, settings = open_store(args, "niah", model, {"judge": type(judge).__name__ if judge else "needle_recall"})
    systems = build_systems(model, args)
    records = run(
        examples, systems, make_scorer(judge), store, generate_kwargs(args, "niah"),
        batch_size=args.batch_size, seed=args.seed, desc="niah",
    )
    out = output_dir(args, "niah")
    aggregates = {"score_by_length": summarize(records, "score", by="length", error_score=1.0),  # the 1-10 scale's floor
                  "score_by_depth": summarize(records, "score", by="depth", error_score=1.0)}
    tables = {
        "NIAH score (1-10) by context length": comparison_table(aggregates["score_by_length"], "length"),
        "NIAH score (1-10) by needle depth (%)": comparison_table(aggregates["score_by_depth"], "depth"),
    }
    plots = [plot_lines(aggregates["score_by_length"], out / "niah_score_vs_length.png", "context length (tokens)", "score (1-10)", "NIAH", ylim=(1, 10))]
    plots += [plot_heatmap(records, s.name, "score", out / f"niah_heatmap_{s.name}.png", f"NIAH: {s.name}") for s in systems]
    return write_report(out, "niah", settings, records, aggregates, tables, plots)
