"""Serve a memcomp decoder with vLLM: the decoder is a plain base LM fed prompt embeddings.

The memory lives only in the input embeddings, so vLLM needs no custom model: `export_decoder` writes the
wrapped LM as an ordinary checkpoint, `build_prompt_embeds` builds each prompt's embeddings with the same
prompt builder and `embed_inputs` as HF generation, and `VLLMDecoder` runs them through
`LLM(..., enable_prompt_embeds=True)`. vLLM is imported lazily: this module imports without it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from transformers import GenerationConfig

from .memory import MemoryEmbeddings
from .modeling_memcomp import MemCompForCausalLM

VLLM_INSTALL_HINT = (
    "vLLM is not installed in this environment. Build the separate vLLM environment with "
    "`bash scripts/make_vllm_env.sh` and run with `.venv-vllm/bin/python` (see docs/vllm.md)."
)
SUPPRESS_BIAS = -100.0
"""Logit bias that keeps a suppressed token from being picked (the most negative bias vLLM accepts)."""
HF_TO_VLLM = {
    "max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "eos_token_id": "stop_token_ids",
    "num_return_sequences": "n",
}
VLLM_SAMPLING_KEYS = (
    "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "n", "ignore_eos",
    "max_tokens", "min_tokens", "stop_token_ids", "logit_bias",
)


def require_vllm():
    """Import and return `vllm`, or raise an ImportError that says how to get the vLLM environment."""
    try:
        import vllm
        from vllm import LLM, SamplingParams  # noqa: F401  (a stray `vllm/` folder on sys.path has neither)
    except ImportError as error:
        raise ImportError(VLLM_INSTALL_HINT) from error
    return vllm


def export_decoder(model: MemCompForCausalLM, folder: str | os.PathLike) -> Path:
    """Write the decoder as a plain base-LM checkpoint vLLM can load: LM weights, tokenizer, generation config.

    The tokenizer keeps the memory tokens (the vocabulary must match the resized embeddings) and the
    generation config carries the memory model's stop tokens, so vLLM stops where HF `generate` does.
    """
    if not isinstance(model, MemCompForCausalLM):
        raise TypeError(f"model must be a MemCompForCausalLM, got {type(model).__name__}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.language_model.save_pretrained(folder, safe_serialization=True)
    model.generation_config.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


@torch.no_grad()
def build_prompt_embeds(
    model: MemCompForCausalLM,
    memories: MemoryEmbeddings | list[MemoryEmbeddings],
    questions: str | list[str],
    template: str | None = None,
    system_prompt: str | None = None,
) -> list[torch.Tensor]:
    """One `(seq, d)` CPU tensor per question: the decoder input HF `generate` sees, without padding.

    Ids come from `prompting.build_prompt` and the `<MEM>` slots are filled by `model.embed_inputs`,
    exactly as in `model.generate(memory=..., question=...)`, with the checkpoint's template unless one is given.
    One memory may serve many questions.
    """
    template, system_prompt = model.prompt_settings(template, system_prompt)
    memories, questions, _ = model.pair_memories(questions, memory=memories, template=template, system_prompt=system_prompt)
    embeds = []
    for memory, question in zip(memories, questions):
        ids = model.prompt_ids(len(memory), question, template, system_prompt)
        input_ids = torch.tensor([ids], device=model.device)
        embeds.append(model.embed_inputs(input_ids, [memory])[0].cpu())
    return embeds


def sampling_kwargs(generation_config: GenerationConfig | None = None, **overrides) -> dict:
    """vLLM `SamplingParams` keyword arguments equivalent to an HF `GenerationConfig` plus overrides.

    Overrides take HF names (`do_sample`, `max_new_tokens`, `eos_token_id`, `suppress_tokens`, ...) or
    vLLM's. `do_sample=False` becomes greedy (`temperature=0`), `suppress_tokens` a -100 logit bias.
    """
    known = {"do_sample", "suppress_tokens", *HF_TO_VLLM, *VLLM_SAMPLING_KEYS}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown sampling option(s) {unknown}: use one of {sorted(known)}.")
    settings = generation_config.to_dict() if generation_config is not None else {}
    settings.pop("num_return_sequences", None)  # samples per prompt are the caller's choice (GRPO sets its own n)
    settings.update(overrides)
    kwargs = {}
    for name, value in settings.items():
        name = HF_TO_VLLM.get(name, name)
        if value is not None and name in VLLM_SAMPLING_KEYS:
            kwargs[name] = value
    if isinstance(kwargs.get("stop_token_ids"), int):
        kwargs["stop_token_ids"] = [kwargs["stop_token_ids"]]
    if settings.get("suppress_tokens") and "logit_bias" not in overrides:
        kwargs["logit_bias"] = {int(token): SUPPRESS_BIAS for token in settings["suppress_tokens"]}
    if not settings.get("do_sample", False):
        kwargs["temperature"] = 0.0
        for name in ("top_k", "top_p", "min_p"):
            kwargs.pop(name, None)
    return kwargs


def checkpoint_dtype(folder: str | os.PathLike) -> str:
    """The dtype a checkpoint was saved in; vLLM's "auto" would run float32 weights in half precision."""
    config = json.loads((Path(folder) / "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype") or "auto"


class VLLMDecoder:
    """A memcomp decoder served by vLLM from prompt embeddings.

    `VLLMDecoder(model_or_folder, **llm_kwargs)` exports the model's decoder (to a temporary folder unless
    `export_dir=` is given) or loads an `export_decoder` folder, and starts `vllm.LLM` with
    `enable_prompt_embeds=True`, prefix caching (questions on one memory reuse its KV blocks), the checkpoint's
    dtype and eager mode unless overridden in `llm_kwargs`.
    Start it under `if __name__ == "__main__":`: vLLM spawns worker processes.
    """

    def __init__(self, folder_or_model, export_dir: str | os.PathLike | None = None, **llm_kwargs):
        if not isinstance(folder_or_model, MemCompForCausalLM) and not (Path(folder_or_model) / "config.json").is_file():
            raise ValueError(
                f"folder_or_model={str(folder_or_model)!r} is not a decoder checkpoint (no config.json): pass a "
                "MemCompForCausalLM or a folder written by export_decoder(model, folder)."
            )
        vllm = require_vllm()
        self._tmp = self._sync_dir = None
        if isinstance(folder_or_model, MemCompForCausalLM):
            if export_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="memcomp-vllm-")
                export_dir = self._tmp.name
            folder = export_decoder(folder_or_model, export_dir)
        else:
            folder = Path(folder_or_model)
        self.folder = folder
        self.generation_config = GenerationConfig.from_pretrained(folder)
        # Prefix caching hashes prompt-embedding blocks too (vLLM >= 0.11): questions on one memory share its prefix.
        settings = dict(
            model=str(folder), enable_prompt_embeds=True, enable_prefix_caching=True, dtype=checkpoint_dtype(folder),
            enforce_eager=True,
        )
        settings.update(llm_kwargs)
        self.llm_settings = settings  # what the engine was started with (benchmarks record it)
        self.llm = vllm.LLM(**settings)
        self._sampling_params_class = vllm.SamplingParams

    def sync_weights(self, model: MemCompForCausalLM) -> None:
        """Load the model's current decoder weights into the running engine (e.g. after an RL step).

        The weights go through a safetensors file into vLLM's in-place `reload_weights` on every worker
        (works with engine subprocesses, where tensors cannot travel by RPC); the prefix cache is reset.
        """
        if not isinstance(model, MemCompForCausalLM):
            raise TypeError(f"model must be a MemCompForCausalLM, got {type(model).__name__}.")
        if self._sync_dir is None:
            self._sync_dir = tempfile.TemporaryDirectory(prefix="memcomp-vllm-sync-")
        model.language_model.save_pretrained(self._sync_dir.name, safe_serialization=True)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self._sync_dir.name})
        self.llm.reset_prefix_cache()

    def sampling_params(self, **overrides):
        """`SamplingParams` from the model's generation config (paper defaults, stop and suppressed tokens)."""
        return self._sampling_params_class(**sampling_kwargs(self.generation_config, **overrides))

    def generate(self, prompt_embeds: list[torch.Tensor], sampling_params=None, use_tqdm: bool = False) -> list[list[int]]:
        """Generated token ids per prompt, in input order (stop token included, as in HF output).

        With `n` samples per prompt (GRPO groups), each prompt's `n` lists are consecutive.
        """
        if isinstance(prompt_embeds, torch.Tensor) or not prompt_embeds:
            raise TypeError("prompt_embeds must be a non-empty list of (seq, hidden) tensors from build_prompt_embeds.")
        if any(not isinstance(e, torch.Tensor) or e.ndim != 2 for e in prompt_embeds):
            raise ValueError("each prompt embedding must be a (seq, hidden) tensor; use build_prompt_embeds(model, ...).")
        sampling_params = sampling_params or self.sampling_params()
        prompts = [{"prompt_embeds": embeds} for embeds in prompt_embeds]
        outputs = self.llm.generate(prompts, sampling_params, use_tqdm=use_tqdm)
        return [list(sample.token_ids) for output in outputs for sample in output.outputs]

    def answer(
        self,
        model: MemCompForCausalLM,
        memories: MemoryEmbeddings | list[MemoryEmbeddings],
        questions: str | list[str],
        template: str | None = None,
        system_prompt: str | None = None,
        **sampling,
    ) -> list[str] | list[list[str]]:
        """Text answers, like `model.generate(memory=..., question=[...])` but decoded by vLLM: always a list, one
        answer per question, or with `num_return_sequences` (vLLM: `n`) above 1, a list of that many per question.

        `sampling` takes HF names (`do_sample`, `max_new_tokens`, ...) or vLLM's, over the model's defaults.
        """
        embeds = build_prompt_embeds(model, memories, questions, template=template, system_prompt=system_prompt)
        params = self.sampling_params(**sampling)
        tokens = self.generate(embeds, params)
        texts = [text.strip() for text in model.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        per_question = getattr(params, "n", 1) or 1
        return texts if per_question == 1 else [texts[i : i + per_question] for i in range(0, len(texts), per_question)]
