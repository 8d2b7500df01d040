"""Evaluation JSON -> `huggingface_hub.EvalResult`s for a card's `model-index`.

Accepted shape (one file per model; `model_name` is optional, it defaults to the repo name):

    {"model_name": "memcomp-qwen2.5-7b-rl",
     "results": [{"task": "question-answering", "dataset": "hotpotqa/hotpot_qa", "metric": "accuracy",
                  "value": 71.2, "dataset_name": "HotpotQA", "split": "validation"}]}

`task` is a Hub task id, `dataset` a Hub dataset id, `metric` a metric id and `value` a number; the
optional keys are listed in `OPTIONAL_KEYS`.
"""

from __future__ import annotations

import json
import os
from numbers import Real

from huggingface_hub import EvalResult

REQUIRED_KEYS = ("task", "dataset", "metric", "value")
OPTIONAL_KEYS = {
    "dataset_name": "dataset_name",
    "split": "dataset_split",
    "config": "dataset_config",
    "revision": "dataset_revision",
    "task_name": "task_name",
    "metric_name": "metric_name",
    "source_name": "source_name",
    "source_url": "source_url",
}
"""Optional result keys and the `EvalResult` field each one fills."""


def load_evaluation(source: str | os.PathLike | dict) -> tuple[str | None, list[EvalResult]]:
    """Read an evaluation JSON (path or already-parsed dict); return `(model_name, eval_results)`."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, encoding="utf-8") as handle:
                source = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"evaluation file {os.fspath(source)!r} is not valid JSON: {error}.") from error
    if not isinstance(source, dict) or not isinstance(source.get("results"), list):
        raise ValueError(
            'evaluation JSON must be an object with a "results" list: '
            '{"model_name": ..., "results": [{"task": ..., "dataset": ..., "metric": ..., "value": ...}]}.'
        )
    model_name = source.get("model_name")
    if model_name is not None and not isinstance(model_name, str):
        raise TypeError(f'evaluation "model_name" must be a string, got {type(model_name).__name__}.')
    return model_name, [_eval_result(i, row) for i, row in enumerate(source["results"])]


def _eval_result(index: int, row) -> EvalResult:
    """One `results` entry -> `EvalResult`, with errors that name the entry and the key."""
    where = f"evaluation results[{index}]"
    if not isinstance(row, dict):
        raise TypeError(f"{where} must be an object, got {type(row).__name__}.")
    missing = [key for key in REQUIRED_KEYS if key not in row]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(map(repr, missing))}; every result needs {REQUIRED_KEYS}.")
    unknown = sorted(set(row) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}; allowed: {REQUIRED_KEYS + tuple(OPTIONAL_KEYS)}.")
    value = row["value"]
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f'{where} "value" must be a number, got {value!r}.')
    for key in ("task", "dataset", "metric"):
        if not isinstance(row[key], str) or not row[key]:
            raise TypeError(f'{where} "{key}" must be a non-empty string, got {row[key]!r}.')
    optional = {field: row[key] for key, field in OPTIONAL_KEYS.items() if key in row}
    optional.setdefault("dataset_name", row["dataset"])
    return EvalResult(
        task_type=row["task"], dataset_type=row["dataset"], metric_type=row["metric"], metric_value=value, **optional
    )
