"""One synthetic run from the command line: train (`pipeline`), evaluate on the held-out split, write the report, and
export the checkpoint when it beats the shipped one."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .clock import record_stage
from .config import SyntheticRunConfig, help_field
from .folders import SEED_RECORD, build_folder, check_seed, folder_lock, model_digest, read_record, replace_text, run_lock
from .pipeline import run_pipeline

logger = logging.getLogger(__name__)


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

    report_dir: str | None = help_field(
        None, "Folder for report.json, report.md and the plots (default: <output_dir>/report, so the committed run's "
        "report in benchmarks/results/synthetic is rewritten only when this says so).",
    )
    checkpoint_dir: str | None = help_field(
        "checkpoints/memcomp-synthetic-tiny", "The shipped model, replaced by the run's when it beats it ('' or None: "
        "do not export). It must be new, empty or an earlier export (with its .memcomp-export.json): the export "
        "replaces the files that export wrote. A checkpoint of a run of another --seed is refused: it trained on this run's held-out names.",
    )
    max_documents: int | None = help_field(None, "Held-out documents to reconstruct (None: all).")
    max_single_questions: int | None = help_field(600, "Questions of the single-document held-out set (1,800 in all: 1800 takes every one).")
    max_passage_questions: int | None = help_field(
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
    check_seed("checkpoint_dir", checkpoint_dir, seed, fix="or another --checkpoint_dir (a new folder, or '' to not export)")


RUN_EXPORT_RECORD = "exported.json"
"""In a run's folder: the digest (`model_digest`) of the checkpoint the run last exported, so that a rerun tells its
own export from a checkpoint shipped since by another run (`in_progress` while the export writes)."""


def keep_previous_checkpoint(run: SyntheticRunConfig, checkpoint_dir: str | None) -> Path | None:
    """A copy of the checkpoint shipped before this run (`{output_dir}/previous`), to compare against, made after
    training. It is kept while `checkpoint_dir` holds it or this run's own export (with no copy yet, that export is
    copied: a rerun then ties with itself), and while an export, this run's or another's, was cut short there; a
    checkpoint shipped since by another run replaces it, so the ship rule compares with the model it would replace."""
    previous = run.root / "previous"
    shipped = model_digest(checkpoint_dir) if checkpoint_dir else None
    if shipped is None or export_cut_short(run, checkpoint_dir) or shipped == model_digest(previous):
        return previous if previous.is_dir() else None
    if previous.is_dir():
        if shipped == exported_digest(run):
            return previous
        logger.warning("%s holds a checkpoint shipped after this run's copy of it: comparing with that one.", checkpoint_dir)
        shutil.rmtree(previous)
    build_folder(previous, lambda partial: shutil.copytree(checkpoint_dir, partial))
    return previous


def exported_digest(run: SyntheticRunConfig) -> str | None:
    """The digest of the checkpoint this run last exported whole (`RUN_EXPORT_RECORD`), None when it exported none."""
    return read_record(run.root / RUN_EXPORT_RECORD).get("digest")


def export_cut_short(run: SyntheticRunConfig, checkpoint_dir: str) -> bool:
    """Whether an export into `checkpoint_dir` was cut short: any (the folder's own record says it never finished), or
    this run's before it wrote anything (the folder is as it was). A record of this run's left by an export that
    failed counts no longer once another run has shipped there."""
    from hub_cards.export import export_in_progress

    ours = read_record(run.root / RUN_EXPORT_RECORD)
    return export_in_progress(checkpoint_dir) or bool(ours.get("in_progress")) and ours.get("before") == model_digest(checkpoint_dir)


def ship(run: SyntheticRunConfig, stage: str, checkpoint_dir: str, previous: Path | None) -> str | None:
    """Export `stage` to `checkpoint_dir`, recording it as this run's (`RUN_EXPORT_RECORD`); returns why not when
    another run shipped a checkpoint there while this one evaluated (it was not compared with that one). A folder an
    export was cut short in is written over: the export mends it. Exports into one folder take turns (`folder_lock`)."""
    with folder_lock(Path(checkpoint_dir)):
        current = model_digest(checkpoint_dir)
        known = (model_digest(previous) if previous else None, exported_digest(run))
        if current is not None and current not in known and not export_cut_short(run, checkpoint_dir):
            return (f"not exported: {checkpoint_dir} changed while this run evaluated (another run shipped there); "
                    "rerun the command to compare with that checkpoint.")
        record = {"in_progress": True, "stage": stage, "before": current}
        replace_text(run.root / RUN_EXPORT_RECORD, json.dumps(record) + "\n")
        export_checkpoint(run.output_dir, stage, checkpoint_dir, run.seed)
        record = {"digest": model_digest(checkpoint_dir), "stage": stage}
        replace_text(run.root / RUN_EXPORT_RECORD, json.dumps(record, indent=2) + "\n")
    return None


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
    from benchmarks.eval.synthetic import EVALUATED, evaluated_stages

    check_checkpoint_dir(report_args.checkpoint_dir, run.seed)
    if report_args.report_dir is None:
        report_args.report_dir = str(run.root / "report")
    run_pipeline(run)
    if not evaluated_stages(run.output_dir):
        logger.warning("%s has no stage the evaluation reads yet (%s): no report; run later stages for one.",
                       run.output_dir, EVALUATED)
        return {}
    with run_lock(run.root):
        return _evaluate_and_export(run, report_args, command, earlier_runs)


def _evaluate_and_export(run: SyntheticRunConfig, report_args: ReportArguments, command: str, earlier_runs) -> dict:
    """`run_and_report` after training, under the run's lock."""
    from benchmarks._timing import machine_info
    from benchmarks.eval.synthetic import evaluate_run
    from benchmarks.eval.synthetic_report import choose_shipped_stage, write_report

    previous = keep_previous_checkpoint(run, report_args.checkpoint_dir)
    started = time.time()
    results = evaluate_run(
        run.output_dir, run.root / "eval", previous, report_args.max_documents, report_args.max_single_questions,
        report_args.max_passage_questions,
    )
    record_stage(run, "eval", time.time() - started)
    report = write_report(run.output_dir, report_args.report_dir, results, machine_info(torch.device("cpu")), command.strip(),
                          earlier_runs)
    if report_args.checkpoint_dir:
        stage, reason = choose_shipped_stage(report)
        refused = ship(run, stage, report_args.checkpoint_dir, previous) if stage is not None else None
        if refused:
            logger.warning(refused)
            stage, reason = None, f"{reason}; {refused}"
        elif stage is not None:
            logger.info("exported %s to %s", stage, report_args.checkpoint_dir)
        report["shipped"] = {"stage": stage, "reason": reason}
        out = Path(report_args.report_dir)
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        with open(out / "report.md", "a") as f:
            f.write(f"\nShipped checkpoint: {reason}\n")
    return report
