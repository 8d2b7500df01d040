"""Response-length analysis (paper Appendix D, Table 6): average answer tokens per system, from finished runs' records."""

from __future__ import annotations

import json
from pathlib import Path

from .report import comparison_table, plot_bars, summarize

TITLE = "Average response length (tokens)"


def load_records(paths: list[str | Path]) -> list[dict]:
    """Records from `results.json` files, each tagged with its group: "benchmark/dataset", else the benchmark.

    Refuses a system that comes from two models, or a group's system from two files: they would pool silently."""
    records, models, sources = [], {}, {}
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        if not path.exists():
            raise ValueError(f"no results at {path}: give results.json files (or their folders) of finished evaluations.")
        results = json.loads(path.read_text())
        settings = results.get("settings", {})
        model = settings.get("model_fingerprint", settings.get("model"))
        for record in results["records"]:
            if record.get("response_tokens") is None:
                continue
            system = record["system"]
            group = f"{results['benchmark']}/{record['dataset']}" if "dataset" in record else results["benchmark"]
            first_model, first_path = models.setdefault(system, (model, path))
            if first_model != model:
                raise ValueError(f"system {system!r} comes from two models ({first_path} and {path}): give one model's "
                                 "results per response-length report.")
            if sources.setdefault((group, system), path) != path:
                raise ValueError(f"{group} has {system!r} responses in both {sources[(group, system)]} and {path}: give "
                                 "one results folder per benchmark and model.")
            records.append({**record, "group": group})
    if not records:
        raise ValueError("the results hold no generated responses.")
    return records


def evaluate(paths: list[str | Path], output_dir: str | Path) -> dict:
    """Write `response_length.json`, `response_length.md` and a bar plot; return the summary."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(load_records(paths), "response_tokens", by="group")
    table = comparison_table(summary, "set", digits=1, ratio_label="memcomp / full %")
    (output_dir / "response_length.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "response_length.md").write_text(f"# {TITLE}\n\n{table}\n")
    plot_bars(summary, output_dir / "response_length.png", "set", "tokens", TITLE)
    return {"summary": summary, "table": table}
