"""The two systems every table compares: memcomp answering from compressed memory, and the full-context baseline.

Both build their prompts with `modeling_memcomp.build_prompt` (same template, same instruction); the baseline
puts the context in as text where memcomp puts the memory block, and runs on a plain causal LM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modeling_memcomp.prompting import build_prompt, left_pad, stop_token_ids
from trainers.judges import answer_style

from .protocol import FULL_CONTEXT_SYSTEM_PROMPT


@dataclass
class Generation:
    """One answer: its text, its length in generated tokens (up to the stop token), the context length, and how its
    final answer is read (`trainers.judges.extract_answer` style: "boxed" for the RL template, else "answer")."""

    text: str
    num_tokens: int
    context_tokens: int
    answer_style: str = "answer"


def _decode(tokenizer, output: torch.Tensor, prompt_length: int) -> list[tuple[str, int]]:
    """Generated ids after the prompt -> (text, tokens before the first stop token) per row."""
    stops = set(stop_token_ids(tokenizer))
    results = []
    for row in output[:, prompt_length:].tolist():
        length = next((i for i, token in enumerate(row) if token in stops), len(row))
        text = tokenizer.decode(row[:length], skip_special_tokens=True).strip()
        results.append((text, length))
    return results


def max_positions(config) -> int | None:
    """How many positions a causal LM takes: `max_position_embeddings`, times the factor of a YaRN-style rope scaling."""
    limit = getattr(config, "max_position_embeddings", None)
    rope = getattr(config, "rope_parameters", None) or {}
    if limit is not None and rope.get("rope_type") in ("yarn", "dynamic", "linear", "longrope") and rope.get("factor"):
        limit = int(rope["factor"] * rope.get("original_max_position_embeddings", limit))
    return limit


def _passages(context: str | list[str]) -> list[str]:
    return [context] if isinstance(context, str) else list(context)


def full_context_instruction(context: str | list[str], instruction: str, query_aware: bool = False) -> str:
    """The baseline's user turn: the passages as text (blank-line separated), then the instruction.

    `query_aware` also puts the instruction before the passages (Liu et al., 2023, "Lost in the Middle": query-aware
    contextualization), so a decoder-only model reads the passages knowing what it is looking for. Shared with
    training code that fine-tunes a full-context baseline, so it sees exactly these prompts.
    """
    passages = "\n\n".join(_passages(context))
    return (f"{instruction}\n\n" if query_aware else "") + passages + f"\n{instruction}"


class MemCompSystem:
    """memcomp: compress each context (`model.compress`), then answer from the memory (`model.generate`).

    `template` / `system_prompt` default to the checkpoint's recorded ones (`config.prompt_template`); `encoder`
    compresses instead of the model itself (an experiment: an RL checkpoint already compresses with its SFT encoder).
    """

    name = "memcomp"

    def __init__(
        self, model, template: str | None = None, system_prompt: str | None = None, name: str | None = None, encoder=None
    ):
        self.model = model
        self.template = template or model.config.prompt_template
        self.system_prompt = system_prompt if system_prompt is not None else model.config.system_prompt
        self.name = name or self.name
        self.encoder = encoder if encoder is not None else model

    def memories(self, contexts: list) -> list:
        """One `MemoryEmbeddings` per context, made by `encoder` (a control subclass replaces them)."""
        return [self.encoder.compress(c) for c in contexts]

    @torch.no_grad()
    def generate(self, contexts: list, instructions: list[str], **generate_kwargs) -> list[Generation]:
        memories = self.memories(contexts)
        batch = self.model.prepare_prompts(memories, instructions, template=self.template, system_prompt=self.system_prompt)
        output = self.model.generate(**batch, **generate_kwargs)
        decoded = _decode(self.model.tokenizer, output, batch["input_ids"].shape[1])
        style = answer_style(self.template)
        return [Generation(text, n, m.num_source_tokens, style) for (text, n), m in zip(decoded, memories)]


class FullContextSystem:
    """The uncompressed baseline: a causal LM reading the raw context in the same template.

    `language_model` defaults to the memcomp model's own base LM (`model.language_model`); pass another
    (e.g. the Instruct model the paper compares against) with its tokenizer to use that instead. `query_aware` asks
    the question before the passages as well (see `full_context_instruction`).
    """

    name = "full"

    def __init__(
        self,
        model,
        template: str = "chat",
        system_prompt: str | None = FULL_CONTEXT_SYSTEM_PROMPT,
        language_model=None,
        tokenizer=None,
        name: str | None = None,
        query_aware: bool = False,
    ):
        if (language_model is None) != (tokenizer is None):
            raise ValueError("pass both language_model= and tokenizer= for a separate baseline model, or neither.")
        self.name = name or self.name
        self.config = model.config
        self.language_model = language_model if language_model is not None else model.language_model
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        self.template, self.system_prompt, self.query_aware = template, system_prompt, query_aware
        self.max_positions = max_positions(self.language_model.config)

    def prompt_ids(self, context, instruction: str, max_new_tokens: int = 0) -> tuple[list[int], int]:
        """Prompt ids with the context as text where the memory block would be, and the context's token count; raises
        when the prompt and `max_new_tokens` answer tokens do not fit the model's positions."""
        prompt = build_prompt(
            self.tokenizer, self.config, 0, full_context_instruction(context, instruction, self.query_aware),
            template=self.template, system_prompt=self.system_prompt,
        ).input_ids
        context_tokens = len(self.tokenizer("\n\n".join(_passages(context)), add_special_tokens=False)["input_ids"])
        if self.max_positions is not None and len(prompt) + max_new_tokens > self.max_positions:
            raise ValueError(
                f"the full-context prompt and its answer need {len(prompt)} + {max_new_tokens} positions but the "
                f"baseline model has {self.max_positions}: shorten the context or use a long-context baseline model."
            )
        return prompt, context_tokens

    @torch.no_grad()
    def generate(self, contexts: list, instructions: list[str], **generate_kwargs) -> list[Generation]:
        answer = generate_kwargs.get("max_new_tokens", self.language_model.generation_config.max_new_tokens) or 0
        prompts, context_tokens = zip(*(self.prompt_ids(c, q, answer) for c, q in zip(contexts, instructions)))
        device = next(self.language_model.parameters()).device
        batch = {name: t.to(device) for name, t in left_pad(list(prompts), self.tokenizer.pad_token_id).items()}
        stops = stop_token_ids(self.tokenizer)
        output = self.language_model.generate(
            **batch, eos_token_id=stops, pad_token_id=self.tokenizer.pad_token_id, **generate_kwargs
        )
        decoded = _decode(self.tokenizer, output, batch["input_ids"].shape[1])
        return [Generation(text, n, c) for (text, n), c in zip(decoded, context_tokens)]
