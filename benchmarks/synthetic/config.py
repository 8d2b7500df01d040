"""The synthetic run's settings: one `SyntheticRunConfig` (every field with its help), parsed by `TrlParser`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainers.config import JSONObject, TaskWeights
from trainers.synthetic import DISTRACTORS


MEMCOMP_STAGES = ("cpt1", "cpt2", "sft")
STARTABLE_STAGES = ("cpt1", "cpt2", "sft", "baseline")
"""Stages `start_from` can start from another folder's model (RL starts from this run's `sft`: reuse one instead)."""
TOY_SYSTEM_PROMPT = "Answer from the memory."
"""The toy's chat system prompt (SFT and RL): short, so the tiny model spends its compute on content."""


class StageFolders(JSONObject):
    """Stage name -> folder of a trained model."""

    what = "stage folders"


def help_field(default, text: str, **kwargs):
    """A dataclass field with its `--help` text (a fresh copy of a list or dict default)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class SyntheticRunConfig:
    """Every setting of the synthetic run; the defaults are the committed run (see its report for the wall time)."""

    output_dir: str = help_field("out/synthetic", "One folder per stage under it.")
    seed: int = help_field(0, "Corpus, initialisation and data order.")
    training_seed: int | None = help_field(
        None, "Initialisation and data order of the training stages (None: `seed`). The corpus stays `seed`'s, so runs "
        "that differ only here measure run-to-run variance on the same data and held-out set.",
    )
    train_episodes: int = help_field(
        30000, "Synthetic episodes for training (two documents each): 60,000 documents, too many for CPT-1 to recall "
        "one by its name, so reconstruction has to read the memory.",
    )
    heldout_episodes: int = help_field(200, "Episodes over held-out names, for evaluation only.")
    max_passages: int = help_field(4, "K_train: training QA contexts hold 1..max_passages documents.")
    multidoc_texts: int = help_field(2000, "Multi-document training texts for CPT.")
    eval_questions: int = help_field(60, "Held-out questions per (number of documents, depth) cell.")
    distractors: str = help_field(
        "any", "Distractor documents: 'any' (binding needed) or 'other_kind' (none states the asked attribute).",
    )
    hidden_size: int = help_field(128, "Tiny Qwen2 width.")
    num_layers: int = help_field(4, "Tiny Qwen2 depth.")
    chunk_size: int = help_field(4, "Tokens per memory embedding of the shipped model.")
    wrap: str = help_field("block", "Memory wrapping: 'block' keeps the effective rate at chunk_size.")
    max_length: int = help_field(256, "Decoder length of every stage.")
    batch_size: int = help_field(32, "Examples per optimizer step (LM, CPT, SFT, baseline).")
    lm_steps: int = help_field(2500, "Plain LM pretraining steps.")
    cpt1_steps: int = help_field(
        18000, "CPT-1 steps (names other than the subject's were read back from about 8,500 steps in the committed run, "
        "11,500 in another; none by 14,000 in a third).",
    )
    cpt1_task_weights: TaskWeights | None = help_field(
        TaskWeights({"reconstruction": 1.0}),
        "CPT-1's compression tasks (also the curve stages'), as JSON; Table 1's: '{\"reconstruction\": 0.5, \"continuation\": 0.5}'.",
    )
    cpt1_compression_ratio: float | None = help_field(None, "CPT-1's share of compression examples; default: Table 1's.")
    cpt1_lr_decay: float = help_field(
        0.2, "Share of CPT-1's (and the curve stages') steps over which the LR decays to a tenth of its peak; below 1 the "
        "peak is held until then (warmup-stable-decay), for reading memory that is learnt late. 1: cosine throughout.",
    )
    cpt1_name_lists: int = help_field(
        0, "CPT-1 (and the curve stages) also reconstruct this many lists of training names, a source beside the "
        "documents and multi-document texts with their weight (see trainers.synthetic.name_list_texts): every name in "
        "them is told apart only by where it sits, as a document's non-subject names are (a document-kind source, they are "
        "also read by CPT-1's plain-LM rows); 0: none (probe cpt1_name_lists: 20,000 held CPT-1 below the plateau).",
    )
    cpt1_name_weight: float = help_field(
        1.0, "Loss weight of the invented names' tokens in CPT-1's (and the curve stages') reconstruction targets, the "
        "other tokens weighing 1 (`emphasis_weight`): names other than the subject's are what CPT-1 learns to read last. "
        "1: none.",
    )
    cpt1_name_weight_steps: int = help_field(
        0, "CPT-1 steps over which `cpt1_name_weight` applies, the names weighing 1 after (`emphasis_steps`; 0: all steps): "
        "weight the names early, while CPT-1 leaves the template plateau, and every token alike after.",
    )
    cpt2_steps: int = help_field(1500, "CPT-2 steps.")
    sft_steps: int = help_field(6000, "SFT steps.")
    sft_lr_decay: float = help_field(
        1.0, "Share of SFT's steps over which its LR decays to a tenth of its peak; below 1 the peak is held until then (as "
        "`cpt1_lr_decay`), for binding that may be learnt late. 1: cosine throughout.",
    )
    baseline_steps: int = help_field(
        9000, "Full-context QA fine-tuning steps of the baseline (same QA rows as SFT; more steps than SFT, which "
        "also saw QA in CPT-2).",
    )
    baseline_lr_decay: float = help_field(
        1.0, "Share of the baseline's steps over which its LR decays to a tenth of its peak; below 1 the peak is held until "
        "then (as `cpt1_lr_decay`), for binding that may be learnt late. 1: cosine throughout.",
    )
    baseline_query_aware: bool = help_field(
        False, "The baseline's prompts ask the question before the passages too (query-aware contextualization, Liu "
        "et al., 2023), so the decoder-only baseline reads the passages knowing what it looks for; training and "
        "evaluation use the same layout.",
    )
    recon_chunk_sizes: list[int] = help_field([8, 16], "Extra CPT-1 runs at these chunk sizes, for the reconstruction curve.")
    recon_steps: int = help_field(2000, "Steps of each extra CPT-1 run.")
    probe_steps: int = help_field(
        500, "Every this many CPT-1 (and curve-stage) steps, held-out reconstruction accuracy is logged (0: never)."
    )
    probe_documents: int = help_field(32, "Held-out documents that logged reconstruction accuracy is measured on.")
    rl_steps: int = help_field(500, "DAPO optimizer steps (one rollout batch each).")
    learning_rate: float = help_field(2e-3, "LM and CPT peak LR (a model trained from scratch; Table 9's suit 7B); the baseline takes SFT's.")
    projection_learning_rate: float = help_field(2e-3, "Memory projection LR in CPT-1 / CPT-2.")
    sft_learning_rate: float = help_field(5e-4, "SFT and baseline QA fine-tuning LR.")
    rl_learning_rate: float = help_field(2e-5, "DAPO LR.")
    rl_prompts: int = help_field(4000, "Training QA rows compressed (by the SFT encoder) for RL.")
    rl_min_documents: int = help_field(
        1, "RL prompts are training QA rows with at least this many documents: the binding among distractors the reward "
        "can still teach (SFT answers single-document rows right, and dynamic sampling drops all-right groups).",
    )
    rl_max_documents: int | None = help_field(
        None, "RL prompts are training QA rows with at most this many documents (None: max_passages): the lengths RL "
        "trains on, so that a chosen k gets a larger share of the prompts.",
    )
    rl_generations: int = help_field(8, "Rollouts per prompt.")
    rl_temperature: float = help_field(
        1.0, "Rollout sampling temperature (Table 10: 1.0); higher makes a group's answers disagree more often, so fewer "
        "groups are all right or all wrong and dropped by dynamic sampling.",
    )
    rl_batch_size: int = help_field(64, "Completions per rollout batch and optimizer step (rl_batch_size / rl_generations prompts).")
    rl_template: str = help_field(
        "chat", "RL prompt template: the toy keeps SFT's (its one-word answers need no \\boxed{} format to learn)."
    )
    system_prompt: str = help_field(TOY_SYSTEM_PROMPT, "System prompt of the chat stages (SFT, RL).")
    lm_qa_text: bool = help_field(True, "LM pretraining also reads QA rows as plain 'context / question / answer' text.")
    lm_lexicon_texts: int = help_field(
        30000, "LM pretraining also reads this many lexicon texts (each value set listed in a fixed order), so values get "
        "distinct embeddings as in a real pretrained LM (see trainers.synthetic.lexicon_texts); 0: none.",
    )
    save_steps: int = help_field(250, "Trainer checkpoints (resume points) every this many steps.")
    logging_steps: int = help_field(25, "Log every this many steps.")
    threads: int = help_field(1, "Torch threads per process while both processes run.")
    threads_alone: int = help_field(1, "Torch threads of a process running alone (2 on an otherwise idle 2-core machine).")
    parallel: bool = help_field(True, "Train the baseline and the reconstruction curve in a second process.")
    stages: list[str] | None = help_field(
        None, "Stages to run (in pipeline order; default: all but the reused ones). A reused stage named here is "
        "finished, so it is not trained: `--stages rl --reuse '{\"rl\": ...}'` only evaluates.",
    )
    reuse: StageFolders = help_field(
        StageFolders(), "Finished stages taken from other folders, as JSON {stage: folder}: each is linked into this "
        "run (`{output_dir}/{stage}` -> folder) and never trained here, e.g. an SFT checkpoint for a run of `rl` alone.",
    )
    start_from: StageFolders = help_field(
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
        if self.cpt1_name_weight_steps < 0:
            raise ValueError(f"cpt1_name_weight_steps must be >= 0 (0: every step), got {self.cpt1_name_weight_steps}.")
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
