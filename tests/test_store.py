"""MemoryStore: hits never call the encoder; misses, corrupt and foreign entries are (re)computed, never used."""

import re
import shutil
import warnings

import pytest
import torch
from datasets import Dataset
from safetensors import SafetensorError

import modeling_memcomp.memory as memory_module
from modeling_memcomp import MemoryEmbeddings
from modeling_memcomp.store import KeptEntryError, MemoryStore, StaleMemoryWarning, StoreWriteWarning

DOCUMENT = "The observatory was founded in 1887 by Maria Keller, who mapped the northern sky for forty years. " * 3


@pytest.fixture
def count_encodes(monkeypatch):
    """Patch a model's encoder to count its calls."""

    def patch(store: MemoryStore) -> list[int]:
        calls, original = [], store.model.encode_chunks
        monkeypatch.setattr(store.model, "encode_chunks", lambda *a, **k: calls.append(1) or original(*a, **k))
        return calls

    return patch


def test_miss_writes_then_hit_reads_without_encoding(model, tmp_path, count_encodes):
    first = MemoryStore(tmp_path, model)
    calls = count_encodes(first)
    assert DOCUMENT not in first
    stored = first.compress(DOCUMENT)
    assert calls and first.path_for(stored.content_hash).is_file()
    assert DOCUMENT in first

    later = MemoryStore(tmp_path, model)  # e.g. another process, days later
    calls = count_encodes(later)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleMemoryWarning)
        again = later.compress(DOCUMENT)
    assert calls == []
    assert torch.equal(again.embeds, stored.embeds)
    assert again.content_hash == model.compress(DOCUMENT).content_hash
    assert model.generate(memory=again, question="Who?", do_sample=False, max_new_tokens=4) == model.generate(
        context=DOCUMENT, question="Who?", do_sample=False, max_new_tokens=4
    )


def test_corpus_is_compressed_once_through_datasets_map(model, tmp_path, count_encodes):
    documents = [DOCUMENT, "A short passage about tides.", "Another passage, on the harbour of the old town."]
    store = MemoryStore(tmp_path, model)
    calls = count_encodes(store)
    corpus = store.compress_corpus(Dataset.from_dict({"text": documents}), batch_size=8)
    assert len(calls) == 1  # all documents' chunks share encoder micro-batches
    assert corpus["memory_hash"] == [store.hash_of(d) for d in documents]
    for document, memory_hash, count in zip(documents, corpus["memory_hash"], corpus["num_memory"]):
        memory = store.load(memory_hash)
        direct = model.compress(document)
        assert len(memory) == count == len(direct)
        torch.testing.assert_close(memory.embeds, direct.embeds, rtol=1e-4, atol=1e-5)

    calls.clear()
    store.compress_corpus(Dataset.from_dict({"text": documents}))
    assert calls == []


def test_a_corpus_on_disk_is_compressed_again_into_an_emptied_store(model, tmp_path):
    import shutil

    from datasets import load_dataset

    (tmp_path / "docs.jsonl").write_text('{"text": "A short passage about tides."}\n')
    rows = load_dataset("json", data_files=str(tmp_path / "docs.jsonl"), cache_dir=str(tmp_path / "cache"))["train"]
    store = MemoryStore(tmp_path / "store", model)
    first = store.compress_corpus(rows)
    shutil.rmtree(tmp_path / "store")
    again = MemoryStore(tmp_path / "store", model).compress_corpus(rows)  # datasets' cache would return `first`
    assert again["memory_hash"] == first["memory_hash"] and len(store.load(again["memory_hash"][0])) > 0


def test_corrupted_entry_is_detected_and_recomputed(model, tmp_path):
    store = MemoryStore(tmp_path, model)
    path = store.path_for(store.compress(DOCUMENT).content_hash)
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(8)  # flip the last tensor values: the header still parses
    path.write_bytes(bytes(data))
    with pytest.warns(StaleMemoryWarning, match="checksum"):
        memory = store.compress(DOCUMENT)
    torch.testing.assert_close(memory.embeds, model.compress(DOCUMENT).embeds)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleMemoryWarning)
        assert torch.equal(store.compress(DOCUMENT).embeds, memory.embeds)  # rewritten, sound again

    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.warns(StaleMemoryWarning, match="unreadable"):
        store.compress(DOCUMENT)


def test_other_models_never_use_an_entry(model, make_model, tmp_path, count_encodes):
    MemoryStore(tmp_path, model).compress(DOCUMENT)
    other = MemoryStore(tmp_path, make_model(seed=1))
    assert other.model_key != MemoryStore(tmp_path, model).model_key
    calls = count_encodes(other)
    other.compress(DOCUMENT)  # another model's folder: a miss
    assert calls

    own = MemoryStore(tmp_path, model)
    shutil.copy(own.path_for(own.hash_of(DOCUMENT)), other.path_for(other.hash_of(DOCUMENT)))
    with pytest.warns(StaleMemoryWarning, match="another model"):
        memory = other.compress(DOCUMENT)
    torch.testing.assert_close(memory.embeds, other.model.compress(DOCUMENT).embeds)


def test_model_key_sees_encoder_weights_not_only_the_projection(model, make_model, tmp_path):
    """Same projection (as after SFT, which freezes it) but other LM weights: other memories, other key."""
    tuned = make_model(seed=1)
    tuned.memory_projection.load_state_dict(model.memory_projection.state_dict())
    assert MemoryStore(tmp_path, tuned).model_key != MemoryStore(tmp_path, model).model_key


def test_errors_name_the_fix(model, tmp_path):
    store = MemoryStore(tmp_path, model)
    with pytest.raises(KeyError, match="compress the context"):
        store.load("0" * 64)
    with pytest.raises(ValueError, match="text_column='body'"):
        store.compress_corpus(Dataset.from_dict({"text": ["x"]}), text_column="body")
    with pytest.raises(TypeError, match="MemCompForCausalLM"):
        MemoryStore(tmp_path, object())
    assert isinstance(store.compress(["passage one", "passage two"]), MemoryEmbeddings)


# ---------------------------------------------------------------------------------------------- issue 16, item 1
import errno  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside the store that nothing may touch."""
    path = tmp_path / "victim" / "important"
    path.parent.mkdir()
    path.write_bytes(b"do not delete")
    (tmp_path / "victim" / "important.safetensors").write_bytes(b"do not delete either")
    return path


def assert_untouched(victim: Path) -> None:
    assert victim.read_bytes() == b"do not delete"
    assert victim.with_suffix(".safetensors").read_bytes() == b"do not delete either"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["important", "important.safetensors"]


@pytest.mark.parametrize(
    "name",
    ["../../../victim/important", "../../victim", "/tmp/victim", "AB" * 32, "a" * 63, "a" * 65, "a" * 63 + "/",
     "g" * 64, "0" * 64 + ".safetensors", "", 12],
)
def test_only_well_formed_hashes_reach_the_disk(model, tmp_path, victim, name):
    store = MemoryStore(tmp_path / "store" / "nested", model)
    store.compress(DOCUMENT)
    with pytest.raises(ValueError, match="not a memcomp content hash"):
        store.load(name)
    with pytest.raises(ValueError, match="not a memcomp content hash"):
        store.path_for(name)
    assert_untouched(victim)


def test_traversal_through_the_hash_leaves_the_victim_untouched(model, tmp_path, victim):
    store = MemoryStore(tmp_path / "store", model)
    relative = os.path.relpath(victim.with_suffix(""), store.directory)  # what the old code would have opened
    with pytest.raises(ValueError):
        store.load(relative)
    assert_untouched(victim)


def test_a_link_out_of_the_store_is_moved_aside_not_followed(model, tmp_path, victim):
    store = MemoryStore(tmp_path / "store", model)
    memory_hash = store.hash_of(DOCUMENT)
    entry = store.path_for(memory_hash)
    entry.parent.mkdir(parents=True)
    entry.symlink_to(victim.with_suffix(".safetensors"))
    with pytest.warns(StaleMemoryWarning, match="outside the store") as record:
        memory = store.compress(DOCUMENT)
    quarantined = tmp_path / "store" / "quarantine" / entry.relative_to(tmp_path / "store")
    message = str(record[0].message)
    assert str(entry) in message and str(quarantined) in message
    assert quarantined.is_symlink() and not entry.is_symlink()  # the link moved, its target stayed
    assert_untouched(victim)
    torch.testing.assert_close(memory.embeds, model.compress(DOCUMENT).embeds)
    assert entry.is_file() and not entry.is_symlink()  # recomputed in place


def test_a_store_folder_linking_outside_is_refused(model, tmp_path, victim):
    store = MemoryStore(tmp_path / "store", model)
    store.root.mkdir()
    (store.root / store.model_key).symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the store root"):
        store.compress(DOCUMENT)
    assert_untouched(victim)


def test_bad_entries_are_quarantined_never_deleted(model, tmp_path):
    store = MemoryStore(tmp_path, model)
    path = store.path_for(store.compress(DOCUMENT).content_hash)
    path.write_bytes(path.read_bytes()[:-8] + bytes(8))
    broken = path.read_bytes()
    with pytest.warns(StaleMemoryWarning, match="checksum") as record:
        store.compress(DOCUMENT)
    quarantined = tmp_path / "quarantine" / path.relative_to(tmp_path)
    assert f"moved to {quarantined}" in str(record[0].message) and str(path) in str(record[0].message)
    assert quarantined.read_bytes() == broken
    path.write_bytes(b"garbage")  # a second bad copy of the same entry keeps the first
    with pytest.warns(StaleMemoryWarning, match="unreadable"):
        store.compress(DOCUMENT)
    assert quarantined.read_bytes() == broken
    assert quarantined.with_name(quarantined.name + ".1").read_bytes() == b"garbage"
    assert list(store.directory.glob(".*.tmp")) == []


def test_a_bad_entry_that_cannot_be_moved_aside_is_kept_not_overwritten(model, tmp_path):
    store = MemoryStore(tmp_path, model)
    path = store.path_for(store.compress(DOCUMENT).content_hash)
    path.write_bytes(b"garbage")
    (tmp_path / "quarantine").write_text("a file where the quarantine folder would go")
    with pytest.warns(StaleMemoryWarning, match="left in place"), pytest.warns(StoreWriteWarning, match="it is kept"):
        memory = store.compress(DOCUMENT)
    torch.testing.assert_close(memory.embeds, model.compress(DOCUMENT).embeds)
    assert path.read_bytes() == b"garbage"
    with pytest.warns(StaleMemoryWarning), pytest.raises(KeptEntryError, match="move it out of the store yourself") as error:
        store.compress_corpus(Dataset.from_dict({"text": [DOCUMENT]}))
    assert "writable store folder" not in str(error.value)  # the store is writable: the entry is what blocks it
    assert path.read_bytes() == b"garbage"


@pytest.mark.parametrize("failure", [
    OSError(errno.EROFS, "Read-only file system"),
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),  # what a full disk gives
])
def test_a_store_that_cannot_be_written_still_returns_the_memory(model, tmp_path, monkeypatch, failure):
    def refuse(tensors, filename, metadata=None):
        raise failure

    store = MemoryStore(tmp_path, model)
    monkeypatch.setattr(memory_module, "save_file", refuse)
    with pytest.warns(StoreWriteWarning, match=f"{re.escape(failure.args[-1])}.*returned but not cached"):
        memory = store.compress(DOCUMENT)
    torch.testing.assert_close(memory.embeds, model.compress(DOCUMENT).embeds)
    assert not store.path_for(memory.content_hash).exists()
    with pytest.raises(OSError, match="could not write memories to the store"):
        store.compress_corpus(Dataset.from_dict({"text": ["Another passage, on tides."]}))
