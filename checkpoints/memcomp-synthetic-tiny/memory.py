"""`MemoryEmbeddings`: a compressed context, reusable across questions and storable with safetensors."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from numbers import Integral

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

MEMORY_FORMAT = "memcomp.memory"
"""`format` metadata of a `MemoryEmbeddings.save` file: what tells a memory from other safetensors files."""
MEMORY_DATASET_RECORD = "memcomp_memory.json"
"""Written next to a precomputed-memory dataset (`trainers.precompute`) and published with it: the compressor's id,
fingerprint and sizes, checked before RL trains on the memories."""
FORMAT_VERSION = "2"
SUPPORTED_FORMAT_VERSIONS = frozenset({"1", "2"})
"""Version 2 hashes the source chunk by chunk and keeps the last partial chunk's tokens, so a memory can grow."""
CHECKSUM_KEY = "embeds_sha256"
"""Metadata key of the SHA-256 of the tensor bytes in every memory file."""
_CONTENT_HASH = re.compile(r"[0-9a-f]{64}")


class MemoryFingerprintWarning(UserWarning):
    """A memory made by one model is read by another (legitimate for SFT encoder -> RL decoder, else stale)."""


def source_digest(
    passages: list[list[int]], chunk_size: int, state: str | None = None, continue_last: bool = False
) -> tuple[str, list[int], str]:
    """(content hash, tokens of the last passage's partial last chunk, hash state before that chunk) of `passages`.

    The hash is a chain over passage markers and chunks, so it can be continued: from `state` (a previous content
    hash, or a previous tail state) with `continue_last=True` the first passage continues the last one, as
    `MemCompForCausalLM.compress(..., append_to=memory)` does; the result equals hashing everything at once.
    """
    digest = bytes.fromhex(state) if state else hashlib.sha256(f"memcomp-v2|C={chunk_size}".encode()).digest()
    tail, before = [], ""
    for i, ids in enumerate(passages):
        if not (continue_last and i == 0):
            digest = hashlib.sha256(digest + b"|passage|").digest()
        tail, before = [], ""
        for start in range(0, len(ids), chunk_size):
            chunk = list(ids[start : start + chunk_size])
            if len(chunk) < chunk_size:
                tail, before = chunk, digest.hex()
            digest = hashlib.sha256(digest + torch.tensor(chunk, dtype=torch.int64).numpy().tobytes()).digest()
    return digest.hex(), tail, before


def content_hash(token_ids_per_passage: list[list[int]], chunk_size: int) -> str:
    """SHA-256 chain over the source token ids, chunk by chunk, with passage boundaries: the identity of a memory."""
    return source_digest(token_ids_per_passage, chunk_size)[0]


def check_content_hash(value) -> str:
    """`value` when it is a content hash as `content_hash` writes it (64 lowercase hex digits), else a ValueError."""
    if not isinstance(value, str) or not _CONTENT_HASH.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a memcomp content hash (64 lowercase hex digits, as `content_hash` and "
            "`MemoryStore.hash_of` produce)."
        )
    return value


def tensor_checksum(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (any dtype, on any device)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


@dataclass
class MemoryEmbeddings:
    """One memory embedding per chunk of the context, plus what is needed to check where it fits.

    Attributes:
        embeds: `(num_chunks, hidden_size)` floating tensor, in context order, all values finite.
        chunk_size: tokens per chunk used to make it.
        num_source_tokens: tokens of the context it was compressed from (each embedding covers 1..C of them).
        content_hash: hash of the source token ids (see `content_hash`).
        chunks_per_passage: how many chunks each passage produced, for a list-of-passages input.
        model_fingerprint: identity of the model that made it (`MemCompForCausalLM.fingerprint`).
        tail_token_ids: tokens of the last passage's partial last chunk (fewer than C; empty when it is full), kept
            so that `compress(more, append_to=memory)` can re-encode that chunk; None when unknown (format 1).
        tail_state: the content-hash chain state before that partial chunk (see `source_digest`).

    Every field is checked when the object is built (`validate`), so a memory that exists is well-formed.
    """

    embeds: torch.Tensor
    chunk_size: int
    num_source_tokens: int
    content_hash: str
    chunks_per_passage: list[int] = field(default_factory=list)
    model_fingerprint: str = ""
    tail_token_ids: list[int] | None = None
    tail_state: str = ""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first field that is malformed or inconsistent with the others.

        Also normalises: integer fields become `int`, an empty `chunks_per_passage` means one passage.
        """
        self._check_embeds()
        if isinstance(self.chunks_per_passage, (list, tuple)) and not self.chunks_per_passage:
            self.chunks_per_passage = [self.num_embeddings]
        self.chunk_size = _positive_int(self.chunk_size, "chunk_size")
        self.num_source_tokens = _positive_int(self.num_source_tokens, "num_source_tokens")
        counts = self.chunks_per_passage
        if not isinstance(counts, (list, tuple)):
            raise ValueError(f"chunks_per_passage must be a list of positive integers, got {counts!r}.")
        self.chunks_per_passage = [_positive_int(n, "every chunks_per_passage entry") for n in counts]
        if sum(self.chunks_per_passage) != self.num_embeddings:
            raise ValueError(
                f"chunks_per_passage {self.chunks_per_passage} sums to {sum(self.chunks_per_passage)} but there are "
                f"{self.num_embeddings} embeddings; they must agree."
            )
        if not self.num_embeddings <= self.num_source_tokens <= self.num_embeddings * self.chunk_size:
            raise ValueError(
                f"num_source_tokens={self.num_source_tokens} cannot have made {self.num_embeddings} embeddings of "
                f"chunk_size={self.chunk_size} (each covers 1..{self.chunk_size} tokens)."
            )
        check_content_hash(self.content_hash)
        if not isinstance(self.model_fingerprint, str):
            raise ValueError(f"model_fingerprint must be a string, got {type(self.model_fingerprint).__name__}.")
        if self.tail_token_ids is not None:
            tail = self.tail_token_ids
            if not isinstance(tail, (list, tuple)) or len(tail) >= self.chunk_size or any(
                isinstance(t, bool) or not isinstance(t, Integral) or t < 0 for t in tail
            ):
                raise ValueError(
                    f"tail_token_ids must be fewer than chunk_size={self.chunk_size} token ids, got {tail!r}."
                )
            self.tail_token_ids = [int(t) for t in tail]
            if tail:
                check_content_hash(self.tail_state)

    def _check_embeds(self) -> None:
        embeds = self.embeds
        if not isinstance(embeds, torch.Tensor):
            raise ValueError(f"embeds must be a torch.Tensor, got {type(embeds).__name__}.")
        if embeds.ndim != 2 or embeds.shape[0] < 1 or embeds.shape[1] < 1:
            raise ValueError(
                f"embeds must have shape (num_chunks, hidden_size) with at least one chunk, got {tuple(embeds.shape)}."
            )
        if not embeds.is_floating_point():
            raise ValueError(f"embeds must be a floating-point tensor, got {embeds.dtype}.")
        if not bool(torch.isfinite(embeds).all()):
            raise ValueError("embeds contain NaN or infinite values: the memory is corrupt; re-compress the context.")

    @property
    def num_embeddings(self) -> int:
        return self.embeds.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.embeds.shape[1]

    @property
    def compression_rate(self) -> float:
        """Source tokens per memory embedding (nominal rate; equals C except for short last chunks)."""
        return self.num_source_tokens / max(self.num_embeddings, 1)

    def __len__(self) -> int:
        return self.num_embeddings

    def to(self, *args, **kwargs) -> "MemoryEmbeddings":
        """The same memory with `embeds.to(...)`; metadata is already valid, only a dtype change is re-checked."""
        moved = copy.copy(self)
        moved.embeds = self.embeds.to(*args, **kwargs)
        moved.chunks_per_passage = list(self.chunks_per_passage)
        if moved.embeds.dtype != self.embeds.dtype:
            moved._check_embeds()  # e.g. float32 values beyond float16's range become inf
        return moved

    def check_compatible(self, config, model_fingerprint: str | None = None) -> None:
        """Raise a ValueError when a model with `config` (a `MemCompConfig`) cannot read this memory.

        With `model_fingerprint` (the reading model's encoder fingerprint), a memory made by another model
        gets a `MemoryFingerprintWarning`: reading it is allowed, since encoding with one checkpoint and
        answering with another is legitimate (SFT encoder -> RL decoder), but otherwise it is stale.
        The memory itself is re-validated first (its tensor may have been replaced since it was built).
        """
        self.validate()
        if self.hidden_size != config.text_config.hidden_size:
            raise ValueError(
                f"memory has hidden size {self.hidden_size} but the model expects "
                f"{config.text_config.hidden_size}: it was made by another model. "
                "Re-compress the context with this model (`model.compress(context)`)."
            )
        if self.chunk_size != config.chunk_size:
            raise ValueError(
                f"memory was made with chunk_size={self.chunk_size} but the model uses "
                f"chunk_size={config.chunk_size}. Re-compress the context with this model."
            )
        if model_fingerprint and self.model_fingerprint and model_fingerprint != self.model_fingerprint:
            warnings.warn(
                f"memory was made by model {self.model_fingerprint} but is read by model {model_fingerprint}. "
                "Compressing with one checkpoint and answering with another is legitimate (e.g. an SFT encoder "
                "with an RL decoder), and the same checkpoint loaded in another dtype has another fingerprint too; "
                "otherwise the memory is stale: re-compress the context with this model.",
                MemoryFingerprintWarning,
                stacklevel=2,
            )

    def metadata(self) -> dict[str, str]:
        """The safetensors metadata `save` writes: format, sizes, identity and the tensor checksum."""
        return {
            "format": MEMORY_FORMAT,
            "format_version": FORMAT_VERSION,
            "chunk_size": str(self.chunk_size),
            "hidden_size": str(self.hidden_size),
            "num_source_tokens": str(self.num_source_tokens),
            "content_hash": self.content_hash,
            "chunks_per_passage": json.dumps(self.chunks_per_passage),
            "model_fingerprint": self.model_fingerprint,
            **({} if self.tail_token_ids is None else {"tail_token_ids": json.dumps(self.tail_token_ids), "tail_state": self.tail_state}),
            CHECKSUM_KEY: tensor_checksum(self.embeds),
        }

    def save(self, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> None:
        """Write the tensor and its metadata (plus `extra_metadata`) to one `.safetensors` file (no pickle).

        A failed write (a full disk, a missing folder) is an OSError, whatever safetensors raised."""
        metadata = {**(extra_metadata or {}), **self.metadata()}
        try:
            save_file({"embeds": self.embeds.detach().contiguous().cpu()}, os.fspath(path), metadata=metadata)
        except SafetensorError as error:  # safetensors reports I/O failures as its own type, not an OSError
            raise OSError(f"could not write the memory to {os.fspath(path)!r} ({error})") from error

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "MemoryEmbeddings":
        """Read a file written by `save`, verifying its checksum and metadata; anything else is a ValueError."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no memory file at {path!r}.")
        not_memory = ValueError(f"{path!r} is a safetensors file but not a memcomp memory (no memcomp metadata).")
        try:
            with safe_open(path, framework="pt") as handle:  # the header first: model weights are never read whole
                metadata = handle.metadata() or {}
                if metadata.get("format") != MEMORY_FORMAT or "embeds" not in handle.keys():
                    raise not_memory
            embeds = load_file(path)["embeds"]
        except (SafetensorError, OSError, ValueError) as error:
            if error is not_memory:
                raise
            raise ValueError(
                f"{path!r} is not a readable safetensors file ({error}); it may be truncated or corrupt. "
                "Re-create it with `model.compress(...).save(path)`."
            ) from error
        version = metadata.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(
                f"{path!r} has memory format_version {version!r}; this memcomp reads {sorted(SUPPORTED_FORMAT_VERSIONS)}. "
                "Re-create the memory with this version, or upgrade memcomp."
            )
        if CHECKSUM_KEY not in metadata:
            raise ValueError(f"{path!r} has no {CHECKSUM_KEY} checksum: it was not written by `MemoryEmbeddings.save`; re-create it.")
        if metadata[CHECKSUM_KEY] != tensor_checksum(embeds):
            raise ValueError(f"{path!r} fails its checksum: the tensor data is corrupt. Re-create the memory.")
        try:
            hidden_size = int(metadata["hidden_size"])
            memory = cls(
                embeds=embeds,
                chunk_size=int(metadata["chunk_size"]),
                num_source_tokens=int(metadata["num_source_tokens"]),
                content_hash=metadata["content_hash"],
                chunks_per_passage=json.loads(metadata["chunks_per_passage"]),
                model_fingerprint=metadata.get("model_fingerprint", ""),
                tail_token_ids=json.loads(metadata["tail_token_ids"]) if "tail_token_ids" in metadata else None,
                tail_state=metadata.get("tail_state", ""),
            )
        except KeyError as error:
            raise ValueError(f"{path!r} has incomplete memcomp metadata (no {error}); re-create the memory.") from error
        except ValueError as error:
            raise ValueError(f"{path!r} is not a valid memory: {error} Re-create the memory.") from error
        if memory.hidden_size != hidden_size:
            raise ValueError(f"{path!r} has metadata that disagrees with its tensor (hidden_size); the file is corrupt.")
        return memory.to(device)
