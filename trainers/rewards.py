"""Reward functions in TRL's signature (`prompts`, `completions`, `completion_ids`, dataset columns as kwargs).

`JudgeReward` is the paper's binary reward `R = 1[Judge(y, a*) = correct]` (Eq. 3); `OverlongPenalty` is
DAPO's soft overlong punishment with the penalty factor (Table 10). Their `__name__` keys TRL's metrics.
"""

from __future__ import annotations

from .dapo import overlong_penalty
from .judges import LLMJudge, MatchJudge, extract_answer
from .stages import RL


def _text(completion) -> str:
    """A completion as text: TRL passes strings, or message lists for conversational prompts."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion)


class JudgeReward:
    """1.0 when the judge accepts a completion against the row's reference answer(s), 0.0 when it rejects it, None
    when the judge failed (TRL: NaN; `MemCompGRPOTrainer` then leaves that prompt group out of training).

    Reads the question from `question_column` (falling back to the prompt) and the reference from
    `answer_column`; logs judge failures and the share of completions with a `\\boxed{}` answer.
    """

    __name__ = "judge"

    def __init__(self, judge: LLMJudge | MatchJudge, answer_column: str = "answer", question_column: str = "question"):
        if not callable(getattr(judge, "judge_batch", None)):
            raise TypeError(f"judge must be an LLMJudge or MatchJudge (with judge_batch), got {type(judge).__name__}.")
        self.judge, self.answer_column, self.question_column = judge, answer_column, question_column

    def __call__(self, prompts, completions, log_metric=None, **columns) -> list[float | None]:
        if self.answer_column not in columns:
            raise ValueError(
                f"the training dataset has no {self.answer_column!r} column with reference answers; add it or set "
                f"JudgeReward(answer_column=...). Columns seen: {sorted(columns)}."
            )
        questions = columns.get(self.question_column, prompts)
        texts = [_text(c) for c in completions]
        results = self.judge.judge_batch([_text(q) for q in questions], texts, columns[self.answer_column])
        if log_metric is not None:
            log_metric("judge/failed_ratio", sum(r.failed for r in results) / len(results))
            log_metric("judge/boxed_ratio", sum("\\boxed{" in t for t in texts) / len(texts))
        return [r.reward for r in results]


class OverlongPenalty:
    """DAPO soft overlong punishment on completion token counts, scaled by `factor` (0 to -factor)."""

    __name__ = "overlong_penalty"

    def __init__(
        self, max_length: int = RL.max_completion_length, buffer: int = RL.overlong_buffer,
        factor: float = RL.overlong_penalty_factor,
    ):
        overlong_penalty([0], max_length, buffer, factor)  # validates the settings now, not at the first step
        self.max_length, self.buffer, self.factor = max_length, buffer, factor

    def __call__(self, completion_ids, **unused) -> list[float]:
        return overlong_penalty([len(ids) for ids in completion_ids], self.max_length, self.buffer, self.factor)


__all__ = ["JudgeReward", "OverlongPenalty", "extract_answer"]
