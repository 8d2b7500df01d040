"""The one prompt builder: every decoder sequence (training, inference, evaluation, vLLM) is made here.

A prompt is token ids in which each memory embedding has a `<MEM>` placeholder; the model (or the vLLM
path) swaps the placeholders' input embeddings for the memory embeddings, in order.

Templates (`M` is the memory block, see `memory_block_ids`):
    plain (continual pretraining, both CPT phases; the paper's flat "pretraining format"):
        M {instruction}\\n {bridge}{target}<eos>
    chat (SFT) / rl (RL, plus the `\\boxed{}` answer instruction and its own system prompt): the tokenizer's own
        chat template (system turn, then a user turn that starts with M, then the assistant turn), e.g. ChatML:
        <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n M \\n{instruction}<|im_end|>\\n
        <|im_start|>assistant\\n {bridge}{target}<|im_end|>
        A tokenizer without a chat template gets the package's ChatML (`CHATML_TEMPLATE`).
Bridge tokens and everything before the target carry label -100: the loss is on the target only. Template text
is tokenized with its special tokens recognised; user text (system prompt, instruction, target) never is, so
data cannot forge a placeholder or a turn marker.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100
TEMPLATES = ("plain", "chat", "rl")
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. The user's message begins with a compressed memory of a context; "
    "use it to follow the instruction."
)
"""System prompt of the `chat` template (SFT)."""
RL_SYSTEM_PROMPT = (
    "You are a helpful assistant. The user's message begins with a compressed memory of a context. "
    "Read it carefully, answer the question from it, and give your final answer in the requested format."
)
"""System prompt of the `rl` template (the paper's Figure 11 gives SFT and RL different system prompts)."""
BOXED_INSTRUCTION = "Think step by step if needed, and put your final answer within \\boxed{}."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The package's ChatML, used for tokenizers that have no chat template of their own."""


@dataclass
class PromptIds:
    """Decoder ids of one example with `num_memory` placeholders, and target-only labels."""

    input_ids: list[int]
    labels: list[int] = field(default_factory=list)
    num_memory: int = 0


def default_system_prompt(template: str) -> str | None:
    """The system prompt a template uses when none is given (None for `plain`, which has no system turn)."""
    return {"chat": DEFAULT_SYSTEM_PROMPT, "rl": RL_SYSTEM_PROMPT}.get(template)


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
    """Template text -> ids, with the template's markers recognised as the special tokens they are."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


# ------------------------------------------------------------------------------------------ chat layouts
_SLOT = "\x00memcomp:{}\x00"
SYSTEM, MEMORY, INSTRUCTION, TARGET = (_SLOT.format(name) for name in ("system", "memory", "instruction", "target"))


@dataclass(frozen=True)
class ChatLayout:
    """A chat template reduced to token ids around four slots: system text, memory block, instruction, target.

    `prefix` lists template ids (tuples) and slot names in order, up to where the assistant's answer starts;
    `end_ids` close the assistant turn (e.g. `<|im_end|>`, `<|eot_id|>`). `system_in_user` is set for templates
    without a system role (the system text then opens the user turn).
    """

    prefix: tuple
    end_ids: tuple[int, ...]
    system_in_user: bool


_LAYOUTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _render(tokenizer, template: str, system_in_user: bool, target: bool) -> str:
    user = f"{MEMORY}\n{INSTRUCTION}"
    messages = [{"role": "user", "content": f"{SYSTEM}\n\n{user}" if system_in_user else user}]
    if not system_in_user:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    if target:
        messages.append({"role": "assistant", "content": TARGET})
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=not target
    )


def chat_layout(tokenizer) -> ChatLayout:
    """The layout of the tokenizer's chat template (or the package's ChatML when it has none), cached per tokenizer."""
    template = getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE
    cached = _LAYOUTS.setdefault(tokenizer, {})
    if template in cached:
        return cached[template]
    for system_in_user in (False, True):
        try:
            prompt = _render(tokenizer, template, system_in_user, target=False)
            full = _render(tokenizer, template, system_in_user, target=True)
        except Exception:  # a template without a system role raises (jinja's raise_exception)
            continue
        if all(slot in prompt for slot in (SYSTEM, MEMORY, INSTRUCTION)) and TARGET in full:
            break
    else:
        raise ValueError(
            "the tokenizer's chat template cannot render a system text, a user turn and an assistant turn with the "
            "memory in them; give the tokenizer a chat template (`tokenizer.chat_template = ...`) that keeps message "
            "contents, or remove it to use the package's ChatML."
        )
    pieces, rest = [], prompt
    for slot in sorted((SYSTEM, MEMORY, INSTRUCTION), key=prompt.index):
        before, rest = rest.split(slot, 1)
        pieces += [tuple(_template_ids(tokenizer, before)), slot]
    pieces.append(tuple(_template_ids(tokenizer, rest)))
    end = full.split(TARGET, 1)[1].rstrip()
    layout = ChatLayout(tuple(p for p in pieces if p != ()), tuple(_template_ids(tokenizer, end)), system_in_user)
    cached[template] = layout
    return layout


def build_prompt(
    tokenizer,
    config,
    num_memory: int,
    instruction: str,
    template: str = "chat",
    target: str | list[int] | None = None,
    bridge_ids: list[int] | None = None,
    system_prompt: str | None = None,
    end: bool = True,
) -> PromptIds:
    """Build the decoder ids for `num_memory` memory embeddings followed by `instruction`.

    With `target` (text or ids) the ids end with it and its end token(s) (`end=False`: without them, for a target
    cut short, which must not teach the model to stop there), and `labels` cover exactly those;
    without it the ids end where generation starts. `bridge_ids` are uncompressed context tokens placed
    right before the target (continuation task) and are not in the loss. `system_prompt=None` uses the
    template's default (`default_system_prompt`).
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
        system = default_system_prompt(template) if system_prompt is None else system_prompt
        layout = chat_layout(tokenizer)
        slots = {SYSTEM: _text_ids(tokenizer, system), MEMORY: memory, INSTRUCTION: _text_ids(tokenizer, instruction)}
        prefix = [i for piece in layout.prefix for i in (slots[piece] if isinstance(piece, str) else piece)] + bridge
        end_ids = list(layout.end_ids)
    if target is None:
        return PromptIds(input_ids=prefix, labels=[IGNORE_INDEX] * len(prefix), num_memory=num_memory)
    target_ids = _text_ids(tokenizer, target) if isinstance(target, str) else list(target)
    target_ids = target_ids + (end_ids if end else [])
    return PromptIds(
        input_ids=prefix + target_ids,
        labels=[IGNORE_INDEX] * len(prefix) + target_ids,
        num_memory=num_memory,
    )


def shared_prefix_length(tokenizer, config, num_memory: int, template: str = "chat", system_prompt: str | None = None) -> int:
    """Tokens every `build_prompt` with this memory size, template and system prompt starts with (up to the question).

    These tokens (system turn, memory block, the template text before the instruction) can be prefilled once and
    reused by every question about one memory (`MemCompForCausalLM.prefill_memory`).
    """
    if template == "plain":
        return len(memory_block_ids(num_memory, config))
    layout = chat_layout(tokenizer)
    system = default_system_prompt(template) if system_prompt is None else system_prompt
    sizes = {SYSTEM: len(_text_ids(tokenizer, system)), MEMORY: len(memory_block_ids(num_memory, config))}
    length = 0
    for piece in layout.prefix:
        if piece == INSTRUCTION:
            return length
        length += sizes[piece] if isinstance(piece, str) else len(piece)
    raise ValueError("the chat layout has no instruction slot.")  # chat_layout guarantees one


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end an answer: the tokenizer's EOS and the chat template's end-of-turn token (e.g. `<|im_end|>`)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    try:
        end = chat_layout(tokenizer).end_ids
    except ValueError:
        end = ()
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    if end and end[0] in special and end[0] not in ids:
        ids.append(end[0])
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
