"""Held-out evaluation of the synthetic demo run (issue 11): reconstruction and QA, compressed vs full context vs controls.

Every system goes through the shared harness (`harness.run`), so records are resumable and prompts are the
inference prompts. Besides ROUGE-L, reconstruction is scored by *content-token accuracy*: the share of the
reference's names and attribute values (template words excluded) that an order-preserving word alignment
finds in the output. Two controls show that the memory is read:

    zero memory   the same model with every memory embedding replaced by zeros
    copy          answers with the first name already in the prompt (reconstruction prompts name no one)
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import torch

from trainers.synthetic import CITIES, COLOURS, CONSONANTS, PROFESSIONS, VOWELS, YEARS, read_jsonl

from . import protocol
from .harness import Example, run
from .records import RecordStore, config_hash
from .report import retention, summarize
from .scoring import answer_scores, rouge_f1
from .systems import FullContextSystem, Generation, MemCompSystem

_WORD = re.compile(r"[A-Za-z0-9]+")
_NAME = re.compile(rf"^[{CONSONANTS.upper()}][{VOWELS}][{CONSONANTS}][{VOWELS}]$")
_VALUES = frozenset(CITIES + COLOURS + PROFESSIONS + YEARS)
LENGTH_BUCKETS = (16, 32, 48, 64)
"""Reconstruction results are grouped by the document's token count, rounded down to one of these edges."""


def is_content(word: str) -> bool:
    """A name or an attribute value (city, colour, profession, year): the words a template cannot predict."""
    return word in _VALUES or bool(_NAME.match(word))


def content_accuracy(prediction: str, reference: str) -> float | None:
    """Share of the reference's content words that an order-preserving alignment with the prediction matches.

    None when the reference has no content word. Alignment (difflib over words) means a right value in the
    wrong sentence does not count, and a word repeated elsewhere cannot be matched twice.
    """
    ref, pred = _WORD.findall(reference), _WORD.findall(prediction)
    wanted = [i for i, w in enumerate(ref) if is_content(w)]
    if not wanted:
        return None
    matched = set()
    for block in difflib.SequenceMatcher(None, ref, pred, autojunk=False).get_matching_blocks():
        matched.update(range(block.a, block.a + block.size))
    return sum(i in matched for i in wanted) / len(wanted)


class ZeroMemorySystem(MemCompSystem):
    """Control: the same model and prompts, every memory embedding replaced by zeros."""

    name = "zero_memory"

    def memories(self, contexts: list) -> list:
        memories = super().memories(contexts)
        for memory in memories:
            memory.embeds = torch.zeros_like(memory.embeds)
        return memories


class CopySystem:
    """Control: answer with the first name already in the prompt; a model copying from its prompt gets this for free."""

    name = "copy"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, contexts: list, instructions: list[str], **_) -> list[Generation]:
        outputs = []
        for context, instruction in zip(contexts, instructions):
            names = [w for w in _WORD.findall(instruction) if _NAME.match(w)]
            text = names[0] if names else ""
            passages = [context] if isinstance(context, str) else context
            tokens = sum(len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in passages)
            outputs.append(Generation(text, len(self.tokenizer(text)["input_ids"]), tokens))
        return outputs


def length_bucket(num_tokens: int) -> int:
    """The largest `LENGTH_BUCKETS` edge at or below `num_tokens` (the smallest edge for shorter texts)."""
    return max([b for b in LENGTH_BUCKETS if b <= num_tokens] or [LENGTH_BUCKETS[0]])


def reconstruction_examples(tokenizer, documents: list[str], kind: str = "document") -> list[Example]:
    """One example per text, grouped by its length bucket and its `kind` ("document", or "episode" for two documents)."""
    lengths = [len(ids) for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]]
    return [
        Example(
            f"{kind}{i}", text, protocol.RECONSTRUCTION_INSTRUCTION, text,
            meta={"length": length_bucket(n), "tokens": n, "kind": kind},
        )
        for i, (text, n) in enumerate(zip(documents, lengths))
    ]


def qa_examples(rows: list[dict]) -> list[Example]:
    """One example per held-out QA row (`trainers.synthetic` schema), grouped by question type."""
    return [
        Example(f"qa{i}", row["context"], row["question"], row["answer"], row["question"], meta={"type": row["type"]})
        for i, row in enumerate(rows)
    ]


def score_reconstruction(example: Example, generation: Generation) -> dict:
    return {"rougeL": rouge_f1(generation.text, example.reference)["rougeL"], "content_accuracy": content_accuracy(generation.text, example.reference)}


def score_qa(example: Example, generation: Generation) -> dict:
    return {"em": answer_scores(generation.text, example.reference, generation.answer_style)["em"]}


GREEDY = {"do_sample": False}


def evaluate_systems(
    benchmark: str,
    examples: list[Example],
    systems: list,
    output_dir: str | Path,
    max_new_tokens: int,
    batch_size: int = 32,
    settings: dict | None = None,
) -> list[dict]:
    """Greedy answers of every system on `examples`, scored for `benchmark` ("reconstruction" or "qa"), resumable."""
    scorer = {"reconstruction": score_reconstruction, "qa": score_qa}[benchmark]
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    store = RecordStore(folder / f"{benchmark}_records.jsonl", config_hash({"benchmark": benchmark, **(settings or {})}))
    return run(
        examples, systems, scorer, store, {**GREEDY, "max_new_tokens": max_new_tokens}, batch_size=batch_size, desc=benchmark
    )


def aggregate(reconstruction: list[dict], qa: list[dict]) -> dict:
    """Means per group and system: ROUGE-L and content accuracy by length, exact match by question type."""
    return {
        "reconstruction_rougeL": summarize(reconstruction, "rougeL", by="length"),
        "reconstruction_content_accuracy": summarize(reconstruction, "content_accuracy", by="length"),
        "reconstruction_rougeL_by_kind": summarize(reconstruction, "rougeL", by="kind"),
        "reconstruction_content_accuracy_by_kind": summarize(reconstruction, "content_accuracy", by="kind"),
        "qa_em": summarize(qa, "em", by="type"),
    }


def retention_by_group(summary: dict, compressed: str, full: str = "full") -> dict:
    """Per group (question type): `compressed` as a percentage of `full` (`report.retention`; groups where it is undefined are left out)."""
    kept = {g: retention(row.get(compressed, {}).get("mean"), row.get(full, {}).get("mean")) for g, row in summary.items()}
    return {g: v for g, v in kept.items() if v is not None}


def _load(folder: Path):
    from modeling_memcomp import MemCompForCausalLM

    return MemCompForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval() if (folder / "config.json").is_file() else None


def evaluate_run(
    run_dir: str | Path,
    output_dir: str | Path,
    max_documents: int | None = None,
    max_questions: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Evaluate a synthetic run's checkpoints on its held-out split; returns records and aggregates.

    Reconstruction: CPT-1 (plain template, the paper's Table 4 checkpoint) vs its zero-memory control and the
    copy control. QA (chat template): SFT; RL decoding memories of the SFT encoder (how RL trained) and of its
    own weights ("rl_self", a one-checkpoint user's path); the full-context baseline; zero-memory SFT; copy.
    """
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    heldout = run_dir / "data" / "heldout"
    models = {stage: _load(run_dir / stage) for stage in ("cpt1", "cpt2", "sft", "rl", "baseline")}
    if models["sft"] is None:
        raise FileNotFoundError(f"{run_dir / 'sft'} has no checkpoint: run the pipeline's sft stage first.")
    tokenizer = models["sft"].tokenizer
    settings = {"run": str(run_dir), **{s: m.fingerprint for s, m in models.items() if m is not None}}
    results = {}

    if models["cpt1"] is not None:
        # single documents (as trained) and whole two-document episodes (longer than any reconstruction target in training)
        examples = reconstruction_examples(tokenizer, [r["text"] for r in read_jsonl(heldout / "document.jsonl")[:max_documents]])
        episodes = [r["text"] for r in read_jsonl(heldout / "standard.jsonl")[:max_documents]]
        examples += reconstruction_examples(tokenizer, episodes, kind="episode")
        longest = max(e.meta["tokens"] for e in examples)
        systems = [MemCompSystem(models["cpt1"], template="plain", name="cpt1")]
        if models["cpt2"] is not None:  # CPT-2 also trains reconstruction, in the chat template
            systems.append(MemCompSystem(models["cpt2"], template="chat", name="cpt2"))
        systems += [
            ZeroMemorySystem(models["cpt1"], template="plain", name="zero_memory"),
            CopySystem(tokenizer),
        ]
        max_new = int(longest * protocol.RECONSTRUCTION_LENGTH_FACTOR) + 8
        results["reconstruction"] = evaluate_systems("reconstruction", examples, systems, output_dir, max_new, batch_size, settings)

    examples = qa_examples(read_jsonl(heldout / "qa.jsonl")[:max_questions])
    systems = [MemCompSystem(models["sft"], name="sft")]
    if models["rl"] is not None:
        systems += [MemCompSystem(models["rl"], name="rl", encoder=models["sft"]), MemCompSystem(models["rl"], name="rl_self")]
    if models["baseline"] is not None:
        systems.append(FullContextSystem(models["baseline"], name="full"))
    systems += [ZeroMemorySystem(models["sft"], name="zero_memory"), CopySystem(tokenizer)]
    results["qa"] = evaluate_systems("qa", examples, systems, output_dir, QA_MAX_NEW_TOKENS, batch_size, settings)
    return results


QA_MAX_NEW_TOKENS = 8
"""Synthetic answers are one to three tokens; the cap leaves room to see a rambling answer fail."""
