"""Float32 master weights for trainable parameters loaded in half precision, as FSDP2 and ZeRO keep themselves."""

from __future__ import annotations

import contextlib
import logging
import weakref

import torch

logger = logging.getLogger(__name__)

HALF = (torch.bfloat16, torch.float16)
_UPCAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> (the dtype its trainable weights were loaded in, those parameters), for saving them back in it."""


def upcast_trainable_weights(model: torch.nn.Module, args) -> int:
    """Hold trainable bf16/fp16 weights in float32 so small updates land; returns how many tensors were upcast.

    An AdamW step at RL's LR 1e-6 moves a 0.02 weight by about 5e-5 of itself, far under bf16's 2^-8 resolution: on
    one GPU or under DDP, whose Trainer keeps no float32 copy, it rounds away. The forward still computes in half
    precision under `bf16`/`fp16` autocast; frozen weights stay as loaded. DeepSpeed keeps its own float32 copy.
    """
    if getattr(args, "deepspeed", None) or getattr(args, "deepspeed_plugin", None) is not None:
        return 0
    half = [p for p in model.parameters() if p.requires_grad and p.dtype in HALF]
    if not half:
        return 0
    if not (args.bf16 or args.fp16):
        raise ValueError(
            f"{len(half)} trainable weight tensors are {half[0].dtype} and bf16/fp16 autocast is off, so updates under "
            "that dtype's resolution would round away: pass --bf16 true (weights kept in float32, computed in "
            "bfloat16) or load the model in float32."
        )
    _UPCAST[model] = (half[0].dtype, half)
    for parameter in half:
        parameter.data = parameter.data.float()
    logger.info("%d trainable weight tensors upcast to float32 (master weights); the forward runs under %s autocast.",
                len(half), "bf16" if args.bf16 else "fp16")
    return len(half)


@contextlib.contextmanager
def in_loaded_dtype(model: torch.nn.Module):
    """Within: the weights `upcast_trainable_weights` upcast are back in the dtype they were loaded in, so a saved
    model is as large as the one loaded (checkpoints for resuming keep the float32 values); float32 again after."""
    dtype, parameters = _UPCAST.get(model, (None, []))
    masters = [parameter.data for parameter in parameters]
    for parameter in parameters:
        parameter.data = parameter.data.to(dtype)
    try:
        yield
    finally:
        for parameter, master in zip(parameters, masters):
            parameter.data = master


def final_save_context(trainer, internal_call: bool):
    """`Trainer.save_model`'s context: a final save (not a checkpoint) writes the weights in their loaded dtype; under
    FSDP/DeepSpeed the engine owns the parameters and saves as it does."""
    if internal_call or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return contextlib.nullcontext()
    return in_loaded_dtype(trainer.model)


class SaveInLoadedDtype:
    """Trainer mixin: a final `save_model` writes weights upcast for training in the dtype they were loaded in."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with final_save_context(self, _internal_call):
            super().save_model(output_dir, _internal_call)
