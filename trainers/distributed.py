"""Multi-process runs: refuse a launch that accelerate quietly turned into something else, and end one cleanly.

accelerate 1.15 drops a requested engine without a word in two cases seen here: FSDP is applied only on
GPU-type devices (on CPU ranks the run is plain DDP), and DeepSpeed is turned off when the training config
sets `use_cpu: true`. A launch on a machine without GPUs and without `use_cpu` sets up no process group at
all, so each rank trains alone. Each would otherwise train for hours on a setup nobody asked for.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Mapping

REQUESTS = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DEEPSPEED"}
"""Environment flags set by `accelerate launch` for an engine, and the distributed type that engine gives."""

HINTS = {
    "FSDP": (
        "accelerate applies FSDP only on GPU-type devices, so on CPU ranks it would run plain DDP. On CPU use "
        "examples/accelerate/cpu_2proc.yaml (DDP) or cpu_2proc_zero3.yaml (ZeRO-3 over DeepSpeed's CPU "
        "accelerator); FSDP needs GPUs."
    ),
    "DEEPSPEED": (
        "accelerate turns DeepSpeed off when the training config sets use_cpu: true. On CPU set "
        "--use_cpu false, --ddp_backend gloo and DS_ACCELERATOR=cpu (see "
        "examples/accelerate/cpu_2proc_zero3.yaml); on GPUs check that CUDA is visible."
    ),
}


def check_launch(distributed_type: str, environ: Mapping[str, str] = os.environ) -> None:
    """Raise if the launcher asked for an engine that `distributed_type` (accelerate's, e.g. "MULTI_CPU") is not."""
    for flag, wanted in REQUESTS.items():
        if environ.get(flag, "false").lower() == "true" and distributed_type != wanted:
            raise ValueError(
                f"accelerate launch asked for {wanted} ({flag}=true) but accelerate set up {distributed_type}: "
                + HINTS[wanted]
            )
    world = int(environ.get("WORLD_SIZE", "1"))
    if world > 1 and distributed_type == "NO":
        raise ValueError(
            f"{world} processes were launched but accelerate set up no process group (no GPU, and use_cpu is "
            "false): each rank would train alone on its own shard. Set --use_cpu true to train data-parallel "
            "over gloo (examples/accelerate/cpu_2proc.yaml), or run where the GPUs are visible."
        )


@contextlib.contextmanager
def process_group_teardown() -> Iterator[None]:
    """Destroy the process group when the block ends: on success after every rank gets there, on error at once.

    Without the barrier a rank that finished tears gloo down while rank 0 still saves; without the collection the
    trainer's reference cycles leave DDP's gloo work to interpreter shutdown. Either can abort a rank at exit
    ("terminate called without an active exception"). Does nothing where no process group was set up.
    """
    from accelerate import PartialState

    try:
        yield
        PartialState().wait_for_everyone()
    finally:
        gc.collect()
        PartialState().destroy_process_group()


@contextlib.contextmanager
def fsdp2_unsharded(root, module) -> Iterator[None]:
    """`module`'s parameters whole while the block runs, where FSDP2 (`fully_shard`) shards them; a no-op otherwise.

    FSDP2 gathers a unit's parameters only inside that unit's forward, so calling a submodule directly (the input
    embeddings, which sit in the root unit when only the decoder layers are wrapped) would mix its sharded DTensor
    weight with plain tensors. The innermost unit holding `module` is unsharded, then resharded.
    """
    from torch.distributed.fsdp import FSDPModule

    owner = None
    for unit in root.modules():  # pre-order: a later match lies inside an earlier one
        if isinstance(unit, FSDPModule) and any(sub is module for sub in unit.modules()):
            owner = unit
    if owner is None:
        yield
        return
    owner.unshard()
    try:
        yield
    finally:
        owner.reshard()
