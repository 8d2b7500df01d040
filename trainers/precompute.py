"""Compress the RL prompts' contexts once, with the SFT checkpoint, into a `datasets.Dataset`.

RL then trains the decoder on these stored memories and never runs the encoder (paper, Section 3.3.3).
Each output row has `prompt` (the question, as the trainer expects), `question`, `answer`, `memory`
(`(k, d)`, one embedding per 16-token chunk), `num_memory` and `prompt_length` (tokens of the RL prompt).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Array2D, Dataset, Features, Value, concatenate_datasets, load_dataset, load_from_disk
from datasets.fingerprint import Hasher

from modeling_memcomp import MemCompForCausalLM
from modeling_memcomp.memory import MEMORY_DATASET_RECORD
from modeling_memcomp.prompting import build_prompt

from .data import LOCAL_FORMATS
from .stages import RL

logger = logging.getLogger(__name__)


@dataclass
class PrecomputeArguments:
    """What to compress, with what, and where to write it."""

    model: str = field(metadata={"help": "SFT checkpoint (local folder or Hub id) whose encoder makes the memories."})
    dataset: str = field(metadata={"help": "Hub dataset name, or a local .json/.jsonl/.parquet/.csv file."})
    output_dir: str = field(metadata={"help": "Folder for the dataset (save_to_disk) and its metadata."})
    split: str = field(default="train", metadata={"help": "Split to read."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name, if any."})
    context_column: str = field(default="context", metadata={"help": "Column with the context (string or list of passages)."})
    question_column: str = field(default="question", metadata={"help": "Column with the question."})
    answer_column: str = field(default="answer", metadata={"help": "Column with the reference answer(s)."})
    max_prompt_length: int = field(
        default=RL.max_prompt_length, metadata={"help": "Drop rows whose RL prompt exceeds this many tokens (Table 10)."}
    )
    template: str = field(default=RL.template, metadata={"help": "Prompt template used to measure prompt_length."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N rows (smoke runs)."})
    dtype: str = field(default="float32", metadata={"help": "Storage dtype of the memories: float32 or float16 (half the disk)."})
    device: str | None = field(default=None, metadata={"help": "Device for the encoder; default cuda if available, else cpu."})


def load_rows(path_or_name: str, split: str = "train", config: str | None = None) -> Dataset:
    """A local json/jsonl/parquet/csv file or a Hub dataset, as a `Dataset`."""
    suffix = Path(path_or_name).suffix.lower()
    if suffix in LOCAL_FORMATS and Path(path_or_name).is_file():
        return load_dataset(LOCAL_FORMATS[suffix], data_files=path_or_name, split="train")
    return load_dataset(path_or_name, config, split=split)


def precompute_memory(
    model: MemCompForCausalLM,
    dataset: Dataset,
    context_column: str = "context",
    question_column: str = "question",
    answer_column: str = "answer",
    max_prompt_length: int = RL.max_prompt_length,
    template: str = RL.template,
    dtype: str = "float32",
    first_row: int = 0,
) -> Dataset:
    """Compress every row's context with `model` and return the RL dataset (rows too long are dropped, logged).
    `first_row`: the number of `dataset`'s first row in the whole dataset (a rank's shard), for error messages."""
    missing = {context_column, question_column, answer_column} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"dataset has no column(s) {sorted(missing)} (it has {dataset.column_names}); set context_column=, "
            "question_column= and answer_column= to its names."
        )
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}.")
    hidden = model.config.text_config.hidden_size
    features = Features(
        {
            "prompt": Value("string"),
            "question": Value("string"),
            "answer": dataset.features[answer_column],
            "memory": Array2D(shape=(None, hidden), dtype=dtype),
            "num_memory": Value("int32"),
            "prompt_length": Value("int32"),
        }
    )

    def compress(row, index):
        memory = model.compress(row[context_column])
        prompt = build_prompt(model.tokenizer, model.config, len(memory), row[question_column], template=template)
        stored = memory.embeds.to(torch.float32).cpu().numpy().astype(dtype)
        if not np.isfinite(stored).all():  # RL would fail on this row hours later, and again after every resume
            peak = float(memory.embeds.abs().max())
            raise ValueError(f"row {first_row + index}: its memory is not finite in {dtype} (largest magnitude {peak:.3g}); "
                             + ("store float32 (--dtype float32)." if dtype == "float16" and np.isfinite(peak)
                                else "the encoder itself produced NaN or infinite values: check the checkpoint."))
        return {
            "prompt": row[question_column],
            "question": row[question_column],
            "answer": row[answer_column],
            "memory": stored,
            "num_memory": len(memory),
            "prompt_length": len(prompt.input_ids),
        }

    # Everything the rows depend on: the encoder, the rows, the columns read, how the prompt is built and measured.
    fingerprint = Hasher.hash([model.fingerprint, dataset._fingerprint, context_column, question_column, answer_column,
                               template, dtype, model.config.wrap, model.config.system_prompt, model.tokenizer])
    with torch.no_grad():
        out = dataset.map(
            compress,
            with_indices=True,
            remove_columns=dataset.column_names,
            features=features,
            desc="compress contexts",
            new_fingerprint=f"memcomp-{fingerprint}",
        )
    kept = out.filter(lambda n: n <= max_prompt_length, input_columns="prompt_length")
    if len(kept) < len(out):
        dropped = len(out) - len(kept)
        logger.warning("dropped %d of %d rows whose prompt exceeds %d tokens.", dropped, len(out), max_prompt_length)
    return kept


def write_metadata(folder: str | Path, model: MemCompForCausalLM, args: PrecomputeArguments, num_rows: int) -> None:
    """Record which compressor made the memories, so RL can refuse a mismatched checkpoint."""
    meta = {
        "model": args.model,
        "fingerprint": model.fingerprint,
        "model_dtype": _dtype_name(model),
        "chunk_size": model.config.chunk_size,
        "hidden_size": model.config.text_config.hidden_size,
        "template": args.template,
        "num_rows": num_rows,
    }
    (Path(folder) / MEMORY_DATASET_RECORD).write_text(json.dumps(meta, indent=2))


def read_metadata(folder: str | Path) -> dict | None:
    path = Path(folder) / MEMORY_DATASET_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _dtype_name(model: MemCompForCausalLM) -> str:
    return str(model.dtype).removeprefix("torch.")


def check_memory_source(folder: str | Path, model: MemCompForCausalLM, model_name: str, num_rows: int | None = None) -> None:
    """Refuse RL on memories another compressor made: the RL checkpoint keeps `model`'s encoder, so its decoder must
    learn on that encoder's memories (the paper's system, SFT encoder + RL decoder). `num_rows` (the dataset's) must
    be the recorded count: another is a precompute run into the folder that was cut short."""
    meta = read_metadata(folder)
    if meta is None:
        logger.warning("%s has no %s: nothing records which model compressed it; make sure it was %s "
                       "(examples/precompute_memory.py writes the record).", folder, MEMORY_DATASET_RECORD, model_name)
        return
    if meta.get("in_progress"):
        raise ValueError(f"{folder} was being written by examples/precompute_memory.py, which did not finish: re-run it "
                         f"(--model {model_name}).")
    if num_rows is not None and meta.get("num_rows") not in (None, num_rows):
        raise ValueError(f"{folder} holds {num_rows} rows but its {MEMORY_DATASET_RECORD} records {meta['num_rows']}: "
                         f"a precompute run into it was cut short. Re-run examples/precompute_memory.py --model {model_name}.")
    sizes = {"chunk_size": model.config.chunk_size, "hidden_size": model.config.text_config.hidden_size}
    recorded_sizes = {key: meta.get(key) for key in sizes}
    if recorded_sizes != sizes:
        raise ValueError(f"{folder} holds memories of {recorded_sizes} from {meta.get('model')}, {model_name} makes "
                         f"{sizes}: re-run examples/precompute_memory.py --model {model_name}.")
    if meta.get("fingerprint") == model.fingerprint:
        return
    dtype, recorded_dtype = _dtype_name(model), meta.get("model_dtype")
    if recorded_dtype != dtype:  # the fingerprint samples weights as loaded: another dtype alone changes it
        logger.warning("%s was compressed by %s loaded in %s, and %s is loaded in %s: their fingerprints cannot be "
                       "compared; make sure it is the same checkpoint (re-running examples/precompute_memory.py in the "
                       "dtype RL loads it in makes the check exact).", folder, meta.get("model"),
                       recorded_dtype or "a dtype it did not record", model_name, dtype)
        return
    raise ValueError(
        f"{folder} was compressed by {meta.get('model')} (fingerprint {meta.get('fingerprint')}), not by {model_name} "
        f"(fingerprint {model.fingerprint}): the RL checkpoint would keep an encoder whose memories its decoder never "
        f"trained on. Re-run examples/precompute_memory.py --model {model_name} (in the dtype RL loads it in)."
    )


SHARDS_DIR = ".shards"
"""Inside `output_dir`: each rank's compressed shard, until rank 0 has merged them (then removed)."""


def shard_start(num_rows: int, num_shards: int, index: int) -> int:
    """The first row of `Dataset.shard(num_shards, index, contiguous=True)`: the first `num_rows % num_shards`
    shards hold one row more."""
    per_shard, extra = divmod(num_rows, num_shards)
    return per_shard * index + min(index, extra)


def _check_rows(num_rows: int, args: PrecomputeArguments) -> None:
    if num_rows == 0:
        raise ValueError(f"no row of {args.dataset} is left to save: every prompt exceeds --max_prompt_length "
                         f"{args.max_prompt_length} (or the split is empty); an empty RL dataset trains nothing.")


def _save_with_record(dataset: Dataset, model: MemCompForCausalLM, args: PrecomputeArguments) -> None:
    """Save `dataset` to `args.output_dir`, its record written last. An in-progress mark replaces an earlier run's
    record first: `save_to_disk` replaces files one by one, so a run cut short leaves new or mixed rows, which RL
    must refuse."""
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MEMORY_DATASET_RECORD).write_text(json.dumps({"in_progress": True}))
    dataset.save_to_disk(args.output_dir)
    write_metadata(args.output_dir, model, args, len(dataset))


def run(args: PrecomputeArguments) -> Dataset:
    """Load the SFT model and the rows, compress, save to `args.output_dir`.

    Under `accelerate launch` with N processes each rank compresses one contiguous shard of the rows on its
    own device and saves it; rank 0 then concatenates the shards in rank order (the rows keep their order:
    the result equals the one-process run), writes the dataset and its metadata, and removes the shards.
    """
    from accelerate import PartialState

    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    device = args.device or str(state.device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = MemCompForCausalLM.from_pretrained(args.model, dtype=dtype)
    model.to(device).eval()
    rows = load_rows(args.dataset, args.split, args.dataset_config)
    if args.max_samples is not None:
        rows = rows.select(range(min(args.max_samples, len(rows))))
    first_row = 0
    if state.num_processes > 1:
        first_row = shard_start(len(rows), state.num_processes, state.process_index)
        rows = rows.shard(num_shards=state.num_processes, index=state.process_index, contiguous=True)
    out = precompute_memory(
        model, rows, args.context_column, args.question_column, args.answer_column, args.max_prompt_length,
        args.template, args.dtype, first_row=first_row,
    )
    if state.num_processes == 1:
        _check_rows(len(out), args)
        _save_with_record(out, model, args)
        return out
    shards = Path(args.output_dir) / SHARDS_DIR
    out.save_to_disk(shards / f"rank{state.process_index:05d}")
    state.wait_for_everyone()
    merged = concatenate_datasets([load_from_disk(shards / f"rank{rank:05d}") for rank in range(state.num_processes)])
    _check_rows(len(merged), args)  # on every rank: none is left waiting at the barrier below
    if state.is_main_process:
        _save_with_record(merged, model, args)
    state.wait_for_everyone()  # every rank has read the shards before they go
    if state.is_main_process:
        shutil.rmtree(shards)
    return merged
