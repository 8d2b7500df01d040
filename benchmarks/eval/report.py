"""Reports from records: per-group means per system, compressed-vs-full tables with retention, JSON and plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ALL = "all"
LABELS = {"memcomp": "memcomp (compressed)", "full": "full context"}
COLORS = {"memcomp": "tab:blue", "full": "tab:orange"}


def _systems(summary: dict) -> list[str]:
    """The systems in a summary, memcomp first."""
    return sorted({s for row in summary.values() for s in row}, key=lambda s: (s != "memcomp", s))


def summarize(
    records: list[dict], metric: str, by: str | None = None, error_score: float | None = None,
    average_over: str | None = None,
) -> dict:
    """`{group: {system: {"mean", "n"}}}` over records that have `metric`, plus group "all".

    A record with an `error` (a context the system could not take, e.g. longer than its window) counts as
    `error_score`, the metric's failure, so every system is averaged over the same examples; with None it is left out
    (for metrics such as response length that have no failure value). `average_over` (e.g. "dataset") makes each
    mean the mean of that field's means, as the paper's "Avg." over datasets, not a mean over pooled examples."""
    values: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for record in records:
        value = record.get(metric)
        if value is None and "error" in record:
            value = error_score
        if value is None:
            continue
        part = record[average_over] if average_over is not None else None
        values[ALL][record["system"]][part].append(float(value))
        if by is not None:
            values[record[by]][record["system"]][part].append(float(value))

    def stats(parts: dict) -> dict:
        means = [sum(v) / len(v) for v in parts.values()]
        return {"mean": sum(means) / len(means), "n": sum(len(v) for v in parts.values())}

    groups = sorted((g for g in values if g != ALL), key=lambda g: (isinstance(g, str), g)) + [ALL]
    return {g: {s: stats(parts) for s, parts in sorted(values[g].items())} for g in groups if g in values}


def retention(compressed: float | None, full: float | None) -> float | None:
    """memcomp as a percentage of the full-context score (the paper's retention), None when undefined."""
    if compressed is None or not full:
        return None
    return 100.0 * compressed / full


def comparison_table(
    summary: dict, group_label: str, scale: float = 1.0, digits: int = 2, ratio_label: str = "retention %", systems=None
) -> str:
    """Markdown: one row per group, a column per system, and memcomp / full in % (retention) when both ran.

    `systems` picks and orders the columns (default: every system in `summary`, memcomp first).
    """
    systems = list(systems) if systems is not None else _systems(summary)
    both = {"memcomp", "full"} <= set(systems)
    header = [group_label] + [LABELS.get(s, s) for s in systems] + ([ratio_label] if both else []) + ["n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, row in summary.items():
        cells = [f"**{group}**" if group == ALL else str(group)]
        cells += [f"{row[s]['mean'] * scale:.{digits}f}" if s in row else "–" for s in systems]
        if both:
            kept = retention(row.get("memcomp", {}).get("mean"), row.get("full", {}).get("mean"))
            cells.append("–" if kept is None else f"{kept:.1f}")
        cells.append(str(max((row[s]["n"] for s in systems if s in row), default=0)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_lines(summary: dict, path: Path, xlabel: str, ylabel: str, title: str, scale: float = 1.0, ylim=None) -> Path:
    """Metric vs group (e.g. context length), one line per system; the "all" group is left out."""
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = [g for g in summary if g != ALL]
    for system in _systems({g: summary[g] for g in groups}):
        xs = [g for g in groups if system in summary[g]]
        ys = [summary[x][system]["mean"] * scale for x in xs]
        ax.plot([str(x) for x in xs], ys, marker="o", color=COLORS.get(system), label=LABELS.get(system, system))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=ylim)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_heatmap(
    records: list[dict], system: str, metric: str, path: Path, title: str, vmin=1, vmax=10, rows: str = "depth",
    columns: str = "length", row_order=None, xlabel: str = "context length (tokens)", ylabel: str = "needle depth",
    colorbar: str = "score",
) -> Path:
    """Heatmap in the style of the paper's Figure 3: mean `metric` per `rows` value (needle depth) x `columns` value
    (context length), over every cell the system has a record for; a cell with no score (only errors) is blank.
    `row_order` fixes the row order (default: sorted)."""
    mine = [r for r in records if r["system"] == system]
    if not mine:
        raise ValueError(f"no records of system {system!r} to plot.")
    cells: dict = defaultdict(list)
    for r in mine:
        if r.get(metric) is not None:
            cells[(r[rows], r[columns])].append(r[metric])
    present = {r[rows] for r in mine}
    depths = [d for d in row_order if d in present] if row_order else sorted(present)
    lengths = sorted({r[columns] for r in mine})
    grid = [[sum(cells[(d, n)]) / len(cells[(d, n)]) if cells.get((d, n)) else float("nan") for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(lengths), 1.2 + 0.4 * len(depths)))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=vmin, vmax=vmax, aspect="auto")
    column_names = [f"{n // 1000}K" if isinstance(n, int) and n >= 1000 else str(n) for n in lengths]
    ax.set_xticks(range(len(lengths)), column_names)
    ax.set_yticks(range(len(depths)), [f"{d}%" if isinstance(d, (int, float)) else str(d) for d in depths])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.colorbar(image, ax=ax, label=colorbar)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def paired_bootstrap(a: list[float], b: list[float], samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of `a - b` over paired examples and its 95% percentile-bootstrap interval (resampling the pairs)."""
    import numpy as np

    if len(a) != len(b) or not a:
        raise ValueError(f"paired_bootstrap needs two equally long, non-empty lists, got {len(a)} and {len(b)}.")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high), "n": len(diff)}


def write_report(output_dir: Path, benchmark: str, settings: dict, records: list[dict], aggregates: dict, tables: dict[str, str], plots: list[Path]) -> dict:
    """Write `results.json` (settings, aggregates, records) and `table.md`; return what was written."""
    output_dir = Path(output_dir)
    errors = [r for r in records if "error" in r]
    results = {
        "benchmark": benchmark,
        "output_dir": str(output_dir),
        "settings": settings,
        "num_records": len(records),
        "num_errors": len(errors),
        "num_judge_failures": sum(bool(r.get("judge_failed")) for r in records),
        "aggregates": aggregates,
        "tables": tables,
        "plots": [str(p.name) for p in plots],
        "records": records,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    body = [f"# {benchmark}", ""]
    for title, table in tables.items():
        body += [f"## {title}", "", table, ""]
    if errors:
        body.append(f"{len(errors)} example(s) not evaluated (see `error` in results.json), e.g.: {errors[0]['error']}")
    judged = [r for r in records if "judge_failed" in r]
    if judged:
        failed = sum(bool(r["judge_failed"]) for r in judged)
        body.append(f"Judge: {failed} of {len(judged)} verdicts failed after retries and count as wrong (`judge_raw` in results.json).")
    (output_dir / "table.md").write_text("\n".join(body).rstrip() + "\n")
    return results


def plot_bars(summary: dict, path: Path, xlabel: str, ylabel: str, title: str, scale: float = 1.0, ylim=None) -> Path:
    """Grouped bars of a metric per group (e.g. dataset), one bar per system; the "all" group is left out."""
    groups = [g for g in summary if g != ALL]
    systems = _systems({g: summary[g] for g in groups})
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(groups), 4))
    for k, system in enumerate(systems):
        heights = [summary[g][system]["mean"] * scale if system in summary[g] else 0 for g in groups]
        ax.bar([i + k * width for i in range(len(groups))], heights, width, color=COLORS.get(system), label=LABELS.get(system, system))
    ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(groups))], [str(g) for g in groups])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=ylim)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
