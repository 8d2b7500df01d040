"""`MemoryEmbeddings`: a compressed context, reusable across questions and storable with safetensors."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = "1"


def content_hash(token_ids_per_passage: list[list[int]], chunk_size: int) -> str:
    """SHA-256 of the source token ids, passage boundaries and chunk size: the identity of a memory."""
    digest = hashlib.sha256(f"memcomp-v{FORMAT_VERSION}|C={chunk_size}".encode())
    for ids in token_ids_per_passage:
        digest.update(b"|passage|")
        digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class MemoryEmbeddings:
    """One memory embedding per chunk of the context, plus what is needed to check where it fits.

    Attributes:
        embeds: `(num_chunks, hidden_size)` tensor, in context order.
        chunk_size: tokens per chunk used to make it.
        num_source_tokens: tokens of the context it was compressed from.
        content_hash: hash of the source token ids (see `content_hash`).
        chunks_per_passage: how many chunks each passage produced, for a list-of-passages input.
        model_fingerprint: identity of the model that made it (`MemCompForCausalLM.fingerprint`).
    """

    embeds: torch.Tensor
    chunk_size: int
    num_source_tokens: int
    content_hash: str
    chunks_per_passage: list[int] = field(default_factory=list)
    model_fingerprint: str = ""

    def __post_init__(self):
        if self.embeds.ndim != 2:
            raise ValueError(f"embeds must have shape (num_chunks, hidden_size), got {tuple(self.embeds.shape)}.")
        if not self.chunks_per_passage:
            self.chunks_per_passage = [self.num_embeddings]

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
        return MemoryEmbeddings(
            self.embeds.to(*args, **kwargs),
            self.chunk_size,
            self.num_source_tokens,
            self.content_hash,
            list(self.chunks_per_passage),
            self.model_fingerprint,
        )

    def check_compatible(self, config) -> None:
        """Raise a ValueError when this memory cannot be read by a model with `config` (a `MemCompConfig`)."""
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

    def save(self, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> None:
        """Write the tensor and its metadata (plus `extra_metadata`) to one `.safetensors` file (no pickle)."""
        metadata = {
            **(extra_metadata or {}),
            "format": "memcomp.memory",
            "format_version": FORMAT_VERSION,
            "chunk_size": str(self.chunk_size),
            "hidden_size": str(self.hidden_size),
            "num_source_tokens": str(self.num_source_tokens),
            "content_hash": self.content_hash,
            "chunks_per_passage": json.dumps(self.chunks_per_passage),
            "model_fingerprint": self.model_fingerprint,
        }
        save_file({"embeds": self.embeds.detach().contiguous().cpu()}, os.fspath(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "MemoryEmbeddings":
        """Read a file written by `save`; a file that is not a memcomp memory raises a ValueError."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no memory file at {path!r}.")
        try:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(path, device=str(device))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{path!r} is not a readable safetensors file ({error}); it may be truncated or corrupt. "
                "Re-create it with `model.compress(...).save(path)`."
            ) from error
        if metadata.get("format") != "memcomp.memory" or "embeds" not in tensors:
            raise ValueError(f"{path!r} is a safetensors file but not a memcomp memory (no memcomp metadata).")
        try:
            memory = cls(
                embeds=tensors["embeds"],
                chunk_size=int(metadata["chunk_size"]),
                num_source_tokens=int(metadata["num_source_tokens"]),
                content_hash=metadata["content_hash"],
                chunks_per_passage=json.loads(metadata["chunks_per_passage"]),
                model_fingerprint=metadata.get("model_fingerprint", ""),
            )
        except (KeyError, ValueError) as error:
            raise ValueError(f"{path!r} has incomplete memcomp metadata ({error}); re-create the memory.") from error
        if memory.hidden_size != int(metadata["hidden_size"]) or sum(memory.chunks_per_passage) != memory.num_embeddings:
            raise ValueError(f"{path!r} has metadata that disagrees with its tensor; the file is corrupt.")
        return memory
