"""Scoring functions: EM / F1 / sub-span EM of extracted answers, ROUGE, multiple-choice letters, 1-10 judge scores.

Answer extraction, normalisation and matching come from `trainers.judges`, shared with the RL reward.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from rouge_score import rouge_scorer

from trainers.judges import MatchJudge, comparable_answer, extract_answer, normalize_answer

_STOPWORDS = frozenset(
    "a an the and or of in on at to is are was were be it its this that for with as by from do".split()
)


CLOSED_ANSWERS = frozenset({"yes", "no", "noanswer"})
"""Answers that HotpotQA's official F1 scores all or nothing: "yes, both are" against "yes" is wrong, not 0.5."""
YES_NO_RULE_DATASETS = frozenset({"hotpotqa", "2wiki"})
"""The sets whose official F1 has that rule (HotpotQA's script, which 2WikiMultihopQA's follows); the others' (SQuAD,
NQ, TriviaQA, ...) has none."""
F1_RULE = "SQuAD token F1; yes/no all or nothing for " + ", ".join(sorted(YES_NO_RULE_DATASETS))
"""How F1 is scored, in the records' settings hash of the benchmarks that report it: records scored under another
rule are not reused."""


def token_f1(prediction: str, references: str | Sequence[str], yes_no_rule: bool = False) -> float:
    """Best SQuAD token-level F1 of the prediction against the references (normalised as the EM judge does); with
    `yes_no_rule`, HotpotQA's: a yes/no answer (`CLOSED_ANSWERS`) on either side scores 0 unless both are the same."""
    pred = comparable_answer(prediction).split()
    best = 0.0
    for reference in [references] if isinstance(references, str) else references:
        ref = comparable_answer(reference).split()
        if not pred or not ref:  # SQuAD's rule: F1 is their agreement when either side is empty
            best = max(best, float(pred == ref and bool(prediction.strip())))
            continue
        if yes_no_rule and pred != ref and CLOSED_ANSWERS & {" ".join(pred), " ".join(ref)}:
            continue
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def answer_scores(
    response: str, references: str | Sequence[str], style: str = "any", dataset: str | None = None
) -> dict[str, float]:
    """EM, F1 and RULER sub-span EM of the answer extracted from a response (`trainers.judges.extract_answer`:
    `\\boxed{}` for `style="boxed"`, "Answer:" for `"answer"`, both for `"any"`, else the last 20 words); F1 with
    the yes/no rule when `dataset` is one of `YES_NO_RULE_DATASETS`."""
    answer = extract_answer(response, style=style)
    return {
        "em": float(MatchJudge(mode="exact", style=style).judge("", response, references).correct),
        "f1": token_f1(answer, references, yes_no_rule=dataset in YES_NO_RULE_DATASETS),
        "subspan_em": float(MatchJudge(mode="subspan", style=style).judge("", response, references).correct),
    }


class _AnyScriptTokenizer:
    """`rouge-score`'s default tokens (lower-cased alphanumeric runs) for Latin text, and one token per CJK character:
    the default keeps only [a-z0-9], so Chinese (CPT's CCI2 data) scored 0 against itself."""

    _TOKENS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOKENS.findall(text.lower())


_SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False, tokenizer=_AnyScriptTokenizer())


def rouge_f1(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1 and ROUGE-L F1 (Google's `rouge-score`, the package `evaluate`'s rouge wraps), on any script."""
    scores = _SCORER.score(reference, prediction)
    return {"rouge1": float(scores["rouge1"].fmeasure), "rougeL": float(scores["rougeL"].fmeasure)}


_CHOICE_PATTERNS = [
    re.compile(r"(?i:answer\s+is)\s*:?\s*\**\(?([A-D])\b"),
    re.compile(r"\\boxed\{\s*\(?([A-D])\)?\s*\}"),
    re.compile(r"(?i:answer)\s*:\s*\**\(?([A-D])\b"),
    re.compile(r"^\s*\(?([A-D])(?:\)|[.:]|\s*$)"),
    re.compile(r"\(([A-D])\)"),
]
_ANOTHER_LETTER = re.compile(r"\)?\**\s*(?:,|/|(?i:or|and))\s*\**\(?[A-D]\b")
"""What follows a letter that a second letter joins ("A or B", "(A)/(C)", "B and D"): no single choice."""


def parse_choice(response: str) -> str | None:
    """The chosen letter A-D from a multiple-choice reply, or None when no single letter can be read.

    Looks, in order, for "The correct answer is (X)", `\\boxed{X}`, "Answer: X", a reply starting with the
    letter, then a lone "(X)". The first pattern found decides, and only if it names one letter: every match of it
    the same letter, none joined to another ("A or B"). So a reply that changes its mind ("if the answer is A ... so
    the answer is B") or names a rejected letter after a comma ("B, A is wrong") reads no choice.
    """
    if "\\boxed" in response:  # the RL template's format: `\boxed{B}`, `\boxed{B. The treaty}`, `\boxed{\text{C}}`
        boxed = re.match(r"^\s*\(?([A-D])\b", extract_answer(response, style="boxed"))
        if boxed:
            return None if _ANOTHER_LETTER.match(boxed.string, boxed.end()) else boxed.group(1).upper()
    for pattern in _CHOICE_PATTERNS:
        matches = list(pattern.finditer(response))
        if matches:
            letters = {match.group(1).upper() for match in matches}
            joined = any(_ANOTHER_LETTER.match(response, match.end()) for match in matches)
            return letters.pop() if len(letters) == 1 and not joined else None
    return None


_SCORE_PATTERNS = [
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"(?:rating|score)\s*(?:is)?\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*$"),
]


def parse_judge_score(reply: str, low: float = 1, high: float = 10) -> float | None:
    """A 1-10 score from a judge's reply ("Rating: [[7]]", "Score: 7", "7/10", "7"), None when malformed."""
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(reply)
        if match:
            value = float(match.group(1))
            return value if low <= value <= high else None
    return None


def needle_recall_score(response: str, answer: str) -> float:
    """Rule-based NIAH score on the judge's 1-10 scale: 1 + 9 x the share of the answer's content words recalled."""
    words = [w for w in normalize_answer(answer).split() if w not in _STOPWORDS]
    if not words:
        raise ValueError("answer has no content words to look for.")
    found = set(normalize_answer(response).split())
    return 1 + 9 * sum(w in found for w in words) / len(words)
