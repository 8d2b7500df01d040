"""The whole curriculum, end to end, on the synthetic corpus: the demo checkpoint's recipe (issue 11).

    data      corpus (`trainers.synthetic`) + tokenizer              {output_dir}/data
    lm        plain LM pretraining of a tiny Qwen2 (the recipe assumes a pretrained base)   {output_dir}/lm
    cpt1      CPT-1 through `trainers.run.run_stage`               {output_dir}/cpt1
    cpt2      CPT-2                                                {output_dir}/cpt2
    sft       SFT (projection frozen)                              {output_dir}/sft
    rl        DAPO (`MemCompGRPOTrainer`), exact-match judge, memories from the SFT encoder   {output_dir}/rl
    baseline  the same base fine-tuned on the same QA rows with the context as text          {output_dir}/baseline

Each stage writes its model folder and `log_history.json`; a finished stage (its `config.json` exists) is
skipped and an interrupted one resumes from its last Trainer checkpoint, so a crashed run loses at most
`save_steps` steps. Stage wall times go to `{output_dir}/timings.json`. The evaluation and report live in
`benchmarks/eval/synthetic.py` and `benchmarks/synthetic_report.py`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .synthetic import read_jsonl

logger = logging.getLogger(__name__)

MEMCOMP_STAGES = ("cpt1", "cpt2", "sft")
STAGES = ("data", "lm", *MEMCOMP_STAGES, "rl", "baseline")


@dataclass
class SyntheticRunConfig:
    """Every setting of the synthetic run; the defaults are the committed demo run (1.7 h on a 2-core CPU)."""

    output_dir: str = "out/synthetic"  # one folder per stage under it
    seed: int = 0  # corpus, initialisation and data order
    train_episodes: int = 2000  # synthetic episodes for training (two documents each)
    heldout_episodes: int = 200  # episodes over held-out names, for evaluation only
    hidden_size: int = 128  # tiny Qwen2 width
    num_layers: int = 4  # tiny Qwen2 depth
    chunk_size: int = 4  # tokens per memory embedding
    wrap: str = "block"  # memory wrapping: "block" keeps the effective rate at chunk_size
    max_length: int = 256  # decoder length of every stage
    batch_size: int = 32  # examples per optimizer step (LM, CPT, SFT, baseline)
    lm_steps: int = 2500  # plain LM pretraining steps
    cpt1_steps: int = 2000
    cpt2_steps: int = 400
    sft_steps: int = 1000
    baseline_steps: int = 2500  # full-context QA fine-tuning steps (same QA rows as SFT)
    rl_steps: int = 30  # DAPO optimizer steps
    learning_rate: float = 1e-3  # LM, CPT and baseline peak LR (a model trained from scratch; Table 9's suit 7B)
    projection_learning_rate: float = 1e-3  # memory projection in CPT-1/CPT-2
    sft_learning_rate: float = 5e-4  # SFT and baseline QA fine-tuning
    rl_learning_rate: float = 1e-5  # DAPO
    rl_prompts: int = 2000  # training QA rows compressed for RL
    rl_generations: int = 8  # rollouts per prompt
    rl_batch_size: int = 64  # completions per optimizer step (rl_batch_size / rl_generations prompts)
    lm_qa_text: bool = True  # LM pretraining also reads QA rows as plain "context / question / answer" text
    save_steps: int = 250  # Trainer checkpoints (resume points) every this many steps
    logging_steps: int = 25
    threads: int = 1  # torch threads per process; the baseline trains in a second process alongside
    parallel_baseline: bool = True  # train the baseline in a second process while CPT/SFT run
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # which stages to run (in pipeline order)

    def __post_init__(self):
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}.")
        if self.rl_batch_size % self.rl_generations:
            raise ValueError(f"rl_batch_size ({self.rl_batch_size}) must be a multiple of rl_generations ({self.rl_generations}).")

    @property
    def root(self) -> Path:
        return Path(self.output_dir)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def data_file(self, split: str, kind: str) -> str:
        return str(self.root / "data" / split / f"{kind}.jsonl")


# ---------------------------------------------------------------------------------------------- bookkeeping
def _done(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _record(config: SyntheticRunConfig, stage: str, seconds: float, trainer=None) -> None:
    """Add a stage's wall time to timings.json and its Trainer log history next to its model."""
    with open(config.root / "timings.json", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # the baseline process writes here too
        f.seek(0)
        timings = json.loads(f.read() or "{}")
        timings[stage] = timings.get(stage, 0.0) + seconds  # a resumed stage adds its second part
        f.seek(0)
        f.truncate()
        f.write(json.dumps(timings, indent=2))
    if trainer is not None:
        (config.stage_dir(stage) / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))


def _training_args(config: SyntheticRunConfig, stage: str, steps: int, learning_rate: float, **overrides):
    from .trainer import MemCompTrainingArguments

    settings = dict(
        output_dir=str(config.stage_dir(stage)),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        global_batch_size=config.batch_size,
        learning_rate=learning_rate,
        warmup_steps=0.05,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        weight_decay=0.01,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    settings.update(overrides)
    if stage in MEMCOMP_STAGES:
        return MemCompTrainingArguments.for_stage(stage, **settings)
    return MemCompTrainingArguments(stage=None, **settings)


def _train(trainer, config: SyntheticRunConfig, stage: str):
    started = time.time()
    trainer.train(resume_from_checkpoint=_last_checkpoint(config.stage_dir(stage)))
    return time.time() - started


# ---------------------------------------------------------------------------------------------- stages
def make_data(config: SyntheticRunConfig) -> None:
    """Write the corpus and train the tokenizer (`{output_dir}/data`)."""
    from .synthetic import SyntheticConfig, generate, iter_texts, train_synthetic_tokenizer, write_corpus

    corpus = generate(SyntheticConfig(config.seed, config.train_episodes, config.heldout_episodes))
    write_corpus(corpus, config.root / "data")
    train_synthetic_tokenizer(iter_texts(corpus, "train")).save_pretrained(config.root / "data" / "tokenizer")


def qa_text(row: dict) -> str:
    """A QA row as plain text for LM pretraining: the passages, the question, the answer, one per line."""
    return "\n\n".join(row["context"]) + f"\n{row['question']}\n{row['answer']}"


def _examples_dataset(examples: list[dict], seed: int):
    from datasets import Dataset

    from .mixture import EXAMPLE_FEATURES

    rows = [{"example_id": i, **e} for i, e in enumerate(e for e in examples if e is not None)]
    random.Random(seed).shuffle(rows)
    return Dataset.from_list(rows, features=EXAMPLE_FEATURES)


def pretrain_lm(config: SyntheticRunConfig) -> None:
    """Plain next-token pretraining of a fresh tiny Qwen2 on episodes (and QA rows as text); saves the base LM."""
    from transformers import AutoTokenizer

    from modeling_memcomp.tiny import build_tiny_memcomp

    from .tasks import TaskBuilder
    from .trainer import MemCompTrainer

    tokenizer = AutoTokenizer.from_pretrained(config.root / "data" / "tokenizer")
    model = build_tiny_memcomp(
        tokenizer, chunk_size=config.chunk_size, seed=config.seed, hidden_size=config.hidden_size,
        num_layers=config.num_layers, wrap=config.wrap,
    ).train()
    texts = [r["text"] for r in read_jsonl(config.data_file("train", "standard"))]
    if config.lm_qa_text:
        texts += [qa_text(r) for r in read_jsonl(config.data_file("train", "qa"))]
    builder = TaskBuilder(tokenizer, model.config, max_length=config.max_length)
    dataset = _examples_dataset([builder.language_modeling(t) for t in texts], config.seed)
    args = _training_args(config, "lm", config.lm_steps, config.learning_rate)
    trainer = MemCompTrainer(model=model, args=args, train_dataset=dataset)
    seconds = _train(trainer, config, "lm")
    model.language_model.save_pretrained(config.stage_dir("lm"))
    tokenizer.save_pretrained(config.stage_dir("lm"))
    _record(config, "lm", seconds, trainer)


STAGE_SOURCES = {
    "cpt1": (("document", "document"), ("standard", "standard")),
    "cpt2": (("document", "document"), ("summary", "summary"), ("qa", "qa"), ("standard", "standard")),
    "sft": (("qa", "qa"),),
}
"""(file, kind) of the corpus files each memcomp stage draws from (kinds of `trainers.data`)."""


def stage_config(config: SyntheticRunConfig, stage: str):
    """The `StageConfig` of a memcomp stage: the previous stage's folder as base, the corpus files as sources."""
    from .config import DataArguments, ModelArguments, StageConfig
    from .fqlora import FQLoRAConfig

    previous = {"cpt1": "lm", "cpt2": "cpt1", "sft": "cpt2"}[stage]
    steps = getattr(config, f"{stage}_steps")
    sft = stage == "sft"
    return StageConfig(
        model=ModelArguments(
            base=str(config.stage_dir(previous)), chunk_size=config.chunk_size, wrap=config.wrap, dtype="float32"
        ),
        data=DataArguments(
            sources=[{"path": config.data_file("train", f), "kind": k} for f, k in STAGE_SOURCES[stage]],
            num_samples=steps * config.batch_size,
            max_length=config.max_length,
            mixture_seed=config.seed,
            cache_dir=str(config.root / "cache"),
        ),
        fqlora=FQLoRAConfig(),
        training=_training_args(
            config, stage, steps, config.sft_learning_rate if sft else config.learning_rate,
            **({} if sft else {"projection_learning_rate": config.projection_learning_rate}),
        ),
    )


def train_memcomp_stage(config: SyntheticRunConfig, stage: str) -> None:
    """CPT-1, CPT-2 or SFT through the stage runner every other curriculum run uses (`trainers.run.run_stage`)."""
    from .run import run_stage

    started = time.time()
    trainer = run_stage(stage_config(config, stage), resume_from_checkpoint=_last_checkpoint(config.stage_dir(stage)))
    _record(config, stage, time.time() - started, trainer)


def baseline_examples(tokenizer, model_config, rows: list[dict], max_length: int) -> list[dict]:
    """Full-context QA examples: the evaluation's baseline prompt (context as text), loss on the answer only."""
    from benchmarks.eval.protocol import FULL_CONTEXT_SYSTEM_PROMPT
    from benchmarks.eval.systems import full_context_instruction
    from modeling_memcomp.prompting import build_prompt

    examples = []
    for row in rows:
        prompt = build_prompt(
            tokenizer, model_config, 0, full_context_instruction(row["context"], row["question"]), template="chat",
            target=tokenizer(row["answer"], add_special_tokens=False)["input_ids"],
            system_prompt=FULL_CONTEXT_SYSTEM_PROMPT,
        )
        if len(prompt.input_ids) <= max_length:
            examples.append({"task": "qa", "input_ids": prompt.input_ids, "labels": prompt.labels, "chunks": []})
    return examples


def train_baseline(config: SyntheticRunConfig) -> None:
    """The full-context baseline: the pretrained base fine-tuned on the SFT QA rows with the context as text."""
    from modeling_memcomp import MemCompForCausalLM

    from .trainer import MemCompTrainer

    torch.set_num_threads(config.threads)
    model = MemCompForCausalLM.from_base(
        str(config.stage_dir("lm")), chunk_size=config.chunk_size, wrap=config.wrap, dtype=torch.float32
    ).train()
    rows = read_jsonl(config.data_file("train", "qa"))
    dataset = _examples_dataset(baseline_examples(model.tokenizer, model.config, rows, config.max_length), config.seed)
    args = _training_args(config, "baseline", config.baseline_steps, config.sft_learning_rate)
    trainer = MemCompTrainer(model=model, args=args, train_dataset=dataset)
    seconds = _train(trainer, config, "baseline")
    trainer.save_model()
    _record(config, "baseline", seconds, trainer)


def train_rl(config: SyntheticRunConfig) -> None:
    """DAPO on the SFT checkpoint: memories precomputed by the SFT encoder, rewards by exact match."""
    from modeling_memcomp import MemCompForCausalLM

    from .grpo import MemCompGRPOConfig, MemCompGRPOTrainer
    from .judges import MatchJudge
    from .precompute import load_rows, precompute_memory

    model = MemCompForCausalLM.from_pretrained(str(config.stage_dir("sft")), dtype=torch.float32)
    rows = load_rows(config.data_file("train", "qa")).shuffle(seed=config.seed)
    rows = rows.select(range(min(config.rl_prompts, len(rows))))
    dataset = precompute_memory(model.eval(), rows, template="chat", max_prompt_length=config.max_length)
    args = MemCompGRPOConfig(
        output_dir=str(config.stage_dir("rl")),
        template="chat",
        num_generations=config.rl_generations,
        per_device_train_batch_size=config.rl_batch_size,
        max_completion_length=8,  # answers are at most 3 tokens; the rest is room for the overlong penalty
        overlong_buffer=4,
        max_prompt_length=config.max_length,
        max_steps=config.rl_steps,
        learning_rate=config.rl_learning_rate,
        warmup_steps=0,
        dynamic_sampling_warmup_rollouts=0,
        dynamic_sampling_max_tries=2,
        seed=config.seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="steps",
        save_steps=max(config.rl_steps // 3, 1),
        save_total_limit=1,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = MemCompGRPOTrainer(model.train(), args=args, train_dataset=dataset, judge=MatchJudge(mode="exact"))
    seconds = _train(trainer, config, "rl")
    trainer.save_model(str(config.stage_dir("rl")))
    _record(config, "rl", seconds, trainer)


def _baseline_process(config_dict: dict) -> None:
    logging.basicConfig(level=logging.INFO)
    train_baseline(SyntheticRunConfig(**config_dict))


def run_pipeline(config: SyntheticRunConfig) -> dict[str, float]:
    """Run the selected stages in order (finished ones are skipped); returns the wall time of each stage."""
    torch.set_num_threads(config.threads)
    config.root.mkdir(parents=True, exist_ok=True)
    (config.root / "run_config.json").write_text(json.dumps(asdict(config), indent=2))
    wanted = set(config.stages)
    if "data" in wanted and not (config.root / "data" / "tokenizer").is_dir():
        started = time.time()
        make_data(config)
        _record(config, "data", time.time() - started)
    if "lm" in wanted and not _done(config.stage_dir("lm")):
        pretrain_lm(config)
    baseline = None
    if "baseline" in wanted and not _done(config.stage_dir("baseline")):
        if config.parallel_baseline:
            import multiprocessing

            baseline = multiprocessing.get_context("spawn").Process(target=_baseline_process, args=(asdict(config),))
            baseline.start()
        else:
            train_baseline(config)
    try:
        for stage in MEMCOMP_STAGES:
            if stage in wanted and not _done(config.stage_dir(stage)):
                train_memcomp_stage(config, stage)
        if "rl" in wanted and not _done(config.stage_dir("rl")):
            train_rl(config)
    finally:
        if baseline is not None:
            baseline.join()
    if baseline is not None and baseline.exitcode:
        raise RuntimeError(f"the baseline process failed (exit code {baseline.exitcode}); rerun to resume it.")
    path = config.root / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


DEMO_REPO_ID = "memcomp/memcomp-synthetic-tiny"


def export_checkpoint(run_dir: str | Path, stage: str, destination: str | Path) -> Path:
    """Write a stage's model as a Hub-ready folder (safetensors, remote code, tokenizer, model card) at `destination`."""
    from hub_cards.export import export_model

    export_model(Path(run_dir) / stage, destination, repo_id=DEMO_REPO_ID, stage=stage, tags=("synthetic",), overwrite=True)
    card = Path(destination) / "README.md"
    card.write_text(card.read_text().rstrip() + "\n\n" + DEMO_CARD_NOTE)
    return Path(destination)


DEMO_CARD_NOTE = """## About this checkpoint

A 0.7M-parameter Qwen2-architecture model trained from scratch, on CPU, on the synthetic corpus of
`trainers/synthetic.py` (fictional people and companies) by `examples/train_synthetic.py`, through the whole
curriculum (LM pretraining, CPT-1, CPT-2, SFT, RL) with its own step counts and learning rates (see the run's
`report.json`), chunk size 4 with block wrapping. It only knows that corpus: it is the demo and test model of the
memcomp repository, not a general-purpose model, and the recipe figures above describe the stages' task mixtures only.
"""


@dataclass
class ReportArguments:
    """Where the evaluation, the report and the shipped checkpoint go."""

    report_dir: str = "benchmarks/results/synthetic"  # report.json, report.md, learning_curves.png
    checkpoint_dir: str | None = "checkpoints/memcomp-synthetic-tiny"  # the shipped model (None: do not export)
    max_documents: int | None = None  # held-out documents (and as many two-document episodes) to reconstruct (None: all)
    max_questions: int | None = None  # held-out questions for QA (None: all)


def main(argv: list[str] | None = None) -> dict:
    """Train every stage, evaluate on the held-out split, write the report and export the best one-model checkpoint.

    The exported checkpoint is the one a user runs with one model (compress and answer): RL when its
    self-compressed QA ("rl_self") is at least the SFT model's, else SFT.
    """
    import shlex
    import sys

    from transformers import HfArgumentParser

    from benchmarks._timing import machine_info
    from benchmarks.eval.synthetic import evaluate_run
    from benchmarks.eval.synthetic_report import write_report

    logging.basicConfig(level=logging.INFO)
    argv = sys.argv[1:] if argv is None else argv
    run, report_args = HfArgumentParser((SyntheticRunConfig, ReportArguments)).parse_args_into_dataclasses(argv)
    run_pipeline(run)
    started = time.time()
    results = evaluate_run(run.output_dir, run.root / "eval", report_args.max_documents, report_args.max_questions)
    _record(run, "eval", time.time() - started)
    command = "python examples/train_synthetic.py " + shlex.join(argv)
    report = write_report(run.output_dir, report_args.report_dir, results, machine_info(torch.device("cpu")), command.strip())
    if report_args.checkpoint_dir:
        em = report["aggregates"]["qa_em"].get("all", {})
        rl_ok = "rl_self" in em and em["rl_self"]["mean"] >= em["sft"]["mean"]
        report["shipped_stage"] = "rl" if rl_ok else "sft"
        export_checkpoint(run.output_dir, report["shipped_stage"], report_args.checkpoint_dir)
        out = Path(report_args.report_dir)
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        with open(out / "report.md", "a") as f:
            f.write(f"Shipped checkpoint: the `{report['shipped_stage']}` stage, exported to `{report_args.checkpoint_dir}`.\n")
        logger.info("exported %s to %s", report["shipped_stage"], report_args.checkpoint_dir)
    return report
