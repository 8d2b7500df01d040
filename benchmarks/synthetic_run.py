"""The synthetic proof: the whole curriculum, end to end, on the synthetic corpus with distractor documents.

    data       corpus (`trainers.synthetic`, QA contexts of 1..max_passages documents) + tokenizer   {output_dir}/data
    lm         plain LM pretraining of a tiny Qwen2 on episodes and QA rows as text (the recipe assumes a pretrained base)
    cpt1       CPT-1 through `trainers.run.run_stage` (flat template)                       {output_dir}/cpt1
    cpt2       CPT-2 (flat template)                                                         {output_dir}/cpt2
    sft        SFT on QA with distractors (chat template, projection frozen)                 {output_dir}/sft
    rl         DAPO (`MemCompGRPOTrainer`), exact-match judge, memories from the SFT encoder: the paper's system,
               saved as one folder (SFT encoder + RL decoder)                                 {output_dir}/rl
    baseline   the same base fine-tuned on the same QA rows with the context as text        {output_dir}/baseline
    cpt1_c8, cpt1_c16   CPT-1 at chunk sizes 8 and 16 (the paper's rates), for the reconstruction curve

A second process trains the baseline and the reconstruction-curve stages while the main one runs the memcomp
stages, each with `threads` torch threads (two one-thread processes do more work on a 2-core CPU than one two-thread
process); a process left alone uses `threads_alone`. Each stage writes its folder and `log_history.json`; a finished
stage (its `config.json` and readable weights exist) is skipped and an interrupted one resumes from its last complete checkpoint. Stage
wall times and non-padding tokens go to `{output_dir}/timings.json`. Evaluation: `benchmarks/eval/synthetic.py`;
report: `benchmarks/eval/synthetic_report.py`; this module sits above both and above `trainers`.
"""

from __future__ import annotations

import _thread
import fcntl
import json
import logging
import multiprocessing
import os
import random
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from trainers.config import JSONObject, TaskWeights
from trainers.synthetic import DISTRACTORS, NAME_PATTERN, lexicon_texts, read_jsonl

logger = logging.getLogger(__name__)

MEMCOMP_STAGES = ("cpt1", "cpt2", "sft")
STARTABLE_STAGES = ("cpt1", "cpt2", "sft", "baseline")
"""Stages `start_from` can start from another folder's model (RL starts from this run's `sft`: reuse one instead)."""
TOY_SYSTEM_PROMPT = "Answer from the memory."
"""The toy's chat system prompt (SFT and RL): short, so the tiny model spends its compute on content."""


class StageFolders(JSONObject):
    """Stage name -> folder of a trained model."""

    what = "stage folders"


def _arg(default, text: str, **kwargs):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class SyntheticRunConfig:
    """Every setting of the synthetic run; the defaults are the committed run (see its report for the wall time)."""

    output_dir: str = _arg("out/synthetic", "One folder per stage under it.")
    seed: int = _arg(0, "Corpus, initialisation and data order.")
    training_seed: int | None = _arg(
        None, "Initialisation and data order of the training stages (None: `seed`). The corpus stays `seed`'s, so runs "
        "that differ only here measure run-to-run variance on the same data and held-out set.",
    )
    train_episodes: int = _arg(
        30000, "Synthetic episodes for training (two documents each): 60,000 documents, too many for CPT-1 to recall "
        "one by its name, so reconstruction has to read the memory.",
    )
    heldout_episodes: int = _arg(200, "Episodes over held-out names, for evaluation only.")
    max_passages: int = _arg(4, "K_train: training QA contexts hold 1..max_passages documents.")
    multidoc_texts: int = _arg(2000, "Multi-document training texts for CPT.")
    eval_questions: int = _arg(60, "Held-out questions per (number of documents, depth) cell.")
    distractors: str = _arg(
        "any", "Distractor documents: 'any' (binding needed) or 'other_kind' (none states the asked attribute).",
    )
    hidden_size: int = _arg(128, "Tiny Qwen2 width.")
    num_layers: int = _arg(4, "Tiny Qwen2 depth.")
    chunk_size: int = _arg(4, "Tokens per memory embedding of the shipped model.")
    wrap: str = _arg("block", "Memory wrapping: 'block' keeps the effective rate at chunk_size.")
    max_length: int = _arg(256, "Decoder length of every stage.")
    batch_size: int = _arg(32, "Examples per optimizer step (LM, CPT, SFT, baseline).")
    lm_steps: int = _arg(2500, "Plain LM pretraining steps.")
    cpt1_steps: int = _arg(
        18000, "CPT-1 steps (names other than the subject's were read back from about 8,500 steps in the committed run, "
        "11,500 in another; none by 14,000 in a third).",
    )
    cpt1_task_weights: TaskWeights | None = _arg(
        TaskWeights({"reconstruction": 1.0}),
        "CPT-1's compression tasks (also the curve stages'), as JSON; Table 1's: '{\"reconstruction\": 0.5, \"continuation\": 0.5}'.",
    )
    cpt1_compression_ratio: float | None = _arg(None, "CPT-1's share of compression examples; default: Table 1's.")
    cpt1_lr_decay: float = _arg(
        0.2, "Share of CPT-1's (and the curve stages') steps over which the LR decays to a tenth of its peak; below 1 the "
        "peak is held until then (warmup-stable-decay), for reading memory that is learnt late. 1: cosine throughout.",
    )
    cpt1_name_lists: int = _arg(
        0, "CPT-1 (and the curve stages) also reconstruct this many lists of training names, a source beside the "
        "documents and multi-document texts with their weight (see trainers.synthetic.name_list_texts): every name in "
        "them is told apart only by where it sits, as a document's non-subject names are (a document-kind source, they are "
        "also read by CPT-1's plain-LM rows); 0: none (probe cpt1_name_lists: 20,000 held CPT-1 below the plateau).",
    )
    cpt1_name_weight: float = _arg(
        1.0, "Loss weight of the invented names' tokens in CPT-1's (and the curve stages') reconstruction targets, the "
        "other tokens weighing 1 (`emphasis_weight`): names other than the subject's are what CPT-1 learns to read last. "
        "1: none.",
    )
    cpt2_steps: int = _arg(1500, "CPT-2 steps.")
    sft_steps: int = _arg(6000, "SFT steps.")
    sft_lr_decay: float = _arg(
        1.0, "Share of SFT's steps over which its LR decays to a tenth of its peak; below 1 the peak is held until then (as "
        "`cpt1_lr_decay`), for binding that may be learnt late. 1: cosine throughout.",
    )
    baseline_steps: int = _arg(
        9000, "Full-context QA fine-tuning steps of the baseline (same QA rows as SFT; more steps than SFT, which "
        "also saw QA in CPT-2).",
    )
    baseline_lr_decay: float = _arg(
        1.0, "Share of the baseline's steps over which its LR decays to a tenth of its peak; below 1 the peak is held until "
        "then (as `cpt1_lr_decay`), for binding that may be learnt late. 1: cosine throughout.",
    )
    baseline_query_aware: bool = _arg(
        False, "The baseline's prompts ask the question before the passages too (query-aware contextualization, Liu "
        "et al., 2023), so the decoder-only baseline reads the passages knowing what it looks for; training and "
        "evaluation use the same layout.",
    )
    recon_chunk_sizes: list[int] = _arg([8, 16], "Extra CPT-1 runs at these chunk sizes, for the reconstruction curve.")
    recon_steps: int = _arg(2000, "Steps of each extra CPT-1 run.")
    probe_steps: int = _arg(
        500, "Every this many CPT-1 (and curve-stage) steps, held-out reconstruction accuracy is logged (0: never)."
    )
    probe_documents: int = _arg(32, "Held-out documents that logged reconstruction accuracy is measured on.")
    rl_steps: int = _arg(500, "DAPO optimizer steps (one rollout batch each).")
    learning_rate: float = _arg(2e-3, "LM and CPT peak LR (a model trained from scratch; Table 9's suit 7B); the baseline takes SFT's.")
    projection_learning_rate: float = _arg(2e-3, "Memory projection LR in CPT-1 / CPT-2.")
    sft_learning_rate: float = _arg(5e-4, "SFT and baseline QA fine-tuning LR.")
    rl_learning_rate: float = _arg(2e-5, "DAPO LR.")
    rl_prompts: int = _arg(4000, "Training QA rows compressed (by the SFT encoder) for RL.")
    rl_min_documents: int = _arg(
        1, "RL prompts are training QA rows with at least this many documents: the binding among distractors the reward "
        "can still teach (SFT answers single-document rows right, and dynamic sampling drops all-right groups).",
    )
    rl_max_documents: int | None = _arg(
        None, "RL prompts are training QA rows with at most this many documents (None: max_passages): the lengths RL "
        "trains on, so that a chosen k gets a larger share of the prompts.",
    )
    rl_generations: int = _arg(8, "Rollouts per prompt.")
    rl_temperature: float = _arg(
        1.0, "Rollout sampling temperature (Table 10: 1.0); higher makes a group's answers disagree more often, so fewer "
        "groups are all right or all wrong and dropped by dynamic sampling.",
    )
    rl_batch_size: int = _arg(64, "Completions per rollout batch and optimizer step (rl_batch_size / rl_generations prompts).")
    rl_template: str = _arg(
        "chat", "RL prompt template: the toy keeps SFT's (its one-word answers need no \\boxed{} format to learn)."
    )
    system_prompt: str = _arg(TOY_SYSTEM_PROMPT, "System prompt of the chat stages (SFT, RL).")
    lm_qa_text: bool = _arg(True, "LM pretraining also reads QA rows as plain 'context / question / answer' text.")
    lm_lexicon_texts: int = _arg(
        30000, "LM pretraining also reads this many lexicon texts (each value set listed in a fixed order), so values get "
        "distinct embeddings as in a real pretrained LM (see trainers.synthetic.lexicon_texts); 0: none.",
    )
    save_steps: int = _arg(250, "Trainer checkpoints (resume points) every this many steps.")
    logging_steps: int = _arg(25, "Log every this many steps.")
    threads: int = _arg(1, "Torch threads per process while both processes run.")
    threads_alone: int = _arg(1, "Torch threads of a process running alone (2 on an otherwise idle 2-core machine).")
    parallel: bool = _arg(True, "Train the baseline and the reconstruction curve in a second process.")
    stages: list[str] | None = _arg(
        None, "Stages to run (in pipeline order; default: all but the reused ones). A reused stage named here is "
        "finished, so it is not trained: `--stages rl --reuse '{\"rl\": ...}'` only evaluates.",
    )
    reuse: StageFolders = _arg(
        StageFolders(), "Finished stages taken from other folders, as JSON {stage: folder}: each is linked into this "
        "run (`{output_dir}/{stage}` -> folder) and never trained here, e.g. an SFT checkpoint for a run of `rl` alone.",
    )
    start_from: StageFolders = _arg(
        StageFolders(), "Stages that start from another folder's trained model instead of this run's previous stage, "
        "as JSON {stage: folder} (cpt1, cpt2, sft, baseline): to go on training another run's SFT or baseline, e.g. "
        "in another distractor world.",
    )

    def __post_init__(self):
        self.reuse, self.start_from = StageFolders(self.reuse), StageFolders(self.start_from)
        for name, allowed in (("reuse", self.all_stages), ("start_from", STARTABLE_STAGES)):
            unknown = set(getattr(self, name)) - set(allowed)
            if unknown:
                raise ValueError(f"{name} names stages {sorted(unknown)}; choose from {list(allowed)}.")
        both = set(self.reuse) & set(self.start_from)
        if both:
            raise ValueError(f"stages {sorted(both)} are both reused and trained from a start: give each one of the two.")
        if self.stages is None:
            self.stages = [stage for stage in self.all_stages if stage not in self.reuse]
        self.stages = list(self.stages)
        unknown = set(self.stages) - set(self.all_stages)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; choose from {self.all_stages}.")
        idle = [stage for stage in self.start_from if stage not in self.stages]
        if idle:
            raise ValueError(f"start_from names stages {idle} that this run does not train: add them to --stages.")
        for name in ("probe_steps", "probe_documents", "lm_lexicon_texts", "cpt1_name_lists"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not self.cpt1_name_weight > 0:
            raise ValueError(f"cpt1_name_weight must be > 0, got {self.cpt1_name_weight}.")
        for name in ("cpt1_lr_decay", "sft_lr_decay", "baseline_lr_decay"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} is a share of the steps, in (0, 1]; got {getattr(self, name)}.")
        if not 1 <= self.rl_min_documents <= self.max_passages:
            raise ValueError(
                f"rl_min_documents must be in 1..max_passages ({self.max_passages}), got {self.rl_min_documents}."
            )
        if self.rl_max_documents is not None and not self.rl_min_documents <= self.rl_max_documents <= self.max_passages:
            raise ValueError(
                f"rl_max_documents must be in rl_min_documents..max_passages ({self.rl_min_documents}..{self.max_passages}), "
                f"got {self.rl_max_documents}."
            )
        if self.rl_temperature <= 0:
            raise ValueError(f"rl_temperature must be > 0 (rollouts are sampled), got {self.rl_temperature}.")
        if len(set(self.recon_chunk_sizes)) != len(self.recon_chunk_sizes) or any(c < 1 for c in self.recon_chunk_sizes):
            raise ValueError(f"recon_chunk_sizes must be distinct sizes >= 1, got {self.recon_chunk_sizes}.")
        if self.distractors not in DISTRACTORS:
            raise ValueError(f"distractors must be one of {list(DISTRACTORS)}, got {self.distractors!r}.")
        if self.rl_batch_size % self.rl_generations:
            raise ValueError(f"rl_batch_size ({self.rl_batch_size}) must be a multiple of rl_generations ({self.rl_generations}).")

    @property
    def all_stages(self) -> tuple[str, ...]:
        return ("data", "lm", *MEMCOMP_STAGES, "rl", "baseline", *self.recon_stages)

    @property
    def recon_stages(self) -> tuple[str, ...]:
        """The curve's extra CPT-1 runs: CPT-1 itself is the curve's point at `chunk_size`."""
        return tuple(f"cpt1_c{size}" for size in self.recon_chunk_sizes if size != self.chunk_size)

    @property
    def train_seed(self) -> int:
        return self.seed if self.training_seed is None else self.training_seed

    @property
    def root(self) -> Path:
        return Path(self.output_dir)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def data_file(self, split: str, kind: str) -> str:
        return str(self.root / "data" / split / f"{kind}.jsonl")

    @property
    def name_lists_file(self) -> Path:
        """Where `write_name_lists` puts CPT-1's name lists: derived from the seed, so kept with the run's cache."""
        return self.root / "cache" / f"name_lists_{self.seed}_{self.cpt1_name_lists}.jsonl"


# ---------------------------------------------------------------------------------------------- bookkeeping
def _done(folder: Path) -> bool:
    """A stage folder holds its finished model: its config and readable weights (a kill during the final save may
    leave the config, written first, without them)."""
    from trainers.checkpoints import weights_problem

    return (folder / "config.json").is_file() and weights_problem(folder) is None


def check_reused_stages(config: SyntheticRunConfig) -> None:
    """Each `reuse` folder holds its finished stage and its place in the run is free (or already that link)."""
    for stage, folder in config.reuse.items():
        target, link = Path(folder), config.stage_dir(stage)
        finished = (target / "tokenizer").is_dir() if stage == "data" else _done(target)
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
        if folder is not None and not _done(Path(folder)):
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


def _check_seed(what: str, folder: str | Path, seed: int, fix: str = "or train the stage in this run") -> None:
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
        _check_seed(what, folder, config.seed)


def _resume_point(folder: Path) -> bool | None:
    """Resume from the newest complete checkpoint of a stage that has any (the trainer skips incomplete ones, logged);
    None, starting the stage afresh, when it has none or only incomplete ones (a kill during its first save)."""
    from trainers.checkpoints import checkpoint_problems, checkpoints_newest_first

    problems = {checkpoint: checkpoint_problems(checkpoint) for checkpoint in checkpoints_newest_first(folder)}
    if problems and all(problems.values()):
        logger.warning("%s: no complete checkpoint to resume from (%s): the stage starts afresh.", folder,
                       "; ".join(f"{c.name}: {', '.join(p)}" for c, p in problems.items()))
        return None
    return True if problems else None


def _replace_text(path: Path, text: str) -> None:
    """Write `path` in one step (a per-process temporary file, then a rename): a reader, the other process included,
    or a kill mid-write never meets a torn file."""
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)


def _build_folder(path: Path, build) -> None:
    """Make the folder `path` whole or not at all: `build(partial)` fills `<path>.partial` (a leftover of a killed
    attempt is cleared first), renamed into place once done, so a cut-short folder is never taken for a finished one."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    partial.replace(path)


def _update_timings(config: SyntheticRunConfig, change) -> dict:
    """Apply `change(timings)` to timings.json under a lock (the second process writes there too), replacing the file
    in one step: a process killed mid-update leaves the previous version, never a torn one."""
    path = config.root / "timings.json"
    with open(config.root / "timings.json.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        timings = json.loads(path.read_text() or "{}") if path.is_file() else {}
        change(timings)
        _replace_text(path, json.dumps(timings, indent=2))
    return timings


class StageClock(TrainerCallback):
    """A stage's wall time across interruptions: banked in timings.json (`unfinished`) at every checkpoint, so the
    time a killed process spent up to its last checkpoint counts when the resumed stage finishes."""

    def __init__(self, config: SyntheticRunConfig, stage: str):
        self.config, self.stage = config, stage
        self.carried = _update_timings(config, lambda t: None).get("unfinished", {}).get(stage, 0.0)
        self.started = time.time()

    def elapsed(self) -> float:
        return self.carried + time.time() - self.started

    def on_save(self, args, state, control, **kwargs):
        seconds = self.elapsed()
        _update_timings(self.config, lambda t: t.setdefault("unfinished", {}).__setitem__(self.stage, seconds))


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
    """Raise this process's torch threads to `threads` as soon as the second process has finished: a stage that
    started beside it would otherwise keep one thread, and a core would idle for the rest of its steps."""

    def __init__(self, side, threads: int):
        self.side, self.threads = side, threads

    def on_step_end(self, args, state, control, **kwargs):
        if not self.side.is_alive() and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
            logger.info("the second process has finished: %d torch threads from step %d", self.threads, state.global_step)


def _record(config: SyntheticRunConfig, stage: str, seconds: float, trainer=None) -> None:
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

    _update_timings(config, add)


def _lr_schedule(steps: int, decay_share: float = 1.0) -> dict:
    """Scheduler arguments: warmup over 5% of the steps, then a cosine to 10% of the peak over the last `decay_share`."""
    if decay_share >= 1:
        return dict(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1})
    return dict(
        lr_scheduler_type="warmup_stable_decay",
        lr_scheduler_kwargs={"num_decay_steps": max(1, round(steps * decay_share)), "min_lr_ratio": 0.1},
    )


def _training_args(config: SyntheticRunConfig, stage: str, steps: int, learning_rate: float, **overrides):
    from trainers.trainer import MemCompTrainingArguments

    settings = dict(
        output_dir=str(config.stage_dir(stage)),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        global_batch_size=config.batch_size,
        learning_rate=learning_rate,
        warmup_steps=0.05,
        **_lr_schedule(steps),
        weight_decay=0.01,
        train_sampling_strategy="group_by_length",  # batches of similar lengths: little padding
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        seed=config.train_seed,
        data_seed=config.train_seed,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    settings.update(overrides)
    kind = stage.split("_c")[0]
    if kind in MEMCOMP_STAGES:
        return MemCompTrainingArguments.for_stage(kind, **settings)
    return MemCompTrainingArguments(stage=None, **settings)


def _train(trainer, config: SyntheticRunConfig, stage: str, callbacks: tuple = ()) -> float:
    """Train (resuming from the stage's last checkpoint if any); returns the stage's seconds, earlier processes' too."""
    clock = StageClock(config, stage)
    for callback in (clock, *callbacks):
        trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=_resume_point(config.stage_dir(stage)))
    return clock.elapsed()


# ---------------------------------------------------------------------------------------------- stages
def prompt_texts() -> list[str]:
    """Every instruction and system prompt the run's prompts contain, so the tokenizer gives them few tokens."""
    from benchmarks.eval import protocol
    from modeling_memcomp.prompting import BOXED_INSTRUCTION, DEFAULT_SYSTEM_PROMPT, RL_SYSTEM_PROMPT
    from trainers.instructions import INSTRUCTIONS

    pools = [text for lengths in INSTRUCTIONS.values() for texts in lengths.values() for text in texts]
    return [*pools, TOY_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPT, RL_SYSTEM_PROMPT, BOXED_INSTRUCTION,
            protocol.RECONSTRUCTION_INSTRUCTION, protocol.FULL_CONTEXT_SYSTEM_PROMPT]


CORPUS_RECORD = "corpus.json"
"""Written next to the corpus: the `SyntheticConfig` it was generated with, checked by every later run on the folder."""


def corpus_config(config: SyntheticRunConfig):
    """The `SyntheticConfig` this run's corpus is (or would be) generated with."""
    from trainers.synthetic import SyntheticConfig

    return SyntheticConfig(
        seed=config.seed, train_episodes=config.train_episodes, heldout_episodes=config.heldout_episodes,
        max_passages=config.max_passages, multidoc_texts=config.multidoc_texts, eval_questions=config.eval_questions,
        distractors=config.distractors,
    )


def make_data(config: SyntheticRunConfig) -> None:
    """Write the corpus and train the tokenizer (`{output_dir}/data`)."""
    from trainers.synthetic import generate, iter_texts, train_synthetic_tokenizer, write_corpus

    wanted = corpus_config(config)
    corpus = generate(wanted)
    write_corpus(corpus, config.root / "data")
    texts = [*iter_texts(corpus, "train"), *prompt_texts()]
    (config.root / "data" / CORPUS_RECORD).write_text(json.dumps(asdict(wanted), indent=2))
    tokenizer = train_synthetic_tokenizer(texts)  # its folder marks the stage finished: made last
    _build_folder(config.root / "data" / "tokenizer", tokenizer.save_pretrained)


def check_corpus(config: SyntheticRunConfig, data: Path | None = None) -> None:
    """Refuse a run whose corpus settings differ from those its existing data folder (`data`, default the run's) was
    generated with: the later stages would silently train and evaluate on the old corpus."""
    record = (config.root / "data" if data is None else Path(data)) / CORPUS_RECORD
    if not record.is_file():
        logger.warning("%s has no %s (written by an older version): its corpus settings cannot be checked.",
                       record.parent, CORPUS_RECORD)
        return
    from trainers.synthetic import SyntheticConfig

    defaults, wanted = asdict(SyntheticConfig()), asdict(corpus_config(config))
    written = {**defaults, **json.loads(record.read_text())}  # a field added since then: the data had its default
    differ = [f"{k}={wanted[k]!r} (the data has {written[k]!r})" for k in wanted if written[k] != wanted[k]]
    if differ:
        raise ValueError(
            f"{record.parent} was generated with other corpus settings than this run asks for: {', '.join(differ)}. "
            "Pass the settings the data was made with, or give a new --output_dir for a new corpus."
        )


def qa_text(row: dict) -> str:
    """A QA row as plain text for LM pretraining: the passages, the question, the answer, one per line."""
    return "\n\n".join(row["context"]) + f"\n{row['question']}\n{row['answer']}"


def _examples_dataset(examples: list[dict], seed: int):
    from datasets import Dataset

    from trainers.mixture import EXAMPLE_FEATURES
    from trainers.run import with_lengths

    rows = [{"example_id": i, **e} for i, e in enumerate(e for e in examples if e is not None)]
    random.Random(seed).shuffle(rows)
    return with_lengths(Dataset.from_list(rows, features=EXAMPLE_FEATURES))


def pretrain_lm(config: SyntheticRunConfig) -> None:
    """Plain next-token pretraining of a fresh tiny Qwen2 on episodes (and QA rows as text); saves the base LM."""
    from modeling_memcomp.tiny import build_tiny_memcomp
    from modeling_memcomp.tokenizer_io import load_tokenizer
    from trainers.tasks import TaskBuilder
    from trainers.trainer import MemCompTrainer

    tokenizer = load_tokenizer(str(config.root / "data" / "tokenizer"))
    model = build_tiny_memcomp(
        tokenizer, chunk_size=config.chunk_size, seed=config.train_seed, hidden_size=config.hidden_size,
        num_layers=config.num_layers, wrap=config.wrap,
    ).train()
    texts = [r["text"] for r in read_jsonl(config.data_file("train", "standard"))]
    if config.lm_qa_text:
        texts += [qa_text(r) for r in read_jsonl(config.data_file("train", "qa"))]
    texts += lexicon_texts(config.lm_lexicon_texts, config.seed)
    builder = TaskBuilder(tokenizer, model.config, max_length=config.max_length)
    dataset = _examples_dataset([builder.language_modeling(t) for t in texts], config.train_seed)
    args = _training_args(config, "lm", config.lm_steps, config.learning_rate)
    trainer = MemCompTrainer(model=model, args=args, train_dataset=dataset)
    seconds = _train(trainer, config, "lm")
    model.language_model.save_pretrained(config.stage_dir("lm"))
    tokenizer.save_pretrained(config.stage_dir("lm"))
    _record(config, "lm", seconds, trainer)


STAGE_SOURCES = {
    "cpt1": (("document", "document"), ("multidoc", "document"), ("standard", "standard")),
    "cpt2": (("document", "document"), ("multidoc", "document"), ("summary", "summary"), ("qa", "qa"), ("standard", "standard")),
    "sft": (("qa", "qa"),),
}
"""(file, kind) of the corpus files each memcomp stage draws from (kinds of `trainers.data`)."""


def write_name_lists(config: SyntheticRunConfig) -> Path:
    """Write CPT-1's name lists (training names only) unless the file already holds exactly them, so a resumed stage
    finds its cached mixture (keyed on the file's modification time) and a stale or cut-short file is never read."""
    from trainers.synthetic import name_list_texts, names_in, split_names

    train_names, _ = split_names(config.seed, corpus_config(config).heldout_fraction)
    texts = name_list_texts(train_names, config.cpt1_name_lists, config.seed)
    heldout = set().union(*(names_in(r["text"]) for r in read_jsonl(config.data_file("heldout", "document"))))
    leaked = sorted(heldout & set().union(*map(names_in, texts)))
    if leaked:  # data made with another seed than this run's, e.g. an old folder without its corpus record
        raise ValueError(
            f"name lists of seed {config.seed} hold held-out names of {config.root / 'data'} ({leaked[:3]}...): "
            "give the --seed the data was made with."
        )
    text = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    path = config.name_lists_file
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace_text(path, text)  # the curve stages may write it from another process
    return path


def stage_config(config: SyntheticRunConfig, stage: str):
    """The `StageConfig` of a memcomp stage (or a `cpt1_c<C>` curve stage): previous stage (or its `start_from` folder)
    as base, corpus as sources."""
    from trainers.config import DataArguments, ModelArguments, StageConfig
    from trainers.fqlora import FQLoRAConfig

    kind, _, size = stage.partition("_c")
    chunk_size = int(size) if size else config.chunk_size
    previous = {"cpt1": "lm", "cpt2": "cpt1", "sft": "cpt2"}[kind]
    base = config.start_from.get(stage) or str(config.stage_dir(previous))
    steps = config.recon_steps if size else getattr(config, f"{kind}_steps")
    sft = kind == "sft"
    sources = [{"path": config.data_file("train", f), "kind": k} for f, k in STAGE_SOURCES[kind]]
    if kind == "cpt1" and config.cpt1_name_lists:
        sources.append({"path": str(config.name_lists_file), "kind": "document"})
    return StageConfig(
        model=ModelArguments(base=base, chunk_size=chunk_size, wrap=config.wrap, dtype="float32"),
        fqlora=FQLoRAConfig(),
        data=DataArguments(
            sources=sources,
            num_samples=steps * config.batch_size,
            max_length=config.max_length,
            system_prompt=config.system_prompt if sft else None,
            mixture_seed=config.train_seed,
            cache_dir=str(config.root / "cache"),
            task_weights=config.cpt1_task_weights if kind == "cpt1" else None,
            compression_ratio=config.cpt1_compression_ratio if kind == "cpt1" else None,
            emphasis_pattern=NAME_PATTERN if kind == "cpt1" and config.cpt1_name_weight != 1 else None,
        ),
        training=_training_args(
            config, stage, steps, config.sft_learning_rate if sft else config.learning_rate,
            **({} if sft else {"projection_learning_rate": config.projection_learning_rate}),
            **_lr_schedule(steps, {"cpt1": config.cpt1_lr_decay, "sft": config.sft_lr_decay}.get(kind, 1.0)),
            **({"emphasis_weight": config.cpt1_name_weight} if kind == "cpt1" else {}),
        ),
    )


def train_memcomp_stage(config: SyntheticRunConfig, stage: str, callbacks: tuple = ()) -> None:
    """CPT-1, CPT-2, SFT (or a CPT-1 curve stage) through the stage runner every curriculum run uses."""
    from trainers.run import run_stage

    from benchmarks.eval.synthetic import ReconstructionProbe

    clock = StageClock(config, stage)
    callbacks = [clock, *callbacks]
    if stage.startswith("cpt1") and config.cpt1_name_lists:
        write_name_lists(config)
    if stage.startswith("cpt1") and config.probe_steps:
        documents = [r["text"] for r in read_jsonl(config.data_file("heldout", "document"))[: config.probe_documents]]
        callbacks.append(ReconstructionProbe(documents, config.probe_steps, config.batch_size))
    trainer = run_stage(stage_config(config, stage), _resume_point(config.stage_dir(stage)), callbacks=callbacks)
    _record(config, stage, clock.elapsed(), trainer)


def baseline_examples(
    tokenizer, model_config, rows: list[dict], max_length: int, query_aware: bool = False
) -> list[dict]:
    """Full-context QA examples: the evaluation's baseline prompt (context as text), loss on the answer only."""
    from benchmarks.eval.protocol import FULL_CONTEXT_SYSTEM_PROMPT
    from benchmarks.eval.systems import full_context_instruction
    from modeling_memcomp.prompting import build_prompt

    examples = []
    for row in rows:
        prompt = build_prompt(
            tokenizer, model_config, 0, full_context_instruction(row["context"], row["question"], query_aware),
            template="chat",
            target=tokenizer(row["answer"], add_special_tokens=False)["input_ids"],
            system_prompt=FULL_CONTEXT_SYSTEM_PROMPT,
        )
        if len(prompt.input_ids) <= max_length:
            examples.append({"task": "qa", "input_ids": prompt.input_ids, "labels": prompt.labels, "chunks": []})
    return examples


def baseline_arguments(config: SyntheticRunConfig):
    """The baseline's training arguments: SFT's learning rate, its own steps and LR decay."""
    steps = config.baseline_steps
    return _training_args(
        config, "baseline", steps, config.sft_learning_rate, **_lr_schedule(steps, config.baseline_lr_decay)
    )


def train_baseline(config: SyntheticRunConfig, callbacks: tuple = ()) -> None:
    """The full-context baseline: the pretrained base (or its `start_from` model) fine-tuned on the SFT QA rows with
    the context as text."""
    from benchmarks.eval.synthetic import QUERY_AWARE_ATTRIBUTE
    from modeling_memcomp import MemCompForCausalLM
    from trainers.trainer import MemCompTrainer

    if "baseline" in config.start_from:  # a trained baseline goes on training (e.g. in another world)
        model = MemCompForCausalLM.from_pretrained(config.start_from["baseline"], dtype=torch.float32).train()
    else:
        model = MemCompForCausalLM.from_base(
            str(config.stage_dir("lm")), chunk_size=config.chunk_size, wrap=config.wrap, dtype=torch.float32
        ).train()
    rows = read_jsonl(config.data_file("train", "qa"))
    examples = baseline_examples(model.tokenizer, model.config, rows, config.max_length, config.baseline_query_aware)
    dataset = _examples_dataset(examples, config.train_seed)
    args = baseline_arguments(config)
    trainer = MemCompTrainer(model=model, args=args, train_dataset=dataset)
    seconds = _train(trainer, config, "baseline", callbacks)
    model.config.prompt_template = "chat"
    setattr(model.config, QUERY_AWARE_ATTRIBUTE, config.baseline_query_aware)  # the evaluation prompts the same way
    trainer.save_model()
    _record(config, "baseline", seconds, trainer)


def rl_rows(config: SyntheticRunConfig):
    """The RL prompts: `rl_prompts` shuffled training QA rows with `rl_min_documents`..`rl_max_documents` documents."""
    from trainers.precompute import load_rows

    rows = load_rows(config.data_file("train", "qa"))
    most = config.rl_max_documents or config.max_passages
    if config.rl_min_documents > 1 or most < config.max_passages:
        rows = rows.filter(lambda row: config.rl_min_documents <= row["k"] <= most)
    rows = rows.shuffle(seed=config.train_seed)
    return rows.select(range(min(config.rl_prompts, len(rows))))


def rl_arguments(config: SyntheticRunConfig):
    """The RL stage's `MemCompGRPOConfig`: one optimizer step per rollout batch, exact-match answers of <= 3 tokens."""
    from trainers.grpo import MemCompGRPOConfig

    prompts = config.rl_batch_size // config.rl_generations
    return MemCompGRPOConfig(
        output_dir=str(config.stage_dir("rl")),
        template=config.rl_template,
        system_prompt=config.system_prompt,
        num_generations=config.rl_generations,
        temperature=config.rl_temperature,
        per_device_train_batch_size=config.rl_batch_size,
        rollout_batch_prompts=prompts,  # one optimizer step per rollout batch
        mini_batch_prompts=prompts,
        max_completion_length=8,  # answers are at most 3 tokens; the rest is room for the overlong penalty
        overlong_buffer=4,
        max_prompt_length=config.max_length,
        max_steps=config.rl_steps,
        learning_rate=config.rl_learning_rate,
        lr_warmup_rollouts=10,
        dynamic_sampling_warmup_rollouts=0,  # the toy keeps SFT's template: no answer format to learn first
        dynamic_sampling_max_tries=2,
        seed=config.train_seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=5,
        save_strategy="steps",
        save_steps=max(config.rl_steps // 4, 1),
        save_total_limit=1,
        report_to=[],
        disable_tqdm=True,
    )


def train_rl(config: SyntheticRunConfig, callbacks: tuple = ()) -> None:
    """DAPO on the SFT checkpoint: memories precomputed by the SFT encoder, rewards by exact match; saves the RL folder."""
    from modeling_memcomp import MemCompForCausalLM
    from trainers.grpo import MemCompGRPOTrainer
    from trainers.judges import MatchJudge
    from trainers.precompute import precompute_memory

    model = MemCompForCausalLM.from_pretrained(str(config.stage_dir("sft")), dtype=torch.float32)
    dataset = precompute_memory(
        model.eval(), rl_rows(config), template=config.rl_template, max_prompt_length=config.max_length,
    )
    args = rl_arguments(config)
    trainer = MemCompGRPOTrainer(model.train(), args=args, train_dataset=dataset, judge=MatchJudge(mode="exact"))
    seconds = _train(trainer, config, "rl", callbacks)
    trainer.save_model(str(config.stage_dir("rl")))
    _record(config, "rl", seconds, trainer)


def run_side_stages(config: SyntheticRunConfig, callbacks: tuple = ()) -> None:
    """The second process: the full-context baseline, then the reconstruction-curve CPT-1 runs."""
    for stage in ("baseline", *config.recon_stages):
        if stage in config.stages and not _done(config.stage_dir(stage)):
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


def _side_process(config_dict: dict, parent_pid: int, stop) -> None:
    logging.basicConfig(level=logging.INFO)
    threading.Thread(target=watch_parent, args=(parent_pid,), daemon=True).start()
    config = SyntheticRunConfig(**config_dict)
    torch.set_num_threads(config.threads)
    run_side_stages(config, (StopSideProcess(parent_pid, stop),))


SIDE_STOP_TIMEOUT_S = 300
"""How long a failed main process waits for the second one to stop at its next step before terminating it."""


def run_pipeline(config: SyntheticRunConfig) -> dict[str, float]:
    """Run the selected stages (finished ones are skipped; reused ones linked in); returns the timings."""
    # Every check before anything is written: a refused command leaves the run's folder as it was.
    check_reused_stages(config)
    check_seeds_of_trained_folders(config)
    check_start_folders(config, [stage for stage in config.stages if not _done(config.stage_dir(stage))])
    data = Path(config.reuse.get("data") or config.root / "data")
    if (data / "tokenizer").is_dir():
        check_corpus(config, data)
    link_reused_stages(config)
    config.root.mkdir(parents=True, exist_ok=True)
    (config.root / "run_config.json").write_text(json.dumps(asdict(config), indent=2))
    torch.set_num_threads(config.threads_alone)
    wanted = set(config.stages)
    if "data" in wanted and not (config.root / "data" / "tokenizer").is_dir():
        started = time.time()
        make_data(config)
        _record(config, "data", time.time() - started)
    if "lm" in wanted and not _done(config.stage_dir("lm")):
        pretrain_lm(config)
    side = None
    pending = [s for s in ("baseline", *config.recon_stages) if s in wanted and not _done(config.stage_dir(s))]
    if pending and config.parallel:
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        side = context.Process(target=_side_process, args=(asdict(config), os.getpid(), stop))
        side.start()
    elif pending:
        run_side_stages(config)
    threads = (ThreadsWhenAlone(side, config.threads_alone),) if side is not None else ()
    try:
        for stage in (*MEMCOMP_STAGES, "rl"):
            torch.set_num_threads(config.threads if side is not None and side.is_alive() else config.threads_alone)
            if stage in wanted and not _done(config.stage_dir(stage)):
                train_rl(config, threads) if stage == "rl" else train_memcomp_stage(config, stage, threads)
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


DEMO_REPO_ID = "memcomp/memcomp-synthetic-tiny"


def export_checkpoint(run_dir: str | Path, stage: str, destination: str | Path, seed: int) -> Path:
    """Write a stage's model as a Hub-ready folder (safetensors, remote code, tokenizer, model card) at `destination`,
    with the corpus `seed` it trained on (`SEED_RECORD`)."""
    from hub_cards.export import export_model

    export_model(Path(run_dir) / stage, destination, repo_id=DEMO_REPO_ID, stage=stage, tags=("synthetic",),
                 overwrite=True, extra_files={SEED_RECORD: json.dumps({"seed": seed}, indent=2) + "\n"})
    card = Path(destination) / "README.md"
    curriculum = ", ".join(["LM pretraining", "CPT-1", "CPT-2", "SFT", *(["RL"] if stage == "rl" else [])])
    model = json.loads((Path(destination) / "config.json").read_text())
    note = DEMO_CARD_NOTE.format(curriculum=curriculum, chunk_size=model["chunk_size"], wrap=model["wrap"])
    card.write_text(card.read_text().rstrip() + "\n\n" + note)
    return Path(destination)


DEMO_CARD_NOTE = """## About this checkpoint

A tiny Qwen2-architecture model (sizes in the table above) trained from scratch, on CPU, on the synthetic corpus of
`trainers/synthetic.py` (fictional people and companies, questions whose documents sit among distractor documents)
by `examples/train_synthetic.py` (or a schedule of its runs), through the curriculum up to its stage ({curriculum})
with its own step counts and learning rates (see the run's `report.json`),
chunk size {chunk_size} with {wrap} wrapping. It only knows that corpus: it is the demo and test model of the memcomp
repository, not a general-purpose model, and the recipe figures above describe the stages' task mixtures only.
"""


@dataclass
class ReportArguments:
    """Where the evaluation, the report and the shipped checkpoint go."""

    report_dir: str | None = _arg(
        None, "Folder for report.json, report.md and the plots (default: <output_dir>/report, so the committed run's "
        "report in benchmarks/results/synthetic is rewritten only when this says so).",
    )
    checkpoint_dir: str | None = _arg(
        "checkpoints/memcomp-synthetic-tiny", "The shipped model, replaced by the run's when it beats it ('' or None: "
        "do not export). It must be new, empty or an earlier export (with its .memcomp-export.json): the export "
        "replaces the files that export wrote. A checkpoint of a run of another --seed is refused: it trained on this run's held-out names.",
    )
    max_documents: int | None = _arg(None, "Held-out documents to reconstruct (None: all).")
    max_single_questions: int | None = _arg(600, "Questions of the single-document held-out set (1,800 in all: 1800 takes every one).")
    max_passage_questions: int | None = _arg(
        None, "Questions of the held-out set by number of documents, the first in order of k (a cap drops the largest k "
        "first; default: all).",
    )

    def __post_init__(self):
        # `--checkpoint_dir None` on the command line arrives as the string "None": a folder nobody means.
        self.report_dir, self.checkpoint_dir = (None if v == "None" else v for v in (self.report_dir, self.checkpoint_dir))


def check_checkpoint_dir(checkpoint_dir: str | None, seed: int) -> None:
    """Refuse, before anything trains, a `checkpoint_dir` the export may not replace (`hub_cards.export.check_output_dir`:
    only a new or empty folder or an earlier export) or whose model trained on a corpus of another `seed` (the ship rule
    compares the two on this run's held-out names, some of which that model trained on)."""
    from hub_cards.export import check_output_dir

    if not checkpoint_dir:
        return
    try:
        check_output_dir(checkpoint_dir, overwrite=True, what="checkpoint_dir")
    except ValueError as error:
        raise ValueError(f"{error} Or pass --checkpoint_dir '' to not export.") from None
    _check_seed("checkpoint_dir", checkpoint_dir, seed, fix="or another --checkpoint_dir (a new folder, or '' to not export)")


def keep_previous_checkpoint(run: SyntheticRunConfig, checkpoint_dir: str | None) -> Path | None:
    """A copy of the checkpoint shipped before this run (`{output_dir}/previous`), made once, to compare against."""
    previous = run.root / "previous"
    if not previous.is_dir() and checkpoint_dir and (Path(checkpoint_dir) / "config.json").is_file():
        _build_folder(previous, lambda partial: shutil.copytree(checkpoint_dir, partial))
    return previous if previous.is_dir() else None


def main(argv: list[str] | None = None) -> dict:
    """Parse a `SyntheticRunConfig` and `ReportArguments` (command line or `--config run.yaml`) and `run_and_report`."""
    import shlex
    import sys

    from trl import TrlParser

    logging.basicConfig(level=logging.INFO)
    argv = sys.argv[1:] if argv is None else argv
    run, report_args = TrlParser((SyntheticRunConfig, ReportArguments)).parse_args_and_config(argv)
    return run_and_report(run, report_args, "python examples/train_synthetic.py " + shlex.join(argv))


def run_and_report(
    run: SyntheticRunConfig, report_args: ReportArguments, command: str, earlier_runs: Sequence[Path] = ()
) -> dict:
    """Train every stage, evaluate on the held-out split, write the report and export the checkpoint (`earlier_runs`:
    the folders of the schedule phases before this one, which the report records).

    The exported checkpoint is RL (the paper's system: SFT encoder + RL decoder) when its exact match over the
    training range of documents is at least SFT's, else SFT; it replaces the shipped one only when it also beats it on
    the single-document held-out set.
    """
    from benchmarks._timing import machine_info
    from benchmarks.eval.synthetic import EVALUATED, evaluate_run, evaluated_stages
    from benchmarks.eval.synthetic_report import choose_shipped_stage, write_report

    check_checkpoint_dir(report_args.checkpoint_dir, run.seed)
    if report_args.report_dir is None:
        report_args.report_dir = str(run.root / "report")
    previous = keep_previous_checkpoint(run, report_args.checkpoint_dir)
    run_pipeline(run)
    if not evaluated_stages(run.output_dir):
        logger.warning("%s has no stage the evaluation reads yet (%s): no report; run later stages for one.",
                       run.output_dir, EVALUATED)
        return {}
    started = time.time()
    results = evaluate_run(
        run.output_dir, run.root / "eval", previous, report_args.max_documents, report_args.max_single_questions,
        report_args.max_passage_questions,
    )
    _record(run, "eval", time.time() - started)
    report = write_report(run.output_dir, report_args.report_dir, results, machine_info(torch.device("cpu")), command.strip(),
                          earlier_runs)
    if report_args.checkpoint_dir:
        stage, reason = choose_shipped_stage(report)
        report["shipped"] = {"stage": stage, "reason": reason}
        if stage is not None:
            export_checkpoint(run.output_dir, stage, report_args.checkpoint_dir, run.seed)
            logger.info("exported %s to %s", stage, report_args.checkpoint_dir)
        out = Path(report_args.report_dir)
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        with open(out / "report.md", "a") as f:
            f.write(f"\nShipped checkpoint: {reason}\n")
    return report
