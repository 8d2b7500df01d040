"""The run's stages in order, in one process or two: a second process trains the baseline and the reconstruction-curve
stages beside the memcomp path, and stops when the main process fails or is gone."""

from __future__ import annotations

import _thread
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import TrainerCallback

from .clock import record_stage
from .config import MEMCOMP_STAGES, SyntheticRunConfig
from .data import check_corpus, make_data
from .folders import (
    SIDE_LOCK, check_reused_stages, check_seeds_of_trained_folders, check_start_folders, link_reused_stages,
    record_run_config, run_lock, stage_done,
)
from .stages import pretrain_lm, train_baseline, train_memcomp_stage, train_rl

logger = logging.getLogger(__name__)


class StopSideProcess(TrainerCallback):
    """The second process's guard: it exits at its next step (resumable from its last checkpoint) when the main process
    asks (a stage of its failed) or is gone (killed), so a failed or killed run does not leave it training on."""

    def __init__(self, parent_pid: int, stop):
        self.parent_pid, self.stop = parent_pid, stop

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.is_set():
            raise SystemExit(f"the main process failed: stopping at step {state.global_step}; rerun the command to "
                             "resume from the last checkpoint.")
        if os.getppid() != self.parent_pid:
            raise SystemExit(f"the main process ({self.parent_pid}) is gone: stopping at step {state.global_step}; "
                             "rerun the command to resume from the last checkpoint.")


class ThreadsWhenAlone(TrainerCallback):
    """Raise this process's torch threads to `threads` as soon as the other process has finished (`other_done()`): a
    stage that started beside it would otherwise keep one thread, and a core would idle for the rest of its steps."""

    def __init__(self, other_done: Callable[[], bool], threads: int):
        self.other_done, self.threads = other_done, threads

    def on_step_end(self, args, state, control, **kwargs):
        if self.other_done() and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
            logger.info("the other process has finished: %d torch threads from step %d", self.threads, state.global_step)


def run_side_stages(config: SyntheticRunConfig, callbacks: tuple = ()) -> None:
    """The second process: the full-context baseline, then the reconstruction-curve CPT-1 runs."""
    for stage in ("baseline", *config.recon_stages):
        if stage in config.stages and not stage_done(config.stage_dir(stage)):
            train_baseline(config, callbacks) if stage == "baseline" else train_memcomp_stage(config, stage, callbacks)


def watch_parent(parent_pid: int, grace_s: float = 120.0, poll_s: float = 10.0) -> None:
    """The second process's guard between steps (data preparation, a held-out probe): once orphaned for `grace_s`
    without `StopSideProcess` stopping it at a step, interrupt its main thread (KeyboardInterrupt)."""
    orphaned_since = None
    while True:
        time.sleep(poll_s)
        if os.getppid() == parent_pid:
            continue
        orphaned_since = orphaned_since or time.monotonic()
        if time.monotonic() - orphaned_since >= grace_s:
            logger.error("the main process (%d) is gone and no step has come to stop at: interrupting.", parent_pid)
            _thread.interrupt_main()
            return


def _side_process(config_dict: dict, parent_pid: int, stop, main_done) -> None:
    logging.basicConfig(level=logging.INFO)
    threading.Thread(target=watch_parent, args=(parent_pid,), daemon=True).start()
    config = SyntheticRunConfig(**config_dict)
    torch.set_num_threads(config.threads)
    with run_lock(config.root, SIDE_LOCK):
        run_side_stages(config, (StopSideProcess(parent_pid, stop), ThreadsWhenAlone(main_done.is_set, config.threads_alone)))


def pending_stages(config: SyntheticRunConfig) -> tuple[list[str], list[str]]:
    """Unfinished selected stages: (the main process's: memcomp stages and RL; the second process's: the baseline and
    the reconstruction-curve runs). Only when both have some is a second process started; else one process trains
    them all with `threads_alone`."""
    def unfinished(stages):
        return [s for s in stages if s in config.stages and not stage_done(config.stage_dir(s))]

    return unfinished((*MEMCOMP_STAGES, "rl")), unfinished(("baseline", *config.recon_stages))


SIDE_STOP_TIMEOUT_S = 300
"""How long a failed main process waits for the second one to stop at its next step before terminating it."""


def run_pipeline(config: SyntheticRunConfig) -> dict[str, float]:
    """Run the selected stages (finished ones are skipped; reused ones linked in); returns the timings."""
    # Every check before anything is written: a refused command leaves the run's folder as it was.
    check_reused_stages(config)
    check_seeds_of_trained_folders(config)
    check_start_folders(config, [stage for stage in config.stages if not stage_done(config.stage_dir(stage))])
    data = Path(config.reuse.get("data") or config.root / "data")
    if (data / "tokenizer").is_dir():
        check_corpus(config, data)
    with run_lock(config.root):
        with run_lock(config.root, SIDE_LOCK):  # the second process of a killed earlier run may still be stopping
            pass
        link_reused_stages(config)
        return _train(config)


def _train(config: SyntheticRunConfig) -> dict[str, float]:
    """The stages in order, under the run's lock (`run_pipeline` checks everything first)."""
    record_run_config(config)
    torch.set_num_threads(config.threads_alone)
    wanted = set(config.stages)
    if "data" in wanted and not (config.root / "data" / "tokenizer").is_dir():
        started = time.time()
        make_data(config)
        record_stage(config, "data", time.time() - started)
    if "lm" in wanted and not stage_done(config.stage_dir("lm")):
        pretrain_lm(config)
    side = None
    main_pending, side_pending = pending_stages(config)
    if side_pending and main_pending and config.parallel:
        context = multiprocessing.get_context("spawn")
        stop, main_done = context.Event(), context.Event()
        side = context.Process(target=_side_process, args=(asdict(config), os.getpid(), stop, main_done))
        side.start()
    elif side_pending:  # alone (nothing for the main process to train beside it): this process, `threads_alone`
        run_side_stages(config)
    threads = (ThreadsWhenAlone(lambda: not side.is_alive(), config.threads_alone),) if side is not None else ()
    try:
        for stage in (*MEMCOMP_STAGES, "rl"):
            torch.set_num_threads(config.threads if side is not None and side.is_alive() else config.threads_alone)
            if stage in wanted and not stage_done(config.stage_dir(stage)):
                train_rl(config, threads) if stage == "rl" else train_memcomp_stage(config, stage, threads)
        if side is not None:
            main_done.set()  # the second process takes every thread from its next step
    except BaseException:
        if side is not None and side.is_alive():  # the error surfaces now, not when the second process ends hours later
            logger.error("the main process failed: stopping the second process (a rerun resumes it from its last checkpoint)")
            stop.set()
            side.join(SIDE_STOP_TIMEOUT_S)
            if side.is_alive():
                side.terminate()
        raise
    finally:
        if side is not None:
            side.join()
    if side is not None and side.exitcode:
        raise RuntimeError(f"the second process failed (exit code {side.exitcode}); rerun to resume it.")
    torch.set_num_threads(config.threads_alone)
    path = config.root / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}
