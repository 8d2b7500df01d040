"""`MemoryStore`: compress a corpus once, keep the memories on disk, answer later questions without re-encoding.

Entries are safetensors files at `<root>/<model fingerprint>/C<chunk size>/<content hash>.safetensors`
(`MemCompForCausalLM.fingerprint`: architecture, chunk size, pooling and a strided sample of every encoder weight, so
it changes with training or another checkpoint, but an edit that misses every sampled value, e.g. of a few embedding
rows, may keep it: use a new root after such an edit). Every read checks the file (`MemoryEmbeddings.load`:
checksum and metadata), its content hash, model and chunk size; a bad entry is moved to `<root>/quarantine/`
(never deleted) and recomputed with a `StaleMemoryWarning`, never used. Hashes must be well-formed and every
path stays inside the root, so a hash from a dataset column cannot reach a file outside the store.

    store = MemoryStore("memories/", model)
    corpus = store.compress_corpus(load_dataset("json", data_files="docs.jsonl")["train"])  # progress bar
    memory = store.compress(document)          # a hit: read from disk, no encoder call
    model.generate(memory=memory, question=["Who?", "When?"])

Not Hub remote code: the model file never imports this module.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .memory import MemoryEmbeddings, check_content_hash, content_hash

QUARANTINE = "quarantine"
"""Folder under the store root where unusable entries are moved, for inspection."""


class StaleMemoryWarning(UserWarning):
    """A stored memory was unreadable, corrupt or made by another model: it was moved aside and recomputed."""


class StoreWriteWarning(UserWarning):
    """A computed memory could not be written to the store (e.g. a read-only folder); it is still returned."""


class KeptEntryError(OSError):
    """A bad entry could not be moved to the quarantine folder, so it is kept and nothing is written in its place."""


class MemoryStore:
    """On-disk cache of `MemoryEmbeddings` for one model, keyed by model, chunk size and content hash."""

    def __init__(self, root: str | os.PathLike, model):
        if not hasattr(model, "compress") or not hasattr(model, "fingerprint"):
            raise TypeError(f"model must be a MemCompForCausalLM, got {type(model).__name__}.")
        self.root = Path(root)
        self.model = model

    def _inside(self, path: Path) -> Path:
        """`path`, after checking that it resolves (symlinks followed) inside the store root."""
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise ValueError(
                f"{path} resolves to {path.resolve()}, outside the store root {root}: a symlink in the store "
                "points elsewhere. Remove it, or give another store folder."
            )
        return path

    # ------------------------------------------------------------------ keys
    @property
    def model_key(self) -> str:
        """The model's fingerprint: changes when any of its weights (LM, pooling, projection) change."""
        return self.model.fingerprint

    @property
    def directory(self) -> Path:
        """Folder holding this model's entries."""
        return self.root / self.model_key / f"C{self.model.config.chunk_size}"

    def path_for(self, memory_hash: str) -> Path:
        """Where the entry of `memory_hash` lives; a malformed hash or a folder outside the root is a ValueError."""
        check_content_hash(memory_hash)
        return self._inside(self.directory) / f"{memory_hash}.safetensors"

    def hash_of(self, context) -> str:
        """Content hash of a context (str, list of passages or token ids), as `compress` computes it."""
        return content_hash(self.model.tokenize_context(context), self.model.config.chunk_size)

    # ------------------------------------------------------------------ reads and writes
    def compress(self, context, batch_size: int | None = None) -> MemoryEmbeddings:
        """The stored memory of `context`, or compress it now (`batch_size`: chunks per encoder pass, as in
        `model.compress`) and store it."""
        memory_hash = self.hash_of(context)
        memory = self._read(memory_hash)
        if memory is None:
            memory = self.model.compress(context, batch_size=batch_size)
            try:
                self._write(memory)
            except OSError as error:
                warnings.warn(
                    f"could not store the memory in {self.directory} ({error}); it is returned but not cached.",
                    StoreWriteWarning,
                    stacklevel=2,
                )
        return memory

    def load(self, memory_hash: str) -> MemoryEmbeddings:
        """The stored memory with this content hash (e.g. from `compress_corpus`'s `memory_hash` column).

        A hash that is not 64 lowercase hex digits is a ValueError: no other name reaches the disk.
        """
        memory = self._read(memory_hash)
        if memory is None:
            raise KeyError(
                f"no valid memory {memory_hash!r} in {self.directory}: compress the context with "
                "`store.compress(context)` or `store.compress_corpus(dataset)` first."
            )
        return memory

    def __contains__(self, context) -> bool:
        return self.path_for(self.hash_of(context)).is_file()

    def _read(self, memory_hash: str) -> MemoryEmbeddings | None:
        """A valid entry, or None (missing, or invalid: warned about and moved to the quarantine folder)."""
        path = self.path_for(memory_hash)
        if not path.is_symlink() and not path.exists():
            return None
        if not path.resolve().is_relative_to(self.root.resolve()):
            problem = f"is a link to {path.resolve()}, outside the store"
        elif not path.is_file():
            problem = "is not a file"
        else:
            memory, problem = self._check(path, memory_hash)
            if problem is None:
                return memory.to(self.model.device)
        self._quarantine(path, problem)
        return None

    def _check(self, path: Path, memory_hash: str) -> tuple[MemoryEmbeddings | None, str | None]:
        """The entry at `path`, read once, and why it must not be used (None when it is sound)."""
        try:
            memory = MemoryEmbeddings.load(path)  # checksum and metadata
        except (ValueError, OSError) as error:
            return None, f"is unreadable or invalid ({error})"
        if memory.content_hash != memory_hash:
            return memory, "holds another context (content hash mismatch)"
        if memory.model_fingerprint != self.model_key:
            return memory, "was made by another model (fingerprint mismatch)"
        try:
            memory.check_compatible(self.model.config)
        except ValueError as error:
            return memory, f"does not fit this model ({error})"
        return memory, None

    def _quarantine(self, path: Path, problem: str) -> None:
        """Move a bad entry (the file or link itself, never its target) under `<root>/quarantine/`, and warn."""
        relative = path.relative_to(self.root)
        target = self.root / QUARANTINE / relative
        suffix = 0
        while target.exists() or target.is_symlink():
            suffix += 1
            target = self.root / QUARANTINE / relative.with_name(f"{relative.name}.{suffix}")
        try:
            self._inside(target.parent).mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            where = f"moved to {target}"
        except (OSError, ValueError) as error:
            where = f"left in place (could not be moved to {target}: {error})"
        warnings.warn(f"stored memory {path} {problem}; {where}; recomputing it.", StaleMemoryWarning, stacklevel=4)

    def _write(self, memory: MemoryEmbeddings) -> Path:
        """Write atomically (temporary file, then rename); `MemoryEmbeddings.save` adds the checksum. A bad entry that
        could not be moved to the quarantine folder is kept: the write is refused (OSError) rather than replace it."""
        path = self.path_for(memory.content_hash)
        if path.is_symlink() or (path.exists() and self._check(path, memory.content_hash)[1] is not None):
            raise KeptEntryError(
                f"{path} holds a bad entry that could not be moved to {self.root / QUARANTINE}; it is kept, not "
                "replaced: move it out of the store yourself (or free the quarantine path) and run again."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            memory.save(temporary)
            os.replace(temporary, path)
        finally:
            if temporary.exists():
                temporary.unlink()
        return path

    # ------------------------------------------------------------------ corpora
    def compress_corpus(self, dataset, text_column: str = "text", batch_size: int = 64, **map_kwargs):
        """Compress every row of a `datasets.Dataset` once; returns it with `memory_hash` and `num_memory` columns.

        Runs through `dataset.map` (progress bar, batched); stored rows are read, the others are encoded
        together in encoder micro-batches, so short passages do not each pay a forward pass.
        """
        if text_column not in dataset.column_names:
            raise ValueError(
                f"text_column={text_column!r} is not a column of the dataset (columns: {dataset.column_names}); "
                "pass text_column= naming the column with the documents."
            )
        from datasets.fingerprint import Hasher

        map_kwargs.setdefault("desc", "memcomp: compressing corpus")
        # The store, not datasets' cache, says what is compressed: a cached map result would skip a store emptied since.
        map_kwargs.setdefault("load_from_cache_file", False)
        # Named here so that `datasets` does not pickle the whole model to fingerprint the transform.
        map_kwargs.setdefault("new_fingerprint", Hasher.hash([dataset._fingerprint, self.model_key, text_column, str(self.root)]))
        return dataset.map(
            lambda batch: self._compress_batch(batch[text_column]), batched=True, batch_size=batch_size, **map_kwargs
        )

    def _compress_batch(self, texts: list) -> dict[str, list]:
        model, size = self.model, self.model.config.chunk_size
        passages = [model.tokenize_context(text) for text in texts]
        hashes = [content_hash(p, size) for p in passages]
        missing = [i for i, h in enumerate(hashes) if self._read(h) is None]
        num_memory = {i: sum(-(-len(ids) // size) for ids in p) for i, p in enumerate(passages)}
        for i, memory in zip(missing, self._encode_many([passages[i] for i in missing])):
            try:
                self._write(memory)
            except KeptEntryError:
                raise
            except OSError as error:
                raise OSError(
                    f"could not write memories to the store {self.directory} ({error}); give a writable store folder."
                ) from error
        return {"memory_hash": hashes, "num_memory": [num_memory[i] for i in range(len(texts))]}

    @torch.no_grad()
    def _encode_many(self, documents: list[list[list[int]]]) -> list[MemoryEmbeddings]:
        """Encode several documents' chunks in shared micro-batches; one memory per document."""
        if not documents:
            return []
        if any(len(ids) == 0 for passages in documents for ids in passages):
            raise ValueError("a document has no tokens: drop empty rows from the corpus before compressing it.")
        model = self.model
        embeds, counts = model.encode_passages([ids for passages in documents for ids in passages], show_progress=False)
        memories, row, passage = [], 0, 0
        for passages in documents:
            per_passage = counts[passage : passage + len(passages)]
            passage += len(passages)
            memories.append(model.memory_of(embeds[row : row + sum(per_passage)], passages, per_passage))
            row += sum(per_passage)
        return memories
