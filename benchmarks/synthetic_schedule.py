"""A schedule of synthetic runs as one resumable command.

Each phase is a `SyntheticRunConfig` trained in its own folder, `{output_dir}/{name}`; a later phase takes finished
stages of earlier ones (`reuse`) or goes on training them (`start_from`), e.g. in another distractor world. The last
phase is evaluated, reported and exported like a single run (`synthetic_run.run_and_report`). A rerun skips finished
phases and stages and resumes an interrupted stage from its last checkpoint, so a schedule longer than a session is
the same command run again.

    python examples/train_synthetic_schedule.py --schedule examples/configs/synthetic_shipped.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from benchmarks.synthetic_run import ReportArguments, SyntheticRunConfig, run_and_report, run_pipeline

logger = logging.getLogger(__name__)

SCHEDULE_KEYS = {"output_dir", "common", "phases"}


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


def _argv(fields: dict) -> list[str]:
    """Fields as command-line arguments, so argparse converts and checks them as it does for `train_synthetic.py`."""
    argv = []
    for key, value in fields.items():
        if value is None:
            raise ValueError(f"{key}: null; leave the field out for its default.")
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv


def load_schedule(path: str | Path) -> list[Phase]:
    """The phases of a schedule file, each a validated `SyntheticRunConfig`; every `reuse`/`start_from` folder must be
    a stage that an earlier phase trains or reuses, so a wrong reference fails now, not hours into the schedule."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(spec) - SCHEDULE_KEYS
    if unknown or not spec.get("phases") or "output_dir" not in spec:
        raise ValueError(f"{path}: a schedule has `output_dir`, `phases` (a non-empty list) and optionally `common`; "
                         f"got keys {sorted(spec)}.")
    root = Path(spec["output_dir"])
    phases: list[Phase] = []
    for number, entry in enumerate(spec["phases"], 1):
        entry = dict(entry)
        name = entry.pop("name", None)
        if not name or "/" in str(name) or name in {p.name for p in phases}:
            raise ValueError(f"{path}: phase {number} needs a unique `name` without '/', got {name!r}.")
        if "output_dir" in entry:
            raise ValueError(f"{path}: phase {name!r} sets output_dir; every phase trains in <output_dir>/<name>.")
        fields = {**(spec.get("common") or {}), **entry, "output_dir": str(root / name)}
        for key in ("reuse", "start_from"):
            fields[key] = {stage: str(root / folder) for stage, folder in (fields.get(key) or {}).items()}
        try:
            parser = HfArgumentParser(SyntheticRunConfig, exit_on_error=False)
            (config,) = parser.parse_args_into_dataclasses(_argv(fields))
        except (ValueError, argparse.ArgumentError) as error:
            raise ValueError(f"{path}: phase {name!r}: {error}") from None
        _check_references(path, config, name, phases, root)
        phases.append(Phase(name, config))
    return phases


def _check_references(path, config: SyntheticRunConfig, name: str, earlier: list[Phase], root: Path) -> None:
    provides = {p.name: {*p.config.stages, *p.config.reuse} for p in earlier}
    for key in ("reuse", "start_from"):
        for stage, folder in getattr(config, key).items():
            relative = Path(folder).relative_to(root) if Path(folder).is_relative_to(root) else None
            if relative is None or len(relative.parts) != 2:
                raise ValueError(f"{path}: phase {name!r}: {key} {stage} -> {folder!r}; write '<phase>/<stage>'.")
            phase, source = relative.parts
            if source not in provides.get(phase, ()):
                raise ValueError(
                    f"{path}: phase {name!r}: {key} {stage} -> '{phase}/{source}', but no earlier phase {phase!r} "
                    f"trains or reuses {source!r} (earlier phases: {sorted(provides) or 'none'})."
                )


def run_schedule(phases: list[Phase], report_args: ReportArguments, command: str) -> dict:
    """Train every phase in order, then evaluate, report and export the last one; returns its report. Each phase's
    recorded hours go to `{output_dir}/schedule_hours.json`."""
    for number, phase in enumerate(phases, 1):
        logger.info("phase %d/%d: %s (stages %s)", number, len(phases), phase.name, " ".join(phase.config.stages))
        if number < len(phases):
            run_pipeline(phase.config)
    report = run_and_report(phases[-1].config, report_args, command)
    hours = schedule_hours(phases)
    (phases[-1].config.root.parent / "schedule_hours.json").write_text(json.dumps(hours, indent=2))
    logger.info("schedule done: %.2f h of recorded stage time (%s)", sum(hours.values()),
                ", ".join(f"{name} {h:.2f} h" for name, h in hours.items()))
    return report


def schedule_hours(phases: list[Phase]) -> dict[str, float]:
    """Recorded stage hours of each phase (its `timings.json`: training stages, data and evaluation)."""
    hours = {}
    for phase in phases:
        path = phase.config.root / "timings.json"
        timings = json.loads(path.read_text()) if path.is_file() else {}
        hours[phase.name] = sum(v for v in timings.values() if isinstance(v, (int, float))) / 3600
    return hours


def main(argv: list[str] | None = None) -> dict:
    """Parse `ScheduleArguments` and `ReportArguments` from the command line and run the schedule."""
    import shlex
    import sys

    logging.basicConfig(level=logging.INFO)
    argv = sys.argv[1:] if argv is None else argv
    schedule, report_args = HfArgumentParser((ScheduleArguments, ReportArguments)).parse_args_into_dataclasses(argv)
    phases = load_schedule(schedule.schedule)
    return run_schedule(phases, report_args, "python examples/train_synthetic_schedule.py " + shlex.join(argv))
