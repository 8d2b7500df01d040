"""Tiny random memcomp models built offline from a config and a locally trained tokenizer.

Used by the tests, the benchmarks and the untrained demo: nothing here downloads weights or data.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from .modeling_memcomp import MemCompForCausalLM
from .prompting import IM_END, IM_START
from .special_tokens import add_memory_tokens

TOKENIZER_SPECIAL_TOKENS = ["<|endoftext|>", IM_START, IM_END]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, split_pattern: str | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`, with Qwen's `<|endoftext|>` / ChatML specials.

    `split_pattern` (a regex) isolates its matches before byte-level splitting, so no merge crosses them.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_pattern is None:
        backend.pre_tokenizer = byte_level
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"), byte_level]
        )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TOKENIZER_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left"
    )


def tiny_qwen2_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, **overrides) -> Qwen2Config:
    """A small Qwen2 config (the reference architecture) for CPU tests and benchmarks."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    settings.update(overrides)
    return Qwen2Config(**settings)


def build_tiny_memcomp(
    tokenizer: PreTrainedTokenizerFast,
    chunk_size: int = 16,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    config_overrides: dict | None = None,
    **memcomp_kwargs,
) -> MemCompForCausalLM:
    """A randomly initialised memcomp model over a tiny Qwen2 base: untrained, for tests and timing."""
    import torch

    add_memory_tokens(tokenizer)  # before sizing the vocabulary, so a seed gives the same weights on every call
    torch.manual_seed(seed)
    config = tiny_qwen2_config(len(tokenizer), hidden_size, num_layers, **(config_overrides or {}))
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    base = Qwen2ForCausalLM(config)
    return MemCompForCausalLM.from_base(base, chunk_size=chunk_size, tokenizer=tokenizer, **memcomp_kwargs).eval()
