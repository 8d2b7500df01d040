"""From `EvalArguments` to what a benchmark runs with: the model, the two systems, sampling kwargs, the record store."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from . import protocol
from .config import EvalArguments
from .records import RecordStore, config_hash
from .systems import FullContextSystem, MemCompSystem

logger = logging.getLogger(__name__)


def load_model(args: EvalArguments, tiny_corpus: list[str] | None = None):
    """The memcomp checkpoint (installed classes; a folder's own code only with `trust_remote_code`), on GPU when there is one.

    `args.model == "tiny"` builds an untrained random model with a tokenizer trained on `tiny_corpus`:
    the pipeline is real, the answers are noise (smoke runs and tests only).
    """
    if not args.model:
        raise ValueError("no model given: pass --model CHECKPOINT (folder or Hub id), or --model tiny for a smoke run.")
    if args.model == "tiny":
        from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer

        if not tiny_corpus:
            raise ValueError("model='tiny' needs texts to train its tokenizer on; pass a real checkpoint with --model.")
        logger.warning("model='tiny': an UNTRAINED random model, for smoke runs; its scores are meaningless.")
        return build_tiny_memcomp(train_tokenizer(tiny_corpus, vocab_size=512))
    from modeling_memcomp.loading import load_memcomp

    device_map = "auto" if torch.cuda.is_available() else None
    model = load_memcomp(args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype, device_map=device_map)
    if not hasattr(model, "compress"):
        raise ValueError(f"--model {args.model!r} is a {type(model).__name__}, not a memcomp checkpoint: evaluate a "
                         "memcomp checkpoint (a plain model is the full-context baseline: --full_context_model).")
    return model.eval()


def load_baseline(args: EvalArguments):
    """The separate full-context model and its tokenizer, with YaRN positions when `full_context_yarn_factor` is set."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    trust = {"trust_remote_code": args.trust_remote_code}  # False: never None, which would prompt on a terminal
    config = AutoConfig.from_pretrained(args.full_context_model, **trust)
    if args.full_context_yarn_factor:
        config.rope_parameters = {
            **(config.rope_parameters or {}),
            "rope_type": "yarn",
            "factor": args.full_context_yarn_factor,
            "original_max_position_embeddings": config.max_position_embeddings,
        }
    device_map = "auto" if torch.cuda.is_available() else None
    baseline = AutoModelForCausalLM.from_pretrained(
        args.full_context_model, config=config, dtype=args.dtype, device_map=device_map, **trust
    )
    tokenizer = AutoTokenizer.from_pretrained(args.full_context_model, **trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return baseline.eval(), tokenizer


def resolve_template(model, args: EvalArguments) -> str:
    """The memcomp prompt template: `--template`, else the one the checkpoint records (`config.prompt_template`)."""
    return args.template or model.config.prompt_template


def load_encoder(args: EvalArguments):
    """The `--encoder_model` checkpoint that compresses instead of the evaluated one, or None."""
    if not args.encoder_model:
        return None
    return load_model(dataclasses.replace(args, model=args.encoder_model))


def build_systems(model, args: EvalArguments) -> list:
    """The systems `args.systems` names, in order; the baseline is the checkpoint's base LM unless one is given.

    Both use the checkpoint's template (the baseline reads the chat template where memcomp uses the RL one: the
    `\\boxed{}` instruction is the RL model's answer format, not the baseline's).
    """
    template = resolve_template(model, args)
    baseline_template = "plain" if template == "plain" else "chat"
    systems = []
    for name in args.systems:
        if name == "memcomp":
            systems.append(MemCompSystem(model, template=template, system_prompt=args.system_prompt, encoder=load_encoder(args)))
        elif args.full_context_model:
            baseline, tokenizer = load_baseline(args)
            systems.append(FullContextSystem(model, template=baseline_template, language_model=baseline, tokenizer=tokenizer))
        else:
            systems.append(FullContextSystem(model, template=baseline_template))
    return systems


def generate_kwargs(args: EvalArguments, benchmark: str, max_new_tokens: int | None = None) -> dict:
    """Sampling for the benchmark (paper temperature unless overridden) and the answer length cap."""
    temperature = protocol.TEMPERATURE[benchmark] if args.temperature is None else args.temperature
    cap = args.max_new_tokens or max_new_tokens or protocol.MAX_NEW_TOKENS[benchmark]
    return {**protocol.sampling_kwargs(temperature), "max_new_tokens": cap}


def open_store(args: EvalArguments, benchmark: str, model, extra_settings: dict | None = None) -> tuple[RecordStore, dict]:
    """The run's record store (`<output_dir>/records.jsonl`) keyed by the hash of the output-changing settings."""
    settings = {
        **args.run_settings(benchmark), "model_fingerprint": model.fingerprint,
        "decoder_fingerprint": model.decoder_fingerprint, "template": resolve_template(model, args), **(extra_settings or {}),
    }
    folder = output_dir(args, benchmark)
    folder.mkdir(parents=True, exist_ok=True)
    return RecordStore(folder / "records.jsonl", config_hash(settings)), settings


def output_dir(args: EvalArguments, benchmark: str) -> Path:
    """Where a benchmark writes: `--output_dir`, else `eval_results/<benchmark>`."""
    return Path(args.output_dir or Path("eval_results") / benchmark)
