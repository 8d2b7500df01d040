"""Judges: answer extraction, verdict parsing, retries/failure accounting, match judge, backends."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import ScriptedBackend
import torch

from trainers.judges import (
    HFJudgeBackend,
    JudgeResult,
    LLMJudge,
    MatchJudge,
    OpenAIJudgeBackend,
    extract_answer,
    normalize_answer,
    parse_verdict,
)


# ------------------------------------------------------------------ extraction
@pytest.mark.parametrize(
    "text, expected",
    [
        (r"So it is \boxed{Paris}.", "Paris"),
        (r"\boxed{1} then \boxed{ \frac{1}{2} }", r"\frac{1}{2}"),
        (r"first \boxed{a{b}c} and an unclosed \boxed{x", r"first \boxed{a{b}c} and an unclosed \boxed{x"),  # no answer
        ("Reasoning...\nAnswer: Dolores Park\nThanks", "Dolores Park"),
        ("answer: one. Later, Answer: two", "two"),
        (" ".join(f"w{i}" for i in range(30)), " ".join(f"w{i}" for i in range(10, 30))),
        ("", ""),
        (r"\boxed{\text{Paris}}", "Paris"),  # LaTeX text wrappers around the whole answer are dropped
        (r"\boxed{\mathrm{\textbf{1921}}}", "1921"),
        (r"\boxed{\text{a} + \text{b}}", r"\text{a} + \text{b}"),  # two groups, not one wrapper
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_rejects_non_text():
    with pytest.raises(TypeError, match="text must be a string"):
        extract_answer(None)


def test_normalize_answer_is_squad_style():
    assert normalize_answer("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"


# ------------------------------------------------------------------ verdicts
@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("Verdict: CORRECT", True),
        ("Verdict: INCORRECT", False),
        ("**Verdict:** **correct**", True),
        ("The response is not correct.\nVerdict: not correct", False),
        ("<think>it might be correct... or incorrect</think>\nVerdict: INCORRECT", False),
        ("reasoning says correct</think> Verdict: CORRECT", True),
        ("Correct.", True),
        ("No, the answer differs.", False),
        ("The answer is incorrect because it names Lyon.", False),
        ("Verdict: CORRECT\n(earlier I thought) Verdict: INCORRECT", False),
        ("", None),
        ("I cannot decide.", None),
        ("It is correct in part but incorrect overall", None),
        ("<think>long reasoning cut off", None),
        ("Correct not", True),
        # "correct" describing the reference is not a verdict: unclear, so retried rather than read as CORRECT
        ("Correct answer would be Berlin; the response is wrong.", None),
        ("The correct answer is Paris; the response says Paris, which is correct.", True),
        ("The response gives an incorrect answer.", False),
        ("CORRECT\nThe response names the same city.", True),
        ("Yes - it matches.", True),
        ("No \u2014 wrong city", False),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) is verdict


def test_judge_reward_leaves_failed_judgements_unscored():
    from trainers.rewards import JudgeReward

    logged = {}
    reward = JudgeReward(LLMJudge(ScriptedBackend("Verdict: CORRECT", TimeoutError("slow"), "Verdict: INCORRECT"), retries=0))
    values = reward(prompts=["q"] * 3, completions=["a", "b", "c"], answer=["a"] * 3,
                    log_metric=lambda name, value: logged.__setitem__(name, value))
    assert values == [1.0, None, 0.0]  # TRL turns None into NaN
    assert logged["judge/failed_ratio"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------ LLM judge
def test_llm_judge_prompt_carries_question_response_and_references():
    backend = ScriptedBackend("Verdict: CORRECT")
    result = LLMJudge(backend).judge("Capital of France?", r"It is \boxed{Paris}", ["Paris", "Paris, France"])
    assert result == JudgeResult(correct=True, failed=False, raw="Verdict: CORRECT")
    prompt = backend.prompts[0]
    assert "Capital of France?" in prompt and r"\boxed{Paris}" in prompt and "Paris OR Paris, France" in prompt


def test_llm_judge_answer_only_shows_the_extracted_answer():
    backend = ScriptedBackend("Verdict: CORRECT")
    LLMJudge(backend, answer_only=True).judge("q?", r"long reasoning \boxed{42}", "42")
    assert "long reasoning" not in backend.prompts[0]


def test_llm_judge_retries_malformed_then_succeeds():
    backend = ScriptedBackend("hmm", TimeoutError("slow"), "Verdict: INCORRECT")
    judge = LLMJudge(backend, retries=2, retry_delay=0)
    result = judge.judge("q?", "a", "b")
    assert result == JudgeResult(correct=False, failed=False, raw="Verdict: INCORRECT")
    assert judge.stats == {"calls": 1, "retried": 2, "malformed": 1, "errors": 1}


def test_llm_judge_failure_gives_no_reward_and_is_counted_never_raised():
    backend = ScriptedBackend(socket.timeout("timed out"), "???", RuntimeError("HTTP 500"))
    judge = LLMJudge(backend, retries=2, retry_delay=0)
    result = judge.judge("q?", "a", "a")
    assert result.correct is False and result.failed is True and "HTTP 500" in result.raw
    assert result.reward is None  # not 0: a right answer whose judgement failed is not scored as wrong
    assert judge.stats["failed"] == 1 and judge.stats["errors"] == 2 and judge.stats["malformed"] == 1
    assert judge.failure_rate == 1.0
    assert backend.replies == []  # exactly retries + 1 attempts


def test_llm_judge_batch_keeps_order_across_threads():
    class Echo:
        max_concurrency = 4

        def complete(self, prompt):
            return "Verdict: CORRECT" if "Response to grade: yes" in prompt else "Verdict: INCORRECT"

    judge = LLMJudge(Echo())
    responses = ["yes", "no", "no", "yes", "yes", "no"]
    results = judge.judge_batch(["q?"] * 6, responses, ["x"] * 6)
    assert [r.correct for r in results] == [r == "yes" for r in responses]
    assert judge.stats["calls"] == 6 and judge.stats["correct"] == 3


def test_llm_judge_bad_arguments():
    with pytest.raises(TypeError, match="complete\\(prompt"):
        LLMJudge(object())
    with pytest.raises(ValueError, match="retries"):
        LLMJudge(ScriptedBackend(), retries=-1)
    with pytest.raises(ValueError, match="reference"):
        LLMJudge(ScriptedBackend(), prompt_template="{question} {response}")
    with pytest.raises(ValueError, match="one entry each"):
        LLMJudge(ScriptedBackend()).judge_batch(["q"], ["r", "s"], ["a"])
    with pytest.raises(TypeError, match="reference must be"):
        LLMJudge(ScriptedBackend("Verdict: CORRECT")).judge("q", "r", [])


# ------------------------------------------------------------------ match judge
@pytest.mark.parametrize(
    "mode, response, reference, correct",
    [
        ("subspan", r"I think \boxed{the Eiffel Tower}", "Eiffel Tower", True),
        ("subspan", r"\boxed{Eiffel Towers}", "Eiffel Tower", False),  # whole words only
        ("subspan", "Answer: it is in Paris, France", ["Lyon", "paris"], True),
        ("exact", r"\boxed{Paris, France}", "Paris", False),
        ("exact", r"\boxed{ paris. }", "Paris", True),
        ("subspan", r"\boxed{}", "Paris", False),
        ("exact", r"\boxed{\text{Paris}}", "Paris", True),
        ("exact", "Answer: The", "The", True),  # a reference SQuAD normalisation empties is compared as written
        ("exact", "", "The", False),  # an empty answer is never right
        ("exact", r"\boxed{(A)}", "A", True),  # a multiple-choice letter, punctuation aside
        ("exact", "Answer: A.", "A", True),
        ("exact", r"\boxed{}", ["A", "Paris"], False),
        ("exact", r"first \boxed{Paris}. Hmm, no, it is \boxed{Lon", "Paris", False),  # cut off after changing its mind
    ],
)
def test_match_judge(mode, response, reference, correct):
    judge = MatchJudge(mode=mode)
    result = judge.judge("q?", response, reference)
    assert result.correct is correct and result.failed is False
    assert judge.stats["calls"] == 1 and judge.stats["correct"] == int(correct)


def test_match_judge_rejects_unknown_mode():
    with pytest.raises(ValueError, match="'exact' or 'subspan'"):
        MatchJudge(mode="fuzzy")


# ------------------------------------------------------------------ backends
def test_hf_backend_greedy_completion_is_deterministic(tokenizer):
    from modeling_memcomp.tiny import tiny_qwen2_config
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(tiny_qwen2_config(len(tokenizer), hidden_size=32, num_layers=1)).eval()
    backend = HFJudgeBackend(lm, tokenizer, max_new_tokens=4)
    first = backend.complete("Question: is it correct?")
    assert isinstance(first, str) and first == backend.complete("Question: is it correct?")
    # whatever a random model replies, the judge's verdict is exactly what parsing that reply gives
    judge = LLMJudge(backend, retries=0)
    result = judge.judge("q?", "a", "a")
    verdict = parse_verdict(backend.complete(judge.build_prompt("q?", "a", "a")))
    assert result.failed == (verdict is None) and result.correct == bool(verdict)


def test_hf_backend_uses_the_chat_template_when_there_is_one(tokenizer):
    import copy

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    seen = []

    class Recorder:
        device = "cpu"

        def generate(self, input_ids, **kwargs):
            seen.append(input_ids)
            return torch.cat([input_ids, torch.tensor([chat("Verdict: CORRECT")["input_ids"]])], dim=1)

    backend = HFJudgeBackend(Recorder(), chat, max_new_tokens=8, system_prompt="Be strict.")
    assert backend.complete("Is it right?") == "Verdict: CORRECT"
    text = chat.decode(seen[0][0])
    assert text.startswith("<|im_start|>system\nBe strict.<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    assert "Is it right?" in text


class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, self.headers["Authorization"], body))
        payload = json.dumps({"choices": [{"message": {"content": "Verdict: CORRECT"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_openai_backend_speaks_chat_completions():
    server = HTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = OpenAIJudgeBackend(f"http://127.0.0.1:{server.server_port}/v1/", "judge-model", api_key="k", timeout=5)
        result = LLMJudge(backend).judge("q?", "r", "a")
    finally:
        server.shutdown()
    assert result.correct and not result.failed
    path, auth, body = server.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k"
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert body["messages"][0]["content"].startswith("You are grading")


def test_openai_backend_unreachable_server_is_a_counted_failure():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = LLMJudge(OpenAIJudgeBackend(f"http://127.0.0.1:{port}/v1", "m", timeout=1), retries=1, retry_delay=0)
    result = judge.judge("q?", "r", "a")
    assert result.failed and not result.correct and judge.stats["errors"] == 2


def test_openai_backend_bad_arguments():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIJudgeBackend("localhost:8000", "m")
    with pytest.raises(ValueError, match="model"):
        OpenAIJudgeBackend("http://localhost:8000/v1", "")


# ---------------------------------------------------------------------------------------------- issue 16, item 7
class _TrickleHandler(BaseHTTPRequestHandler):
    """Answers one byte every 0.5 s: in the body (`/v1/body/...`) or already in the status line and headers."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        payload = json.dumps({"choices": [{"message": {"content": "Verdict: CORRECT"}}]}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        if self.path.startswith("/v1/body"):
            self.wfile.write(head)
            self.wfile.flush()
            head = b""
        try:
            for byte in head + payload:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:  # the client hung up: what a bounded request does
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle_server():
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), _TrickleHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("where", ["body", "headers"])
def test_judge_timeout_bounds_the_whole_request(trickle_server, where):
    backend = OpenAIJudgeBackend(f"{trickle_server}/v1/{where}", "m", timeout=1)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer within 1 s"):
        backend.complete("Is it right?")
    assert time.monotonic() - start < 2.0  # 1 s timeout plus slack; the trickle alone would take ~50 s

    judge = LLMJudge(backend, retries=1, retry_delay=0)
    start = time.monotonic()
    result = judge.judge("q?", "r", "a")
    assert time.monotonic() - start < 3.5  # two attempts of ~1 s each
    assert result.failed and not result.correct and judge.stats["errors"] == 2


def test_judge_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got 0"):
        OpenAIJudgeBackend("http://127.0.0.1:8000/v1", "m", timeout=0)
