"""The synthetic run's report: `report.json`, `report.md` and `learning_curves.png` from timings, logs and records.

Targets (issue 11) are checked against the measured figures and written next to them, met or not.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report import comparison_table  # noqa: E402
from .synthetic import aggregate, retention_by_group  # noqa: E402

CURVES = {"lm": "loss", "cpt1": "loss", "cpt2": "loss", "sft": "loss", "baseline": "loss", "rl": "reward"}
"""Stage -> the logged value its learning curve shows."""
QA_SYSTEMS = ("sft", "rl", "rl_self", "full", "zero_memory", "copy")
RECON_SYSTEMS = ("cpt1", "cpt2", "zero_memory", "copy")


def learning_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per stage from each stage's `log_history.json`."""
    curves = {}
    for stage, key in CURVES.items():
        path = run_dir / stage / "log_history.json"
        if path.is_file():
            curves[stage] = [(e["step"], e[key]) for e in json.loads(path.read_text()) if key in e]
    return curves


def plot_curves(curves: dict, path: Path) -> Path:
    """One panel per stage: training loss (reward for RL) against optimizer steps."""
    fig, axes = plt.subplots(1, len(curves), figsize=(3 * len(curves), 3), squeeze=False)
    for ax, (stage, points) in zip(axes[0], curves.items()):
        ax.plot([s for s, _ in points], [v for _, v in points], color="tab:blue")
        ax.set(title=stage, xlabel="step", ylabel=CURVES[stage])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def total_wall_time(timings: dict, config: dict) -> float:
    """Seconds from start to report: every stage in turn, except a baseline trained alongside in a second process."""
    return sum(t for stage, t in timings.items() if not (stage == "baseline" and config.get("parallel_baseline")))


def _mean(summary: dict, group: str, system: str) -> float | None:
    return summary.get(group, {}).get(system, {}).get("mean")


def check_targets(aggregates: dict, compressed: str) -> list[dict]:
    """Issue 11's targets, each with the measured value and whether it is met."""
    rouge, content = aggregates["reconstruction_rougeL_by_kind"], aggregates["reconstruction_content_accuracy_by_kind"]
    stages = [s for s in ("cpt1", "cpt2") if _mean(rouge, "document", s) is not None]
    best = max(stages, key=lambda s: _mean(rouge, "document", s), default="cpt1")
    qa = aggregates["qa_em"]
    types = [g for g in qa if g != "all"]
    targets = [
        (f"held-out document reconstruction ROUGE-L >= 0.9 ({best})", _mean(rouge, "document", best), 0.9),
        (f"held-out document content-token accuracy >= 0.8 ({best})", _mean(content, "document", best), 0.8),
        ("full-context EM >= 0.8 on every question type (lowest type)", min((_mean(qa, t, "full") or 0 for t in types), default=None), 0.8),
    ]
    kept = retention_by_group(qa, compressed)
    targets.append((f"{compressed} EM >= 90% of full context on every type (lowest retention, %)", min((kept.get(t, 0) for t in types), default=None), 90.0))
    targets.append(("RL EM >= SFT EM (RL minus SFT, all questions)", (_mean(qa, "all", "rl") or 0) - (_mean(qa, "all", "sft") or 0), 0.0))
    return [{"target": name, "measured": value, "met": value is not None and value >= bound} for name, value, bound in targets]


def write_report(run_dir: str | Path, output_dir: str | Path, results: dict, machine: dict, command: str) -> dict:
    """Write report.json / report.md / learning_curves.png for a finished run and evaluation; returns the JSON."""
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    aggregates = aggregate(results.get("reconstruction", []), results["qa"])
    config = json.loads((run_dir / "run_config.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    curves = learning_curves(run_dir)
    plot_curves(curves, output_dir / "learning_curves.png")
    qa_systems = [s for s in QA_SYSTEMS if any(s in row for row in aggregates["qa_em"].values())]
    retentions = {s: retention_by_group(aggregates["qa_em"], s) for s in ("sft", "rl", "rl_self") if s in qa_systems}
    compressed = max(retentions, key=lambda s: retentions[s].get("all", 0)) if retentions else "sft"
    report = {
        "command": command,
        "machine": machine,
        "config": config,
        "wall_time_s": {**timings, "total": total_wall_time(timings, config)},
        "compression": {"chunk_size": config["chunk_size"], "wrap": config["wrap"]},
        "aggregates": aggregates,
        "retention_percent": retentions,
        "targets": check_targets(aggregates, compressed),
        "final_training_values": {stage: points[-1][1] for stage, points in curves.items() if points},
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (output_dir / "report.md").write_text(render_markdown(report, qa_systems))
    return report


def render_markdown(report: dict, qa_systems: list[str]) -> str:
    agg, config = report["aggregates"], report["config"]
    hours = report["wall_time_s"]["total"] / 3600
    lines = [
        "# Synthetic demo run",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine'].get('cpu')} ({report['machine'].get('logical_cpus')} logical CPUs, no GPU); "
        f"wall time {hours:.2f} h from start to report (the baseline trains alongside CPT-1 in a second process).  ",
        f"Model: Qwen2 architecture, {config['num_layers']} layers, hidden {config['hidden_size']}; "
        f"chunk size {config['chunk_size']} ({config['wrap']} wrapping, so the effective rate is about {config['chunk_size']}x).",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in report["targets"]:
        value = "–" if t["measured"] is None else f"{t['measured']:.3f}"
        lines.append(f"| {t['target']} | {value} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "## Reconstruction of held-out documents (by document length, tokens)", ""]
    if agg["reconstruction_rougeL"]:
        for title, key in (("ROUGE-L F1", "rougeL"), ("Content-token accuracy (names and values only)", "content_accuracy")):
            lines += [f"{title}, documents (as trained) vs two-document episodes (an untrained length):", ""]
            lines += [comparison_table(agg[f"reconstruction_{key}_by_kind"], "kind", systems=RECON_SYSTEMS), ""]
            lines += [f"{title} by length bucket (tokens):", "", comparison_table(agg[f"reconstruction_{key}"], "length", systems=RECON_SYSTEMS), ""]
    lines += ["## QA exact match (%) on held-out questions, by type", "", comparison_table(agg["qa_em"], "type", scale=100, digits=1, systems=qa_systems), ""]
    for system, kept in report["retention_percent"].items():
        cells = ", ".join(f"{g} {v:.0f}%" for g, v in kept.items())
        lines.append(f"- retention of {system} (EM / full-context EM): {cells}")
    lines += [
        "",
        "Systems: `cpt1` reconstructs from CPT-1 memory (plain template), `cpt2` from CPT-2 memory (chat template); `sft` answers from SFT memory; `rl` is the RL "
        "decoder reading memories of the SFT encoder (as in RL training); `rl_self` is the RL checkpoint compressing "
        "with its own weights; `full` is the same-size baseline fine-tuned on the same QA rows with the context as "
        "text; `zero_memory` is the same model with every memory embedding set to zero; `copy` answers with the first "
        "name in the prompt.",
        "",
        "## Wall time (s)",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in report["wall_time_s"].items()]
    lines += ["", "![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)
