"""Question sessions over one long context on a plain causal LM, shared by `benchmarks.peers` and its kvpress
worker (which runs in another environment: this module needs only torch and transformers).

A session answers several questions on one context and times each question's TTFT: whatever prefill the
method needs, the question, then the greedy first token. Prompts come in two parts: `prefix` (system turn,
user-turn header, the context) and per question a `suffix` (the question and the assistant header).
"""

from __future__ import annotations

import contextlib
import os

import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from benchmarks._timing import time_once
from modeling_memcomp.prefix_cache import CACHE_KEY

SHAPE_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings",
)
"""Qwen2 config fields that fix the cost of a forward pass: enough to rebuild the same shape elsewhere."""


def model_shape(config) -> dict:
    """The `SHAPE_KEYS` of a (text) config, as plain values."""
    return {key: getattr(config, key) for key in SHAPE_KEYS}


def build_lm(shape: dict, seed: int, dtype: torch.dtype, device: torch.device) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 of `shape` with SDPA attention (timing does not depend on the weights)."""
    config = Qwen2Config(**shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def cache_bytes(cache) -> int:
    """Bytes held by the keys and values of a transformers cache."""
    total = 0
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def first_token(lm, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """One prefill forward with a KV cache, logits of the last position only, greedy token."""
    return lm(input_ids=input_ids, use_cache=True, logits_to_keep=1, **kwargs).logits.argmax(-1)


def prefill_prefix(lm, prefix: torch.Tensor, press=None) -> DynamicCache:
    """KV cache of the prefix (decoder only, no LM head), compressed on the fly by a kvpress `press` if given."""
    cache = DynamicCache()
    with press(lm) if press is not None else contextlib.nullcontext():
        lm.model(input_ids=prefix, use_cache=True, **{CACHE_KEY: cache})
    return cache


def answer_over(lm, cache: DynamicCache, suffix: torch.Tensor, context_length: int) -> torch.Tensor:
    """First token of a question over a cached prefix, then the cache is cut back to the prefix.

    Positions continue from the uncompressed prefix length (as kvpress' own pipeline does), so a pressed
    cache with fewer entries still sees the question at the positions it was trained for.
    """
    kept = cache.get_seq_length()
    if any(layer.keys.shape[-2] != kept for layer in cache.layers):
        raise ValueError("the cache holds a different number of positions per layer; use a uniform press.")
    positions = torch.arange(context_length, context_length + suffix.shape[1], device=suffix.device)[None]
    token = first_token(lm, suffix, position_ids=positions, **{CACHE_KEY: cache})
    for layer in cache.layers:  # as kvpress' pipeline does: `crop` changed meaning across transformers 5.x
        layer.keys, layer.values = layer.keys[..., :kept, :], layer.values[..., :kept, :]
    return token


@torch.no_grad()
def full_per_question(lm, prefix: torch.Tensor, suffixes: list[torch.Tensor], device: torch.device) -> dict:
    """(a) Every question prefills the whole prompt again: nothing is kept between questions."""
    seconds = [time_once(lambda: first_token(lm, torch.cat([prefix, s], dim=1)), device)[0] for s in suffixes]
    return {"ttft_s": seconds, "stored_bytes": 0, "cached_positions": 0}


@torch.no_grad()
def reuse_prefix(lm, prefix: torch.Tensor, suffixes: list[torch.Tensor], device: torch.device, press=None) -> dict:
    """(b)/(c) Prefill (and press) the prefix once; each question runs over the kept cache.

    The first question's TTFT includes the prefix prefill; `stored_bytes` is what stays between questions.
    """
    prefill_s, cache = time_once(lambda: prefill_prefix(lm, prefix, press), device)
    seconds = [time_once(lambda: answer_over(lm, cache, s, prefix.shape[1]), device)[0] for s in suffixes]
    seconds[0] += prefill_s
    return {
        "ttft_s": seconds,
        "prefill_s": prefill_s,
        "stored_bytes": cache_bytes(cache),
        "cached_positions": cache.get_seq_length(),
    }


WARMUP_TOKENS = 128
"""Warm-up sessions use this many context tokens: kernels warm, while the memory they leave in the allocator
(which would hide part of the measured peak) stays negligible. SnapKV needs more than its 64-token window."""


def run_job(session, device: torch.device, warmup: int, repeats: int, memory: bool) -> dict:
    """`warmup` short sessions, then `repeats` measured ones; the first measured one also gives the peak memory.

    `session(warm)` runs one session (on a `WARMUP_TOKENS` context with two questions when `warm`) and returns
    a dict with `ttft_s` per question. Peak memory: CUDA `max_memory_allocated` (weights included), CPU the
    resident-set high-water above the process before the session (run the job in a fresh process).
    """
    from benchmarks._timing import cuda_peak_bytes, rss_peak_bytes

    for _ in range(warmup):
        session(True)
    sessions, peak = [], None
    for index in range(repeats):
        if index == 0 and memory:
            run = lambda: sessions.append(session(False))  # noqa: E731
            peak = cuda_peak_bytes(run, device) if device.type == "cuda" else rss_peak_bytes(run)
        else:
            sessions.append(session(False))
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None  # contention while it ran
    return {"sessions": sessions, "peak_memory_mb": None if peak is None else peak / 2**20, "load_average_1m": load}


def lm_session(fn, lm, prefix: torch.Tensor, suffixes: list[torch.Tensor], device: torch.device, **kwargs):
    """`run_job`'s `session(warm)` for a plain-LM session function (`full_per_question` or `reuse_prefix`)."""
    return lambda warm: fn(lm, prefix[:, :WARMUP_TOKENS] if warm else prefix, suffixes[:2] if warm else suffixes, device, **kwargs)
