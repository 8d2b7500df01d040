"""Answer judges for rewards and evaluation: an LLM judge (HF model or OpenAI-compatible server) and exact match.

Every judge has `judge(question, response, reference) -> JudgeResult` and `judge_batch(...)`, and counts its
calls in `stats`. An LLM judge never raises on a bad backend: errors, timeouts and unparsable replies are
retried, then give `failed=True` (reward None, not 0), so one flaky judge call cannot kill an RL run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import string
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

logger = logging.getLogger(__name__)

# A faithful paraphrase of the paper's QA judging criteria (Appendix H.2): decide whether the response is
# correct given the question and the ground truth, judging meaning rather than wording.
JUDGE_PROMPT = """You are grading an answer to a question against its ground-truth answer.

Question: {question}

Ground-truth answer: {reference}

Response to grade: {response}

Criteria:
- The response is CORRECT if its final answer means the same as the ground-truth answer, even when worded \
differently, abbreviated, or accompanied by extra explanation that does not contradict it.
- The response is INCORRECT if its final answer is different, incomplete, contradicts the ground truth, \
hedges between several candidates, or gives no answer.
- Judge only the final answer's correctness, not style, length or reasoning.

Reply with exactly one line: "Verdict: CORRECT" or "Verdict: INCORRECT"."""


@dataclass(frozen=True)
class JudgeResult:
    """One verdict. `failed` means the judge gave no usable verdict (then `correct` is False and `reward` None)."""

    correct: bool
    failed: bool = False
    raw: str = ""

    @property
    def reward(self) -> float | None:
        return None if self.failed else 1.0 if self.correct else 0.0


@runtime_checkable
class JudgeBackend(Protocol):
    """Anything that turns one prompt into one reply."""

    def complete(self, prompt: str) -> str: ...


# ---------------------------------------------------------------------------------------------- answer text
_BOXED = re.compile(r"\\boxed\s*\{")
_LATEX_TEXT = re.compile(r"^\\(?:text|textbf|textit|textrm|mathrm|mathbf|operatorname)\s*\{(.*)\}$", re.DOTALL)
_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)
_PUNCTUATION = frozenset(string.punctuation)


ANSWER_STYLES = ("any", "boxed", "answer")


def extract_answer(text: str, fallback_words: int = 20, style: str = "any") -> str:
    """The final answer in `text`, as the paper extracts it (Appendix H.2), else its last `fallback_words` words.

    `style="boxed"` (the RL model) reads the last `\\boxed{...}` (nested braces; an unclosed last one, e.g. cut by the
    length limit, gives no boxed answer, as VERL's `last_boxed_only_string`: never an earlier, abandoned one),
    `"answer"` (SFT models and baselines) the text after the last "Answer:", `"any"` tries both in that order.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}.")
    if style not in ANSWER_STYLES:
        raise ValueError(f"style must be one of {ANSWER_STYLES}, got {style!r}.")
    if style in ("any", "boxed"):
        boxes = list(_BOXED.finditer(text))
        if boxes:
            depth, start = 1, boxes[-1].end()
            for pos in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[pos], 0)
                if depth == 0:
                    return _unwrap_latex_text(text[start:pos].strip())
    if style in ("any", "answer"):
        answers = list(_ANSWER.finditer(text))
        if answers:
            tail = text[answers[-1].end() :].strip()
            if tail:
                return tail.splitlines()[0].strip()
    return " ".join(text.split()[-fallback_words:])


def _unwrap_latex_text(answer: str) -> str:
    """`\\text{Paris}` (or `\\textbf`, `\\mathrm`, ...) around a whole boxed answer -> `Paris`."""
    while (match := _LATEX_TEXT.match(answer)) and _balanced(match.group(1)):
        answer = match.group(1).strip()
    return answer


def _balanced(text: str) -> bool:
    """Whether `text`'s braces close in order (`a} + \\text{b` does not: the outer braces were two groups)."""
    depth = 0
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def answer_style(template: str) -> str:
    """How answers are read for a prompt template: `\\boxed{}` for `rl`, "Answer:" otherwise (Appendix H.2)."""
    return "boxed" if template == "rl" else "answer"


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def comparable_answer(text: str) -> str:
    """What answers are compared on: `normalize_answer`, or the same without dropping articles where it leaves nothing (a reference "The" or "A")."""
    return normalize_answer(text) or " ".join("".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split())


def _references(reference: str | Sequence[str]) -> list[str]:
    refs = [reference] if isinstance(reference, str) else list(reference)
    if not refs or not all(isinstance(r, str) for r in refs):
        raise TypeError("reference must be a string or a non-empty list of strings (accepted answers).")
    return refs


# ---------------------------------------------------------------------------------------------- judges
class _JudgeBase:
    """Batching and thread-safe counters shared by the judges."""

    max_workers: int = 1

    def __init__(self) -> None:
        self.stats: Counter = Counter()
        self._lock = threading.Lock()

    def _count(self, **increments: int) -> None:
        with self._lock:
            self.stats.update({key: value for key, value in increments.items() if value})

    def judge(self, question: str, response: str, reference: str | Sequence[str]) -> JudgeResult:
        raise NotImplementedError

    def judge_batch(
        self, questions: Sequence[str], responses: Sequence[str], references: Sequence[str | Sequence[str]]
    ) -> list[JudgeResult]:
        """Judge aligned lists (in parallel for thread-safe remote backends)."""
        if not len(questions) == len(responses) == len(references):
            raise ValueError(
                f"questions, responses and references must have one entry each per item, got "
                f"{len(questions)}, {len(responses)} and {len(references)}."
            )
        if self.max_workers <= 1 or len(questions) <= 1:
            return [self.judge(q, r, a) for q, r, a in zip(questions, responses, references)]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(self.judge, questions, responses, references))

    @property
    def failure_rate(self) -> float:
        return self.stats["failed"] / self.stats["calls"] if self.stats["calls"] else 0.0


class MatchJudge(_JudgeBase):
    """Deterministic judge: the extracted answer matches a reference after SQuAD normalisation.

    `mode="subspan"` (RULER) accepts a reference that occurs as a whole-word span of the answer;
    `mode="exact"` needs equality. With `extract=False` the whole response is compared; `style` picks the extraction
    (`extract_answer`).
    """

    def __init__(self, mode: str = "subspan", extract: bool = True, style: str = "any") -> None:
        if mode not in ("exact", "subspan"):
            raise ValueError(f"mode must be 'exact' or 'subspan', got {mode!r}.")
        if style not in ANSWER_STYLES:
            raise ValueError(f"style must be one of {ANSWER_STYLES}, got {style!r}.")
        super().__init__()
        self.mode, self.extract, self.style = mode, extract, style

    def judge(self, question: str, response: str, reference: str | Sequence[str]) -> JudgeResult:
        answer = comparable_answer(extract_answer(response, style=self.style) if self.extract else response)
        refs = [comparable_answer(r) for r in _references(reference)]
        if not answer:  # an empty answer is never right, whatever a reference normalises to
            correct = False
        elif self.mode == "exact":
            correct = answer in refs
        else:
            padded = f" {answer} "
            correct = any(ref and f" {ref} " in padded for ref in refs)
        self._count(calls=1, correct=int(correct))
        return JudgeResult(correct=correct, failed=False, raw=answer)


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_VERDICT = re.compile(r"verdict\W*(not\s+correct|incorrect|correct)\b", re.IGNORECASE)
# "correct" before a noun ("the correct answer is ...") describes the reference, not the response: no verdict.
_WORDS = re.compile(
    r"\b(not\s+correct|incorrect|correct\b(?!\s+(?:answer|response|reply|solution|one|value|result|final|ground)))\b",
    re.IGNORECASE,
)
_FIRST_WORD = {"correct": True, "yes": True, "true": True, "incorrect": False, "no": False, "false": False}


def parse_verdict(reply: str) -> bool | None:
    """CORRECT -> True, INCORRECT -> False, anything unclear -> None.

    Reasoning in `<think>` blocks is ignored; an explicit "Verdict: X" wins (the last one); otherwise a
    leading yes/no/correct/incorrect standing alone ("Correct.", "No, ..."), or the words correct/incorrect
    (not as in "the correct answer") when they all agree.
    """
    text = _THINK.sub(" ", reply)
    if "</think>" in text.lower():
        text = text[text.lower().rfind("</think>") + len("</think>") :]
    elif "<think>" in text.lower():
        return None  # reasoning was cut off before a verdict
    verdicts = _VERDICT.findall(text)
    if verdicts:
        return verdicts[-1].lower() == "correct"
    first_line = text.strip().split("\n", 1)[0].split()
    if first_line:
        first = first_line[0].strip(string.punctuation + "*").lower()
        alone = (len(first_line) == 1 or first_line[0].rstrip("*")[-1:] in string.punctuation
                 or not first_line[1].strip(string.punctuation + "\u2013\u2014"))  # "Yes - it matches."
        if first in _FIRST_WORD and alone:
            return _FIRST_WORD[first]
    found = {w.lower() == "correct" for w in _WORDS.findall(text)}
    return found.pop() if len(found) == 1 else None


class LLMJudge(_JudgeBase):
    """Generative judge, `R = 1[Judge(y, a*) = correct]` (paper, Eq. 3), over any `JudgeBackend`.

    A call that raises (timeout, HTTP error) or whose reply has no clear verdict is retried `retries`
    times with exponential back-off from `retry_delay` seconds, then `failed` (not correct, no reward);
    `stats` counts calls, correct, retried, errors, malformed and failed.
    """

    def __init__(
        self,
        backend: JudgeBackend,
        retries: int = 2,
        retry_delay: float = 1.0,
        prompt_template: str = JUDGE_PROMPT,
        answer_only: bool = False,
        max_workers: int | None = None,
    ) -> None:
        if not callable(getattr(backend, "complete", None)):
            raise TypeError(
                f"backend must have a complete(prompt: str) -> str method (HFJudgeBackend, OpenAIJudgeBackend), "
                f"got {type(backend).__name__}."
            )
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}.")
        missing = {"{question}", "{response}", "{reference}"} - set(re.findall(r"\{\w+\}", prompt_template))
        if missing:
            raise ValueError(f"prompt_template must contain the fields {sorted(missing)}.")
        super().__init__()
        self.backend, self.retries, self.retry_delay = backend, retries, retry_delay
        self.prompt_template, self.answer_only = prompt_template, answer_only
        self.max_workers = max_workers if max_workers is not None else getattr(backend, "max_concurrency", 1)

    def build_prompt(self, question: str, response: str, reference: str | Sequence[str]) -> str:
        shown = extract_answer(response) if self.answer_only else response.strip()
        return self.prompt_template.format(
            question=question.strip(), response=shown or "(empty)", reference=" OR ".join(_references(reference))
        )

    def ask(self, prompt: str, parse):
        """`(parse(reply), reply)` for the first reply `parse` reads (not None), with retries and back-off; after the
        last failed try `(None, last reply or error)`. Counted in `stats`."""
        self._count(calls=1)
        raw = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._count(retried=1)
                time.sleep(self.retry_delay * 2 ** (attempt - 1))
            try:
                raw = self.backend.complete(prompt)
            except Exception as error:  # a judge failure must never stop training or a long evaluation
                logger.warning("judge call failed (attempt %d/%d): %r", attempt + 1, self.retries + 1, error)
                self._count(errors=1)
                raw = f"<error: {error!r}>"
                continue
            value = parse(raw) if isinstance(raw, str) else None
            if value is not None:
                return value, raw
            self._count(malformed=1)
        self._count(failed=1)
        return None, str(raw)

    def judge(self, question: str, response: str, reference: str | Sequence[str]) -> JudgeResult:
        verdict, raw = self.ask(self.build_prompt(question, response, reference), parse_verdict)
        if verdict is None:
            return JudgeResult(correct=False, failed=True, raw=raw)
        self._count(correct=int(verdict))
        return JudgeResult(correct=verdict, failed=False, raw=raw)


# ---------------------------------------------------------------------------------------------- backends
class HFJudgeBackend:
    """Greedy completion with any HF causal LM, through its chat template when it has one."""

    max_concurrency = 1  # one generate at a time on a local model

    def __init__(self, model, tokenizer, max_new_tokens: int = 32, system_prompt: str | None = None) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.system_prompt = max_new_tokens, system_prompt

    def _input_ids(self, prompt: str):
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            messages.append({"role": "user", "content": prompt})
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
        else:
            ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        return ids.to(self.model.device)

    def complete(self, prompt: str) -> str:
        import torch

        ids = self._input_ids(prompt)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            output = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=pad,
            )
        return self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)


class _TrackedConnections:
    """urllib handler mix-in: every socket its connections open is recorded, so a deadline can cut them."""

    def __init__(self, sockets: list, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sockets = sockets

    def do_open(self, http_class, req, **kwargs):
        sockets = self.sockets

        class Tracked(http_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                create = self._create_connection

                def create_and_record(*args, **kwargs):
                    sock = create(*args, **kwargs)
                    sockets.append(sock)
                    return sock

                self._create_connection = create_and_record

        return super().do_open(Tracked, req, **kwargs)


class _TrackedHTTPHandler(_TrackedConnections, urllib.request.HTTPHandler):
    pass


class _TrackedHTTPSHandler(_TrackedConnections, urllib.request.HTTPSHandler):
    pass


def post_json(request: urllib.request.Request, timeout: float) -> dict:
    """Send `request` and parse its JSON reply, the whole exchange bounded by `timeout` seconds.

    urllib's own timeout bounds each socket operation, so a server trickling one byte at a time could hold
    a call forever; here a timer shuts the connection down at the deadline and a `TimeoutError` is raised.
    """
    sockets: list[socket.socket] = []
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        for sock in list(sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    opener = urllib.request.build_opener(_TrackedHTTPHandler(sockets), _TrackedHTTPSHandler(sockets))
    timer = threading.Timer(timeout, cut)
    timer.daemon = True
    timer.start()
    try:
        with opener.open(request, timeout=timeout) as reply:
            data = reply.read()
    except Exception as error:
        if expired.is_set():
            raise TimeoutError(f"{request.full_url} did not answer within {timeout} s") from error
        raise
    finally:
        timer.cancel()
    if expired.is_set():  # a cut connection can also end the read early without an error
        raise TimeoutError(f"{request.full_url} did not answer within {timeout} s")
    return json.loads(data)


class OpenAIJudgeBackend:
    """An OpenAI-compatible `/chat/completions` endpoint (e.g. `vllm serve Qwen/Qwen3-32B`), stdlib only.

    `base_url` is the API root including the version, e.g. `http://localhost:8000/v1`; the key defaults to
    `$OPENAI_API_KEY` (vLLM accepts any key unless started with `--api-key`). `timeout` bounds each whole
    request (connection, headers and body), however slowly the server sends.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = 512,
        temperature: float = 0.0,
        max_concurrency: int = 16,
        extra_body: dict | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as 'http://localhost:8000/v1', got {base_url!r}.")
        if not model:
            raise ValueError("model must name the served model, e.g. 'Qwen/Qwen3-32B'.")
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.max_tokens, self.temperature = model, timeout, max_tokens, temperature
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "EMPTY")
        self.max_concurrency, self.extra_body = max_concurrency, dict(extra_body or {})

    def complete(self, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.extra_body,
        }
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
            method="POST",
        )
        payload = post_json(request, self.timeout)
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(f"unexpected reply from {self.url}: {str(payload)[:200]}") from error


def load_hf_backend(model_name: str, **kwargs) -> HFJudgeBackend:
    """An `HFJudgeBackend` over a local or Hub model (its own dtype, spread over the available devices)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_name, dtype="auto", device_map="auto")
    return HFJudgeBackend(model.eval(), AutoTokenizer.from_pretrained(model_name), **kwargs)


# ---------------------------------------------------------------------------------------------- from a CLI
@dataclass
class JudgeArguments:
    """Which judge scores the answers (command-line / YAML fields for the RL and evaluation scripts)."""

    judge: str = field(default="match", metadata={"help": "'match' (offline exact/sub-span), 'openai' (a server) or 'hf' (a local model)."})
    judge_model: str | None = field(default=None, metadata={"help": "Served model name ('openai') or HF path/id ('hf'), e.g. Qwen/Qwen3-32B."})
    judge_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible API root, e.g. http://localhost:8000/v1."})
    judge_timeout: float = field(default=120.0, metadata={"help": "Seconds before a judge request is abandoned (then retried)."})
    judge_retries: int = field(default=2, metadata={"help": "Retries of a failed or unparsable judge call before it counts as failed (no reward)."})
    judge_max_tokens: int = field(default=1024, metadata={"help": "Reply budget of the judge (reasoning judges need more)."})
    judge_max_workers: int = field(default=32, metadata={"help": "Concurrent requests to a judge server."})
    judge_extra_body: str | None = field(
        default=None, metadata={"help": 'JSON merged into each request, e.g. \'{"chat_template_kwargs": {"enable_thinking": false}}\'.'}
    )
    match_mode: str = field(default="subspan", metadata={"help": "MatchJudge mode: 'subspan' (RULER) or 'exact'."})


def build_judge(args: JudgeArguments):
    """The judge `args` describe: `MatchJudge`, or an `LLMJudge` over a server or a local HF model."""
    if args.judge == "match":
        return MatchJudge(mode=args.match_mode)
    if not args.judge_model:
        raise ValueError(f"judge={args.judge!r} needs judge_model= (the served model name or an HF model path).")
    if args.judge == "openai":
        if not args.judge_base_url:
            raise ValueError("judge='openai' needs judge_base_url=, e.g. http://localhost:8000/v1 (from `vllm serve`).")
        backend = OpenAIJudgeBackend(
            args.judge_base_url,
            args.judge_model,
            timeout=args.judge_timeout,
            max_tokens=args.judge_max_tokens,
            max_concurrency=args.judge_max_workers,
            extra_body=json.loads(args.judge_extra_body) if args.judge_extra_body else None,
        )
    elif args.judge == "hf":
        backend = load_hf_backend(args.judge_model, max_new_tokens=args.judge_max_tokens)
    else:
        raise ValueError(f"judge must be 'match', 'openai' or 'hf', got {args.judge!r}.")
    return LLMJudge(backend, retries=args.judge_retries)
