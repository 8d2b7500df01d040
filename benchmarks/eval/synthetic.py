"""Held-out evaluation of the synthetic run: reconstruction and QA among distractors, compressed vs full vs controls.

Every system goes through the shared harness (`harness.run`), so records are resumable and prompts are the
inference prompts. Besides ROUGE-L, reconstruction is scored by *content-token accuracy*: the share of the
reference's names and attribute values (template words excluded) that an order-preserving word alignment finds in
the output. QA is exact match, grouped by the number of documents in the context (`k`, beyond the training range
too), the depth of the document holding the answer and the question type. Two controls show the memory is read:

    zero memory   the same model with every memory embedding replaced by zeros
    copy          answers with the first name already in the prompt (reconstruction prompts name no one)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from trainers.synthetic import CONSONANTS, VALUE_SETS, VOWELS, answer_set, names_in, read_jsonl

from . import protocol
from .harness import Example, run
from .records import RecordStore, config_hash
from .report import ALL, paired_bootstrap, retention, summarize
from .scoring import answer_scores, rouge_f1
from .systems import FullContextSystem, Generation, MemCompSystem

WORD = re.compile(r"[A-Za-z0-9]+")
"""A word of a synthetic text (names, values and template words; punctuation left out)."""
_NAME = re.compile(rf"^[{CONSONANTS.upper()}][{VOWELS}][{CONSONANTS}][{VOWELS}]$")
_VALUES = frozenset(v for values in VALUE_SETS.values() for v in values)
LENGTH_BUCKETS = (16, 32, 48, 64)
"""Reconstruction results are grouped by the document's token count, rounded down to one of these edges."""
QA_MAX_NEW_TOKENS = 8
"""Synthetic answers are one to three tokens; the cap leaves room to see a rambling answer fail."""
QUERY_AWARE_ATTRIBUTE = "full_context_query_aware"
"""Config attribute a full-context baseline checkpoint records its prompt layout in (`full_context_instruction`)."""
GREEDY = {"do_sample": False, "repetition_penalty": 1.0}
"""Plain greedy decoding for every system: a memcomp checkpoint's generation config carries the paper's
repetition_penalty of 1.05 (it applies under do_sample=False too), the full-context baseline's LM has none."""
TABLE_MIN_K = {"depth": 3, "type": 2}
"""The smallest k of the depth and type tables: the held-out grid (`trainers.synthetic.evaluation_rows`) has every
answer depth from k = 3 on (k = 2: first and last only) and every question type from k = 2 on (k = 1: no two-hop)."""
NAME_ANSWER_TYPES = frozenset({"person_employer", "org_founder", "two_hop_founder"})
"""Question types answered by an invented name (an open set: a held-out name must be copied from the context); the
others are answered from small closed sets (cities, colours, professions, years) seen throughout training."""


WORD_ROLES = ("subject", "other name", "value")
"""Content words by role: the document's subject (its first name, repeated in every sentence), other names
(an employer or founder), and closed-set attribute values."""


def word_role(word: str, subject: str | None) -> str | None:
    """The role (one of `WORD_ROLES`) of a content word in a document about `subject`; None for a template word."""
    if word in _VALUES:
        return "value"
    if _NAME.match(word):
        return "subject" if word == subject else "other name"
    return None


def subject_of(words: list[str]) -> str | None:
    """A synthetic document's subject: its first name (every sentence of the document names its subject)."""
    return next((w for w in words if _NAME.match(w)), None)


def content_accuracy(prediction: str, reference: str, role: str | None = None) -> float | None:
    """Share of the reference's content words (of one `role`, or all) that an order-preserving alignment matches.

    None when the reference has no such word. Alignment (difflib over words) means a right value in the
    wrong sentence does not count, and a word repeated elsewhere cannot be matched twice.
    """
    ref, pred = WORD.findall(reference), WORD.findall(prediction)
    subject = subject_of(ref)
    roles = [word_role(w, subject) for w in ref]
    wanted = [i for i, r in enumerate(roles) if r is not None and (role is None or r == role)]
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
            names = [w for w in WORD.findall(instruction) if _NAME.match(w)]
            text = names[0] if names else ""
            passages = [context] if isinstance(context, str) else context
            tokens = sum(len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in passages)
            outputs.append(Generation(text, len(self.tokenizer(text)["input_ids"]), tokens))
        return outputs


def length_bucket(num_tokens: int) -> int:
    """The largest `LENGTH_BUCKETS` edge at or below `num_tokens` (the smallest edge for shorter texts)."""
    return max([b for b in LENGTH_BUCKETS if b <= num_tokens] or [LENGTH_BUCKETS[0]])


def reconstruction_examples(tokenizer, documents: list[str], kind: str = "document") -> list[Example]:
    """One example per text, grouped by its length bucket and its `kind`."""
    lengths = [len(ids) for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]]
    return [
        Example(
            f"{kind}{i}", text, protocol.RECONSTRUCTION_INSTRUCTION, text,
            meta={"length": length_bucket(n), "tokens": n, "kind": kind},
        )
        for i, (text, n) in enumerate(zip(documents, lengths))
    ]


def reconstruction_max_new_tokens(examples: list[Example]) -> int:
    """Generation budget for reconstructing `examples` in one batch (the training-time probe): the longest one's
    tokens x the protocol's factor, plus 8."""
    return int(max(e.meta["tokens"] for e in examples) * protocol.RECONSTRUCTION_LENGTH_FACTOR) + 8


def document_max_new_tokens(example: Example) -> int:
    """Generation budget for reconstructing one document: its tokens x the protocol's factor, plus 8, rounded up to a
    multiple of 32 so that documents of similar length share a cap and are generated in one batch."""
    return -(-(int(example.meta["tokens"] * protocol.RECONSTRUCTION_LENGTH_FACTOR) + 8) // 32) * 32


def qa_examples(rows: list[dict], prefix: str = "qa") -> list[Example]:
    """One example per held-out QA row, with its question type and, when the row has them, `k` and `depth`."""
    return [
        Example(
            f"{prefix}{i}", row["context"], row["question"], row["answer"], row["question"],
            meta={key: row[key] for key in ("type", "k", "depth") if key in row},
        )
        for i, row in enumerate(rows)
    ]


def score_reconstruction(example: Example, generation: Generation) -> dict:
    text, reference = generation.text, example.reference
    return {
        "rougeL": rouge_f1(text, reference)["rougeL"],
        "content_accuracy": content_accuracy(text, reference),
        **{f"content_accuracy/{role}": content_accuracy(text, reference, role) for role in WORD_ROLES},
    }


def score_qa(example: Example, generation: Generation) -> dict:
    return {"em": answer_scores(generation.text, example.reference, generation.answer_style)["em"]}


def evaluate_systems(
    benchmark: str,
    examples: list[Example],
    systems: list,
    output_dir: str | Path,
    max_new_tokens: int | Callable[[Example], int],
    batch_size: int = 32,
    settings: dict | None = None,
) -> list[dict]:
    """Greedy answers of every system on `examples`, scored as reconstruction or QA, resumable (records per benchmark).

    `max_new_tokens` is one cap, or a function giving each example its own (`document_max_new_tokens`); a record
    made under another cap is not reused (the harness keys records by their generation kwargs)."""
    scorer = score_reconstruction if benchmark == "reconstruction" else score_qa
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    cap = max_new_tokens if callable(max_new_tokens) else lambda _: max_new_tokens
    store = RecordStore(
        folder / f"{benchmark}_records.jsonl", config_hash({"benchmark": benchmark, **(settings or {}), "decoding": GREEDY})
    )
    return run(examples, systems, scorer, store, lambda e: {**GREEDY, "max_new_tokens": cap(e)}, batch_size=batch_size, desc=benchmark)


def aggregate(results: dict, controls: list[dict] = ()) -> dict:
    """Means per group and system: reconstruction by chunk size and length, QA exact match by k, depth and type (the
    last two over the k where the grid has every depth / type, `TABLE_MIN_K`, so no easy k weighs on some rows only).

    `controls`: records of analytic controls (`type_guess_records`), tabled with the closed-set answers only."""
    recon, passages, single = (results.get(key, []) for key in ("reconstruction", "qa_passages", "qa_single"))
    cells = [{**r, "cell": f"{r['k']}/{r['depth']}"} for r in passages]
    return {
        "reconstruction_content_accuracy": summarize(recon, "content_accuracy", by="length"),
        "reconstruction_rougeL": summarize(recon, "rougeL", by="length"),
        "reconstruction_content_accuracy_by_role": {
            role: summary[ALL] for role in WORD_ROLES if (summary := summarize(recon, f"content_accuracy/{role}"))
        },
        "qa_em_by_k": summarize(passages, "em", by="k"),
        "qa_em_by_depth": summarize([r for r in passages if r["k"] >= TABLE_MIN_K["depth"]], "em", by="depth"),
        "qa_em_by_cell": summarize(cells, "em", by="cell"),
        "qa_em_by_type": summarize([r for r in passages if r["k"] >= TABLE_MIN_K["type"]], "em", by="type"),
        "qa_table_min_k": dict(TABLE_MIN_K),
        "single_em_by_type": summarize(single, "em", by="type"),
        "qa_em_by_answer_kind": {
            kind: summarize([r for r in [*passages, *controls] if answer_kind(r["type"]) == kind], "em", by="k")
            for kind in ("closed-set value", "name")
        },
    }


def answer_kind(question_type: str) -> str:
    return "name" if question_type in NAME_ANSWER_TYPES else "closed-set value"


def needed_documents(context: list[str], question: str) -> list[str]:
    """The context's documents the question needs: those naming its entity, then those naming an entity of these
    (the two-hop bridge). Distractors share no name with them by construction."""
    linked = names_in(question)
    for _ in range(2):
        needed = [d for d in context if names_in(d) & linked]
        linked = linked.union(*(names_in(d) for d in needed))
    return needed


def error_sources(records: list[dict], rows: list[dict], prefix: str = "qa_k") -> dict:
    """Per system, where its wrong answers among distractors (k >= 2) come from, as shares of them:

    distractor  a word of a document about another entity: the fact was bound to the wrong name
    needed      a word of a needed document, but not the answer: the wrong fact of the right entity
    elsewhere   in no document of the context: made up (for names: typically a name seen in training)
    """
    counts: dict = {}
    for r in records:
        if r.get("em") != 0.0 or r["k"] < 2:
            continue
        row = rows[int(r["id"].removeprefix(prefix))]
        words = set(WORD.findall(r["response"]))
        needed = needed_documents(row["context"], row["question"])
        in_docs = lambda docs: bool(words) and any(words <= set(WORD.findall(d)) for d in docs)  # noqa: E731
        source = ("needed" if in_docs(needed) else "distractor" if in_docs([d for d in row["context"] if d not in needed])
                  else "elsewhere")
        counts.setdefault(r["system"], {"needed": 0, "distractor": 0, "elsewhere": 0})[source] += 1
    return {
        system: {"wrong": sum(c.values()), **{k: v / sum(c.values()) for k, v in c.items()}}
        for system, c in sorted(counts.items())
    }


def type_guess_records(records: list[dict], rows: list[dict], prefix: str = "qa_k") -> list[dict]:
    """The type-guess control: per closed-set question the systems answered, the expected exact match of a reader that
    knows which set the answer comes from (cities, colours, ...) but not which document: one value of that set in the
    context, picked at random. Exact match above it is binding a fact to its entity; at it, none."""
    guesses = {}
    for r in records:
        row = rows[int(r["id"].removeprefix(prefix))]
        values = answer_set(row["type"])
        if values is not None and r["id"] not in guesses:
            present = set(WORD.findall(" ".join(row["context"]))) & set(values)
            guesses[r["id"]] = {"id": r["id"], "system": "type_guess", "k": r["k"], "depth": r["depth"],
                                "type": row["type"], "em": 1 / len(present | {row["answer"]})}
    return list(guesses.values())


def retention_by_group(summary: dict, compressed: str, full: str = "full") -> dict:
    """Per group: `compressed` as a percentage of `full` (`report.retention`; groups where it is undefined are left out)."""
    kept = {g: retention(row.get(compressed, {}).get("mean"), row.get(full, {}).get("mean")) for g, row in summary.items()}
    return {g: v for g, v in kept.items() if v is not None}


def paired_by_group(records: list[dict], a: str, b: str, by: str = "k", metric: str = "em") -> dict:
    """Per group (and "all"): the paired bootstrap of `a - b` over the examples both systems answered."""
    scores: dict = {}
    for r in records:
        if r.get(metric) is not None:
            scores.setdefault((r[by], r["id"]), {})[r["system"]] = r[metric]
    groups: dict = {}
    for (group, _), pair in sorted(scores.items(), key=lambda item: item[0]):
        if a in pair and b in pair:
            for key in (group, "all"):
                groups.setdefault(key, ([], []))
                groups[key][0].append(pair[a])
                groups[key][1].append(pair[b])
    ordered = sorted((g for g in groups if g != "all"), key=lambda g: (isinstance(g, str), g)) + ["all"] * ("all" in groups)
    return {g: paired_bootstrap(*groups[g]) for g in ordered}


def _mean(values) -> float:
    """Mean of the values that are not None (0.0 when none is)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else 0.0


class ReconstructionProbe(TrainerCallback):
    """Logs held-out reconstruction content-token accuracy, from memory and with zero memory, every `every` steps of
    a compression stage (`heldout_content_accuracy`, `heldout_content_accuracy_zero_memory` in the log history, and
    from memory by word role, `heldout_content_accuracy/<role>`), so a long CPT-1 shows when it leaves the template
    plateau and which words it learns to read first, not only where it ends. Greedy, so training is unchanged.
    Measured on the main process alone: fine for one process or DDP, not for sharded (FSDP / ZeRO-3) training.
    It batches itself instead of going through `harness.run`, which reseeds torch's global RNG and writes records."""

    def __init__(self, documents: list[str], every: int, batch_size: int = 32):
        if every < 0:
            raise ValueError(f"every must be >= 0 steps (0 turns the probe off), got {every}.")
        self.documents, self.every, self.batch_size = documents, every, batch_size
        self._examples = None  # built at the first measurement, with the model's tokenizer

    def measure(self, model) -> dict[str, float]:
        """Mean content-token accuracy over the documents, for the model's memory and for zeros in its place."""
        if self._examples is None:
            self._examples = reconstruction_examples(model.tokenizer, self.documents)
        examples = self._examples
        max_new = reconstruction_max_new_tokens(examples)
        was_training = model.training
        model.eval()
        scores = {}
        for key, system in (("heldout_content_accuracy", MemCompSystem(model, template="plain")),
                            ("heldout_content_accuracy_zero_memory", ZeroMemorySystem(model, template="plain"))):
            pairs = []
            for start in range(0, len(examples), self.batch_size):
                batch = examples[start:start + self.batch_size]
                outputs = system.generate([e.context for e in batch], [e.instruction for e in batch],
                                          **GREEDY, max_new_tokens=max_new)
                pairs += [(o.text, e.reference) for e, o in zip(batch, outputs)]
            scores[key] = _mean(content_accuracy(*pair) for pair in pairs)
            if system.name != ZeroMemorySystem.name:
                scores.update({f"{key}/{role}": _mean(content_accuracy(*pair, role) for pair in pairs)
                               for role in WORD_ROLES})
        model.train(was_training)
        return scores

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and self.documents and state.global_step % self.every == 0 and state.is_world_process_zero:
            entry = {"step": state.global_step, **self.measure(model), "probe_documents": len(self.documents)}
            state.log_history.append(entry)


def _load(folder: Path | None):
    from modeling_memcomp import MemCompForCausalLM

    if folder is None or not (Path(folder) / "config.json").is_file():
        return None
    return MemCompForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


EVALUATED = "cpt1, cpt1_c<C>, sft, rl, baseline"
"""The stages whose checkpoints the evaluation reads (`data` and `lm` alone give nothing to evaluate)."""


def evaluated_stages(run_dir: str | Path) -> list[str]:
    """The trained stages of a run that the evaluation reads, curve stages by chunk size."""
    run_dir = Path(run_dir)
    curve = sorted((p.name for p in run_dir.glob("cpt1_c*") if p.name[6:].isdigit()), key=lambda s: int(s[6:]))
    return [s for s in ("cpt1", *curve, "sft", "rl", "baseline") if (run_dir / s / "config.json").is_file()]


def evaluate_run(
    run_dir: str | Path,
    output_dir: str | Path,
    previous: str | Path | None = None,
    max_documents: int | None = None,
    max_single_questions: int | None = None,
    max_passage_questions: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Evaluate a synthetic run's checkpoints on its held-out split; returns the records per benchmark.

    The full-context baseline is prompted in the layout its checkpoint records (`QUERY_AWARE_ATTRIBUTE`), so its
    prompts match its training whatever flags a later evaluation is run with.

    reconstruction  held-out documents from CPT-1 memory (flat template) at each trained chunk size, each with its
                    zero-memory control, and the copy control
    qa_passages     questions among distractors at every k and depth: SFT, RL (its folder alone: SFT encoder + RL
                    decoder), the full-context baseline, the checkpoint shipped before (`previous`), zero-memory SFT, copy
    qa_single       issue 11's single-document set, the same systems

    QA is left out of a run with no QA system (a reconstruction probe: CPT-1 alone).
    """
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    heldout = run_dir / "data" / "heldout"
    stages = evaluated_stages(run_dir)
    if not stages:
        raise FileNotFoundError(f"{run_dir} has no stage the evaluation reads ({EVALUATED}): run the pipeline first.")
    curve = [stage for stage in stages if stage.startswith("cpt1_c")]
    models = {stage: _load(run_dir / stage) for stage in ("cpt1", *curve, "sft", "rl", "baseline")}
    models["previous"] = _load(previous)
    trained = [models[stage] for stage in stages]
    tokenizer = trained[0].tokenizer  # one tokenizer for the whole run (its data stage)
    baseline = models["baseline"]
    query_aware_baseline = baseline is not None and bool(getattr(baseline.config, QUERY_AWARE_ATTRIBUTE, False))
    settings = {"run": str(Path(run_dir).resolve()), "query_aware_baseline": query_aware_baseline}  # one key per run
    settings.update({f"{s}_encoder": m.fingerprint for s, m in models.items() if m is not None})
    settings.update({f"{s}_decoder": m.decoder_fingerprint for s, m in models.items() if m is not None})
    results = {}

    recon_models = [(stage, models[stage]) for stage in ("cpt1", *curve) if models[stage] is not None]
    if recon_models:
        documents = [r["text"] for r in read_jsonl(heldout / "document.jsonl")[:max_documents]]
        systems = []
        for stage, model in recon_models:
            label = f"C{model.config.chunk_size}"
            systems += [MemCompSystem(model, template="plain", name=label),
                        ZeroMemorySystem(model, template="plain", name=f"{label}_zero_memory")]
        systems.append(CopySystem(tokenizer))
        examples = reconstruction_examples(tokenizer, documents)
        results["reconstruction"] = evaluate_systems(
            "reconstruction", examples, systems, output_dir, document_max_new_tokens, batch_size, settings
        )

    def qa_systems() -> list:
        """Every QA system the run has (a partial run, e.g. `--stages baseline`, is evaluated as far as it goes)."""
        systems = [] if models["sft"] is None else [MemCompSystem(models["sft"], name="sft")]
        if models["rl"] is not None:
            systems.append(MemCompSystem(models["rl"], name="rl"))
        if baseline is not None:
            systems.append(FullContextSystem(baseline, name="full", query_aware=query_aware_baseline))
        if models["previous"] is not None:
            systems.append(MemCompSystem(models["previous"], name="previous"))
        if models["sft"] is not None:
            systems.append(ZeroMemorySystem(models["sft"], name="zero_memory"))
        return systems + [CopySystem(tokenizer)]

    if not any(models[s] is not None for s in ("sft", "rl", "baseline", "previous")):
        return results  # a reconstruction probe: only the copy control would answer questions
    passages = qa_examples(read_jsonl(heldout / "qa_passages.jsonl")[:max_passage_questions], "qa_k")
    results["qa_passages"] = evaluate_systems("qa_passages", passages, qa_systems(), output_dir, QA_MAX_NEW_TOKENS, batch_size, settings)
    single = qa_examples(read_jsonl(heldout / "qa.jsonl")[:max_single_questions], "qa")
    results["qa_single"] = evaluate_systems("qa_single", single, qa_systems(), output_dir, QA_MAX_NEW_TOKENS, batch_size, settings)
    return results
