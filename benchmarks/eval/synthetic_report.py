"""The synthetic run's report: `report.json`, `report.md` and plots from timings, logs and evaluation records.

Issue 20's targets are checked against the measured figures and written next to them, met or not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks._timing import machine_name  # noqa: E402
from trainers.synthetic import read_jsonl  # noqa: E402

from .report import ALL, comparison_table, plot_heatmap  # noqa: E402
from .synthetic import (  # noqa: E402
    WORD_ROLES, aggregate, error_sources, paired_by_group, retention_by_group, type_guess_records,
)

CURVES = {"lm": "loss", "cpt1": "loss", "cpt2": "loss", "sft": "loss", "baseline": "loss", "rl": "reward"}
"""Stage -> the logged value its learning curve shows (CPT-1 curve stages show their loss too)."""
QA_SYSTEMS = ("sft", "rl", "previous", "full", "zero_memory", "copy", "type_guess")
DEPTH_ORDER = ("first", "middle", "last")
COLORS = {"sft": "tab:green", "rl": "tab:blue", "previous": "tab:purple", "full": "tab:orange", "zero_memory": "tab:gray",
          "copy": "tab:red"}


PROBE = "heldout_content_accuracy"
"""Logged by `ReconstructionProbe` during CPT-1 (and the curve stages), next to its zero-memory control."""


def _role_table(by_role: dict | None, systems: list[str]) -> list[str]:
    """Reconstruction content accuracy by word role: which words a memory carries (absent from older reports)."""
    if not by_role:
        return []
    return [
        "Content-token accuracy by word role (the subject's name is repeated in every sentence; other names are an "
        "employer or founder; values are cities, colours, professions and years):", "",
        comparison_table(by_role, "role", systems=systems), "",
    ]


def learning_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per stage from each stage's `log_history.json`."""
    curves = {}
    stages = [*CURVES, *sorted(p.name for p in run_dir.glob("cpt1_c*"))]
    for stage in stages:
        key = CURVES.get(stage, "loss")
        path = run_dir / stage / "log_history.json"
        if path.is_file():
            curves[stage] = [(e["step"], e[key]) for e in json.loads(path.read_text()) if key in e]
    return curves


def reconstruction_during_training(run_dir: Path) -> dict[str, list[dict]]:
    """Per compression stage that logged it: held-out content accuracy by step, from memory and with zero memory."""
    found = {}
    for path in sorted(run_dir.glob("cpt1*/log_history.json")):
        rows = [{"step": e["step"], "from_memory": e[PROBE], "zero_memory": e.get(f"{PROBE}_zero_memory"),
                 "documents": e.get("probe_documents"), **{role: e.get(f"{PROBE}/{role}") for role in WORD_ROLES}}
                for e in json.loads(path.read_text()) if PROBE in e]
        if rows:
            found[path.parent.name] = rows
    return found


def plot_curves(curves: dict, path: Path) -> Path:
    """One panel per curve: training loss (reward for RL; held-out content accuracy) against optimizer steps."""
    fig, axes = plt.subplots(1, len(curves), figsize=(3 * len(curves), 3), squeeze=False)
    for ax, (panel, points) in zip(axes[0], curves.items()):
        ax.plot([s for s, _ in points], [v for _, v in points], color="tab:blue", marker="." if "held-out" in panel else None)
        ylabel = "content-token accuracy" if panel.endswith("held-out") else CURVES.get(panel, "loss")
        ax.set(title=panel, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_em_by_k(summary: dict, max_passages: int, path: Path) -> Path:
    """Exact match against the number of documents in the context (paper Figure 4's shape), K_train marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    groups = [g for g in summary if g != ALL]
    for system in QA_SYSTEMS:
        xs = [g for g in groups if system in summary[g]]
        if xs:
            ax.plot([str(x) for x in xs], [100 * summary[x][system]["mean"] for x in xs], marker="o", label=system,
                    color=COLORS[system])
    if max_passages in groups:
        ax.axvline(groups.index(max_passages), color="black", linestyle=":", linewidth=1)
        ax.text(groups.index(max_passages), 2, " trained up to here", fontsize=8)
    ax.set(xlabel="documents in the context (k)", ylabel="exact match (%)", ylim=(0, 100),
           title="QA among distractor documents (held-out names)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=6, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reconstruction(summary: dict, path: Path) -> Path:
    """Content-token accuracy of held-out documents against the chunk size, each with its zero-memory control."""
    row = summary.get(ALL, {})
    sizes = sorted(int(s[1:]) for s in row if s.startswith("C") and "_" not in s)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([str(c) for c in sizes], [row[f"C{c}"]["mean"] for c in sizes], marker="o", label="from memory")
    ax.plot([str(c) for c in sizes], [row.get(f"C{c}_zero_memory", {}).get("mean") for c in sizes], marker="x",
            linestyle="--", color="tab:gray", label="zero memory")
    ax.set(xlabel="chunk size C (compression rate)", ylabel="content-token accuracy", ylim=(0, 1),
           title="Reconstruction of held-out documents")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def total_wall_time(timings: dict, config: dict) -> float:
    """Seconds from start to report: the main process's stages in turn; the second process runs alongside."""
    side = {"baseline", *(f"cpt1_c{c}" for c in config.get("recon_chunk_sizes", []))}
    main = sum(t for s, t in timings.items() if isinstance(t, (int, float)) and not (s in side and config.get("parallel")))
    side_total = sum(t for s, t in timings.items() if s in side and isinstance(t, (int, float)))
    return max(main, side_total + timings.get("data", 0) + timings.get("lm", 0)) if config.get("parallel") else main


def throughput(timings: dict) -> dict[str, float]:
    """Non-padding (decoder + encoder) tokens per second of every stage that counted them."""
    tokens = timings.get("useful_tokens", {})
    return {stage: tokens[stage] / timings[stage] for stage in tokens if timings.get(stage)}


def _mean(summary: dict, group, system: str) -> float | None:
    return summary.get(group, {}).get(system, {}).get("mean")


def check_targets(aggregates: dict, bootstrap: dict, max_passages: int) -> list[dict]:
    """Issue 20's targets, each with the measured value and whether it is met (None: not measured by this run)."""
    recon, by_k = aggregates["reconstruction_content_accuracy"], aggregates["qa_em_by_k"]
    ks = [g for g in by_k if g != ALL]
    trained = [k for k in ks if k <= max_passages]
    beyond = [k for k in ks if k > max_passages and k >= 16]  # the paper's long-context claim, scaled down
    targets = [("reconstruction content-token accuracy at C=4, held-out documents", _mean(recon, ALL, "C4"), 0.9)]
    for k in (1, 4):
        targets.append((f"full-context EM at k = {k}", _mean(by_k, k, "full"), 0.8))
    for system in ("rl", "sft"):
        kept = retention_by_group(by_k, system)
        measured = trained and all(k in kept for k in trained)  # a run without both systems measures no retention
        lowest = min(kept[k] for k in trained) if measured else None
        targets.append((f"{system} retention (EM / full EM, %) at every k <= {max_passages} (lowest)", lowest, 90.0))
        for k in beyond:
            ours, full = _mean(by_k, k, system), _mean(by_k, k, "full")
            gap = None if ours is None or full is None else ours - full
            targets.append((f"{system} EM minus full-context EM at k = {k}", gap, 0.0))
    for k in [k for k in ks if k >= 4]:
        low = bootstrap.get(k, {}).get("low")
        targets.append((f"RL minus SFT EM at k = {k}: lower end of the 95% interval", low, 1e-12))
    return [{"target": name, "measured": value, "met": None if value is None else value >= bound} for name, value, bound in targets]


def choose_shipped_stage(report: dict) -> tuple[str | None, str]:
    """The stage to export (RL when it is at least SFT over the training range, else SFT) and why, or None when it
    does not beat the previously shipped checkpoint.

    It must score higher on the single-document held-out set, or tie there (both at its ceiling, say) and beat the
    shipped one on the held-out set by number of documents, its paired 95% interval over every k above zero; in
    either case it must not be worse by documents (an interval entirely below zero refuses it).
    """
    agg, max_passages = report["aggregates"], report["config"]["max_passages"]
    by_k = agg["qa_em_by_k"]
    trained = [k for k in by_k if k != ALL and int(k) <= max_passages]  # int: keys are strings in a loaded report

    def mean_over(system):
        values = [_mean(by_k, k, system) for k in trained]
        return None if None in values or not values else sum(values) / len(values)

    rl, sft = mean_over("rl"), mean_over("sft")
    if rl is None and sft is None:
        return None, "nothing to ship: the run has no evaluated SFT or RL model."
    stage = "rl" if rl is not None and rl >= (sft or 0) else "sft"
    single = agg["single_em_by_type"].get(ALL, {})
    new, old = single.get(stage, {}).get("mean"), single.get("previous", {}).get("mean")
    if old is None or new is None:
        return stage, f"the `{stage}` stage, exported to the checkpoint folder."
    single_set = f"{new:.3f} EM on the single-document set, the shipped one {old:.3f}"
    gain = report.get("minus_previous", {}).get(stage, {}).get(ALL)
    by_documents = "" if gain is None else f"; held-out set by documents: {_gain(gain)} over it"
    tied = math.isclose(new, old, abs_tol=1e-9)
    if new < old and not tied:
        return None, f"not replaced: the new `{stage}` model scores {single_set}."
    if gain is not None and gain["high"] < 0:
        return None, f"not replaced: the new `{stage}` model scores {single_set}{by_documents}, an interval below zero."
    if tied and (gain is None or gain["low"] <= 0):
        return None, f"not replaced: the new `{stage}` model ties, {single_set}{by_documents or '; nothing breaks the tie'}."
    return stage, f"the `{stage}` stage ({single_set}{by_documents}), exported to the checkpoint folder."


def _gain(bootstrap: dict) -> str:
    return f"{100 * bootstrap['mean']:+.1f} points EM [{100 * bootstrap['low']:+.1f}, {100 * bootstrap['high']:+.1f}]"


def phase_record(run_dir: str | Path) -> dict:
    """One run of a schedule as the report records it: its folder, settings and wall time from start to its end."""
    config = json.loads((Path(run_dir) / "run_config.json").read_text())
    path = Path(run_dir) / "timings.json"
    timings = json.loads(path.read_text()) if path.is_file() else {}  # a phase that only links others' stages
    return {"output_dir": str(run_dir), "config": config, "wall_time_s": total_wall_time(timings, config)}


def write_report(
    run_dir: str | Path, output_dir: str | Path, results: dict, machine: dict, command: str, earlier_runs: Sequence = ()
) -> dict:
    """Write report.json / report.md and the plots for a finished run and evaluation; returns the JSON. For the last
    run of a schedule, `earlier_runs` are the earlier phases' folders: the report records each one's settings and the
    total wall time is theirs and this run's, in turn."""
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    qa_passages = results.get("qa_passages", [])
    heldout_rows = read_jsonl(run_dir / "data" / "heldout" / "qa_passages.jsonl") if qa_passages else []
    aggregates = aggregate(results, type_guess_records(qa_passages, heldout_rows))
    config = json.loads((run_dir / "run_config.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    curves = learning_curves(run_dir)
    during = reconstruction_during_training(run_dir)
    held_out = {f"{stage} held-out": [(r["step"], r["from_memory"]) for r in rows] for stage, rows in during.items()}
    panels = {name: points for name, points in {**curves, **held_out}.items() if points}
    if panels:  # an evaluation-only run of reused models may have no training log
        plot_curves(panels, output_dir / "learning_curves.png")
    else:
        (output_dir / "learning_curves.png").unlink(missing_ok=True)  # an earlier run's, into the same folder
    if aggregates["qa_em_by_k"]:
        plot_em_by_k(aggregates["qa_em_by_k"], config["max_passages"], output_dir / "em_by_documents.png")
    if aggregates["reconstruction_content_accuracy"]:
        plot_reconstruction(aggregates["reconstruction_content_accuracy"], output_dir / "reconstruction_by_chunk_size.png")
    passages = [r for r in qa_passages if r["k"] > 1]
    heatmaps = []
    for system in ("sft", "rl", "full"):
        if any(r["system"] == system for r in passages):
            name = f"heatmap_{system}.png"
            plot_heatmap(
                [{**r, "em": 100 * r["em"]} if "em" in r else r for r in passages], system, "em", output_dir / name,
                f"{system}: EM (%) by answer depth and documents", vmin=0, vmax=100, rows="depth", columns="k",
                row_order=DEPTH_ORDER, xlabel="documents in the context (k)", ylabel="answer's document", colorbar="EM (%)",
            )
            heatmaps.append(name)
    bootstrap = paired_by_group(qa_passages, "rl", "sft", by="k")
    minus_previous = {s: paired_by_group(qa_passages, s, "previous", by="k") for s in ("rl", "sft")}
    aggregates["qa_em_by_depth"] = {d: aggregates["qa_em_by_depth"][d] for d in (*DEPTH_ORDER, ALL) if d in aggregates["qa_em_by_depth"]}
    phases = [phase_record(folder) for folder in (*earlier_runs, run_dir)] if earlier_runs else []
    total = sum(p["wall_time_s"] for p in phases) if phases else total_wall_time(timings, config)
    report = {
        "command": command,
        "machine": machine,
        "config": config,
        "phases": phases,
        "wall_time_s": {**{s: t for s, t in timings.items() if isinstance(t, (int, float))}, "total": total},
        "useful_tokens_per_s": throughput(timings),
        "aggregates": aggregates,
        "retention_percent": {s: retention_by_group(aggregates["qa_em_by_k"], s) for s in ("sft", "rl")},
        "rl_minus_sft": bootstrap,
        "minus_previous": {s: b for s, b in minus_previous.items() if b},
        "targets": check_targets(aggregates, bootstrap, config["max_passages"]),
        "final_training_values": {stage: points[-1][1] for stage, points in curves.items() if points},
        "reconstruction_during_training": during,
        "heatmaps": heatmaps,
        "wrong_answer_sources": error_sources(qa_passages, heldout_rows),
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (output_dir / "report.md").write_text(render_markdown(report))
    return report


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _present(summary: dict, systems) -> list[str]:
    return [s for s in systems if any(s in row for row in summary.values())]


def side_stages(report: dict) -> list[str]:
    """Stages a second process trained beside the main one's, over every phase of the run (a schedule's included)."""
    side: list[str] = []
    for config in [p["config"] for p in report.get("phases") or []] or [report["config"]]:
        trained = [s for s in config.get("stages") or [] if s != "data" and s not in (config.get("reuse") or {})]
        aside = [s for s in trained if s == "baseline" or s.startswith("cpt1_c")]
        if config.get("parallel") and aside and len(aside) < len(trained):
            side += [s for s in aside if s not in side]
    return side


def render_markdown(report: dict) -> str:
    """report.md: the targets, QA (when the run has a QA system), reconstruction, wall time."""
    agg, config = report["aggregates"], report["config"]
    hours = report["wall_time_s"]["total"] / 3600
    by_k = agg["qa_em_by_k"]
    contexts = (f" Training QA contexts hold 1-{config['max_passages']} documents; held-out contexts hold up to "
                f"{max(int(g) for g in by_k if g != ALL)}." if by_k else "")
    side = ", ".join(f"`{stage}`" for stage in side_stages(report))
    alongside = f" (a second process trained {side} alongside)" if side else ""
    lines = [
        "# Synthetic run: distractor documents, length generalization, RL",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_name(report['machine'])} ({report['machine'].get('logical_cpus')} logical CPUs, no GPU); "
        f"wall time {hours:.2f} h from start to report{alongside}.  ",
        f"Model: Qwen2 architecture, {config['num_layers']} layers, hidden {config['hidden_size']}; chunk size "
        f"{config['chunk_size']} ({config['wrap']} wrapping, so the effective rate is about {config['chunk_size']}x).{contexts}",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in report["targets"]:
        value = "–" if t["measured"] is None else f"{t['measured']:.3f}"
        met = "not measured" if t["met"] is None else "yes" if t["met"] else "no"
        lines.append(f"| {t['target']} | {value} | {met} |")
    lines.append("")
    if by_k:
        lines += _qa_sections(report)
    single = agg["single_em_by_type"]
    if single:
        lines += ["## The single-document held-out set (issue 11's evaluation)", "",
                  comparison_table(single, "type", scale=100, digits=1, systems=_present(single, QA_SYSTEMS)), ""]
    recon = agg["reconstruction_content_accuracy"]
    if recon:
        systems = sorted((s for s in recon.get(ALL, {}) if s != "copy"), key=lambda s: (int(s[1:].split("_")[0]), s))
        lines += ["## Reconstruction of held-out documents", "", "Content-token accuracy (names and values only), by length bucket (tokens):", "",
                  comparison_table(recon, "length", systems=[*systems, "copy"]), "",
                  "ROUGE-L F1:", "", comparison_table(agg["reconstruction_rougeL"], "length", systems=[*systems, "copy"]), "",
                  *_role_table(agg.get("reconstruction_content_accuracy_by_role"), systems),
                  "![reconstruction](reconstruction_by_chunk_size.png)", ""]
    for stage, rows in report.get("reconstruction_during_training", {}).items():
        documents = "/".join(sorted({str(r["documents"]) for r in rows if r.get("documents") is not None})) or "?"
        lines += [f"Held-out content-token accuracy during `{stage}` (greedy, {documents} documents; the word-role "
                  "columns are from memory):",
                  "", f"| step | from memory | zero memory | {' | '.join(WORD_ROLES)} |", "|" + "---|" * 6,
                  *[f"| {r['step']} | {_figure(r['from_memory'])} | {_figure(r['zero_memory'])} | "
                    + " | ".join(_figure(r.get(role)) for role in WORD_ROLES) + " |" for r in rows], ""]
    lines += [
        "Systems: `sft` answers from SFT memory; `rl` is the RL checkpoint folder alone (its `compress()` is the SFT "
        "encoder, its decoder the RL one: the paper's system); `full` is the same-size baseline fine-tuned on the same "
        "QA rows with the context as text; `previous` is the checkpoint shipped before this run; `zero_memory` is SFT "
        "with every memory embedding set to zero; `copy` answers with the first name in the prompt; `C4`/`C8`/`C16` "
        "reconstruct from CPT-1 memory at that chunk size.",
        "",
        "## Wall time and throughput",
        "",
        "| stage | seconds | non-padding tokens/s |",
        "|---|---|---|",
    ]
    rates = report["useful_tokens_per_s"]
    for stage, seconds in report["wall_time_s"].items():
        rate = f"{rates[stage]:,.0f}" if stage in rates else "–"
        lines.append(f"| {stage} | {seconds:.0f} | {rate} |")
    if report.get("phases"):
        lines += ["", "The stages above are the last phase's; the total is the schedule's. Its phases, in turn "
                  "(settings in report.json's `phases`):", "", "| phase | folder | hours |", "|---|---|---|",
                  *[f"| {i} | `{p['output_dir']}` | {p['wall_time_s'] / 3600:.2f} |" for i, p in enumerate(report["phases"], 1)]]
    if report["final_training_values"] or report["reconstruction_during_training"]:
        lines += ["", "![learning curves](learning_curves.png)"]
    lines.append("")
    return "\n".join(lines)


def _qa_sections(report: dict) -> list[str]:
    """QA exact match by k, retention, RL minus SFT, by depth / type / kind of answer, error sources."""
    agg, config = report["aggregates"], report["config"]
    by_k = agg["qa_em_by_k"]
    min_k = agg.get("qa_table_min_k")  # absent from reports made before: their tables pool k >= 2 and every k
    depth_ks = (f"k >= {min_k['depth']}, where every depth is in the held-out grid" if min_k else "k >= 2")
    type_ks = (f"k >= {min_k['type']}, where every type is (k = 1 has no two-hop question)" if min_k else "all k")
    lines = [
        f"## QA exact match (%) by number of documents in the context (held-out names; trained on k <= {config['max_passages']})",
        "",
        comparison_table(by_k, "k", scale=100, digits=1, systems=_present(by_k, QA_SYSTEMS)),
        "",
    ]
    for system, kept in report["retention_percent"].items():
        if not kept:  # the system is not in this (partial) run
            continue
        cells = ", ".join(f"k={g}: {v:.0f}%" for g, v in kept.items())
        lines.append(f"- retention of {system} (EM / full-context EM): {cells}")
    if report["rl_minus_sft"]:
        lines += ["", "RL minus SFT, exact match (paired over the same questions; 95% bootstrap interval):", "",
                  "| k | RL - SFT (points) | 95% interval | n |", "|---|---|---|---|"]
    for group, b in report["rl_minus_sft"].items():
        lines.append(f"| {group} | {100 * b['mean']:+.1f} | [{100 * b['low']:+.1f}, {100 * b['high']:+.1f}] | {b['n']} |")
    lines += [
        "",
        "![EM by documents](em_by_documents.png)",
        "",
        f"### By depth of the answer's document ({depth_ks})",
        "",
        comparison_table(agg["qa_em_by_depth"], "depth", scale=100, digits=1, systems=_present(agg["qa_em_by_depth"], QA_SYSTEMS)),
        "",
        *[f"![{name}]({name})" for name in report["heatmaps"]],
        "",
        f"### By question type ({type_ks})",
        "",
        comparison_table(agg["qa_em_by_type"], "type", scale=100, digits=1, systems=_present(agg["qa_em_by_type"], QA_SYSTEMS)),
        "",
        "### By kind of answer",
        "",
        "Closed-set values (city, colour, profession, year) come from small sets seen throughout training; names are "
        "an open set, so a held-out name must be copied from the context. `type_guess` is a control: the expected "
        "EM of picking at random one value of the answer's set (cities, colours, ...) that the context states. A "
        "system at it reads the right kind of value but does not bind it to the asked entity.",
        "",
        *[line for kind, table in agg["qa_em_by_answer_kind"].items() for line in (
            f"EM (%) by k, {kind} answers:", "",
            comparison_table(table, "k", scale=100, digits=1, systems=_present(table, QA_SYSTEMS)), "")],
        "Where the wrong answers come from (k >= 2; share of each system's wrong answers):",
        "",
        "| system | wrong answers | from a distractor (bound to the wrong entity) | from a needed document (wrong fact) | in no document (made up) |",
        "|---|---|---|---|---|",
        *[f"| {system} | {e['wrong']} | {100 * e['distractor']:.0f}% | {100 * e['needed']:.0f}% | {100 * e['elsewhere']:.0f}% |"
          for system, e in report["wrong_answer_sources"].items() if system in QA_SYSTEMS and system != "copy"],
        "",
    ]
    return lines
