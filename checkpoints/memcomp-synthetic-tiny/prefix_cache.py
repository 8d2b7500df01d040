"""`MemoryPrefix`: the decoder's KV cache of a memory prompt's shared prefix, prefilled once and reused by questions.

Every question about one memory starts with the same tokens (system turn, memory block, the template text up to the
question). `MemCompForCausalLM.prefill_memory` runs them once; each later `generate` copies the cache for its rows
and prefills only the question, so N questions cost one prefix prefill instead of N.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from .memory import tensor_checksum

CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
"""What transformers calls the KV cache in forward/generate arguments and outputs: `cache` from 5.2x, `past_key_values` before."""


@dataclass
class MemoryPrefix:
    """A prefilled prompt prefix: its ids, the KV cache over them, and what it was built from (checked on use)."""

    input_ids: list[int]
    cache: object  # a transformers `Cache` over `input_ids`, batch size 1
    memory_hash: str
    num_memory: int
    template: str
    system_prompt: str | None
    embeds_checksum: str = ""  # the memory's embeddings themselves: the same text compressed by another model differs
    decoder_fingerprint: str = ""  # the decoder whose KV cache this is: an SFT and its RL checkpoint share memories

    def __len__(self) -> int:
        return len(self.input_ids)

    def expanded(self, rows: int):
        """A fresh copy of the cache for `rows` sequences (generation appends to it, so the original stays intact)."""
        with torch.no_grad():
            cache = copy.deepcopy(self.cache)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    def check_matches(self, memory, template: str, system_prompt: str | None, decoder_fingerprint: str) -> None:
        """Raise a ValueError when this prefix was not built for `memory` with this template and system prompt, by
        the decoder `decoder_fingerprint` names."""
        if decoder_fingerprint != self.decoder_fingerprint:
            raise ValueError(
                "memory_cache was prefilled by another model's decoder (an SFT checkpoint and its RL checkpoint share "
                "memories, not KV caches): build it with this model's prefill_memory(memory)."
            )
        wanted = (memory.content_hash, len(memory), template, system_prompt)
        have = (self.memory_hash, self.num_memory, self.template, self.system_prompt)
        if wanted != have:
            raise ValueError(
                "memory_cache was prefilled for another memory, template or system prompt "
                f"(cache: template={self.template!r}, {self.num_memory} embeddings; call: template={template!r}, "
                f"{len(memory)} embeddings). Build it with model.prefill_memory(memory, template=..., system_prompt=...)."
            )
        if tensor_checksum(memory.embeds) != self.embeds_checksum:
            raise ValueError(
                "memory_cache was prefilled for other embeddings of the same text (another model or dtype compressed "
                "it, or they were changed): build it again with model.prefill_memory(memory)."
            )
