"""Stage mixtures: compression tasks and plain LM in the stage's proportions, both kinds in every batch.

The order is fixed by the seed, so a resumed run sees the same examples in the same order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from .stages import STANDARD_TASK, StageSpec
from .tasks import TaskBuilder

logger = logging.getLogger(__name__)

CODE_FILES = ("mixture.py", "data.py", "tasks.py", "instructions.py", "stages.py", "../modeling_memcomp/prompting.py")
"""The code an example's ids come from: part of the cache key, so an upgraded package never reads stale examples."""

EXAMPLE_FEATURES = datasets.Features(
    {
        "example_id": datasets.Value("int64"),
        "task": datasets.Value("string"),
        "input_ids": datasets.List(datasets.Value("int32")),
        "labels": datasets.List(datasets.Value("int32")),
        "chunks": datasets.List(datasets.List(datasets.Value("int32"))),
    }
)
SOURCE_KIND_OF_TASK = {
    "reconstruction": "document",
    "continuation": "document",
    "language_modeling": "document",
    "summarization": "summary",
    "qa": "qa",
}


def compression_schedule(num_samples: int, ratio: float, batch_size: int, rng: random.Random) -> list[bool]:
    """True where a sample is a compression example: `ratio` overall, and both kinds in every batch that can hold them.

    Each batch takes the count that keeps the running share closest to `ratio`, clamped to at least one of each kind
    where the batch is large enough for that to keep the ratio (`batch_size * min(ratio, 1 - ratio) >= 1`: a batch of
    2 at 0.7 would be forced to 1:1), then shuffles its positions.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"compression ratio must be in [0, 1], got {ratio}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    schedule: list[bool] = []
    done = 0
    while len(schedule) < num_samples:
        size = min(batch_size, num_samples - len(schedule))
        count = round(ratio * (len(schedule) + size)) - done
        if 0.0 < ratio < 1.0 and size * min(ratio, 1.0 - ratio) >= 1.0 - 1e-9:  # 10 * (1 - 0.9) is 0.999...
            count = min(max(count, 1), size - 1)
        count = min(max(count, 0), size)
        batch = [True] * count + [False] * (size - count)
        rng.shuffle(batch)
        schedule += batch
        done += count
    return schedule


class StageMixture:
    """Iterates `num_samples` examples of a stage from record streams keyed by source kind.

    Plain LM reads the `standard` stream when there is one (documents plus LM-only sources), else documents.
    """

    def __init__(
        self,
        stage: StageSpec,
        builder: TaskBuilder,
        streams: dict[str, Iterator[dict]],
        num_samples: int,
        batch_size: int,
        seed: int = 0,
    ):
        needed = {SOURCE_KIND_OF_TASK[t] for t, w in stage.task_weights.items() if w > 0}
        if stage.compression_ratio < 1 and "standard" not in streams:
            needed.add("document")
        missing = sorted(needed - set(streams))
        if missing:
            raise ValueError(
                f"stage {stage.name!r} needs sources of kind {missing}: add them to the data config "
                f"(tasks {sorted(stage.task_weights)} and plain LM)."
            )
        self.stage, self.builder, self.streams = stage, builder, streams
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.skipped: Counter = Counter()  # records per task that made no example (too long, empty answer)

    def _build(self, task: str, rng: random.Random) -> dict:
        """One example of `task`, drawing records until one fits the length limit."""
        kind = "standard" if task == STANDARD_TASK and "standard" in self.streams else SOURCE_KIND_OF_TASK[task]
        stream = self.streams[kind]
        for _ in range(1000):
            record = next(stream)
            if task == "qa":
                example = self.builder.qa(record["context"], record["question"], record["answer"])
            elif task == "summarization":
                example = self.builder.summarization(record["text"], record["summary"])
            elif task == "continuation":
                low, high = self.stage.bridge_chunks
                example = self.builder.continuation(record["text"], num_bridges=rng.randint(low, high))
            else:
                example = getattr(self.builder, task)(record["text"])
            if example is not None:
                return example
            self.skipped[task] += 1
        raise ValueError(f"1000 records in a row did not fit a {task} example in max_length={self.builder.max_length}.")

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(self.seed)
        self.builder.rng = random.Random(self.seed + 1)
        tasks, weights = zip(*self.stage.task_weights.items())
        schedule = compression_schedule(self.num_samples, self.stage.compression_ratio, self.batch_size, rng)
        self.skipped.clear()
        for index, compressed in enumerate(schedule):
            task = rng.choices(tasks, weights)[0] if compressed else STANDARD_TASK
            yield {"example_id": index, **self._build(task, rng)}
        if self.skipped:  # long-context records are the ones skipped: say how many, the data is biased by them
            logger.warning("%s: records skipped, per task (too long for max_length=%d, or an empty answer): %s",
                           self.stage.name, self.builder.max_length, dict(self.skipped))

    def fingerprint(self, extra: dict | None = None) -> str:
        """Cache key of the materialised dataset: stage, sizes, seed, prompt settings and `extra` (the sources)."""
        tokenizer = self.builder.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        here = Path(__file__).parent
        key = dict(
            stage=asdict(self.stage), n=self.num_samples, batch=self.batch_size, seed=self.seed,
            template=self.builder.template, max_length=self.builder.max_length, system=self.builder.system_prompt,
            chunk=self.builder.config.chunk_size, wrap=self.builder.config.wrap, emphasis=self.builder.emphasis,
            vocab=hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest(),
            tokenizer=hashlib.sha256(backend.to_str().encode()).hexdigest() if backend is not None else None,
            chat_template=getattr(tokenizer, "chat_template", None), eos=tokenizer.eos_token_id,
            code=hashlib.sha256(b"".join((here / name).read_bytes() for name in CODE_FILES)).hexdigest(),
            extra=extra,
        )
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_stage_dataset(mixture: StageMixture, extra_fingerprint: dict | None = None, cache_dir: str | None = None) -> datasets.Dataset:
    """Materialise a mixture as a `datasets.Dataset`, cached by content (so ranks and resumed runs reuse it) when
    `extra_fingerprint` says what the sources are (`trainers.run` gives their paths, sizes and modification times);
    without it the mixture cannot know its data, so it is built afresh, never read from an earlier cache."""
    if extra_fingerprint is None:
        extra_fingerprint = {"unidentified sources": uuid.uuid4().hex}

    def generate():
        yield from tqdm(mixture, total=mixture.num_samples, desc=f"{mixture.stage.name} examples", unit="ex")

    features = EXAMPLE_FEATURES
    if mixture.builder.emphasis is not None:
        features = datasets.Features({**EXAMPLE_FEATURES, "emphasis": datasets.List(datasets.Value("int32"))})
    return datasets.Dataset.from_generator(
        generate, features=features, cache_dir=cache_dir, fingerprint=mixture.fingerprint(extra_fingerprint)
    )
