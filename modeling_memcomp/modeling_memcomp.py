"""`MemCompForCausalLM`: one causal LM that compresses a context into memory embeddings and answers from them.

Encode: the context is cut into chunks of `chunk_size` tokens; each chunk runs alone through the encoder (the base
model, or for an RL checkpoint a frozen copy of the SFT weights, `memory_encoder`), its final hidden states are
pooled over real tokens and projected (`memory_projection`), one memory embedding per chunk. Decode: the
embeddings replace `<MEM>` placeholders in the decoder prompt (built by `prompting.build_prompt`) and the LM
generates.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import os
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedModel

from .configuration_memcomp import MemCompConfig
from .memory import MemoryEmbeddings, source_digest, tensor_checksum
from .pipeline_memcomp import MemCompQAPipeline
from .pooling import build_pooling
from .prefix_cache import CACHE_KEY, MemoryPrefix
from .prompting import build_prompt, left_pad, shared_prefix_length, stop_token_ids
from .special_tokens import add_memory_tokens, check_tokenizer_matches
from .tokenizer_io import HUB_KWARGS, load_tokenizer

PAPER_GENERATION_DEFAULTS = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05)
"""Qwen2.5 defaults the paper uses for QA (Appendix H.1)."""

FINGERPRINT_SAMPLES = 1024
"""Values hashed per parameter for `MemCompForCausalLM.fingerprint` (a strided sample: cheap even at 32B)."""

PIPELINE_TASK = "memcomp-qa"
PIPELINE_FILE = "pipeline_memcomp.py"
"""The custom pipeline shipped with every checkpoint: `pipeline("memcomp-qa", model=..., trust_remote_code=True)`.
This module imports it, so transformers copies it with the remote code (into its modules cache and on every save)."""

TEXT_PATH_REFUSES = ("input_ids", "attention_mask", "inputs_embeds", "memory_embeds", CACHE_KEY)
"""`generate` arguments the text path builds itself from `context=` / `memory=` and `question=`."""


def as_memory(memory) -> MemoryEmbeddings:
    """`memory` as this module's `MemoryEmbeddings`, whichever module defined its class (package or remote code)."""
    if isinstance(memory, MemoryEmbeddings):
        return memory
    if type(memory).__name__ != "MemoryEmbeddings" or not hasattr(memory, "embeds"):
        raise TypeError(f"memory must be MemoryEmbeddings from model.compress, got {type(memory).__name__}.")
    names = [f.name for f in dataclasses.fields(MemoryEmbeddings)]
    return MemoryEmbeddings(**{name: getattr(memory, name) for name in names if hasattr(memory, name)})


def _check_text(text: str, what: str) -> None:
    """A ValueError for text the tokenizer cannot take (lone surrogates), naming where it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{what} contains a character that is not valid Unicode text ({error.reason} at position {error.start}: "
            f"{text[error.start:error.end]!r}); clean the text (e.g. `text.encode('utf-8', 'replace').decode()`)."
        ) from None


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


def _start_at_mean(base: PreTrainedModel, ids: list[int], known: int) -> None:
    """Set rows `ids` of the input embeddings (and of an untied head) to the mean of the first `known` rows, as
    `resize_token_embeddings(mean_resizing=True)` starts the rows it adds; the padding rows hold untrained values."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    head = base.get_output_embeddings()
    weights = {id(w): w for w in (base.get_input_embeddings().weight, getattr(head, "weight", None)) if w is not None}
    gathered = contextlib.nullcontext()
    if is_deepspeed_zero3_enabled():  # weights partitioned at load (zero3_init_flag)
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(weights.values()), modifier_rank=0)
    with torch.no_grad(), gathered:
        for weight in weights.values():
            weight[ids] = weight[:known].float().mean(0).to(weight.dtype)


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
        # An RL checkpoint keeps the SFT encoder's weights apart from the RL-trained decoder's.
        self.memory_encoder = AutoModel.from_config(config.text_config) if config.separate_encoder else None
        self._tokenizer = None
        self._hub_kwargs = {}  # from_pretrained's subfolder / revision / token / cache_dir, for the lazy tokenizer
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, remembering `subfolder`, `revision`, `token`, ... for the tokenizer."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives (model, info)
        model._hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
        return loaded

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

        Loads weights and tokenizer, adds `<MEM_START>`, `<MEM_END>` and `<MEM>` to the tokenizer (plus ChatML's turn
        markers when it has no chat template), resizes the embeddings (new rows start at the mean embedding, also where
        the new ids fall in the rows a checkpoint pads its vocabulary with) and initialises the projection.
        """
        if isinstance(name_or_path_or_model, PreTrainedModel):
            base = name_or_path_or_model
            if tokenizer is None:
                tokenizer = load_tokenizer(base.name_or_path)
        else:
            base = AutoModelForCausalLM.from_pretrained(name_or_path_or_model, **from_pretrained_kwargs)
            if tokenizer is None:
                tokenizer = load_tokenizer(name_or_path_or_model)
        known, rows = len(tokenizer), base.get_input_embeddings().weight.shape[0]
        ids = add_memory_tokens(tokenizer)
        if len(tokenizer) > rows:
            base.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        padded = list(range(known, min(rows, len(tokenizer))))  # new ids in the rows a checkpoint pads its vocabulary with
        if padded:
            _start_at_mean(base, padded, known)
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
        """Paper defaults (top_k=20, top_p=0.8, repetition_penalty=1.05), stopping at EOS or the end of the turn."""
        start, end, mem = self.config.memory_token_ids
        return GenerationConfig(
            **PAPER_GENERATION_DEFAULTS,
            max_new_tokens=256,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            suppress_tokens=[start, end, mem],
        )

    def split_encoder(self) -> None:
        """Give the encoder a frozen copy of the current weights (`memory_encoder`), so that the decoder can train alone.

        The RL stage calls this on the SFT model: afterwards `compress()` keeps producing exactly the SFT memories
        while `generate()` runs the weights RL updates, and `save_pretrained` writes both (`separate_encoder=True`).
        """
        if self.memory_encoder is not None:
            return
        with torch.no_grad():
            self.memory_encoder = copy.deepcopy(self.language_model.base_model).requires_grad_(False)
        self.config.separate_encoder = True

    @property
    def encoder_model(self) -> nn.Module:
        """The base model that encodes chunks: `memory_encoder` when the checkpoint has one, else the decoder's own."""
        return self.memory_encoder if self.memory_encoder is not None else self.language_model.base_model

    @property
    def tokenizer(self):
        """The tokenizer saved with the model (loaded on first use from the checkpoint folder)."""
        if self._tokenizer is None:
            if not self.name_or_path:
                raise ValueError(
                    "this model has no tokenizer: set `model.tokenizer = ...` or pass `tokenizer=` to from_base."
                )
            # Only a model that itself runs as the folder's code may run the folder's tokenizer code too.
            remote = type(self).__module__.startswith("transformers_modules.")
            hub = getattr(self, "_hub_kwargs", None) or {}
            self.tokenizer = load_tokenizer(self.name_or_path, trust_remote_code=remote, **hub)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        check_tokenizer_matches(tokenizer, self.config)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer = tokenizer

    def save_pretrained(
        self, save_directory, is_main_process: bool = True, state_dict=None, push_to_hub: bool = False, *args, **kwargs
    ):
        """Save weights, config, remote code with `auto_map` and the pipeline (as transformers does) plus the tokenizer.

        `push_to_hub=True` (with `repo_id=`, `commit_message=`, ... as in transformers) uploads once all of it is written.
        """
        module = type(self).__module__.rsplit(".", 1)[-1]
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": f"{module}.{type(self).__name__}"}
        self.config.custom_pipelines = {
            PIPELINE_TASK: {
                "impl": f"{PIPELINE_FILE[:-3]}.MemCompQAPipeline", "pt": ["AutoModelForCausalLM"], "tf": [], "type": "text"
            }
        }
        upload = self._start_upload(save_directory, kwargs) if push_to_hub and is_main_process else None
        super().save_pretrained(save_directory, is_main_process, state_dict, False, *args, **kwargs)
        if not is_main_process:
            return
        if self._tokenizer is None and self.name_or_path:
            try:  # a model loaded from a folder and saved elsewhere takes its (not yet loaded) tokenizer along
                self.tokenizer
            except (OSError, ValueError) as error:
                if upload is not None:
                    raise OSError(f"not pushed: the tokenizer of {self.name_or_path} could not be loaded ({error}), and "
                                  "a repo without it cannot answer text; set model.tokenizer = ... first.") from error
                warnings.warn(f"{save_directory} was saved without a tokenizer: the one of {self.name_or_path} could not "
                              f"be loaded ({error}); set model.tokenizer = ... and save again.", stacklevel=2)
        if self._tokenizer is not None:
            self._tokenizer.save_pretrained(save_directory)
        if upload is not None:
            self._finish_upload(save_directory, **upload)

    def _start_upload(self, save_directory, kwargs: dict) -> dict:
        """As `PreTrainedModel.save_pretrained(push_to_hub=True)` starts: pop the Hub arguments, create the repo and note
        the files already in the folder (only files this save writes or changes are uploaded)."""
        from transformers import modeling_utils  # the names PreTrainedModel.save_pretrained itself calls

        named = inspect.signature(PreTrainedModel.save_pretrained).parameters
        hub = {key: kwargs.pop(key) for key in list(kwargs) if key not in named}
        token = kwargs.get("token")
        commit_message, create_pr = hub.pop("commit_message", None), hub.pop("create_pr", False)
        repo_id = hub.pop("repo_id", os.fspath(save_directory).rstrip(os.path.sep).split(os.path.sep)[-1])
        if hasattr(modeling_utils, "hf_api"):
            api = modeling_utils.hf_api()
        else:  # an older transformers 5.x
            from huggingface_hub import HfApi

            api = HfApi()
        repo_id = api.create_repo(repo_id, exist_ok=True, token=token, **hub).repo_id
        os.makedirs(save_directory, exist_ok=True)
        return dict(repo_id=repo_id, files_timestamps=self._get_files_timestamps(save_directory),
                    commit_message=commit_message, token=token, create_pr=create_pr)

    def _finish_upload(self, save_directory, repo_id, files_timestamps, commit_message, token, create_pr) -> None:
        """As `PreTrainedModel.save_pretrained(push_to_hub=True)` ends: write the model card, upload what changed."""
        from transformers import modeling_utils

        card = modeling_utils.create_and_tag_model_card(repo_id, self.model_tags, token=token)
        card.save(os.path.join(save_directory, "README.md"))
        self._upload_modified_files(
            save_directory, repo_id, files_timestamps, commit_message=commit_message, token=token, create_pr=create_pr
        )

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
        """Identity of the compressor: architecture, chunk size, pooling and a strided sample of every encoder weight.

        Covers what shapes memories (encoder, pooling, projection) and nothing else, so an RL checkpoint has its SFT
        encoder's fingerprint. Recomputed on every call: no optimizer (fused or not) can leave it stale.
        """
        return self._digest(
            f"C={self.config.chunk_size}|{self.config.pooling}",
            [
                *(("encoder." + name, p) for name, p in self.encoder_model.named_parameters()),
                *(("pooling." + name, p) for name, p in self.pooling.named_parameters()),
                *(("projection." + name, p) for name, p in self.memory_projection.named_parameters()),
            ],
        )

    @property
    def decoder_fingerprint(self) -> str:
        """Identity of the decoder (every `language_model` weight), e.g. to key evaluation records of RL checkpoints."""
        return self._digest(f"decoder|{self.config.wrap}", list(self.language_model.named_parameters()))

    def _digest(self, settings: str, parameters: list) -> str:
        text = self.config.text_config
        digest = hashlib.sha256(
            f"{text.model_type}|{text.hidden_size}|{text.num_hidden_layers}|{text.vocab_size}|{settings}".encode()
        )
        with torch.no_grad():
            samples = []
            for name, parameter in sorted(parameters, key=lambda item: item[0]):
                if parameter.device.type == "meta":
                    raise ValueError(f"{name} is offloaded (on the meta device), so the model cannot be fingerprinted (which "
                                     "matches memories and prefix caches to it): load it without disk/CPU offload "
                                     "(enough GPU memory, or a smaller dtype or quantization).")
                flat = parameter.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)][:FINGERPRINT_SAMPLES].float()
                # One device for all: device_map="auto" spreads the weights over several GPUs (one sync at the end).
                samples.append(sample.to(samples[0].device) if samples else sample)
                digest.update(name.encode())
            digest.update(torch.cat(samples).cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------------ encoding
    def encode_chunks(self, chunk_ids: torch.Tensor, chunk_attention_mask: torch.Tensor) -> torch.Tensor:
        """`(n, C)` chunk ids and mask -> `(n, d)` memory embeddings. Each chunk attends only within itself."""
        hidden = self.encoder_model(
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
            self._check_token_ids(context, "context")
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
        for i, passage in enumerate(passages):
            if not passage.strip():
                what = "context" if len(passages) == 1 else f"context passage {i}"
                raise ValueError(f"{what} is empty or whitespace only: give the text to compress.")
        for i, passage in enumerate(passages):
            _check_text(passage, "context" if len(passages) == 1 else f"context passage {i}")
        tokenizer = self.tokenizer
        return tokenizer(passages, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _check_token_ids(self, ids: Sequence[int], what: str) -> None:
        vocab = self.get_input_embeddings().num_embeddings
        bad = next((i for i in ids if isinstance(i, bool) or not 0 <= i < vocab), None)
        if bad is not None:
            raise ValueError(f"{what} has token id {bad!r}, outside this model's vocabulary (0..{vocab - 1}).")

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

    def num_chunks(self, passages: list[list[int]]) -> int:
        """Memory embeddings `compress` makes of these passages (each chunked separately)."""
        return sum(-(-len(p) // self.config.chunk_size) for p in passages)

    @torch.no_grad()
    def compress(
        self, context, batch_size: int | None = None, show_progress: bool | None = None, append_to=None
    ) -> MemoryEmbeddings:
        """Compress a context (str, list of passages, or token ids) into one memory embedding per chunk.

        Chunks go through the encoder `batch_size` (default `config.encoder_batch_size`) at a time, so
        peak memory depends on the micro-batch, not on the context length.

        `append_to=memory` grows an existing memory, encoding only the new chunks: a string or token ids continue
        its last passage (its partial last chunk is re-encoded with the new tokens), a list of strings adds new
        passages. The result equals compressing the concatenated token ids (or the longer passage list) at once.
        """
        passages = self.tokenize_context(context)
        if append_to is None:
            return self._compress_passages(passages, batch_size, show_progress)
        return self._append(as_memory(append_to), passages, isinstance(context, (list, tuple)) and not all(
            isinstance(x, int) for x in context
        ), batch_size, show_progress)

    def encode_passages(self, passages: list[list[int]], batch_size=None, show_progress=None):
        """`(num_chunks, d)` embeddings of the passages' chunks, and the chunk count per passage."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive number of chunks per encoder pass, got {batch_size!r}.")
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
        return embeds, counts

    def memory_of(self, embeds: torch.Tensor, passages: list[list[int]], counts: list[int]) -> MemoryEmbeddings:
        """The `MemoryEmbeddings` of `passages` (token ids) whose chunks this model encoded into `embeds`."""
        digest, tail, tail_state = source_digest(passages, self.config.chunk_size)
        return MemoryEmbeddings(
            embeds=embeds, chunk_size=self.config.chunk_size, num_source_tokens=sum(len(p) for p in passages),
            content_hash=digest, chunks_per_passage=counts, model_fingerprint=self.fingerprint,
            tail_token_ids=tail, tail_state=tail_state,
        )

    def _compress_passages(self, passages: list[list[int]], batch_size=None, show_progress=None) -> MemoryEmbeddings:
        embeds, counts = self.encode_passages(passages, batch_size, show_progress)
        return self.memory_of(embeds, passages, counts)

    def _append(self, memory: MemoryEmbeddings, new: list[list[int]], new_passages: bool, batch_size, show_progress):
        """`memory` followed by `new` (see `compress(append_to=)`), encoding only the chunks that change."""
        memory.check_compatible(self.config, self.fingerprint)
        if memory.model_fingerprint and memory.model_fingerprint != self.fingerprint:
            raise ValueError(
                f"append_to: this memory was made by model {memory.model_fingerprint}, not by this one "
                f"({self.fingerprint}); one memory cannot hold two encoders' embeddings. Compress the whole context "
                "with this model, then append to that memory."
            )
        if memory.tail_token_ids is None:
            raise ValueError(
                "this memory does not record its last partial chunk (it was saved by an older memcomp), so it cannot "
                "grow; compress the whole context once with this version, then append to that memory."
            )
        size, tail = self.config.chunk_size, memory.tail_token_ids
        counts = list(memory.chunks_per_passage)
        if new_passages:
            keep, passages, state, continue_last = memory.num_embeddings, new, memory.content_hash, False
        else:
            keep = memory.num_embeddings - (1 if tail else 0)
            passages, continue_last = [tail + new[0]], True
            state = memory.tail_state if tail else memory.content_hash
            counts[-1] -= 1 if tail else 0
        embeds, new_counts = self.encode_passages(passages, batch_size, show_progress)
        if continue_last:
            counts[-1] += new_counts[0]
        else:
            counts += new_counts
        digest, new_tail, tail_state = source_digest(passages, size, state=state, continue_last=continue_last)
        return MemoryEmbeddings(
            embeds=torch.cat([memory.embeds[:keep].to(embeds), embeds]),
            chunk_size=size,
            num_source_tokens=memory.num_source_tokens + sum(len(p) for p in new),
            content_hash=digest,
            chunks_per_passage=counts,
            model_fingerprint=self.fingerprint,
            tail_token_ids=new_tail,
            tail_state=tail_state,
        )

    def save_memory(self, memory, path: str | os.PathLike) -> None:
        """Write a memory to a `.safetensors` file (works without memcomp installed, e.g. for remote-code models)."""
        as_memory(memory).save(path)

    def load_memory(self, path: str | os.PathLike) -> MemoryEmbeddings:
        """Read a memory written by `save_memory` / `MemoryEmbeddings.save`, checked against this model, on its device."""
        memory = MemoryEmbeddings.load(path)
        memory.check_compatible(self.config)
        return memory.to(self.device)

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

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs):
        """GenerationMixin's expansion for beams / `num_return_sequences`, giving every copy of a row that row's memory.

        The parent repeats each tensor along dim 0: right for `(batch, slots, d)`, but it would repeat single embeddings
        of a `(total_slots, d)` memory and leaves a list alone.
        """
        memory_embeds = model_kwargs.pop("memory_embeds", None)
        if memory_embeds is not None and expand_size > 1 and input_ids is not None:
            slots = (input_ids == self.config.mem_token_id).sum(dim=1)
            rows = self._flatten_memory(memory_embeds, slots).split(slots.tolist())
            memory_embeds = torch.cat([row for row in rows for _ in range(expand_size)])
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)
        if memory_embeds is not None:
            model_kwargs["memory_embeds"] = memory_embeds
        return input_ids, model_kwargs

    def _flatten_memory(self, memory_embeds, slots_per_row: torch.Tensor) -> torch.Tensor:
        if not isinstance(memory_embeds, (torch.Tensor, list, tuple)):
            memory_embeds = [memory_embeds]
        if isinstance(memory_embeds, (list, tuple)):
            rows = []
            for m in memory_embeds:
                if not isinstance(m, torch.Tensor):
                    m = as_memory(m)
                    m.check_compatible(self.config)
                    m = m.embeds
                rows.append(m)
            counts = [m.shape[0] for m in rows if m.ndim == 2]
            if len(counts) == len(rows) == len(slots_per_row) and counts != slots_per_row.tolist():  # one per row
                raise ValueError(f"the memories have {counts} embeddings, but the rows of input_ids have "
                                 f"{slots_per_row.tolist()} <MEM> placeholders: give row b the memory its prompt was built for.")
            memory_embeds = torch.cat(rows, dim=0)
        if not memory_embeds.is_floating_point():
            raise ValueError(f"memory_embeds must be floating point (from model.compress), got {memory_embeds.dtype}.")
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
            memory_embeds = memory_embeds[keep.to(memory_embeds.device)]
        elif memory_embeds.ndim != 2 or memory_embeds.shape[0] != int(slots_per_row.sum()):
            raise ValueError(
                f"got {memory_embeds.shape[0] if memory_embeds.ndim == 2 else tuple(memory_embeds.shape)} memory "
                f"embeddings for {int(slots_per_row.sum())} <MEM> placeholders in input_ids; they must match."
            )
        if not torch.isfinite(memory_embeds).all():
            raise ValueError("memory_embeds contain NaN or infinite values; re-compress the context.")
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
            if chunk_attention_mask is None:  # a pad id inside a chunk (an end-of-text equal to pad) is not padding
                raise ValueError("chunk_ids need chunk_attention_mask (1 for real tokens; model.chunk_passages returns "
                                 "both): padding cannot be told from a real token whose id is the pad id.")
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

    def prompt_settings(self, template: str | None, system_prompt: str | None) -> tuple[str, str | None]:
        """The template and system prompt to use: the given ones, else those the checkpoint was trained with."""
        template = template or self.config.prompt_template
        return template, system_prompt if system_prompt is not None else self.config.system_prompt

    def prompt_ids(self, num_memory: int, question: str, template: str, system_prompt: str | None) -> list[int]:
        """Decoder prompt ids for one question, checked against the decoder's positions with an error naming the culprit."""
        ids = build_prompt(self.tokenizer, self.config, num_memory, question, template=template, system_prompt=system_prompt).input_ids
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is None or len(ids) <= limit:
            return ids
        question_only = len(build_prompt(self.tokenizer, self.config, 0, question, template=template, system_prompt=system_prompt).input_ids)
        if question_only >= limit:
            raise ValueError(
                f"the question alone needs {question_only} decoder positions but the base model has {limit}: "
                "shorten the question."
            )
        hint = "Shorten the context or use a model with more positions."
        if self.config.wrap == "each":
            hint = "Shorten the context, use a model trained with wrap='block', or one with more positions."
        raise ValueError(
            f"the decoder prompt needs {len(ids)} positions ({num_memory} memory embeddings at "
            f"chunk_size={self.config.chunk_size}, wrap={self.config.wrap!r}) but the base model has {limit}: the "
            f"context is too long for this model. {hint}"
        )

    def prepare_prompts(
        self,
        memories: list[MemoryEmbeddings],
        questions: list[str],
        template: str | None = None,
        system_prompt: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Left-padded `input_ids`, `attention_mask` and `(batch, max_slots, d)` `memory_embeds` for generation."""
        template, system_prompt = self.prompt_settings(template, system_prompt)
        memories = [as_memory(m) for m in memories]
        if len(memories) != len(questions):
            raise ValueError(f"got {len(memories)} memories for {len(questions)} questions: give one memory per question.")
        for memory in memories:  # as generate(memory=...) does: another chunk size is refused, another model warned of
            memory.check_compatible(self.config, self.fingerprint)
        return self._prompt_batch(memories, questions, template, system_prompt)

    def _prompt_batch(self, memories: list[MemoryEmbeddings], questions: list[str], template: str, system_prompt) -> dict:
        """`prepare_prompts` for memories already checked (the text path checks them once, in `pair_memories`)."""
        prompts = [self.prompt_ids(len(m), q, template, system_prompt) for m, q in zip(memories, questions)]
        batch = left_pad(prompts, self.tokenizer.pad_token_id)
        slots = max(len(m) for m in memories)
        memory_embeds = torch.zeros((len(memories), slots, self.config.text_config.hidden_size), dtype=self.dtype)
        for row, memory in enumerate(memories):
            memory_embeds[row, : len(memory)] = memory.embeds.to(memory_embeds)
        batch["memory_embeds"] = memory_embeds
        return {name: tensor.to(self.device) for name, tensor in batch.items()}

    @torch.no_grad()
    def prefill_memory(self, memory, template: str | None = None, system_prompt: str | None = None) -> MemoryPrefix:
        """Run the prompt prefix every question about `memory` shares (system turn + memory block) once; keep its KV cache.

        Pass the result as `generate(memory=memory, question=..., memory_cache=prefix)`: each call then prefills only
        its question. `generate(memory=memory, question=[...])` does this by itself for a list of questions.
        """
        memory = as_memory(memory)
        memory.check_compatible(self.config, self.fingerprint)
        template, system_prompt = self.prompt_settings(template, system_prompt)
        length = shared_prefix_length(self.tokenizer, self.config, len(memory), template, system_prompt)
        ids = build_prompt(self.tokenizer, self.config, len(memory), "?", template=template, system_prompt=system_prompt).input_ids[:length]
        outputs = self(
            input_ids=torch.tensor([ids], device=self.device), memory_embeds=[memory.to(self.device)], use_cache=True
        )
        return MemoryPrefix(ids, outputs[CACHE_KEY], memory.content_hash, len(memory), template, system_prompt,
                            tensor_checksum(memory.embeds), self.decoder_fingerprint)

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        *args,
        context=None,
        question: str | list[str] | None = None,
        memory: MemoryEmbeddings | list[MemoryEmbeddings] | None = None,
        template: str | None = None,
        system_prompt: str | None = None,
        batch_size: int = 32,
        memory_cache: MemoryPrefix | None = None,
        reuse_prefix: bool = True,
        **kwargs,
    ):
        """Answer from compressed memory, or run standard HF generation.

        Text path: `generate(context=..., question=...)` or `generate(memory=..., question=...)` returns a string
        (a list for list inputs; a list per question with `num_return_sequences > 1`; the `GenerateOutput` with a
        `texts` field with `return_dict_in_generate=True`). One context or memory may serve a list of questions: its
        prompt prefix is then prefilled once and reused (`reuse_prefix=False`, `use_cache=False` or a
        `cache_implementation` turn that off; `memory_cache=` takes a `prefill_memory` result). Questions run
        `batch_size` at a time. `template` / `system_prompt` default to the checkpoint's (`config.prompt_template` /
        `config.system_prompt`). The context is encoded without gradients, as by `compress`.
        Tensor path: `generate(input_ids=..., attention_mask=..., memory_embeds=...)` is `GenerationMixin.generate`
        (KV cache, sampling, streamers, `GenerationConfig`) and returns ids. On both paths a caller's `max_length`
        without `max_new_tokens` replaces the checkpoint's default `max_new_tokens`.
        """
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs)):
            raise TypeError(
                "generate() got text as its first positional argument, which the tensor path reads as token ids: ask "
                "with keywords, generate(context=..., question=...) or generate(memory=..., question=...)."
            )
        if "tokenizer" not in kwargs and self._generation_setting(kwargs, "stop_strings") is not None:
            kwargs["tokenizer"] = self.tokenizer  # transformers needs it to match stop strings
        if context is None and memory is None and question is None:
            if memory_cache is not None:
                raise ValueError("memory_cache= needs memory= and question=.")
            return super().generate(inputs, *args, **kwargs)
        if inputs is not None or args:
            raise TypeError("the text path takes keyword arguments only: generate(context=... or memory=..., question=...).")
        clash = [name for name in TEXT_PATH_REFUSES if name in kwargs]
        if clash:
            raise TypeError(
                f"generate(context=/memory=, question=) builds the prompt itself and takes no {', '.join(clash)}: pass "
                "either text (context= or memory=, with question=) or tensors (input_ids=, attention_mask=, "
                "memory_embeds=), not both; a prefilled memory prefix goes in memory_cache=."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of questions per generate call, got {batch_size!r}.")
        template, system_prompt = self.prompt_settings(template, system_prompt)
        with torch.no_grad():  # as compress(): no autograd graph kept over the encoder's micro-batches
            memories, questions, single = self.pair_memories(
                question, context=context, memory=memory, template=template, system_prompt=system_prompt
            )
        config = kwargs.get("generation_config") or self.generation_config
        per_question = kwargs.get("num_return_sequences") or config.num_return_sequences or 1
        return_dict = kwargs.get("return_dict_in_generate", config.return_dict_in_generate)
        if return_dict and len(questions) > batch_size:
            raise ValueError(
                f"return_dict_in_generate=True returns one GenerateOutput: pass batch_size >= {len(questions)} "
                "(the number of questions) so they run in one call."
            )
        shared = len({id(m) for m in memories}) == 1
        cache_implementation = self._generation_setting(kwargs, "cache_implementation")
        cannot_share_cache = self._generation_setting(kwargs, "use_cache") is False or cache_implementation is not None
        prefix = memory_cache
        if prefix is not None:
            if not shared:
                raise ValueError("memory_cache= serves one memory: pass memory= (one MemoryEmbeddings) with it.")
            if cannot_share_cache:
                raise ValueError(
                    "memory_cache= is a prefilled KV cache and needs the default one: drop use_cache=False / "
                    f"cache_implementation={cache_implementation!r}, or drop memory_cache=."
                )
            prefix.check_matches(memories[0], template, system_prompt, self.decoder_fingerprint)
        elif reuse_prefix and shared and len(questions) > 1 and not cannot_share_cache:  # those caches are built by generate
            prefix = self.prefill_memory(memories[0], template, system_prompt)
        texts, output = [], None
        for start in range(0, len(questions), batch_size):
            rows = slice(start, start + batch_size)
            if prefix is None:
                batch = self._prompt_batch(memories[rows], questions[rows], template, system_prompt)
            else:
                batch = self._prefixed_batch(prefix, questions[rows], template, system_prompt, kwargs, config)
            output = super().generate(**batch, **kwargs)
            sequences = output.sequences if return_dict else output
            decoded = self.tokenizer.batch_decode(sequences[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            texts += [text.strip() for text in decoded]
        if per_question > 1:
            texts = [texts[i : i + per_question] for i in range(0, len(texts), per_question)]
        if return_dict:
            output["texts"] = texts[0] if single else texts
            return output
        return texts[0] if single else texts

    def _generation_setting(self, kwargs: dict, name: str):
        """`name` as generation will see it: the keyword argument, else the caller's `generation_config`, else the model's."""
        if kwargs.get(name) is not None:
            return kwargs[name]
        for config in (kwargs.get("generation_config"), self.generation_config):
            if config is not None and getattr(config, name, None) is not None:
                return getattr(config, name)
        return None

    def _prepare_generation_config(self, generation_config, *args, **kwargs):
        """transformers' merge of the caller's settings over the model's, where a caller's `max_length` (without
        `max_new_tokens`) also beats the model's default `max_new_tokens`, which transformers would give precedence."""
        config, model_kwargs = super()._prepare_generation_config(generation_config, *args, **kwargs)
        given = {
            name for name in ("max_length", "max_new_tokens")
            if kwargs.get(name) is not None or getattr(generation_config, name, None) is not None
        }
        if given == {"max_length"}:
            config.max_new_tokens = None
        return config, model_kwargs

    def _prefixed_batch(self, prefix: MemoryPrefix, questions: list[str], template, system_prompt, kwargs, config) -> dict:
        """Prompt ids laid out as [shared prefix][padding][question] with the prefix's cache copied for every row."""
        tails = []
        for question in questions:
            ids = self.prompt_ids(prefix.num_memory, question, template, system_prompt)
            if ids[: len(prefix)] != prefix.input_ids:
                raise RuntimeError("a prompt does not start with the shared prefix; the template renders it differently.")
            tails.append(ids[len(prefix) :])
        longest = max(len(t) for t in tails)
        # The padding sits mid-row, where transformers' repetition penalty counts it (it skips left padding only):
        # <MEM_START> is already in every prefix and never generated, so the penalised token set is the unpadded row's.
        pad = self.config.memory_token_ids[0]
        input_ids = torch.tensor([prefix.input_ids + [pad] * (longest - len(t)) + t for t in tails])
        attention_mask = torch.tensor([[1] * len(prefix) + [0] * (longest - len(t)) + [1] * len(t) for t in tails])
        expand = max(kwargs.get("num_beams") or config.num_beams or 1, kwargs.get("num_return_sequences") or config.num_return_sequences or 1)
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            CACHE_KEY: prefix.expanded(len(tails) * expand),
        }

    def pair_memories(
        self, question, context=None, memory=None, template: str | None = None, system_prompt: str | None = None
    ) -> tuple[list[MemoryEmbeddings], list[str], bool]:
        """Validate text-path arguments; return one memory per question (compressing contexts) and whether
        the input was a single question. One context or memory may serve a list of questions (the same object is
        then repeated). Prompt lengths are checked before any context is encoded."""
        if question is None:
            raise ValueError("question is required with context= or memory=: pass question='...'.")
        if (context is None) == (memory is None):
            raise ValueError("pass exactly one of context= (text to compress) or memory= (from model.compress).")
        template, system_prompt = self.prompt_settings(template, system_prompt)
        single = isinstance(question, str)
        questions = [question] if single else question
        if not isinstance(questions, (list, tuple)) or not questions:
            raise TypeError(f"question must be a string or a non-empty list of strings, got {type(question).__name__}.")
        for i, q in enumerate(questions):
            if not isinstance(q, str):
                raise TypeError(f"question must be a string or a list of strings, got an item of type {type(q).__name__}.")
            if not q.strip():
                raise ValueError("question is empty or whitespace only.")
            _check_text(q, "question" if single else f"question {i}")
        if memory is not None:
            many = isinstance(memory, (list, tuple))
            memories = [as_memory(m) for m in (memory if many else [memory])]
            fingerprint = self.fingerprint
            for m in memories:
                m.check_compatible(self.config, fingerprint)
        else:
            many = isinstance(context, (list, tuple)) and not single and not all(isinstance(x, int) for x in context)
            passages = [self.tokenize_context(c) for c in (context if many else [context])]
            if len(passages) not in (1, len(questions)):
                raise ValueError(f"got {len(passages)} contexts for {len(questions)} questions; give one per question.")
            for ids, q in zip(passages * len(questions) if len(passages) == 1 else passages, questions):
                self.prompt_ids(self.num_chunks(ids), q, template, system_prompt)  # fail before encoding
            memories = [self._compress_passages(ids) for ids in passages]
        memories = [m.to(self.device) for m in memories]
        if len(memories) == 1 and len(questions) > 1:
            memories = memories * len(questions)
        if len(memories) != len(questions):
            raise ValueError(f"got {len(memories)} contexts/memories for {len(questions)} questions; give one per question.")
        return memories, list(questions), single


MemCompConfig.register_for_auto_class()
MemCompForCausalLM.register_for_auto_class("AutoModelForCausalLM")


def _register_pipeline() -> None:
    """Make `pipeline("memcomp-qa", model=<a loaded model>)` work: transformers only reads `custom_pipelines` from a path."""
    from transformers.pipelines import PIPELINE_REGISTRY

    if PIPELINE_TASK not in PIPELINE_REGISTRY.get_supported_tasks():  # the package or a checkpoint's code: either serves
        PIPELINE_REGISTRY.register_pipeline(
            PIPELINE_TASK, pipeline_class=MemCompQAPipeline, pt_model=AutoModelForCausalLM, type="text"
        )


_register_pipeline()
