"""Stage wall times and non-padding tokens in `{output_dir}/timings.json`, kept across interruptions and shared by
the run's two processes; each finished stage's log history next to its model."""

from __future__ import annotations

import fcntl
import json
import time

from transformers import TrainerCallback

from .config import SyntheticRunConfig
from .folders import replace_text


def update_timings(config: SyntheticRunConfig, change) -> dict:
    """Apply `change(timings)` to timings.json under a lock (the second process writes there too), replacing the file
    in one step: a process killed mid-update leaves the previous version, never a torn one."""
    path = config.root / "timings.json"
    with open(config.root / "timings.json.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        timings = json.loads(path.read_text() or "{}") if path.is_file() else {}
        change(timings)
        replace_text(path, json.dumps(timings, indent=2))
    return timings


class StageClock(TrainerCallback):
    """A stage's wall time across interruptions: banked in timings.json (`unfinished`) at every checkpoint, so the
    time a killed process spent up to its last checkpoint counts when the resumed stage finishes."""

    def __init__(self, config: SyntheticRunConfig, stage: str):
        self.config, self.stage = config, stage
        self.carried = update_timings(config, lambda t: None).get("unfinished", {}).get(stage, 0.0)
        self.started = time.time()

    def elapsed(self) -> float:
        return self.carried + time.time() - self.started

    def on_save(self, args, state, control, **kwargs):
        seconds = self.elapsed()
        update_timings(self.config, lambda t: t.setdefault("unfinished", {}).__setitem__(self.stage, seconds))


def record_stage(config: SyntheticRunConfig, stage: str, seconds: float, trainer=None) -> None:
    """Add a stage's wall time (and non-padding tokens) to timings.json and its log history next to its model."""
    tokens = None
    if trainer is not None:
        logged = [e["useful_tokens"] for e in trainer.state.log_history if "useful_tokens" in e]
        tokens = logged[-1] if logged else None
        (config.stage_dir(stage) / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))

    def add(timings: dict) -> None:
        timings[stage] = timings.get(stage, 0.0) + seconds  # a stage run again (the evaluation) adds its time
        unfinished = timings.pop("unfinished", {})
        unfinished.pop(stage, None)  # its banked time is in `seconds` (StageClock.elapsed)
        if unfinished:
            timings["unfinished"] = unfinished
        if tokens is not None:
            timings.setdefault("useful_tokens", {})[stage] = tokens

    update_timings(config, add)
