"""Evaluation scorers on hand-made cases: answer extraction order, EM/F1/sub-span EM, ROUGE, MC letters, judge replies."""

import pytest

from conftest import ScriptedBackend

from benchmarks.eval.judging import ScoreJudge
from benchmarks.eval.qa import make_scorer
from benchmarks.eval.harness import Example
from benchmarks.eval.systems import Generation
from benchmarks.eval.scoring import answer_scores, needle_recall_score, parse_choice, parse_judge_score, rouge_f1, token_f1
from trainers.judges import LLMJudge


@pytest.mark.parametrize(
    "response, references, expected",
    [
        ("It was built by \\boxed{Northbridge}.", ["Northbridge"], dict(em=1, subspan_em=1, f1=1)),
        ("The city is Northbridge.", ["Northbridge"], dict(em=0, subspan_em=1)),
        ("Answer: in the year 1921", ["1921"], dict(em=0, subspan_em=1)),
        ("Answer: 19210", ["1921"], dict(em=0, subspan_em=0, f1=0)),  # whole words only
        ("The musician.", ["a travelling musician", "the musician"], dict(em=1, subspan_em=1)),
    ],
)
def test_answer_scores(response, references, expected):
    scores = answer_scores(response, references)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value), key


def test_extraction_order_boxed_then_answer_then_last_20_words():
    # \boxed{} wins over a later "Answer:"; "Answer:" wins over the tail; else only the last 20 words count.
    assert answer_scores("Answer: Paris. So \\boxed{Rome}", ["Rome"])["em"] == 1
    assert answer_scores("Answer: Paris. So \\boxed{Rome}", ["Paris"])["subspan_em"] == 0
    assert answer_scores("Rome is wrong.\nAnswer: Paris", ["Paris"])["em"] == 1
    assert answer_scores("Rome is wrong.\nAnswer: Paris", ["Rome"])["subspan_em"] == 0
    filler = " ".join(["word"] * 20)
    assert answer_scores(f"Rome {filler}", ["Rome"])["subspan_em"] == 0  # 21st word from the end is cut off
    assert answer_scores(f"{filler} Rome", ["Rome"])["subspan_em"] == 1


def test_token_f1_and_rouge_known_values():
    assert token_f1("the silver engine", "silver engine room") == pytest.approx(0.8)  # P=1, R=2/3
    assert token_f1("nothing shared", ["silver engine"]) == 0.0
    assert token_f1("The", "The") == 1.0 and answer_scores("Answer: The", "The")["em"] == 1.0  # F1 agrees with EM
    assert token_f1("", "") == 0.0  # an empty answer is never right
    # HotpotQA's official rule (its sets only): a yes/no answer scores all or nothing, on either side
    hotpot = dict(yes_no_rule=True)
    assert token_f1("Yes.", "yes", **hotpot) == 1.0 and token_f1("no", "yes", **hotpot) == 0.0
    assert token_f1("yes, both are", "yes", **hotpot) == 0.0 and token_f1("yes, both are", "yes") == 0.5  # SQuAD's: none
    assert token_f1("yes", "yes they were", **hotpot) == 0.0 and token_f1("yes", ["no", "yes"], **hotpot) == 1.0
    assert answer_scores("yes, both are", "yes", dataset="hotpotqa")["f1"] == 0.0
    assert answer_scores("yes, both are", "yes", dataset="squad")["f1"] == 0.5


def test_an_example_a_system_could_not_take_counts_as_a_failure_for_it():
    from benchmarks.eval.report import summarize

    records = [{"id": "4k", "system": "memcomp", "accuracy": 1.0}, {"id": "4k", "system": "full", "accuracy": 1.0},
               {"id": "120k", "system": "memcomp", "accuracy": 0.0}, {"id": "120k", "system": "full", "error": "too long"}]
    summary = summarize(records, "accuracy", error_score=0.0)["all"]
    assert summary == {"full": {"mean": 0.5, "n": 2}, "memcomp": {"mean": 0.5, "n": 2}}  # both over the same examples
    assert summarize(records, "accuracy")["all"]["full"] == {"mean": 1.0, "n": 1}  # without a failure value: left out


def test_qa_averages_are_over_datasets_as_in_table_3():
    from benchmarks.eval.report import summarize

    records = [{"system": "memcomp", "dataset": "big", "split": "in", "accuracy": 1.0}] * 9
    records += [{"system": "memcomp", "dataset": "small", "split": "in", "accuracy": 0.0}]
    assert summarize(records, "accuracy", by="dataset")["all"]["memcomp"]["mean"] == 0.9  # pooled examples
    by_dataset = summarize(records, "accuracy", by="dataset", average_over="dataset")
    assert by_dataset["all"]["memcomp"] == {"mean": 0.5, "n": 10} and by_dataset["big"]["memcomp"]["mean"] == 1.0
    assert summarize(records, "accuracy", by="split", average_over="dataset")["in"]["memcomp"]["mean"] == 0.5
    assert rouge_f1("the cat sat on the mat", "the cat sat on the mat") == {"rouge1": 1.0, "rougeL": 1.0}
    assert rouge_f1("the cat sat", "the cat sat on the mat") == pytest.approx({"rouge1": 2 / 3, "rougeL": 2 / 3})
    # same words, scrambled: unigram overlap is perfect, the longest common subsequence is 3 of 6 words
    assert rouge_f1("mat the on sat cat the", "the cat sat on the mat") == pytest.approx({"rouge1": 1.0, "rougeL": 0.5})
    assert rouge_f1("天气很好", "天气很好") == {"rouge1": 1.0, "rougeL": 1.0}  # the default tokenizer scored 0
    assert rouge_f1("天气很好", "天气不好") == pytest.approx({"rouge1": 0.75, "rougeL": 0.75})
    assert rouge_f1("", "the cat") == {"rouge1": 0.0, "rougeL": 0.0}


def test_rouge_on_ascii_text_is_rouge_scores_default():
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    pairs = [("The cat, 2 dogs & 3 birds!", "the cat and two dogs"), ("Hello-world x_y", "hello world x y z"),
             ("Reconstruct the memory: it's 1921.", "It is 1921, reconstructed")]
    for prediction, reference in pairs:
        expected = default.score(reference, prediction)
        assert rouge_f1(prediction, reference) == pytest.approx({k: expected[k].fmeasure for k in ("rouge1", "rougeL")})


@pytest.mark.parametrize(
    "reply, letter",
    [
        ('The correct answer is (B).', "B"),
        ("The correct answer is **C**", "C"),
        ("Reasoning... so \\boxed{D}", "D"),
        ("\\boxed{B. The treaty}", "B"),  # the RL template's boxed forms
        ("Hence \\boxed{\\text{C}}", "C"),
        ("Answer: A", "A"),
        ("(A) The silver engine", "A"),
        ("C) the crowd", "C"),
        ("B", "B"),
        ("I think (B) is right, (B) it is.", "B"),
        ("Either (A) or (C).", None),  # ambiguous
        ("The answer is A or B.", None),  # the first pattern found names two letters: no choice, not its first
        ("Answer: (B)/(D)", None),
        ("\\boxed{A, C}", None),
        ("The answer is C. Later: the answer is D", None),
        ("The answer is B, because the treaty came first.", "B"),
        ("Answer: A. And (C) is wrong.", "A"),
        ("A sandwich in the park.", None),  # a word, not a choice
        ("the answer is a sandwich", None),
        ("", None),
    ],
)
def test_parse_choice(reply, letter):
    assert parse_choice(reply) == letter


@pytest.mark.parametrize(
    "reply, score",
    [
        ("Rating: [[7]]", 7),
        ("[[10]]", 10),
        ("Score: 8", 8),
        ("7/10", 7),
        (" 9 ", 9),
        ("Rating: [[11]]", None),
        ("Rating: [[0]]", None),
        ("I cannot rate this response.", None),
        ("", None),
    ],
)
def test_parse_judge_score(reply, score):
    assert parse_judge_score(reply) == score


def test_needle_recall_score_spans_1_to_10():
    answer = "Eat a sandwich and sit in Dolores Park on a sunny day."
    assert needle_recall_score("You should eat a sandwich and sit in Dolores Park on a sunny day!", answer) == 10
    assert needle_recall_score("No idea.", answer) == 1
    assert needle_recall_score("Eat a sandwich.", answer) == pytest.approx(1 + 9 * 2 / 7)  # 2 of 7 content words
    with pytest.raises(ValueError, match="content words"):
        needle_recall_score("x", "the a an")


def test_score_judge_retries_malformed_then_parses():
    backend = ScriptedBackend("I think it is good", "Rating: [[8]]")
    judge = ScoreJudge(backend, retries=2, retry_delay=0)
    result = judge.score("Q?", "response", "reference")
    assert (result.score, result.failed, len(backend.prompts)) == (8, False, 2)
    assert (judge.stats["calls"], judge.stats["malformed"], judge.stats["retried"]) == (1, 1, 1)
    assert "Reference answer: reference" in backend.prompts[0] and "Response to grade: response" in backend.prompts[0]


def test_score_judge_fails_to_1_after_retries_and_survives_errors():
    backend = ScriptedBackend(TimeoutError("slow"), "no score here", "Rating: [[42]]")
    judge = ScoreJudge(backend, retries=2, retry_delay=0)
    result = judge.score("Q?", "response", "reference")
    assert (result.score, result.failed, len(backend.prompts)) == (1.0, True, 3)
    assert (judge.stats["errors"], judge.stats["failed"], judge.failure_rate) == (1, 1, 1.0)
    with pytest.raises(TypeError, match="complete"):
        ScoreJudge(object())
    with pytest.raises(TypeError, match="call score"):  # a score judge gives no verdicts
        judge.judge("Q?", "response", "reference")


def test_qa_scorer_uses_the_llm_judge_verdict_and_marks_failures():
    example = Example("x", "ctx", "Who?", ["Northbridge"], "Who?")
    correct = make_scorer(LLMJudge(ScriptedBackend("Verdict: CORRECT"), retries=0))(example, Generation("It is N.", 3, 10))
    assert correct["accuracy"] == 1.0 and correct["judge_failed"] is False and correct["subspan_em"] == 0.0
    broken = make_scorer(LLMJudge(ScriptedBackend("hmm", "???"), retries=1, retry_delay=0))(example, Generation("Northbridge", 1, 10))
    assert broken["accuracy"] == 0.0 and broken["judge_failed"] is True and broken["em"] == 1.0
    offline = make_scorer(None)(example, Generation("The city of Northbridge.", 5, 10))
    assert offline["accuracy"] == offline["subspan_em"] == 1.0 and "judge_failed" not in offline


def test_judges_from_args_pick_the_backend_the_arguments_name():
    from benchmarks.eval.config import EvalArguments
    from benchmarks.eval.judging import judges_from_args
    from trainers.judges import OpenAIJudgeBackend

    assert judges_from_args(EvalArguments()) == (None, None)  # offline: rule-based scores
    qa_judge, niah_judge = judges_from_args(EvalArguments(judge_model="Qwen/Qwen2.5-72B-Instruct", judge_url="http://localhost:8000/v1"))
    assert isinstance(qa_judge.backend, OpenAIJudgeBackend) and niah_judge.backend is qa_judge.backend
    with pytest.raises(ValueError, match="judge_model"):
        judges_from_args(EvalArguments(judge_url="http://localhost:8000/v1"))


def test_qa_scorer_judges_a_batch_in_one_judge_batch_call():
    class Counting(LLMJudge):
        batches = []

        def judge_batch(self, questions, responses, references):
            self.batches.append(len(questions))
            return super().judge_batch(questions, responses, references)

    judge = Counting(ScriptedBackend("Verdict: CORRECT", "Verdict: INCORRECT"), retries=0)
    examples = [Example(str(i), "ctx", "Q?", ["a"], "Q?") for i in range(2)]
    scores = make_scorer(judge).score_batch(examples, [Generation("a", 1, 3), Generation("b", 1, 3)])
    assert Counting.batches == [2] and [s["accuracy"] for s in scores] == [1.0, 0.0]


def test_synthetic_depth_and_type_tables_pool_only_the_k_that_have_every_depth_and_type():
    """k = 2 has no middle depth and k = 1 no two-hop question: easy cells there must not lift some rows only."""
    from benchmarks.eval.synthetic import aggregate
    from benchmarks.eval.synthetic_report import _qa_sections

    def record(k, depth, kind, em):
        return {"id": f"qa_k{k}/{depth}/{kind}", "system": "sft", "k": k, "depth": depth, "type": kind, "em": em}

    passages = [record(1, "first", "person_city", 1.0), record(2, "first", "person_city", 1.0), record(2, "last", "two_hop_base", 1.0)]
    passages += [record(3, d, kind, 0.0) for d in ("first", "middle", "last") for kind in ("person_city", "two_hop_base")]
    agg = aggregate({"qa_passages": passages})
    assert {d: agg["qa_em_by_depth"][d]["sft"]["mean"] for d in ("first", "middle", "last")} == {"first": 0.0, "middle": 0.0, "last": 0.0}
    assert agg["qa_em_by_type"]["person_city"]["sft"] == {"mean": 0.25, "n": 4}  # k = 1 left out
    report = {"aggregates": agg, "config": {"max_passages": 4}, "retention_percent": {}, "rl_minus_sft": {}, "heatmaps": [],
              "wrong_answer_sources": {}}
    text = "\n".join(_qa_sections(report))
    assert "By depth of the answer's document (k >= 3," in text and "By question type (k >= 2," in text
