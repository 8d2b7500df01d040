"""A run's folders: finished stages, reused and start-from folders (and the corpus seed they trained on), and files
and folders written whole or not at all."""

from __future__ import annotations

import json
import logging
import os
import shutil
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


SEED_RECORD = "memcomp_synthetic.json"
"""Written into an exported synthetic model's folder: the corpus seed it trained on (its held-out names are that seed's)."""


def trained_seed(folder: str | Path) -> tuple[int, Path] | None:
    """The corpus seed a model folder trained on and the file that says so: an export's `SEED_RECORD`, else the
    `run_config.json` of the run holding it (a stage folder, or a `checkpoint-N` in one); None when nothing says."""
    folder = Path(folder).resolve()
    records = [folder / SEED_RECORD, folder.parent / "run_config.json"]
    if folder.name.startswith("checkpoint-"):
        records.append(folder.parent.parent / "run_config.json")
    for record in records:
        try:
            seed = json.loads(record.read_text()).get("seed")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(seed, int):
            return seed, record
    return None


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
