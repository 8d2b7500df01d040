"""Linear probes on memory embeddings: which tokens of a chunk its one embedding keeps.

Reconstruction accuracy mixes two failures: the encoder dropping a token from the chunk's embedding, and the
decoder not reading it. This separates them on the synthetic corpus: one linear classifier per position within
the chunk is fitted on training documents' memory embeddings to name the token at that position, then scored on
held-out documents by word role (the document's subject, other names, closed-set values, template words). A token
a linear probe recovers is in the memory; if reconstruction still misses it, the decoder is what fails. It also
reports how alike the input embeddings of each value set are (mean pairwise cosine), which a plain LM checkpoint
(the run's `lm` stage) gets alone.

    python -m benchmarks.memory_probe --model out/synthetic/cpt1 --data out/synthetic/data \\
        --output_dir benchmarks/results/synthetic/probes/memory_probe
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchmarks._outputs import benchmark_main, write_outputs
from benchmarks.eval.synthetic import WORD, WORD_ROLES, subject_of, word_role
from trainers.synthetic import VALUE_SETS, name_pool, read_jsonl

ROLES = (*WORD_ROLES, "template")


@dataclass
class MemoryProbeConfig:
    model: str = field(metadata={"help": "A memcomp checkpoint folder (e.g. a synthetic run's cpt1)."})
    data: str = field(metadata={"help": "The run's data folder (train/ and heldout/ document.jsonl); unread for a plain LM."})
    train_documents: int = field(default=3000, metadata={"help": "Training documents the probes are fitted on."})
    test_documents: int = field(default=400, metadata={"help": "Held-out documents the probes are scored on."})
    steps: int = field(default=300, metadata={"help": "Full-batch Adam steps per probe."})
    learning_rate: float = field(default=1e-2, metadata={"help": "Adam learning rate of the probes."})
    seed: int = field(default=0, metadata={"help": "Probe initialisation."})
    output_dir: str = field(default="benchmarks/results/memory_probe", metadata={"help": "Where the outputs go."})
    name: str = field(default="memory_probe", metadata={"help": "Output file stem."})

    def __post_init__(self):
        for name in ("train_documents", "test_documents", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")


def token_roles(tokenizer, text: str) -> tuple[list[int], list[str]]:
    """Token ids of `text` and the role (`ROLES`) of the word each token belongs to."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    words = [(m.start(), m.end(), m.group()) for m in WORD.finditer(text)]
    subject = subject_of([w for _, _, w in words])
    roles = []
    for start, end in encoded["offset_mapping"]:
        word = next((w for a, b, w in words if a < end and b > start), None)
        roles.append((word_role(word, subject) if word else None) or "template")
    return encoded["input_ids"], roles


@torch.no_grad()
def slot_examples(model, documents: list[str]) -> dict:
    """Per token of every document: its chunk's memory embedding, its id, its position in the chunk, its role."""
    size = model.config.chunk_size
    features, labels, positions, roles = [], [], [], []
    for text in tqdm(documents, desc="compress", unit="doc", leave=False):
        ids, doc_roles = token_roles(model.tokenizer, text)
        embeds = model.compress(ids).embeds.float()
        for j, (token, role) in enumerate(zip(ids, doc_roles)):
            features.append(embeds[j // size])
            labels.append(token)
            positions.append(j % size)
            roles.append(role)
    return {"x": torch.stack(features), "y": torch.tensor(labels), "position": torch.tensor(positions), "role": roles}


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int, learning_rate: float, seed: int):
    """A standardised linear classifier from embeddings to token ids (full-batch Adam); returns a predict function."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    layer = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.01)
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=learning_rate)
    inputs = (x - mean) / std
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(layer(inputs), y).backward()
        optimizer.step()
    return lambda z: layer((z - mean) / std).argmax(-1)


def probe_accuracy(train: dict, test: dict, classes: int, chunk_size: int, steps: int, learning_rate: float, seed: int) -> dict:
    """`{position: {role: {"accuracy", "majority", "n"}}}` on `test`, one probe per position within the chunk fitted
    on `train`; `majority` is the accuracy of always naming the role's most common training token there."""
    result = {}
    for position in range(chunk_size):
        fit, score = train["position"] == position, test["position"] == position
        if not fit.any() or not score.any():
            continue
        predict = fit_probe(train["x"][fit], train["y"][fit], classes, steps, learning_rate, seed)
        with torch.no_grad():
            right = (predict(test["x"][score]) == test["y"][score]).tolist()
        roles = [r for r, keep in zip(test["role"], score.tolist()) if keep]
        tokens = test["y"][score].tolist()
        seen = defaultdict(Counter)  # role -> training tokens at this position: the majority floor
        for token, role, keep in zip(train["y"].tolist(), train["role"], fit.tolist()):
            if keep:
                seen[role][token] += 1
        result[position] = {}
        for role in ROLES:
            rows = [i for i, r in enumerate(roles) if r == role]
            if rows:
                counts = seen[role]
                guess = max(set(counts), key=counts.__getitem__) if counts else None
                result[position][role] = {
                    "accuracy": sum(right[i] for i in rows) / len(rows),
                    "majority": sum(tokens[i] == guess for i in rows) / len(rows),
                    "n": len(rows),
                }
    return result


def embedding_similarity(embeddings: torch.Tensor, tokenizer) -> dict[str, float]:
    """Mean pairwise cosine of the input embeddings within each value set, and among name syllables for contrast.

    Near 1 means the model cannot tell the set's values apart, so no memory of it can say which one a document had.
    """
    groups = {name: [f" {v}" for v in values] for name, values in VALUE_SETS.items()}
    groups["name syllables"] = [f" {n}" for n in name_pool()[:100]]
    similarity = {}
    for name, words in groups.items():
        ids = sorted({i for w in words for i in tokenizer(w, add_special_tokens=False)["input_ids"]})
        unit = torch.nn.functional.normalize(embeddings[ids].float(), dim=-1)
        cosine = unit @ unit.T
        similarity[name] = cosine[~torch.eye(len(ids), dtype=torch.bool)].mean().item()
    return similarity


def run(config: MemoryProbeConfig) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from modeling_memcomp import MemCompConfig, MemCompForCausalLM

    torch.manual_seed(config.seed)
    if not isinstance(AutoConfig.from_pretrained(config.model), MemCompConfig):  # a plain LM (e.g. the lm stage)
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(config.model)
        similarity = embedding_similarity(model.get_input_embeddings().weight.detach(), tokenizer)
        return {"config": asdict(config), "embedding_similarity": similarity}
    model = MemCompForCausalLM.from_pretrained(config.model, dtype=torch.float32).eval()
    data = Path(config.data)
    train_docs = [r["text"] for r in read_jsonl(data / "train" / "document.jsonl")[: config.train_documents]]
    test_docs = [r["text"] for r in read_jsonl(data / "heldout" / "document.jsonl")[: config.test_documents]]
    train, test = slot_examples(model, train_docs), slot_examples(model, test_docs)
    accuracy = probe_accuracy(
        train, test, len(model.tokenizer), model.config.chunk_size, config.steps, config.learning_rate, config.seed
    )
    similarity = embedding_similarity(model.get_input_embeddings().weight.detach(), model.tokenizer)
    return {"config": asdict(config), "embedding_similarity": similarity, "chunk_size": model.config.chunk_size,
            "accuracy": accuracy}


def markdown_table(report: dict) -> str:
    lines = [
        f"Mean pairwise cosine of input embeddings (model `{report['config']['model']}`; near 1: the values cannot be "
        "told apart):",
        "",
        "| " + " | ".join(report["embedding_similarity"]) + " |",
        "|" + "---|" * len(report["embedding_similarity"]),
        "| " + " | ".join(f"{v:.3f}" for v in report["embedding_similarity"].values()) + " |",
        "",
    ]
    if "accuracy" not in report:  # a plain LM: no memory to probe
        return "\n".join(lines) + "\n"
    lines += [
        f"Held-out tokens named by a linear probe on their chunk's memory embedding (chunk size {report['chunk_size']}; "
        f"model `{report['config']['model']}`; each cell: probe accuracy / always naming the most common training token "
        "of that role there (tokens scored)):",
        "",
        "| position in chunk | " + " | ".join(ROLES) + " |",
        "|" + "---|" * (len(ROLES) + 1),
    ]
    for position, by_role in report["accuracy"].items():
        cells = [f"{c['accuracy']:.2f} / {c['majority']:.2f} ({c['n']})" if (c := by_role.get(r)) else "–" for r in ROLES]
        lines.append(f"| {position} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, config: MemoryProbeConfig) -> dict[str, Path]:
    return write_outputs(report, config.output_dir, config.name, markdown_table(report))


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.memory_probe`: parse a `MemoryProbeConfig`, fit and score the probes, write the outputs."""
    return benchmark_main(MemoryProbeConfig, argv, "python -m benchmarks.memory_probe", __doc__, run, markdown_table, write_report)


if __name__ == "__main__":
    sys.exit(main())
