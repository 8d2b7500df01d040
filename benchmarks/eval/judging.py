"""Judges for evaluation: the QA judge from `trainers.judges`, the NIAH 1-10 score judge, and a factory for both."""

from __future__ import annotations

from dataclasses import dataclass

from trainers.judges import JudgeBackend, LLMJudge, OpenAIJudgeBackend, load_hf_backend

from .scoring import parse_judge_score

# The NIAH rubric (Appendix H.2 scores 1-10), after Kamradt's needle-in-a-haystack evaluator.
NIAH_JUDGE_PROMPT = """You are grading how well a response retrieves a fact, against the reference answer.

Question: {question}

Reference answer: {reference}

Response to grade: {response}

Score the response from 1 to 10:
1: the response is unrelated to the reference or gives no answer.
3: the response has minor relevance but does not match the reference.
5: the response is moderately relevant but contains inaccuracies.
7: the response matches the reference but has minor omissions.
10: the response is fully accurate and matches the reference.

Reply with exactly one line: "Rating: [[N]]"."""


@dataclass(frozen=True)
class ScoreResult:
    """One 1-10 score; `failed` means the judge gave no usable score (then `score` is 1, the failure score)."""

    score: float
    failed: bool = False
    raw: str = ""


class ScoreJudge(LLMJudge):
    """A 1-10 LLM judge over any `JudgeBackend`: `LLMJudge`'s retries, back-off and `stats`, then a score of 1 and
    `failed` when no reply carries a usable score."""

    def __init__(self, backend: JudgeBackend, retries: int = 2, prompt_template: str = NIAH_JUDGE_PROMPT, **kwargs):
        super().__init__(backend, retries=retries, prompt_template=prompt_template, **kwargs)

    def judge(self, question, response, reference):
        raise TypeError("ScoreJudge scores 1-10: call score(question, response, reference); LLMJudge gives verdicts.")

    def score(self, question: str, response: str, reference: str) -> ScoreResult:
        value, raw = self.ask(self.build_prompt(question, response, reference), parse_judge_score)
        return ScoreResult(score=1.0, failed=True, raw=raw) if value is None else ScoreResult(score=value, raw=raw)


def build_backend(
    judge_model: str | None, judge_url: str | None = None, api_key: str | None = None, timeout: float = 60.0
) -> JudgeBackend | None:
    """The judge backend the arguments name: an OpenAI-compatible server (`judge_url`), a local HF model, or None."""
    if judge_url:
        if not judge_model:
            raise ValueError("judge_url needs judge_model= naming the served model (e.g. Qwen/Qwen2.5-72B-Instruct).")
        return OpenAIJudgeBackend(judge_url, judge_model, api_key=api_key, timeout=timeout)
    return load_hf_backend(judge_model) if judge_model else None


def judges_from_args(args) -> tuple[LLMJudge | None, ScoreJudge | None]:
    """The QA judge and the NIAH score judge `EvalArguments` configure (both None: rule-based scoring)."""
    backend = build_backend(args.judge_model, args.judge_url, args.judge_api_key, args.judge_timeout)
    if backend is None:
        return None, None
    return LLMJudge(backend), ScoreJudge(backend)


__all__ = ["LLMJudge", "NIAH_JUDGE_PROMPT", "ScoreJudge", "ScoreResult", "build_backend", "judges_from_args"]
