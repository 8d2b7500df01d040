"""Reward functions in TRL's calling convention, and judges built from command-line arguments."""

import pytest

from trainers.judges import JudgeArguments, LLMJudge, MatchJudge, OpenAIJudgeBackend, build_judge
from trainers.rewards import JudgeReward, OverlongPenalty


def test_judge_reward_scores_and_logs_like_trl_calls_it():
    logged = {}
    reward = JudgeReward(MatchJudge())
    values = reward(
        prompts=["Who?", "Who?", "Where?"],
        completions=[r"so \boxed{Ada Lovelace}", "I do not know", [{"role": "assistant", "content": "Answer: Paris"}]],
        completion_ids=[[1], [2], [3]],
        answer=["Ada Lovelace", "Ada Lovelace", ["Lyon", "Paris"]],
        log_metric=lambda name, value: logged.__setitem__(name, value),
        trainer_state=None,
    )
    assert values == [1.0, 0.0, 1.0]
    assert logged == {"judge/failed_ratio": 0.0, "judge/boxed_ratio": pytest.approx(1 / 3)}
    assert reward.__name__ == "judge"  # TRL logs rewards/judge/mean


def test_judge_reward_uses_the_question_column_for_llm_judges():
    class Recorder:
        def __init__(self):
            self.prompts = []

        def complete(self, prompt):
            self.prompts.append(prompt)
            return "Verdict: CORRECT"

    backend = Recorder()
    reward = JudgeReward(LLMJudge(backend))
    assert reward(prompts=["raw prompt"], completions=["x"], answer=["x"], question=["Real question?"]) == [1.0]
    assert "Real question?" in backend.prompts[0] and "raw prompt" not in backend.prompts[0]


def test_judge_reward_errors_name_the_fix():
    with pytest.raises(TypeError, match="LLMJudge or MatchJudge"):
        JudgeReward(object())
    with pytest.raises(ValueError, match="answer_column"):
        JudgeReward(MatchJudge())(prompts=["q"], completions=["a"], reference=["a"])


def test_overlong_penalty_reward_counts_completion_tokens():
    reward = OverlongPenalty(max_length=10, buffer=4, factor=0.5)
    assert reward(completion_ids=[[0] * 6, [0] * 8, [0] * 10, [0] * 30]) == pytest.approx([0.0, -0.25, -0.5, -0.5])
    with pytest.raises(ValueError, match="buffer"):
        OverlongPenalty(max_length=10, buffer=20)


def test_build_judge_from_arguments():
    assert isinstance(build_judge(JudgeArguments()), MatchJudge)
    assert build_judge(JudgeArguments(match_mode="exact")).mode == "exact"
    judge = build_judge(JudgeArguments(judge="openai", judge_model="Qwen/Qwen3-32B", judge_base_url="http://h:8000/v1",
                                       judge_extra_body='{"chat_template_kwargs": {"enable_thinking": false}}', judge_retries=5))
    assert isinstance(judge.backend, OpenAIJudgeBackend) and judge.retries == 5
    assert judge.backend.extra_body == {"chat_template_kwargs": {"enable_thinking": False}}
    assert judge.max_workers == 32
    with pytest.raises(ValueError, match="judge_model"):
        build_judge(JudgeArguments(judge="openai"))
    with pytest.raises(ValueError, match="judge_base_url"):
        build_judge(JudgeArguments(judge="openai", judge_model="m"))
    with pytest.raises(ValueError, match="'match', 'openai' or 'hf'"):
        build_judge(JudgeArguments(judge="gpt", judge_model="m"))
