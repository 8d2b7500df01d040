"""MemoryEmbeddings: safetensors round trip, corrupt files, and refusal of models it does not fit."""

import pytest
import torch
from safetensors.torch import save_file

from conftest import GREEDY
from modeling_memcomp import MemoryEmbeddings


def test_round_trip_is_exact(model, corpus, tmp_path):
    memory = model.compress([corpus[0], corpus[1]])
    memory.save(tmp_path / "m.safetensors")
    loaded = MemoryEmbeddings.load(tmp_path / "m.safetensors")
    assert torch.equal(loaded.embeds, memory.embeds)
    for field in ("chunk_size", "num_source_tokens", "content_hash", "chunks_per_passage", "model_fingerprint"):
        assert getattr(loaded, field) == getattr(memory, field)
    assert loaded.model_fingerprint == model.fingerprint
    assert model.generate(memory=loaded, question="Who?", **GREEDY) == model.generate(memory=memory, question="Who?", **GREEDY)


def test_file_is_plain_safetensors_not_pickle(model, corpus, tmp_path):
    model.compress(corpus[0]).save(tmp_path / "m.safetensors")
    header = (tmp_path / "m.safetensors").read_bytes()[:64]
    assert b"embeds" in header or header[8:9] == b"{"


def test_truncated_file_is_reported_as_corrupt(model, corpus, tmp_path):
    path = tmp_path / "m.safetensors"
    model.compress(corpus[0]).save(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        MemoryEmbeddings.load(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="not a memcomp memory"):
        MemoryEmbeddings.load(tmp_path / "w.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no memory file"):
        MemoryEmbeddings.load(tmp_path / "absent.safetensors")


def test_memory_from_a_model_with_another_hidden_size_is_refused(model, make_model, corpus):
    other = make_model(hidden_size=32)
    with pytest.raises(ValueError, match="hidden size 32 .* expects 64"):
        model.generate(memory=other.compress(corpus[0]), question="Who?", **GREEDY)


def test_memory_from_a_model_with_another_chunk_size_is_refused(model, make_model, corpus):
    other = make_model(chunk_size=8)
    with pytest.raises(ValueError, match="chunk_size=8 .* chunk_size=16"):
        model.generate(memory=other.compress(corpus[0]), question="Who?", **GREEDY)


def test_content_hash_tracks_the_source(model, corpus):
    assert model.compress(corpus[0]).content_hash == model.compress(corpus[0]).content_hash
    assert model.compress(corpus[0]).content_hash != model.compress(corpus[1]).content_hash
    assert model.compress([corpus[0], corpus[1]]).content_hash != model.compress(corpus[0] + corpus[1]).content_hash


def test_fingerprint_follows_every_weight(make_model, corpus):
    model = make_model()
    assert model.fingerprint == make_model().fingerprint, "same seed, same weights, same fingerprint"
    before = model.fingerprint
    with torch.no_grad():
        model.language_model.model.layers[1].mlp.down_proj.weight.mul_(1.01)  # an LM weight, not the projection
    assert model.fingerprint != before
    assert model.compress(corpus[0]).model_fingerprint == model.fingerprint


def test_fingerprint_under_inference_mode(make_model, corpus):
    with torch.inference_mode():
        model = make_model()
        assert model.compress(corpus[0]).model_fingerprint == model.fingerprint


@pytest.mark.parametrize("fused", [True, False])
def test_fingerprint_changes_after_an_optimizer_step_fused_or_not(make_model, corpus, tmp_path, fused):
    """The Trainer's default fused AdamW updates weights without bumping their version counters."""
    from modeling_memcomp.store import MemoryStore

    model = make_model()
    store = MemoryStore(tmp_path, model)
    stale = store.compress(corpus[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
    ids = model.tokenizer(corpus[1], return_tensors="pt")["input_ids"]
    model.language_model(input_ids=ids, labels=ids).loss.backward()
    before = model.fingerprint
    optimizer.step()
    assert model.fingerprint != before
    fresh = store.compress(corpus[0])
    assert torch.equal(fresh.embeds, model.compress(corpus[0]).embeds)
    assert not torch.equal(fresh.embeds, stale.embeds)


def test_fingerprint_ignores_the_decoder_only_head(make_model):
    """Memories depend on the encoder, pooling and projection, not on an untied LM head."""
    model = make_model(config_overrides={"tie_word_embeddings": False})
    before = model.fingerprint
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(2.0)
    assert model.fingerprint == before
