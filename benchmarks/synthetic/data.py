"""The run's data stage: the corpus (`trainers.synthetic`) with its settings record, the tokenizer, and CPT-1's name
lists."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from trainers.synthetic import read_jsonl

from .config import TOY_SYSTEM_PROMPT, SyntheticRunConfig
from .folders import build_folder, replace_text

logger = logging.getLogger(__name__)


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
    build_folder(config.root / "data" / "tokenizer", tokenizer.save_pretrained)


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
        replace_text(path, text)  # the curve stages may write it from another process
    return path
