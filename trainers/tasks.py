"""Task builders (Table 1): text in, one tokenized training example out, loss on the target only.

Every decoder sequence is made by `modeling_memcomp.prompting.build_prompt`, so training prompts are the
inference prompts. An example is a dict:

    task        one of `stages.TASKS`
    input_ids   decoder ids, one `<MEM>` placeholder per memory chunk
    labels      -100 everywhere except the target (and its end token)
    chunks      the compressed context, cut into chunks of at most `chunk_size` tokens (passages separately)
    emphasis    (only with `TaskBuilder.emphasis`) positions of target tokens whose text matches the pattern; the
                trainer weighs them `emphasis_weight` in the loss

A builder returns None when an example cannot fit in `max_length` even after truncating its document
(e.g. a QA context longer than the decoder can hold), so that data pipelines can skip it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from modeling_memcomp.prompting import IGNORE_INDEX, TEMPLATES, build_prompt

from .instructions import sample_instruction


@dataclass
class TaskBuilder:
    """Builds examples of every task for one tokenizer, model config, prompt template and length limit."""

    tokenizer: object
    config: object  # MemCompConfig (chunk_size, wrap and memory token ids are read from it)
    template: str = "plain"
    max_length: int = 2048
    system_prompt: str | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    emphasis: str | None = None  # regex: reconstruction target tokens overlapping a match are listed in `emphasis`

    def __post_init__(self):
        if self.emphasis is not None:
            try:
                self._emphasis = re.compile(self.emphasis)
            except re.error as error:
                raise ValueError(f"emphasis {self.emphasis!r} is not a regular expression: {error}.") from None
            if not getattr(self.tokenizer, "is_fast", False):
                raise ValueError("emphasis needs a fast tokenizer (it maps matches to tokens by their offsets).")
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {self.template!r}.")
        if self.max_length < 4 * self.config.chunk_size:
            raise ValueError(f"max_length={self.max_length} is too short; use at least 4 * chunk_size.")

    # ------------------------------------------------------------------ helpers
    def tokenize(self, text: str) -> list[int]:
        """Plain text -> ids; special-token strings in data stay text (they cannot forge a placeholder)."""
        return self._encode(text)["input_ids"]

    def _encode(self, text: str, offsets: bool = False):
        if not isinstance(text, str):
            raise TypeError(f"expected text as a string, got {type(text).__name__}.")
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=offsets)

    def chunk(self, ids: Sequence[int]) -> list[list[int]]:
        """Cut one passage's ids into chunks of `chunk_size` tokens (the last may be shorter)."""
        size = self.config.chunk_size
        return [list(ids[i : i + size]) for i in range(0, len(ids), size)]

    def _example(self, task, chunks, instruction, target, bridge=None, end=True) -> dict:
        prompt = build_prompt(
            self.tokenizer,
            self.config,
            len(chunks),
            instruction,
            template=self.template,
            target=target,
            bridge_ids=bridge,
            system_prompt=self.system_prompt,
            end=end,
        )
        return self._row({"task": task, "input_ids": prompt.input_ids, "labels": prompt.labels, "chunks": chunks})

    def _row(self, example: dict) -> dict:
        """An example with the columns every task's rows share: with `emphasis` on, an empty list (a task that marks
        tokens fills it)."""
        if self.emphasis is not None:
            example["emphasis"] = []
        return example

    def _marked_tokens(self, text: str) -> tuple[list[int], list[bool]]:
        """`tokenize(text)`, and per token whether its text overlaps a match of `emphasis` (one tokenizer pass)."""
        encoding = self._encode(text, offsets=True)
        matches = [m.span() for m in self._emphasis.finditer(text) if m.end() > m.start()]
        marked = [any(t_start < m_end and m_start < t_end for m_start, m_end in matches)
                  for t_start, t_end in encoding["offset_mapping"]]
        return encoding["input_ids"], marked

    def _fit(self, ids: list[int], build) -> dict | None:
        """`build(ids[:n], whole)` for the largest `n` whose example fits in `max_length` (binary search); `whole` says
        whether `ids[:n]` is the whole text (a text cut short gets no end token after its target)."""
        total = len(ids)
        ids = ids[: 2 * self.max_length]  # no task puts more than twice the decoder length into memory + target

        def fits(n):
            example = build(ids[:n], n == total) if n else None
            return example if example is not None and len(example["input_ids"]) <= self.max_length else None

        best = fits(len(ids))
        if best is not None:
            return best
        low, high = 0, len(ids)  # fits(low) or low == 0; not fits(high)
        while high - low > 1:
            mid = (low + high) // 2
            if fits(mid) is not None:
                low = mid
            else:
                high = mid
        return fits(low)

    # ------------------------------------------------------------------ tasks
    def reconstruction(self, text: str, instruction: str | None = None) -> dict | None:
        """Memory: the whole document; target: the document itself."""
        instruction = instruction or sample_instruction("reconstruction", self.rng)
        # Cut short, the target is still all the memory holds: it ends, with its end token, where the memory does.
        ids, marked = self._marked_tokens(text) if self.emphasis is not None else (self.tokenize(text), None)
        example = self._fit(ids, lambda ids, whole: self._example("reconstruction", self.chunk(ids), instruction, ids))
        if example is not None and marked is not None:
            start = example["labels"].count(IGNORE_INDEX)  # the target is the row's last tokens
            kept = sum(len(chunk) for chunk in example["chunks"])  # the text's tokens the target repeats, cut or whole
            example["emphasis"] = [start + i for i in range(kept) if marked[i]]
        return example

    def continuation(self, text: str, num_bridges: int = 1, instruction: str | None = None) -> dict | None:
        """Memory: the first half; then `num_bridges` uncompressed chunks (no loss); target: the rest."""
        if num_bridges < 0:
            raise ValueError(f"num_bridges must be >= 0, got {num_bridges}.")
        instruction = instruction or sample_instruction("continuation", self.rng)
        size = self.config.chunk_size

        def build(ids, whole):
            half = len(ids) // 2
            bridges = num_bridges
            while bridges and half + bridges * size >= len(ids):
                bridges -= 1  # a short document keeps at least one target token
            if half == 0:
                return None
            cut = half + bridges * size
            return self._example(
                "continuation", self.chunk(ids[:half]), instruction, ids[cut:], bridge=ids[half:cut], end=whole
            )

        return self._fit(self.tokenize(text), build)

    def summarization(self, text: str, summary: str, instruction: str | None = None) -> dict | None:
        """Memory: the document; target: its summary. A document that does not fit is skipped, never cut: the summary
        would describe text the memory does not hold."""
        instruction = instruction or sample_instruction("summarization", self.rng)
        example = self._example("summarization", self.chunk(self.tokenize(text)), instruction, self.tokenize(summary))
        return example if len(example["input_ids"]) <= self.max_length else None

    def qa(self, context: str | Sequence[str], question: str, answer: str) -> dict | None:
        """Memory: the context (each passage chunked separately); instruction: the question; target: the answer."""
        passages = [context] if isinstance(context, str) else list(context)
        if not passages or not question.strip():
            raise ValueError("qa needs a non-empty context and question.")
        if not answer.strip():
            return None  # it would train the end-of-turn token alone
        chunks = [c for passage in passages for c in self.chunk(self.tokenize(passage))]
        example = self._example("qa", chunks, question, self.tokenize(answer))
        return example if len(example["input_ids"]) <= self.max_length else None

    def language_modeling(self, text: str) -> dict | None:
        """Standard full-context LM on the raw text (no memory), mixed in to prevent forgetting."""
        full = self.tokenize(text)
        ids = full[: self.max_length - 1]
        if not ids:
            return None
        whole = len(ids) == len(full)  # a text cut short must not teach the model to stop there
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None and whole else []
        return self._row({"task": "language_modeling", "input_ids": ids + eos, "labels": ids + eos, "chunks": []})
