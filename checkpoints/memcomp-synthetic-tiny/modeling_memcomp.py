"""`MemCompForCausalLM`: one causal LM that compresses a context into memory embeddings and answers from them.

Encode: the context is cut into chunks of `chunk_size` tokens; each chunk runs alone through the base
model, its final hidden states are pooled over real tokens and projected (`memory_projection`), one
memory embedding per chunk. Decode: the embeddings replace `<MEM>` placeholders in the decoder prompt
(built by `prompting.build_prompt`) and the same LM generates.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedModel

from .configuration_memcomp import MemCompConfig
from .memory import MemoryEmbeddings, content_hash
from .pooling import build_pooling
from .prompting import build_prompt, left_pad, stop_token_ids
from .special_tokens import add_memory_tokens, check_tokenizer_matches
from .tokenizer_io import load_tokenizer

PAPER_GENERATION_DEFAULTS = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05)
"""Qwen2.5 defaults the paper uses for QA (Appendix H.1)."""


FINGERPRINT_SAMPLES = 1024
"""Values hashed per parameter for `MemCompForCausalLM.fingerprint` (a strided sample: cheap even at 32B)."""


def _version(tensor: torch.Tensor) -> int:
    """In-place update counter; inference tensors have none (they cannot be updated outside inference mode)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


class MemCompPreTrainedModel(PreTrainedModel):
    config_class = MemCompConfig
    base_model_prefix = "memcomp"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module):
        if isinstance(module, nn.Linear) and module is getattr(self, "memory_projection", None):
            if self.config.projection_init == "identity":
                nn.init.eye_(module.weight)
            else:
                nn.init.normal_(module.weight, std=getattr(self.config.text_config, "initializer_range", 0.02))


class MemCompForCausalLM(MemCompPreTrainedModel, GenerationMixin):
    """A causal LM that reads compressed memory. See `from_base`, `compress` and `generate`."""

    def __init__(self, config: MemCompConfig, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.language_model = language_model
        self.config.text_config = language_model.config
        hidden = config.text_config.hidden_size
        max_positions = getattr(config.text_config, "max_position_embeddings", None)
        if max_positions is not None and config.chunk_size > max_positions:
            raise ValueError(
                f"chunk_size={config.chunk_size} exceeds the base model's {max_positions} positions: "
                "the encoder could never hold one chunk. Use a smaller chunk_size."
            )
        self.pooling = build_pooling(config.pooling, hidden)
        self.memory_projection = nn.Linear(hidden, hidden, bias=False)
        self._tokenizer = None
        self._fingerprint_cache: tuple | None = None
        self.post_init()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(
        cls,
        name_or_path_or_model: str | os.PathLike | PreTrainedModel,
        chunk_size: int = 16,
        tokenizer=None,
        pooling: str = "mean",
        wrap: str = "each",
        encoder_batch_size: int = 256,
        projection_init: str = "normal",
        **from_pretrained_kwargs,
    ) -> "MemCompForCausalLM":
        """Wrap a base causal LM (Hub id, local folder or loaded model) as an untrained memcomp model.

        Loads weights and tokenizer, adds `<MEM_START>`, `<MEM_END>` and `<MEM>` to the tokenizer, resizes
        the embeddings (new rows start at the mean embedding) and initialises the projection.
        """
        if isinstance(name_or_path_or_model, PreTrainedModel):
            base = name_or_path_or_model
            if tokenizer is None:
                tokenizer = load_tokenizer(base.name_or_path)
        else:
            base = AutoModelForCausalLM.from_pretrained(name_or_path_or_model, **from_pretrained_kwargs)
            if tokenizer is None:
                tokenizer = load_tokenizer(name_or_path_or_model)
        ids = add_memory_tokens(tokenizer)
        if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        config = MemCompConfig(
            text_config=base.config,
            chunk_size=chunk_size,
            pooling=pooling,
            wrap=wrap,
            mem_start_token_id=ids["<MEM_START>"],
            mem_end_token_id=ids["<MEM_END>"],
            mem_token_id=ids["<MEM>"],
            encoder_batch_size=encoder_batch_size,
            projection_init=projection_init,
        )
        model = cls(config, language_model=base)
        embeddings = base.get_input_embeddings().weight  # the new modules follow the base's device and dtype
        for module in (model.pooling, model.memory_projection):
            module.to(device=embeddings.device, dtype=embeddings.dtype)
        model.tokenizer = tokenizer
        model.generation_config = model.default_generation_config(tokenizer)
        return model

    def default_generation_config(self, tokenizer) -> GenerationConfig:
        """Paper defaults (top_k=20, top_p=0.8, repetition_penalty=1.05), stopping at EOS or `<|im_end|>`."""
        start, end, mem = self.config.memory_token_ids
        return GenerationConfig(
            **PAPER_GENERATION_DEFAULTS,
            max_new_tokens=256,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            suppress_tokens=[start, end, mem],
        )

    @property
    def tokenizer(self):
        """The tokenizer saved with the model (loaded on first use from the checkpoint folder)."""
        if self._tokenizer is None:
            if not self.name_or_path:
                raise ValueError(
                    "this model has no tokenizer: set `model.tokenizer = ...` or pass `tokenizer=` to from_base."
                )
            # The folder's code already runs as this model, so its config may be read to find the tokenizer.
            self.tokenizer = load_tokenizer(self.name_or_path, trust_remote_code=True)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        check_tokenizer_matches(tokenizer, self.config)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer = tokenizer

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights, config, remote code and `auto_map` (as transformers does) plus the tokenizer."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        if self._tokenizer is None and self.name_or_path:
            try:  # a model loaded from a folder and saved elsewhere takes its (not yet loaded) tokenizer along
                self.tokenizer
            except (OSError, ValueError):
                return
        if self._tokenizer is not None:
            self._tokenizer.save_pretrained(save_directory)

    # ------------------------------------------------------------------ plumbing
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.base_model

    @property
    def fingerprint(self) -> str:
        """Identity of the compressor: architecture, chunk size, pooling and a strided sample of every weight.

        Any training step changes it (the LM weights shape memories as much as the projection does);
        it is recomputed only when a parameter was replaced or updated in place.
        """
        parameters = sorted(self.named_parameters())
        key = tuple((p.data_ptr(), _version(p), p.dtype) for _, p in parameters)
        if self._fingerprint_cache is None or self._fingerprint_cache[0] != key:
            text = self.config.text_config
            digest = hashlib.sha256(
                f"{text.model_type}|{text.hidden_size}|{text.num_hidden_layers}|{text.vocab_size}|"
                f"C={self.config.chunk_size}|{self.config.pooling}".encode()
            )
            with torch.no_grad():
                for name, parameter in parameters:
                    flat = parameter.detach().reshape(-1)
                    sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)][:FINGERPRINT_SAMPLES]
                    digest.update(name.encode())
                    digest.update(sample.float().cpu().numpy().tobytes())
            self._fingerprint_cache = (key, digest.hexdigest()[:16])
        return self._fingerprint_cache[1]

    # ------------------------------------------------------------------ encoding
    def encode_chunks(self, chunk_ids: torch.Tensor, chunk_attention_mask: torch.Tensor) -> torch.Tensor:
        """`(n, C)` right-padded chunks -> `(n, d)` memory embeddings. Each chunk attends only within itself."""
        hidden = self.language_model.base_model(
            input_ids=chunk_ids, attention_mask=chunk_attention_mask, use_cache=False
        ).last_hidden_state
        return self.memory_projection(self.pooling(hidden, chunk_attention_mask))

    def tokenize_context(self, context) -> list[list[int]]:
        """Context (str, list of passages, or token ids) -> token ids per passage, with clear errors."""
        if isinstance(context, torch.Tensor):
            if context.ndim != 1 or context.dtype not in (torch.int32, torch.int64):
                raise TypeError("a tensor context must be a 1-D tensor of token ids.")
            context = context.tolist()
        if isinstance(context, (bytes, bytearray)):
            raise TypeError("context must be a string, a list of strings or token ids, got bytes: decode it first.")
        if isinstance(context, str):
            passages = [context]
        elif isinstance(context, Sequence) and context and all(isinstance(x, int) for x in context):
            return [list(context)]
        elif isinstance(context, Sequence):
            passages = list(context)
            if not passages:
                raise ValueError("context is an empty list: give a non-empty string or list of passages.")
            bad = [type(p).__name__ for p in passages if not isinstance(p, str)]
            if bad:
                raise TypeError(
                    f"context passages must be strings, got {bad[0]}. Pass a string, a list of strings "
                    "(passages, chunked separately) or a list of token ids."
                )
        else:
            raise TypeError(
                f"context must be a string, a list of strings or token ids, got {type(context).__name__}."
            )
        if any(not p.strip() for p in passages):
            raise ValueError("context is empty or whitespace only: give the text to compress.")
        tokenizer = self.tokenizer
        return tokenizer(passages, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def chunk_passages(self, passages: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Token ids per passage -> right-padded `(n, C)` chunk ids and mask, and chunk counts per passage."""
        size = self.config.chunk_size
        pad = self.config.text_config.pad_token_id
        pad = 0 if pad is None else pad
        counts = [-(-len(p) // size) for p in passages]
        ids = torch.full((sum(counts), size), pad, dtype=torch.long)
        mask = torch.zeros((sum(counts), size), dtype=torch.long)
        row = 0
        for passage, count in zip(passages, counts):
            flat = torch.tensor(passage, dtype=torch.long)
            full, rest = divmod(len(passage), size)
            ids[row : row + full] = flat[: full * size].view(full, size)
            mask[row : row + full] = 1
            if rest:
                ids[row + full, :rest] = flat[full * size :]
                mask[row + full, :rest] = 1
            row += count
        return ids, mask, counts

    @torch.no_grad()
    def compress(
        self, context, batch_size: int | None = None, show_progress: bool | None = None
    ) -> MemoryEmbeddings:
        """Compress a context (str, list of passages, or token ids) into one memory embedding per chunk.

        Chunks go through the encoder `batch_size` (default `config.encoder_batch_size`) at a time, so
        peak memory depends on the micro-batch, not on the context length.
        """
        passages = self.tokenize_context(context)
        if any(len(p) == 0 for p in passages):
            raise ValueError("context has no tokens: give the text to compress.")
        chunk_ids, chunk_mask, counts = self.chunk_passages(passages)
        batch_size = batch_size or self.config.encoder_batch_size
        num_batches = -(-len(chunk_ids) // batch_size)
        if show_progress is None:
            show_progress = num_batches >= 8
        device = self.device
        embeds = torch.empty((len(chunk_ids), self.config.text_config.hidden_size), dtype=self.dtype, device=device)
        for start in tqdm(range(0, len(chunk_ids), batch_size), desc="compress", unit="batch", disable=not show_progress):
            stop = start + batch_size
            embeds[start:stop] = self.encode_chunks(chunk_ids[start:stop].to(device), chunk_mask[start:stop].to(device))
        return MemoryEmbeddings(
            embeds=embeds,
            chunk_size=self.config.chunk_size,
            num_source_tokens=sum(len(p) for p in passages),
            content_hash=content_hash(passages, self.config.chunk_size),
            chunks_per_passage=counts,
            model_fingerprint=self.fingerprint,
        )

    # ------------------------------------------------------------------ decoding
    def embed_inputs(self, input_ids: torch.Tensor, memory_embeds) -> torch.Tensor:
        """Input embeddings of `input_ids` with each row's `<MEM>` placeholders replaced by its memory, in order.

        `memory_embeds` is `(batch, max_slots, d)` (row `b` uses its first k_b slots, k_b = its placeholder
        count), a list of `(k_b, d)` tensors / `MemoryEmbeddings`, or `(total_slots, d)` in row order.
        """
        mem_id = self.config.mem_token_id
        is_slot = input_ids == mem_id
        embeds = self.get_input_embeddings()(input_ids.masked_fill(is_slot, 0))
        flat = self._flatten_memory(memory_embeds, is_slot.sum(dim=1))
        return embeds.masked_scatter(is_slot.unsqueeze(-1), flat.to(embeds.dtype))

    def _flatten_memory(self, memory_embeds, slots_per_row: torch.Tensor) -> torch.Tensor:
        if isinstance(memory_embeds, MemoryEmbeddings):
            memory_embeds = [memory_embeds]
        if isinstance(memory_embeds, (list, tuple)):
            rows = [m.embeds if isinstance(m, MemoryEmbeddings) else m for m in memory_embeds]
            for m in memory_embeds:
                if isinstance(m, MemoryEmbeddings):
                    m.check_compatible(self.config)
            memory_embeds = torch.cat(rows, dim=0)
        hidden = self.config.text_config.hidden_size
        if memory_embeds.shape[-1] != hidden:
            raise ValueError(
                f"memory_embeds have hidden size {memory_embeds.shape[-1]} but the model expects {hidden}: "
                "they come from another model. Re-compress the context with this model."
            )
        if memory_embeds.ndim == 3:
            if memory_embeds.shape[0] != len(slots_per_row) or int(slots_per_row.max()) > memory_embeds.shape[1]:
                raise ValueError(
                    f"memory_embeds of shape {tuple(memory_embeds.shape)} do not fit the placeholders: rows have "
                    f"{slots_per_row.tolist()} <MEM> tokens. Build input_ids with the memory's length."
                )
            keep = torch.arange(memory_embeds.shape[1], device=slots_per_row.device) < slots_per_row[:, None]
            return memory_embeds[keep.to(memory_embeds.device)]
        if memory_embeds.ndim != 2 or memory_embeds.shape[0] != int(slots_per_row.sum()):
            raise ValueError(
                f"got {memory_embeds.shape[0] if memory_embeds.ndim == 2 else tuple(memory_embeds.shape)} memory "
                f"embeddings for {int(slots_per_row.sum())} <MEM> placeholders in input_ids; they must match."
            )
        return memory_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        memory_embeds: torch.Tensor | list | None = None,
        chunk_ids: torch.LongTensor | None = None,
        chunk_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """Decoder pass, optionally encoding the memory first.

        Training: give `chunk_ids` / `chunk_attention_mask` (all examples' chunks, in row order) and
        `input_ids` with one `<MEM>` per chunk; the encoder runs with gradients and the LM loss on `labels`
        is returned. Inference: give precomputed `memory_embeds` instead (see `embed_inputs`).
        """
        if chunk_ids is not None:
            if memory_embeds is not None:
                raise ValueError("give either chunk_ids (encode now) or memory_embeds (precomputed), not both.")
            if chunk_attention_mask is None:
                chunk_attention_mask = (chunk_ids != self.config.text_config.pad_token_id).long()
            memory_embeds = self.encode_chunks(chunk_ids, chunk_attention_mask)
        if input_ids is not None and inputs_embeds is None:
            has_slots = bool((input_ids == self.config.mem_token_id).any())
            if has_slots:
                if memory_embeds is None:
                    raise ValueError(
                        "input_ids contain <MEM> placeholders but no memory was given: pass memory_embeds= "
                        "(from model.compress) or chunk_ids=."
                    )
                inputs_embeds, input_ids = self.embed_inputs(input_ids, memory_embeds), None
        return self.language_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def prepare_prompts(
        self,
        memories: list[MemoryEmbeddings],
        questions: list[str],
        template: str = "chat",
        system_prompt: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Left-padded `input_ids`, `attention_mask` and `(batch, max_slots, d)` `memory_embeds` for generation."""
        tokenizer = self.tokenizer
        prompts = [
            build_prompt(tokenizer, self.config, len(m), q, template=template, system_prompt=system_prompt).input_ids
            for m, q in zip(memories, questions)
        ]
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        longest = max(len(p) for p in prompts)
        if limit is not None and longest > limit:
            raise ValueError(
                f"the decoder prompt needs {longest} positions but the base model has {limit}: the context is too "
                f"long for this model at chunk_size={self.config.chunk_size} with wrap={self.config.wrap!r}. "
                "Shorten the context, use wrap='block', or a model trained with a larger chunk_size."
            )
        batch = left_pad(prompts, tokenizer.pad_token_id)
        slots = max(len(m) for m in memories)
        memory_embeds = torch.zeros((len(memories), slots, self.config.text_config.hidden_size), dtype=self.dtype)
        for row, memory in enumerate(memories):
            memory_embeds[row, : len(memory)] = memory.embeds.to(memory_embeds)
        batch["memory_embeds"] = memory_embeds
        return {name: tensor.to(self.device) for name, tensor in batch.items()}

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        *args,
        context=None,
        question: str | list[str] | None = None,
        memory: MemoryEmbeddings | list[MemoryEmbeddings] | None = None,
        template: str = "chat",
        system_prompt: str | None = None,
        **kwargs,
    ):
        """Answer from compressed memory, or run standard HF generation.

        Text path: `generate(context=..., question=...)` or `generate(memory=..., question=...)` returns a
        string (or a list for list inputs); one context or memory may serve a list of questions.
        Tensor path: `generate(input_ids=..., attention_mask=..., memory_embeds=...)` is
        `GenerationMixin.generate` (KV cache, sampling, streamers, `GenerationConfig`) and returns ids.
        """
        if context is None and memory is None and question is None:
            return super().generate(inputs, *args, **kwargs)
        memories, questions, single = self.pair_memories(question, context=context, memory=memory)
        batch = self.prepare_prompts(memories, questions, template=template, system_prompt=system_prompt)
        output = super().generate(**batch, **kwargs)
        texts = self.tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        texts = [text.strip() for text in texts]
        return texts[0] if single else texts

    def pair_memories(self, question, context=None, memory=None) -> tuple[list[MemoryEmbeddings], list[str], bool]:
        """Validate text-path arguments; return one memory per question (compressing contexts) and whether
        the input was a single question. One context or memory may serve a list of questions."""
        if question is None:
            raise ValueError("question is required with context= or memory=: pass question='...'.")
        if (context is None) == (memory is None):
            raise ValueError("pass exactly one of context= (text to compress) or memory= (from model.compress).")
        single = isinstance(question, str)
        questions = [question] if single else question
        if not isinstance(questions, (list, tuple)) or not questions:
            raise TypeError(f"question must be a string or a non-empty list of strings, got {type(question).__name__}.")
        for q in questions:
            if not isinstance(q, str):
                raise TypeError(f"question must be a string or a list of strings, got an item of type {type(q).__name__}.")
            if not q.strip():
                raise ValueError("question is empty or whitespace only.")
        if memory is not None:
            many = isinstance(memory, (list, tuple))
            memories = list(memory) if many else [memory]
            for m in memories:
                if not isinstance(m, MemoryEmbeddings):
                    raise TypeError(f"memory must be MemoryEmbeddings from model.compress, got {type(m).__name__}.")
                m.check_compatible(self.config)
        else:
            many = isinstance(context, (list, tuple)) and not single and not all(isinstance(x, int) for x in context)
            contexts = list(context) if many else [context]
            memories = [self.compress(c) for c in contexts]
        if len(memories) == 1 and len(questions) > 1:
            memories = memories * len(questions)
        if len(memories) != len(questions):
            raise ValueError(f"got {len(memories)} contexts/memories for {len(questions)} questions; give one per question.")
        return [m.to(self.device) for m in memories], list(questions), single


MemCompConfig.register_for_auto_class()
MemCompForCausalLM.register_for_auto_class("AutoModelForCausalLM")
