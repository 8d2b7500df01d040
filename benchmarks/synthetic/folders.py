"""A run's folders: finished stages, reused and start-from folders (and the corpus seed they trained on), and files
and folders written whole or not at all."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from .config import SyntheticRunConfig

logger = logging.getLogger(__name__)


STAGE_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def stage_done(folder: Path) -> bool:
    """A stage folder holds its finished model: its config, readable weights and the tokenizer, saved last (a kill
    during the final save may leave the config, written first, without the rest)."""
    from trainers.checkpoints import weights_problem

    return (
        (folder / "config.json").is_file() and weights_problem(folder) is None
        and all((folder / name).is_file() for name in STAGE_TOKENIZER_FILES)
    )


def check_reused_stages(config: SyntheticRunConfig) -> None:
    """Each `reuse` folder holds its finished stage and its place in the run is free (or already that link)."""
    for stage, folder in config.reuse.items():
        target, link = Path(folder), config.stage_dir(stage)
        finished = (target / "tokenizer").is_dir() if stage == "data" else stage_done(target)
        if not finished:
            raise FileNotFoundError(f"reuse: {stage} -> {target}, which holds no finished {stage} (train it first).")
        if (link.exists() or link.is_symlink()) and not (link.is_symlink() and link.resolve() == target.resolve()):
            raise FileExistsError(f"{link} exists and is not a link to {target}: move it away or drop {stage} from --reuse.")
    for stage in config.stages:
        if config.stage_dir(stage).is_symlink() and stage not in config.reuse:
            logger.warning("%s is a link (to %s) but not in --reuse: it counts as finished if it holds a model.",
                           config.stage_dir(stage), config.stage_dir(stage).resolve())


def link_reused_stages(config: SyntheticRunConfig) -> None:
    """Link each `reuse` folder into the run as its stage; call `check_reused_stages` first (`run_pipeline` does)."""
    for stage, folder in config.reuse.items():
        target, link = Path(folder), config.stage_dir(stage)
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(os.path.relpath(target.resolve(), link.parent.resolve())), target_is_directory=True)


def check_start_folders(config: SyntheticRunConfig, stages: list[str]) -> None:
    """Before training `stages`: each `start_from` folder among them holds a finished model (its tokenizer goes with it:
    a stage tokenizes its data with its base model's tokenizer, not with this run's data tokenizer)."""
    for stage in stages:
        folder = config.start_from.get(stage)
        if folder is not None and not stage_done(Path(folder)):
            raise FileNotFoundError(f"start_from: {stage} <- {folder}, which holds no finished model (train it first).")


RUN_CONFIG = "run_config.json"
"""A run's settings, as its latest command gave them; the settings they replaced go to `RUN_CONFIG_HISTORY`."""
RUN_CONFIG_HISTORY = "run_config_history.jsonl"
UNTRAINED_SETTINGS = frozenset({"stages", "threads", "threads_alone", "parallel", "save_steps", "logging_steps"})
"""Settings that change how a run goes, not what a stage learns: changing them warns of nothing."""


def record_run_config(config: SyntheticRunConfig) -> None:
    """Write the run's settings (`RUN_CONFIG`). When a rerun changes them while some stages are finished, warn (those
    stages keep what they trained with: a finished stage is never retrained) and keep the replaced settings, one JSON
    line each, in `RUN_CONFIG_HISTORY`, so the report's settings can be checked against what each stage saw."""
    path, settings = config.root / RUN_CONFIG, asdict(config)
    earlier = read_record(path) if path.is_file() else None
    changed = sorted(k for k in settings if earlier is not None and k in earlier and earlier[k] != settings[k])
    trained = [k for k in changed if k not in UNTRAINED_SETTINGS]
    finished = [s for s in config.all_stages if s not in config.reuse and s != "data" and stage_done(config.stage_dir(s))]
    if trained and finished:
        logger.warning(
            "%s: settings changed since the last command (%s); the finished stages (%s) keep the settings they trained "
            "with (remove a stage's folder to train it again). The replaced settings are kept in %s.",
            config.root, ", ".join(f"{k}={earlier[k]!r} -> {settings[k]!r}" for k in trained), ", ".join(finished),
            RUN_CONFIG_HISTORY,
        )
    if changed:
        with open(config.root / RUN_CONFIG_HISTORY, "a") as history:
            history.write(json.dumps(earlier) + "\n")
    replace_text(path, json.dumps(settings, indent=2))


SEED_RECORD = "memcomp_synthetic.json"
"""Written into an exported synthetic model's folder: the corpus seed it trained on (its held-out names are that seed's)."""


def trained_seed(folder: str | Path) -> tuple[int, Path] | None:
    """The corpus seed a model folder trained on and the file that says so: an export's `SEED_RECORD`, else the
    `run_config.json` of the run holding it (a stage folder, or a `checkpoint-N` in one); None when nothing says."""
    folder = Path(folder).resolve()
    records = [folder / SEED_RECORD, folder.parent / RUN_CONFIG]
    if folder.name.startswith("checkpoint-"):
        records.append(folder.parent.parent / RUN_CONFIG)
    for record in records:
        seed = read_record(record).get("seed")
        if isinstance(seed, int):
            return seed, record
    return None


def read_record(path: Path) -> dict:
    """The JSON object in `path`; {} when it is missing, unreadable or not an object."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_seed(what: str, folder: str | Path, seed: int, fix: str = "or train the stage in this run") -> None:
    """Refuse a model `folder` trained on a corpus of another `seed` (its training names include held-out ones of
    `seed`'s corpus); `fix` ends the error's advice."""
    found = trained_seed(folder)
    if found is not None and found[0] != seed:
        raise ValueError(
            f"{what} -> {folder} was trained in a run of seed {found[0]} ({found[1]}), this run's corpus is seed {seed}: "
            f"that model trained on some of this run's held-out names. Give --seed {found[0]}, {fix}."
        )


def check_seeds_of_trained_folders(config: SyntheticRunConfig) -> None:
    """Each reused or start-from model trained in a run of this run's `seed`: another seed draws another split of the
    names, so that model trained on this run's held-out names and its scores would not be held-out ones."""
    folders = [(f"reuse {s}", f) for s, f in config.reuse.items() if s != "data"]
    folders += [(f"start_from {s}", f) for s, f in config.start_from.items()]
    for what, folder in folders:
        check_seed(what, folder, config.seed)


def replace_text(path: Path, text: str) -> None:
    """Write `path` in one step (a per-process temporary file, then a rename): a reader, the other process included,
    or a kill mid-write never meets a torn file."""
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)


def build_folder(path: Path, build) -> None:
    """Make the folder `path` whole or not at all: `build(partial)` fills `<path>.partial` (a leftover of a killed
    attempt is cleared first), renamed into place once done, so a cut-short folder is never taken for a finished one."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    partial.replace(path)


RUN_LOCK, SIDE_LOCK = "run.lock", "run.side.lock"
"""Held in a run's folder by the process training or evaluating there, and by its second process."""


@contextmanager
def run_lock(root: Path, name: str = RUN_LOCK) -> Iterator[None]:
    """Hold `{root}/{name}` while this process trains or evaluates in `root`: a second copy of the command on the
    same folder is refused at once (two writers would overwrite each other's checkpoints and records). The lock goes
    with the process, so a killed run leaves none behind."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            what = "another run" if name == RUN_LOCK else "the second process of an earlier run, still stopping"
            raise RuntimeError(
                f"{root} is in use by {what} (process {holder}): two copies of a run in one folder would overwrite "
                "each other's checkpoints. Wait for it to finish or stop it (a rerun resumes it), or give another output_dir."
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Wait for and hold an exclusive lock on the folder itself (made if missing): no file is written, in it or beside
    it, so a folder only some writers may touch (an export's) stays as it was."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def model_digest(folder: str | Path) -> str | None:
    """sha256 of a model folder's config and weights, telling two checkpoints apart (None when it holds no model)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None
    digest = hashlib.sha256()
    for path in [folder / "config.json", *sorted(folder.glob("*.safetensors"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
