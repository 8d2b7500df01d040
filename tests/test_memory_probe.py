"""Linear probes on memory embeddings: the probing is right on features that hold one position's token, the command
runs on a checkpoint and writes its outputs, bad values are refused."""

import json

import pytest
import torch

from benchmarks.memory_probe import MemoryProbeConfig, embedding_similarity, main, probe_accuracy, token_roles
from modeling_memcomp import MemCompForCausalLM
from trainers.synthetic import VALUE_SETS, SyntheticConfig, generate, write_corpus

SHIPPED = "checkpoints/memcomp-synthetic-tiny"


def _slots(tokens: torch.Tensor, kept: int, roles: list[str], classes: int) -> dict:
    """Chunks of 4 tokens whose 'embedding' is the one-hot id of the token at position `kept` (plus noise)."""
    generator = torch.Generator().manual_seed(len(tokens))
    chunks = tokens.view(-1, 4)
    embeds = torch.nn.functional.one_hot(chunks[:, kept], classes).float()
    embeds += 0.01 * torch.randn(embeds.shape, generator=generator)
    return {
        "x": embeds.repeat_interleave(4, dim=0), "y": tokens, "position": torch.arange(len(tokens)) % 4,
        "role": roles,
    }


def test_a_probe_names_the_tokens_an_embedding_keeps_and_not_the_others():
    classes = 12
    generator = torch.Generator().manual_seed(0)
    train_tokens, test_tokens = (torch.randint(0, classes, (4 * n,), generator=generator) for n in (400, 100))
    train = _slots(train_tokens, 1, ["value"] * 1600, classes)
    test = _slots(test_tokens, 1, ["value"] * 400, classes)
    accuracy = probe_accuracy(train, test, classes, chunk_size=4, steps=200, learning_rate=0.05, seed=0)
    assert accuracy[1]["value"]["accuracy"] == 1.0 and accuracy[1]["value"]["n"] == 100  # kept in every embedding
    assert all(accuracy[p]["value"]["majority"] < 0.3 for p in range(4))  # guessing the most common token
    assert all(accuracy[p]["value"]["accuracy"] < 0.3 for p in (0, 2, 3))  # the others are chance (1 in 12)


def test_token_roles_follow_the_words_of_a_synthetic_document():
    tokenizer = MemCompForCausalLM.from_pretrained(SHIPPED).tokenizer
    ids, roles = token_roles(tokenizer, "Kobe works for Nano. Kobe is a doctor.")
    words = [tokenizer.decode([i]).strip() for i in ids]
    assert {w: r for w, r in zip(words, roles)}["doctor"] == "value" and "template" in roles
    assert {roles[i] for i, w in enumerate(words) if w in {"Ko", "be"}} == {"subject"}
    assert {roles[i] for i, w in enumerate(words) if w in {"Na", "no"}} == {"other name"}


def test_the_command_probes_a_checkpoint_and_writes_json_and_markdown(tmp_path):
    write_corpus(generate(SyntheticConfig(train_episodes=30, heldout_episodes=20, multidoc_texts=4, eval_questions=1)), tmp_path / "data")
    out = tmp_path / "out"
    argv = ["--model", SHIPPED, "--data", str(tmp_path / "data"), "--train_documents", "40", "--test_documents", "10",
            "--steps", "20", "--output_dir", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "memory_probe.json").read_text())
    assert set(report["accuracy"]) == {"0", "1", "2", "3"}  # chunk size 4
    assert set(report["embedding_similarity"]) == {"cities", "colours", "professions", "years", "name syllables"}
    assert all(0 <= cell["accuracy"] <= 1 for row in report["accuracy"].values() for cell in row.values())
    assert "| position in chunk |" in (out / "memory_probe.md").read_text()


def test_embedding_similarity_is_one_for_values_the_model_cannot_tell_apart(tmp_path):
    from transformers import AutoModelForCausalLM

    from modeling_memcomp.tiny import tiny_qwen2_config

    tokenizer = MemCompForCausalLM.from_pretrained(SHIPPED).tokenizer
    embeddings = torch.randn(len(tokenizer), 16, generator=torch.Generator().manual_seed(0))
    colours = [tokenizer(f" {c}", add_special_tokens=False)["input_ids"][0] for c in ("red", "blue", "green")]
    embeddings[colours[1:]] = 3 * embeddings[colours[0]]  # same direction: indistinguishable
    similarity = embedding_similarity(embeddings, tokenizer)
    assert similarity["colours"] < 1 and similarity["name syllables"] < 0.5
    same = embeddings.clone()
    same[[tokenizer(f" {c}", add_special_tokens=False)["input_ids"][0] for c in VALUE_SETS["colours"]]] = embeddings[colours[0]]
    assert embedding_similarity(same, tokenizer)["colours"] == pytest.approx(1.0)
    # a plain LM (the run's lm stage) gets the similarity alone: it has no memory to probe
    AutoModelForCausalLM.from_config(tiny_qwen2_config(len(tokenizer))).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    assert main(["--model", str(tmp_path / "lm"), "--data", "unused", "--output_dir", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "memory_probe.json").read_text())
    assert set(report) == {"config", "embedding_similarity"} and "linear probe" not in (tmp_path / "out" / "memory_probe.md").read_text()


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="train_documents must be >= 1, got 0"):
        MemoryProbeConfig(model="m", data="d", train_documents=0)
