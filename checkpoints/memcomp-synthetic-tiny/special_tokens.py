"""The special tokens memcomp adds to a tokenizer, and the checks that they are there."""

from .configuration_memcomp import MEM_END_TOKEN, MEM_START_TOKEN, MEM_TOKEN
from .prompting import IM_END, IM_START

MEMORY_TOKENS = (MEM_START_TOKEN, MEM_END_TOKEN, MEM_TOKEN)


def add_memory_tokens(tokenizer) -> dict[str, int]:
    """Add `<MEM_START>`, `<MEM_END>` and `<MEM>` as special tokens (idempotent); return their ids by name.

    A tokenizer without a chat template (e.g. GPT-2's) also gets ChatML's `<|im_start|>` / `<|im_end|>`, so
    that the package's ChatML, which chat prompts then use, has single-token turn markers.
    """
    vocab = tokenizer.get_vocab()
    missing = [token for token in MEMORY_TOKENS if token not in vocab]
    if not getattr(tokenizer, "chat_template", None):
        missing += [token for token in (IM_START, IM_END) if token not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return memory_token_ids(tokenizer)


def memory_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the memory tokens; a ValueError names the missing ones and how to get a tokenizer that has them."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in MEMORY_TOKENS if token not in vocab]
    if missing:
        raise ValueError(
            f"the tokenizer has no {', '.join(missing)} token(s). Use the tokenizer saved with the memcomp "
            "model (`AutoTokenizer.from_pretrained(<memcomp checkpoint>)`), or build the model with "
            "`MemCompForCausalLM.from_base(...)`, which adds them."
        )
    return {token: vocab[token] for token in MEMORY_TOKENS}


def check_tokenizer_matches(tokenizer, config) -> None:
    """Raise a ValueError when the tokenizer's memory token ids differ from those the model was built with."""
    ids = memory_token_ids(tokenizer)
    expected = dict(zip(MEMORY_TOKENS, config.memory_token_ids))
    wrong = {token: (ids[token], expected[token]) for token in MEMORY_TOKENS if ids[token] != expected[token]}
    if wrong:
        detail = ", ".join(f"{token} is {got} in the tokenizer but {want} in the model" for token, (got, want) in wrong.items())
        raise ValueError(f"tokenizer does not match the model: {detail}. Load the tokenizer saved with this model.")
