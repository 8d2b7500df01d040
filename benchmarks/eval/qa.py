"""QA (paper Table 3): judge accuracy (or EM / F1 / sub-span EM offline) per dataset, compressed vs full context."""

from __future__ import annotations

from . import protocol
from .config import EvalArguments
from .harness import Example, run
from .loaders import QAItem
from .report import comparison_table, plot_bars, summarize, write_report
from .runtime import build_systems, generate_kwargs, open_store, output_dir
from .scoring import F1_RULE, answer_scores


def split_of(dataset: str) -> str:
    """Which side of the paper's split a dataset is on: in-distribution, out-of-distribution, or other."""
    if dataset in protocol.QA_IN_DISTRIBUTION:
        return "in-distribution"
    return "out-of-distribution" if dataset in protocol.QA_OUT_OF_DISTRIBUTION else "other"


def build_examples(datasets: dict[str, list[QAItem]]) -> list[Example]:
    """One example per item: the passages are the context (compressed separately, in order), the question the instruction."""
    return [
        Example(
            f"{name}/{item.id}", item.passages, item.question, item.answers, item.question,
            meta={"dataset": name, "split": split_of(name)},
        )
        for name, items in datasets.items()
        for item in items
    ]


class QAScorer:
    """EM / F1 / sub-span EM always; with an `LLMJudge`, its verdict is the accuracy (else sub-span EM is).

    `score_batch` sends a batch's judge calls through `judge_batch`, concurrently for a remote judge.
    """

    def __init__(self, judge=None):
        self.judge = judge

    def __call__(self, example: Example, generation) -> dict:
        return self.score_batch([example], [generation])[0]

    def score_batch(self, examples: list[Example], generations: list) -> list[dict]:
        scores = [answer_scores(g.text, e.reference, g.answer_style, e.meta.get("dataset")) for e, g in zip(examples, generations)]
        if self.judge is None:
            return [{**s, "accuracy": s["subspan_em"]} for s in scores]
        verdicts = self.judge.judge_batch(
            [e.question for e in examples], [g.text for g in generations], [e.reference for e in examples]
        )
        return [
            {**s, "accuracy": float(v.correct), "judge_failed": v.failed, "judge_raw": v.raw} for s, v in zip(scores, verdicts)
        ]


make_scorer = QAScorer


def evaluate(model, args: EvalArguments, datasets: dict[str, list[QAItem]], judge=None) -> dict:
    """Run QA for `args.systems` over `datasets` (name -> items) and write the report (accuracy, EM/F1, lengths)."""
    examples = build_examples(datasets)[: args.limit]
    if not examples:
        raise ValueError("no QA examples to evaluate: check the datasets argument.")
    store, settings = open_store(args, "qa", model, {"judge": type(judge).__name__ if judge else "subspan_em", "f1": F1_RULE})
    records = run(
        examples, build_systems(model, args), make_scorer(judge), store,
        generate_kwargs(args, "qa"), batch_size=args.batch_size, seed=args.seed, desc="qa",
    )
    accuracy = "judge accuracy" if judge else "sub-span EM"
    aggregates = {
        # Table 3's averages are means over datasets, not over pooled examples
        "accuracy": summarize(records, "accuracy", by="dataset", error_score=0.0, average_over="dataset"),
        "accuracy_by_split": summarize(records, "accuracy", by="split", error_score=0.0, average_over="dataset"),
        "em": summarize(records, "em", by="dataset", error_score=0.0, average_over="dataset"),
        "f1": summarize(records, "f1", by="dataset", error_score=0.0, average_over="dataset"),
        "response_tokens": summarize(records, "response_tokens", by="dataset"),
    }
    tables = {
        f"QA {accuracy} (%) by dataset": comparison_table(aggregates["accuracy"], "dataset", scale=100),
        f"QA {accuracy} (%) in / out of distribution": comparison_table(aggregates["accuracy_by_split"], "split", scale=100),
        "Exact match (%)": comparison_table(aggregates["em"], "dataset", scale=100),
        "Token F1 (%)": comparison_table(aggregates["f1"], "dataset", scale=100),
        "Average response length (tokens)": comparison_table(aggregates["response_tokens"], "dataset", digits=1, ratio_label="memcomp / full %"),
    }
    out = output_dir(args, "qa")
    plots = [plot_bars(aggregates["accuracy"], out / "qa_accuracy.png", "dataset", f"{accuracy} (%)", "QA accuracy", scale=100, ylim=(0, 100))]
    return write_report(out, "qa", settings, records, aggregates, tables, plots)
