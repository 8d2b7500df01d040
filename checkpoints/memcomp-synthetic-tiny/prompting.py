"""The one prompt builder: every decoder sequence (training, inference, evaluation, vLLM) is made here.

A prompt is token ids in which each memory embedding has a `<MEM>` placeholder; the model (or the vLLM
path) swaps the placeholders' input embeddings for the memory embeddings, in order.

Layouts (`M` is the memory block, see `memory_block_ids`):
    plain (CPT stage 1):  M {instruction}\\n {bridge}{target}<eos>
    chat  (CPT-2, SFT):   <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n M \\n{instruction}<|im_end|>\\n
                          <|im_start|>assistant\\n {bridge}{target}<|im_end|>
    rl    (RL stage):     chat, with the `\\boxed{}` answer instruction after the question.
Bridge tokens and everything before the target carry label -100: the loss is on the target only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100
TEMPLATES = ("plain", "chat", "rl")
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. The user's message begins with a compressed memory of a context; "
    "use it to follow the instruction."
)
BOXED_INSTRUCTION = "Think step by step if needed, and put your final answer within \\boxed{}."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@dataclass
class PromptIds:
    """Decoder ids of one example with `num_memory` placeholders, and target-only labels."""

    input_ids: list[int]
    labels: list[int] = field(default_factory=list)
    num_memory: int = 0


def memory_block_ids(num_memory: int, config) -> list[int]:
    """Placeholder ids for `num_memory` embeddings, wrapped per embedding (`wrap="each"`) or once (`"block"`)."""
    start, end, mem = config.memory_token_ids
    if None in (start, end, mem):
        raise ValueError(
            "the model config has no memory token ids; build the model with `MemCompForCausalLM.from_base(...)`."
        )
    if num_memory == 0:
        return []
    if config.wrap == "each":
        return [start, mem, end] * num_memory
    return [start] + [mem] * num_memory + [end]


def _text_ids(tokenizer, text: str) -> list[int]:
    """User text -> ids; special-token strings in user text stay text, so they cannot forge a placeholder."""
    if not text:
        return []
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _template_ids(tokenizer, text: str) -> list[int]:
    """Template text -> ids, with ChatML markers recognised as the special tokens they are."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def build_prompt(
    tokenizer,
    config,
    num_memory: int,
    instruction: str,
    template: str = "chat",
    target: str | list[int] | None = None,
    bridge_ids: list[int] | None = None,
    system_prompt: str | None = None,
) -> PromptIds:
    """Build the decoder ids for `num_memory` memory embeddings followed by `instruction`.

    With `target` (text or ids) the ids end with it and its end token, and `labels` cover exactly those;
    without it the ids end where generation starts. `bridge_ids` are uncompressed context tokens placed
    right before the target (continuation task) and are not in the loss.
    """
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}.")
    memory = memory_block_ids(num_memory, config)
    bridge = list(bridge_ids or [])
    if template == "plain":
        prefix = memory + _text_ids(tokenizer, instruction) + _template_ids(tokenizer, "\n") + bridge
        end_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    else:
        if template == "rl":
            instruction = f"{instruction}\n{BOXED_INSTRUCTION}"
        system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        prefix = (
            _template_ids(tokenizer, f"{IM_START}system\n")
            + _text_ids(tokenizer, system)
            + _template_ids(tokenizer, f"{IM_END}\n{IM_START}user\n")
            + memory
            + _template_ids(tokenizer, "\n")
            + _text_ids(tokenizer, instruction)
            + _template_ids(tokenizer, f"{IM_END}\n{IM_START}assistant\n")
            + bridge
        )
        end_ids = _template_ids(tokenizer, IM_END)
    if target is None:
        return PromptIds(input_ids=prefix, labels=[IGNORE_INDEX] * len(prefix), num_memory=num_memory)
    target_ids = _text_ids(tokenizer, target) if isinstance(target, str) else list(target)
    target_ids = target_ids + end_ids
    return PromptIds(
        input_ids=prefix + target_ids,
        labels=[IGNORE_INDEX] * len(prefix) + target_ids,
        num_memory=num_memory,
    )


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end an answer: the tokenizer's EOS and, when it has one, ChatML's `<|im_end|>`."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    im_end = tokenizer.get_vocab().get(IM_END)
    if im_end is not None and im_end not in ids:
        ids.append(im_end)
    return ids


def left_pad(prompts: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` and `attention_mask` for a batch of prompts (generation continues on the right)."""
    longest = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, longest - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
