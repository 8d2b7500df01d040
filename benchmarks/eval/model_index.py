"""Finished evaluations -> the evaluation JSON `hub_cards` turns into a model card's `model-index` (memcomp scores)."""

from __future__ import annotations

import json
from pathlib import Path

from .loaders import QA_PRESETS
from .report import ALL

# benchmark -> (aggregate, Hub task id, dataset id, metric id, scale); QA and reconstruction give a row per group.
PRIMARY = {
    "qa": ("accuracy", "question-answering", None, "accuracy", 100),
    "reconstruction": ("rouge1", "text-generation", "reconstruction", "rouge", 1),
    "niah": ("score_by_length", "text-generation", "needle-in-a-haystack", "niah_score", 1),
    "multihop": ("accuracy_by_length", "question-answering", "ruler-multihop-qa", "exact_match", 100),
    "longbench": ("accuracy_by_bucket", "multiple-choice", "THUDM/LongBench-v2", "accuracy", 100),
}
PER_GROUP = ("qa", "reconstruction")


def _row(benchmark: str, group: str, value: float) -> dict:
    _, task, dataset, metric, scale = PRIMARY[benchmark]
    if benchmark == "qa":
        dataset, name = (QA_PRESETS[group].path if group in QA_PRESETS else group), group
    elif benchmark == "reconstruction":
        name = f"reconstruction ({group} tokens)"
    else:
        name = benchmark
    return {"task": task, "dataset": dataset, "metric": metric, "value": round(value * scale, 2), "dataset_name": name}


def model_index(results_paths: list[str | Path], model_name: str | None = None) -> dict:
    """`{"model_name", "results": [...]}` from `results.json` files (or their folders), for `hub_cards.load_evaluation`."""
    rows = []
    for path in map(Path, results_paths):
        path = path / "results.json" if path.is_dir() else path
        results = json.loads(path.read_text())
        benchmark = results["benchmark"]
        if benchmark not in PRIMARY:
            raise ValueError(f"{path}: no model-index mapping for benchmark {benchmark!r}; known: {sorted(PRIMARY)}.")
        for group, systems in results["aggregates"][PRIMARY[benchmark][0]].items():
            if "memcomp" in systems and (benchmark in PER_GROUP) != (group == ALL):
                rows.append(_row(benchmark, group, systems["memcomp"]["mean"]))
    return {"model_name": model_name, "results": rows} if model_name else {"results": rows}
