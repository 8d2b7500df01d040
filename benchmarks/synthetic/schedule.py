"""A schedule of synthetic runs as one resumable command.

Each phase is a `SyntheticRunConfig` trained in its own folder, `{output_dir}/{name}`; a later phase takes finished
stages of earlier ones (`reuse`) or goes on training them (`start_from`), e.g. in another distractor world. The last
phase is evaluated, reported (by default in `{output_dir}/report`) and exported like a single run
(`benchmarks.synthetic.run.run_and_report`). A rerun skips finished
phases and stages and resumes an interrupted stage from its last checkpoint, so a schedule longer than a session is
the same command run again.

    python examples/train_synthetic_schedule.py --schedule examples/configs/synthetic_shipped.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from benchmarks.eval.synthetic_report import phase_record

from .config import StageFolders, SyntheticRunConfig
from .pipeline import run_pipeline
from .run import ReportArguments, check_checkpoint_dir, run_and_report

logger = logging.getLogger(__name__)

SCHEDULE_KEYS = {"output_dir", "common", "phases"}
PHASE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
RUN_FIELDS = {f.name for f in fields(SyntheticRunConfig)}


@dataclass
class ScheduleArguments:
    """Which schedule to run."""

    schedule: str = field(
        default="examples/configs/synthetic_shipped.yaml",
        metadata={"help": "YAML file: `output_dir`, `common` (fields every phase gets) and `phases`, a list of {name, "
                  "fields of SyntheticRunConfig}; `reuse` and `start_from` folders are '<phase>/<stage>', relative to "
                  "`output_dir`."},
    )


@dataclass
class Phase:
    name: str
    config: SyntheticRunConfig


@dataclass
class Schedule:
    output_dir: Path
    phases: list[Phase]


def _argv(values: dict) -> list[str]:
    """Fields as command-line arguments, so argparse converts and checks them as it does for `train_synthetic.py`."""
    argv = []
    for key, value in values.items():
        if value is None:
            raise ValueError(f"{key}: null; leave the field out for its default.")
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv


def load_schedule(path: str | Path) -> Schedule:
    """The phases of a schedule file, each a validated `SyntheticRunConfig`; every `reuse`/`start_from` folder must be
    a stage of its kind that an earlier phase trains or reuses, so a wrong reference fails now, not hours later."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(spec) - SCHEDULE_KEYS
    if unknown or not spec.get("phases") or "output_dir" not in spec:
        raise ValueError(f"{path}: a schedule has `output_dir`, `phases` (a non-empty list) and optionally `common`; "
                         f"got keys {sorted(spec)}.")
    root, common = Path(spec["output_dir"]), dict(spec.get("common") or {})
    phases: list[Phase] = []
    for number, entry in enumerate(spec["phases"], 1):
        entry = dict(entry)
        name = entry.pop("name", None)
        if not isinstance(name, str) or not PHASE_NAME.fullmatch(name) or name in {p.name for p in phases}:
            raise ValueError(f"{path}: phase {number} needs a unique `name` of letters, digits, '_', '.' or '-' (not "
                             f"starting with '.'), got {name!r}.")
        values = {**common, **entry}
        try:
            if "output_dir" in values:
                raise ValueError("output_dir is the schedule's; every phase trains in <output_dir>/<name>.")
            unknown = sorted(set(values) - RUN_FIELDS)
            if unknown:
                raise ValueError(f"unknown fields {unknown} (SyntheticRunConfig's: `train_synthetic.py --help`).")
            for key in ("reuse", "start_from"):
                references = StageFolders(values.get(key) or {})
                _check_references(key, references, phases)
                values[key] = {stage: str(root / folder) for stage, folder in references.items()}
            parser = HfArgumentParser(SyntheticRunConfig, exit_on_error=False, allow_abbrev=False)
            (config,) = parser.parse_args_into_dataclasses(_argv({**values, "output_dir": str(root / name)}))
        except (ValueError, TypeError, argparse.ArgumentError) as error:
            raise ValueError(f"{path}: phase {name!r}: {error}") from None
        phases.append(Phase(name, config))
    return Schedule(root, phases)


def _check_references(key: str, references: dict, earlier: list[Phase]) -> None:
    """Each reference is '<phase>/<stage>' of an earlier phase that trains or reuses that stage, of a fitting kind: a
    reused folder is the same stage (an SFT for `sft`), a start is data for data only and a baseline for a baseline."""
    provides = {p.name: {*p.config.stages, *p.config.reuse} for p in earlier}
    for stage, folder in references.items():
        phase, _, source = str(folder).partition("/")
        if not phase or not source or "/" in source:
            raise ValueError(f"{key} {stage} -> {folder!r}; write '<phase>/<stage>'.")
        if source not in provides.get(phase, ()):
            raise ValueError(f"{key} {stage} -> '{folder}', but no earlier phase {phase!r} trains or reuses {source!r} "
                             f"(earlier phases: {sorted(provides) or 'none'}).")
        if key == "reuse" and source != stage:
            raise ValueError(f"reuse {stage} -> '{folder}': a {source} folder cannot stand for {stage}; reuse '{phase}/{stage}'.")
        if (stage == "data") != (source == "data") or (stage == "baseline") != (source == "baseline"):
            raise ValueError(f"{key} {stage} -> '{folder}': a {source} folder cannot stand for {stage}.")


def run_schedule(schedule: Schedule, report_args: ReportArguments, command: str) -> dict:
    """Train every phase in order, then evaluate, report and export the last one; returns its report. Each phase's
    wall hours go to `{output_dir}/schedule_hours.json`; the report records every phase."""
    phases = schedule.phases
    check_checkpoint_dir(report_args.checkpoint_dir, phases[-1].config.seed)  # before the phases train, not at the export
    for number, phase in enumerate(phases, 1):
        logger.info("phase %d/%d: %s (stages %s)", number, len(phases), phase.name, " ".join(phase.config.stages))
        if number < len(phases):
            run_pipeline(phase.config)
    report = run_and_report(phases[-1].config, report_args, command, [p.config.root for p in phases[:-1]])
    hours = schedule_hours(schedule)
    (schedule.output_dir / "schedule_hours.json").write_text(json.dumps(hours, indent=2))
    logger.info("schedule done: %.2f h of wall time (%s)", sum(hours.values()),
                ", ".join(f"{name} {h:.2f} h" for name, h in hours.items()))
    return report


def schedule_hours(schedule: Schedule) -> dict[str, float]:
    """Wall hours of each phase from its start to its end (its `timings.json`; a second process runs alongside)."""
    return {phase.name: phase_record(phase.config.root)["wall_time_s"] / 3600 for phase in schedule.phases}


def main(argv: list[str] | None = None) -> dict:
    """Parse `ScheduleArguments` and `ReportArguments` from the command line and run the schedule (the report goes to
    `<schedule output_dir>/report` unless `--report_dir` says otherwise)."""
    import shlex
    import sys

    logging.basicConfig(level=logging.INFO)
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ScheduleArguments, ReportArguments))
    arguments, report_args = parser.parse_args_into_dataclasses(argv)
    schedule = load_schedule(arguments.schedule)
    if report_args.report_dir is None:
        report_args.report_dir = str(schedule.output_dir / "report")
    return run_schedule(schedule, report_args, "python examples/train_synthetic_schedule.py " + shlex.join(argv))
