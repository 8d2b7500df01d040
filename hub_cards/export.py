"""Build the exact folder a Hub repo will hold, from a memcomp checkpoint or a precomputed-memory dataset."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from modeling_memcomp.memory import MEMORY_DATASET_RECORD, MemoryEmbeddings
from modeling_memcomp.store import QUARANTINE

from .cards import DEFAULT_LICENSE, DatasetContents, check_stage, dataset_card, model_card
from .evaluation import load_evaluation

EXPORT_RECORD = ".memcomp-export.json"
"""Written into every export folder (never uploaded): the files that export wrote, the only ones a later export with
`overwrite` removes. A folder without it (a checkpoint, a downloaded repo, anything else) is never replaced."""


def exported_files(folder: str | os.PathLike) -> list[str] | None:
    """The files an earlier export wrote into `folder` (its `EXPORT_RECORD`; for an export cut short, every file but
    those that were there before it), or None when no export wrote there."""
    try:
        record = json.loads((Path(folder) / EXPORT_RECORD).read_text())
        names = record["kept"] if record.get("in_progress") else record["files"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return None
    return sorted(set(list_files(folder)) - set(names)) if record.get("in_progress") else names


def export_in_progress(folder: str | os.PathLike) -> bool:
    """Whether an export into `folder` started and has not finished (it was killed, or is still writing)."""
    try:
        return bool(json.loads((Path(folder) / EXPORT_RECORD).read_text()).get("in_progress"))
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(
    output_dir: str | os.PathLike, overwrite: bool, source: Path | None = None, what: str = "output_dir"
) -> Path:
    """Refuse, touching nothing, an `output_dir` an export may not write: one overlapping `source`, a file, or a
    non-empty folder unless `overwrite` and an earlier export wrote there (its `EXPORT_RECORD`). Returns it resolved."""
    out = Path(output_dir).resolve()
    if source is not None and (out == source or source in out.parents or out in source.parents):
        raise ValueError(f"{what} {str(out)!r} overlaps the source {str(source)!r}; pick a separate folder.")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{what} {str(out)!r} is a file; give a folder (new, empty or an earlier export).")
    if out.is_dir() and any(out.iterdir()):
        links = sorted(
            (Path(top) / name).relative_to(out).as_posix()
            for top, folders, files in os.walk(out) for name in (*folders, *files) if (Path(top) / name).is_symlink()
        )
        if links:  # a later write would follow the link out of the folder
            raise ValueError(f"{what} {str(out)!r} holds links ({', '.join(links[:3])}); an export writes plain files "
                             "only, never through a link: remove them or pick another folder.")
        if not overwrite:
            raise ValueError(f"{what} {str(out)!r} is not empty; pass overwrite=True (--overwrite) to replace it.")
        if exported_files(out) is None:
            raise ValueError(
                f"{what} {str(out)!r} holds files but no memcomp export record ({EXPORT_RECORD}), so none of them was "
                "written by an export and none may be replaced: give a new or empty folder, or one an export wrote (an "
                "export by a memcomp older than the record has none: remove that folder yourself)."
            )
    return out


def _prepare_output(source: Path, output_dir: str | os.PathLike, overwrite: bool) -> tuple[Path, set[str]]:
    """Check `output_dir` can receive the repo folder without touching the source; remove the files an earlier export
    wrote there (only those: a file a user added stays). Returns the folder and the files left in it."""
    out = check_output_dir(output_dir, overwrite, source)
    for name in exported_files(out) or []:
        path = out / name
        if path.is_symlink() or out not in path.resolve().parents or not path.is_file():
            continue  # only a plain file inside the folder: a record naming anything else is not followed
        path.unlink()
        for parent in path.parents:
            if parent == out or any(parent.iterdir()):
                break
            parent.rmdir()
    out.mkdir(parents=True, exist_ok=True)
    kept = set(list_files(out))
    # Until the export is whole, the record names what was there before it: a cut-short export stays replaceable.
    (out / EXPORT_RECORD).write_text(json.dumps({"in_progress": True, "kept": sorted(kept)}) + "\n")
    return out, kept


def _record_export(out: Path, kept: set[str]) -> list[str]:
    """Write `EXPORT_RECORD` (every file but those that were there before the export) and return the folder's files."""
    files = list_files(out)
    (out / EXPORT_RECORD).write_text(json.dumps({"files": sorted(set(files) - kept)}, indent=2) + "\n")
    return files


def _source_folder(path: str | os.PathLike, what: str) -> Path:
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise ValueError(f"{what} {os.fspath(path)!r} is not a folder; give the folder save_pretrained/save_to_disk wrote.")
    return folder


def list_files(folder: str | os.PathLike) -> list[str]:
    """Relative paths of every file under `folder` but the export record, sorted: what `upload_folder` would send."""
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != EXPORT_RECORD)


def export_model(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    repo_id: str,
    stage: str,
    tokenizer: str | os.PathLike | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    license: str = DEFAULT_LICENSE,
    tags: Sequence[str] = (),
    evaluation: str | os.PathLike | dict | None = None,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> list[str]:
    """Load `checkpoint` and write its Hub repo folder: safetensors weights, config with `auto_map`, the
    remote-code files, tokenizer, generation config, README.md card and `extra_files` (name -> text). Returns the
    file list.

    Loading and re-saving (rather than copying) guarantees the remote code is this package's and the
    weights are safetensors, whatever the checkpoint was saved with.
    """
    from transformers import AutoTokenizer

    from modeling_memcomp import MemCompForCausalLM

    source = _source_folder(checkpoint, "checkpoint")
    config_path = source / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if config.get("model_type") != "memcomp":
        if (source / "adapter_config.json").is_file():
            raise ValueError(f"{str(source)!r} is a training checkpoint with LoRA adapters, not a model: push the "
                             "stage's output_dir (the merged model its run saves at the end).")
        raise ValueError(
            f"{str(source)!r} is not a memcomp checkpoint (config.json model_type is {config.get('model_type')!r}). "
            "Wrap a base model with MemCompForCausalLM.from_base(...) and save_pretrained it, or push it with the "
            "usual tools."
        )
    check_stage(stage)  # fail on bad card inputs before the slow load
    if config.get("separate_encoder") and stage != "rl":
        raise ValueError(f"{str(source)!r} is an RL checkpoint (SFT encoder + RL decoder, separate_encoder): its card "
                         f"must say stage 'rl', not {stage!r}.")
    if stage == "rl" and not config.get("separate_encoder"):
        raise ValueError(
            f"{str(source)!r} is not an RL checkpoint: its config has no separate_encoder (the SFT encoder stored with "
            "the RL decoder, which the RL trainer saves). Push the RL run's output_dir with --stage rl, or this "
            "checkpoint with the stage it comes from (e.g. --stage sft)."
        )
    if evaluation is not None:
        load_evaluation(evaluation)
    try:
        tok = AutoTokenizer.from_pretrained(os.fspath(tokenizer or source), trust_remote_code=False)  # run no folder code
    except (OSError, ValueError) as error:
        raise ValueError(
            f"no tokenizer could be loaded from {os.fspath(tokenizer or source)!r} ({error}); pass tokenizer= "
            "(--tokenizer) with the folder of the tokenizer the model was trained with."
        ) from error
    check_output_dir(output_dir, overwrite, source)  # before the slow load
    model = MemCompForCausalLM.from_pretrained(os.fspath(source), dtype="auto")
    out, kept = _prepare_output(source, output_dir, overwrite)
    model.tokenizer = tok
    model.save_pretrained(out)
    card = model_card(
        model.config, repo_id, stage, base_model=base_model, datasets=datasets, license=license, tags=tags,
        evaluation=evaluation, num_parameters=model.num_parameters(),
    )
    card.save(out / "README.md")
    for name, text in (extra_files or {}).items():
        (out / name).write_text(text)
    return _record_export(out, kept)


def export_dataset(
    folder: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    repo_id: str,
    memory_model: str | None = None,
    source_datasets: Sequence[str] = (),
    license: str = DEFAULT_LICENSE,
    tags: Sequence[str] = (),
    overwrite: bool = False,
) -> list[str]:
    """Write the Hub repo folder of a precomputed-memory dataset and its README.md card; return the file list.

    `folder` holds either memcomp memory files (`*.safetensors` from `MemoryEmbeddings.save`, copied as they
    are) or a table `datasets` reads (a `save_to_disk` folder such as `trainers.precompute` writes, or
    parquet/arrow/json files), written as one parquet file per split under `data/` so that
    `load_dataset(repo_id)` works; the precompute sidecar `memcomp_memory.json` is kept. Other files
    (indexes, logs) are not published.
    """
    source = _source_folder(folder, "dataset folder")
    memory_files = sorted(p for p in source.rglob("*.safetensors") if p.relative_to(source).parts[0] != QUARANTINE)
    # Everything is checked before anything is written.
    if memory_files:
        contents = _check_memory_files(source, memory_files)
    else:
        table = _load_table(source)
        compressor = _check_precompute_record(source, sum(part.num_rows for part in table.values()))
    out, kept = _prepare_output(source, output_dir, overwrite)
    if memory_files:
        for path in memory_files:
            name = path.relative_to(source).as_posix()
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out / name)
    else:
        contents = _write_parquet_splits(table, out, source, compressor)
    card = dataset_card(
        repo_id, contents, memory_model=memory_model, source_datasets=source_datasets, license=license, tags=tags
    )
    card.save(out / "README.md")
    return _record_export(out, kept)


def _check_memory_files(source: Path, files: list[Path]) -> DatasetContents:
    """Read every `MemoryEmbeddings` file as `MemoryEmbeddings.load` does (metadata and checksum: a corrupt file is
    never published) and check they share one chunk and hidden size."""
    rows, shapes = {}, set()
    for path in files:
        name = path.relative_to(source).as_posix()
        try:
            memory = MemoryEmbeddings.load(path)
        except ValueError as error:
            raise ValueError(
                f"{name!r} in the dataset folder is not a sound memcomp memory ({error}); a memory dataset folder holds "
                "only MemoryEmbeddings.save files, or a table (save_to_disk / parquet) without safetensors."
            ) from None
        rows[name] = len(memory)
        shapes.add((memory.chunk_size, memory.embeds.shape[-1]))
    if len(shapes) > 1:
        raise ValueError(f"memory files mix (chunk_size, hidden_size) values {sorted(shapes)}: one model per dataset.")
    chunk_size, hidden_size = shapes.pop()
    return DatasetContents(
        "files", rows, {"embeds": f"float tensor (num_chunks, {hidden_size})"}, chunk_size, hidden_size
    )


def _load_table(source: Path):
    """The folder as a `DatasetDict` (a lone `Dataset` becomes its `train` split), read with `datasets`."""
    try:
        from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
    except ImportError as error:
        raise ImportError("publishing a table dataset needs `datasets`: pip install 'memcomp[train]'.") from error

    if (source / "dataset_dict.json").is_file() or (source / "state.json").is_file():
        table = load_from_disk(os.fspath(source))
    else:
        try:
            table = load_dataset(os.fspath(source))
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(
                f"{str(source)!r} holds no data file `datasets` can read ({error}); give a save_to_disk folder, "
                "parquet/arrow/json files, or MemoryEmbeddings .safetensors files."
            ) from error
    return DatasetDict({"train": table}) if isinstance(table, Dataset) else table


def _check_precompute_record(source: Path, num_rows: int) -> dict | None:
    """The precompute sidecar (`MEMORY_DATASET_RECORD`) of `source`, or None without one; refuses, as RL does
    (`trainers.precompute.check_memory_source`), an unfinished run, a row count other than the table's, and a record
    that does not name the compressor (`model`, `fingerprint`)."""
    sidecar = source / MEMORY_DATASET_RECORD
    if not sidecar.is_file():
        return None
    rerun = "re-run examples/precompute_memory.py into it (or publish a folder it finished)"
    try:
        record = json.loads(sidecar.read_text())
    except ValueError as error:
        raise ValueError(f"{str(sidecar)!r} is not valid JSON ({error}): {rerun}.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{str(sidecar)!r} must hold a JSON object, got {type(record).__name__}: {rerun}.")
    if record.get("in_progress"):
        raise ValueError(f"{str(source)!r} was being written by examples/precompute_memory.py, which did not finish "
                         f"(its {MEMORY_DATASET_RECORD} says in_progress): {rerun}.")
    if record.get("num_rows") not in (None, num_rows):
        raise ValueError(f"{str(source)!r} holds {num_rows} rows but its {MEMORY_DATASET_RECORD} records "
                         f"{record['num_rows']}: a precompute run into it was cut short; {rerun}.")
    missing = [key for key in ("model", "fingerprint") if not record.get(key)]
    if missing:
        raise ValueError(f"{str(sidecar)!r} lacks {', '.join(missing)}: nothing says which model made the memories, "
                         f"so they cannot be checked against it; {rerun}.")
    return record


def _write_parquet_splits(table, out: Path, source: Path, compressor: dict | None) -> DatasetContents:
    """Write `data/<split>-00000-of-00001.parquet` per split and copy the checked precompute sidecar, if any."""
    (out / "data").mkdir()
    for split, part in table.items():
        part.to_parquet(os.fspath(out / "data" / f"{split}-00000-of-00001.parquet"))
    first = next(iter(table.values()))
    features = {name: str(feature) for name, feature in first.features.items()}
    rows = {split: part.num_rows for split, part in table.items()}
    if compressor is None:
        return DatasetContents("splits", rows, features)
    shutil.copy2(source / MEMORY_DATASET_RECORD, out / MEMORY_DATASET_RECORD)
    return DatasetContents(
        "splits", rows, features, compressor.get("chunk_size"), compressor.get("hidden_size"), compressor
    )
