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


def test_foreign_safetensors_file_is_refused_from_its_header(tmp_path, monkeypatch):
    import modeling_memcomp.memory

    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    monkeypatch.setattr(modeling_memcomp.memory, "load_file", lambda *a: pytest.fail("read whole (a weights shard: GBs)"))
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


def test_fingerprint_of_an_offloaded_model_is_a_clear_error(make_model):
    model = make_model()
    layer = model.language_model.model.layers[0].mlp.up_proj
    layer.weight = torch.nn.Parameter(torch.empty_like(layer.weight, device="meta"))  # as accelerate's disk offload leaves it
    with pytest.raises(ValueError, match="is offloaded .* cannot be fingerprinted .* load it without disk/CPU offload"):
        model.fingerprint


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


# ---------------------------------------------------------------------------------------------- issue 16, item 3
import json  # noqa: E402
import warnings  # noqa: E402

from safetensors import safe_open  # noqa: E402

from modeling_memcomp.memory import CHECKSUM_KEY, MemoryFingerprintWarning, tensor_checksum  # noqa: E402

HASH = "ab" * 32


def rewrite(path, embeds=None, **metadata_changes):
    """Rewrite a memory file with changed metadata (None deletes a key); the checksum is recomputed unless changed."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensor = handle.get_tensor("embeds")
    tensor = tensor if embeds is None else embeds
    metadata[CHECKSUM_KEY] = tensor_checksum(tensor)
    for key, value in metadata_changes.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    save_file({"embeds": tensor}, str(path), metadata=metadata)


def test_flipped_tensor_bytes_fail_the_checksum(model, corpus, tmp_path):
    path = tmp_path / "m.safetensors"
    model.compress(corpus[0]).save(path)
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\xc8\x43"  # the last float becomes 400.0: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path.name}.* fails its checksum"):
        MemoryEmbeddings.load(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_source_tokens": "-5"}, "num_source_tokens must be a positive integer, got -5"),
        ({"num_source_tokens": "100000"}, "num_source_tokens=100000 cannot have made"),
        ({"chunks_per_passage": "[-1, 13]"}, "every chunks_per_passage entry must be a positive integer, got -1"),
        ({"chunks_per_passage": "[null]"}, "every chunks_per_passage entry must be a positive integer, got None"),
        ({"chunks_per_passage": "[1, 1]"}, "chunks_per_passage \\[1, 1\\] sums to 2"),
        ({"chunks_per_passage": "{"}, "is not a valid memory"),
        ({"chunk_size": "0"}, "chunk_size must be a positive integer, got 0"),
        ({"chunk_size": "sixteen"}, "is not a valid memory"),
        ({"format_version": "99"}, "format_version '99'"),
        ({"content_hash": "deadbeef"}, "'deadbeef' is not a memcomp content hash"),
        ({"content_hash": None}, "incomplete memcomp metadata"),
        ({CHECKSUM_KEY: None}, "has no embeds_sha256 checksum"),
        ({"hidden_size": "65"}, "disagrees with its tensor"),
    ],
)
def test_bad_metadata_is_refused_with_the_file_named(model, corpus, tmp_path, changes, message):
    path = tmp_path / "m.safetensors"
    model.compress(corpus[0]).save(path)
    rewrite(path, **changes)
    with pytest.raises(ValueError, match=message) as error:
        MemoryEmbeddings.load(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "embeds, message",
    [
        (torch.full((2, 64), float("nan")), "NaN or infinite"),
        (torch.tensor([[float("inf")] * 64, [0.0] * 64]), "NaN or infinite"),
        (torch.zeros(0, 64), "at least one chunk"),
        (torch.ones(2, 64, dtype=torch.int64), "floating-point"),
        (torch.zeros(64), "shape \\(num_chunks, hidden_size\\)"),
    ],
)
def test_non_finite_empty_or_integer_memories_are_refused(model, tmp_path, embeds, message):
    with pytest.raises(ValueError, match=message):
        MemoryEmbeddings(embeds, 16, 2 * 16, HASH)
    good = model.compress("A short passage about the harbour and its ships.")
    path = tmp_path / "m.safetensors"
    good.save(path)
    rewrite(path, embeds=embeds, chunks_per_passage=json.dumps([max(len(embeds), 1)]))
    with pytest.raises(ValueError, match=message):
        MemoryEmbeddings.load(path)


def test_a_memory_changed_after_construction_never_reaches_generate(model, corpus):
    memory = model.compress(corpus[0])
    memory.embeds = torch.full_like(memory.embeds, float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.generate(memory=memory, question="Who?", **GREEDY)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(chunk_size=True), "chunk_size must be a positive integer"),
        (dict(num_source_tokens=1), "num_source_tokens=1 cannot have made 3 embeddings"),
        (dict(num_source_tokens=49), "num_source_tokens=49 cannot have made 3 embeddings of chunk_size=16"),
        (dict(chunks_per_passage=[2, 2]), "sums to 4 but there are 3 embeddings"),
        (dict(chunks_per_passage=[3.0]), "positive integer, got 3.0"),
        (dict(content_hash="AB" * 32), "not a memcomp content hash"),
        (dict(content_hash="../../victim"), "not a memcomp content hash"),
        (dict(model_fingerprint=None), "model_fingerprint must be a string"),
    ],
)
def test_constructor_validates_metadata(kwargs, message):
    fields = dict(embeds=torch.zeros(3, 8), chunk_size=16, num_source_tokens=40, content_hash=HASH)
    with pytest.raises(ValueError, match=message):
        MemoryEmbeddings(**{**fields, **kwargs})
    assert MemoryEmbeddings(**fields).chunks_per_passage == [3]


def test_half_precision_overflow_is_caught_on_conversion():
    memory = MemoryEmbeddings(torch.full((1, 8), 1e6), 16, 16, HASH)
    assert torch.equal(memory.to(torch.float64).embeds, memory.embeds.double())
    with pytest.raises(ValueError, match="NaN or infinite"):
        memory.to(torch.float16)


def test_other_models_fingerprint_warns_naming_both(model, corpus):
    memory = model.compress(corpus[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        memory.check_compatible(model.config, model.fingerprint)  # the same model: silent
        memory.check_compatible(model.config)  # no fingerprint to compare: silent
        memory.check_compatible(model.config, "")
    with pytest.warns(MemoryFingerprintWarning, match=rf"made by model {model.fingerprint} but is read by model 0123456789abcdef") as record:
        memory.check_compatible(model.config, "0123456789abcdef")
    assert "legitimate" in str(record[0].message) and "SFT" in str(record[0].message)
    assert issubclass(MemoryFingerprintWarning, UserWarning)


def test_generate_warns_when_another_encoder_made_the_memory(make_model, corpus):
    from modeling_memcomp.memory import MemoryFingerprintWarning

    reader, writer = make_model(seed=0), make_model(seed=1)
    memory = writer.compress(corpus[0])
    with pytest.warns(MemoryFingerprintWarning, match=f"made by model {writer.fingerprint} but is read by model {reader.fingerprint}"):
        reader.generate(memory=memory, question="Who?", **GREEDY)
    reader.split_encoder()  # an RL-style decoder keeps its encoder's identity: no warning for its own memories
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoryFingerprintWarning)
        reader.generate(memory=reader.compress(corpus[0]), question="Who?", **GREEDY)
