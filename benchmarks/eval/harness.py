"""The evaluation loop shared by every benchmark: generate per system, score, append a record, skip finished ones."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .records import RecordStore
from .systems import Generation

logger = logging.getLogger(__name__)


@dataclass
class Example:
    """One prompt to evaluate: the context (text or passages), the instruction after it, and what scoring needs."""

    id: str
    context: str | list[str]
    instruction: str
    reference: str | list[str]
    question: str = ""
    meta: dict = field(default_factory=dict)
    system_instructions: dict = field(default_factory=dict)  # system name -> its own instruction (default: `instruction`)

    def instruction_for(self, system: str) -> str:
        return self.system_instructions.get(system, self.instruction)


Scorer = Callable[[Example, Generation], dict]
"""Scores one answer; a scorer with `score_batch(examples, generations)` gets a whole batch (e.g. to judge concurrently)."""


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_PROCESS = uuid.uuid4().hex
"""Names this process in the keys of objects, whose ids another process may reuse."""


def kwargs_key(kwargs: dict) -> str:
    """A text naming generation kwargs, equal for equal plain values (numbers, strings, lists, dicts, whatever their
    keys). An object (a tensor, a `StoppingCriteriaList`) is named by its identity in this process: never taken for
    another, and its records are never reused by another run."""
    def plain(value):
        if isinstance(value, dict):
            return sorted([repr(key), plain(item)] for key, item in value.items())
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        return f"{type(value).__name__}@{id(value)}@{_PROCESS}"

    return json.dumps(plain(kwargs))


def _by_kwargs(examples: list[Example], kwargs_for: Callable[[Example], dict]) -> list[tuple[dict, list[Example]]]:
    """The examples grouped by their generation kwargs, groups and examples in first-appearance order."""
    groups: dict[str, tuple[dict, list[Example]]] = {}
    for example in examples:
        kwargs = kwargs_for(example)
        groups.setdefault(kwargs_key(kwargs), (kwargs, []))[1].append(example)
    return list(groups.values())


def _seed_for(seed: int, example_id: str) -> int:
    """A per-example generation seed, so a resumed run samples finished and unfinished examples alike."""
    return seed + int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16)


def _generate(system, batch: list[Example], seed: int, generate_kwargs: dict) -> list[Generation | str]:
    """Generations for a batch; an example the system rejects (ValueError, e.g. too long) yields its message."""
    torch.manual_seed(_seed_for(seed, batch[0].id))
    try:
        return system.generate([e.context for e in batch], [e.instruction_for(system.name) for e in batch], **generate_kwargs)
    except ValueError as error:
        if len(batch) == 1:
            return [str(error)]
        return [out for example in batch for out in _generate(system, [example], seed, generate_kwargs)]


def example_hash(example: Example, generate_kwargs: dict | None = None) -> str:
    """Digest of everything an example's record depends on, its generation kwargs included: a data file edited under
    the same ids, or another answer cap, reruns the example."""
    content = [example.context, example.instruction, example.reference, example.question, example.meta,
               example.system_instructions]
    if generate_kwargs is not None:
        content.append(kwargs_key(generate_kwargs))
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _score(scorer: Scorer, answered: list[tuple[Example, Generation]]) -> list[dict]:
    if not answered:
        return []
    if hasattr(scorer, "score_batch"):
        return scorer.score_batch([e for e, _ in answered], [g for _, g in answered])
    return [scorer(e, g) for e, g in answered]


def _records(system, batch: list[Example], outputs: list[Generation | str], scorer: Scorer, digests: dict) -> list[dict]:
    """One record per example of a generated batch: its answer and scores, or the `error` the system rejected it with."""
    answered = [(e, o) for e, o in zip(batch, outputs) if not isinstance(o, str)]
    scores = iter(_score(scorer, answered))
    records = []
    for example, output in zip(batch, outputs):
        record = {"id": example.id, "system": system.name, "question": example.question, "reference": example.reference,
                  **example.meta, "example_hash": digests[example.id]}
        if isinstance(output, str):
            record["error"] = output
        else:
            record.update(response=output.text, response_tokens=output.num_tokens, context_tokens=output.context_tokens)
            record.update(next(scores))
        records.append(record)
    return records


def run(
    examples: list[Example],
    systems: list,
    scorer: Scorer,
    store: RecordStore,
    generate_kwargs: dict | Callable[[Example], dict],
    batch_size: int = 1,
    seed: int = 0,
    desc: str = "eval",
) -> list[dict]:
    """Evaluate every example with every system, writing one record per (example, system) as soon as it is scored.

    Examples already in `store` (same config hash, content and generation kwargs) are skipped, so a crashed run
    resumes where it stopped.
    A rejected example (context too long for the model, ...) gets a record with `error` and no scores.
    `generate_kwargs` is one set for every example, or a function giving each example its own (e.g. an answer cap by
    context length); examples sharing a set are batched together.
    """
    kwargs_for = generate_kwargs if callable(generate_kwargs) else lambda _: generate_kwargs
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        raise ValueError("example ids must be unique: they key the resumable records.")
    digests = {e.id: example_hash(e, kwargs_for(e)) for e in examples}
    for system in systems:
        todo = [e for e in examples if not store.done(e.id, system.name, digests[e.id])]
        skipped = len(examples) - len(todo)
        bar = tqdm(total=len(todo), desc=f"{desc} [{system.name}]", unit="ex", disable=not todo)
        if skipped:
            logger.info("%s [%s]: %d finished examples reused from %s", desc, system.name, skipped, store.path)
        for kwargs, group in _by_kwargs(todo, kwargs_for):
            for batch in _batches(group, batch_size):
                for record in _records(system, batch, _generate(system, batch, seed, kwargs), scorer, digests):
                    store.append(record)
                bar.update(len(batch))
        bar.close()
    return [r for r in store.records() if r["id"] in digests and r.get("example_hash") == digests[r["id"]]]
