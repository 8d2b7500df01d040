"""Real two-process data-parallel training on CPU (gloo), launched the way users launch it."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from trainers.distributed import process_group_teardown

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    """A TCP port nothing listens on now: concurrent runs on one machine never share a rendezvous port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_train_on_different_shards_with_synchronised_gradients(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    trace = tmp_path / "trace"
    command = [
        accelerate, "launch", "--config_file", "examples/accelerate/cpu_2proc.yaml", "--main_process_port", str(free_port()),
        "examples/train_sft.py", "--config", "examples/configs/sft_tiny.yaml",
        "--output_dir", str(tmp_path / "out"), "--rank_trace_dir", str(trace),
        "--cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "destroy_process_group() was not called" not in result.stderr

    ranks = {r: [json.loads(line) for line in (trace / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert len(ranks[0]) == len(ranks[1]) == 4  # max_steps in sft_tiny.yaml
    for step0, step1 in zip(ranks[0], ranks[1]):
        assert step0["world_size"] == step1["world_size"] == 2
        assert step0["example_ids"] and step1["example_ids"]
        assert not set(step0["example_ids"]) & set(step1["example_ids"])  # each rank its own shard
        assert step0["grad_checksum"] == step1["grad_checksum"] != 0  # all-reduced before the step
    assert (tmp_path / "out" / "model.safetensors").exists()  # rank 0 saved the trained model


class _Cycle:
    """Stands in for a trainer: its callbacks point back at it, so only the cycle collector frees what it holds."""

    def __init__(self):
        self.me = self


@pytest.mark.parametrize("fails", [False, True])
def test_teardown_frees_the_trainer_then_destroys_the_group_even_on_error(tmp_path, monkeypatch, fails):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    cycle = weakref.ref(_Cycle())
    seen = []
    destroy = torch.distributed.destroy_process_group
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda *a: (seen.append(cycle()), destroy(*a)))
    try:
        with pytest.raises(RuntimeError, match="boom") if fails else contextlib.nullcontext():
            with process_group_teardown():
                if fails:
                    raise RuntimeError("boom")
    finally:
        if torch.distributed.is_initialized():
            destroy()
    assert seen == [None]  # collected before the group went, once
    assert not torch.distributed.is_initialized()


def _resume_on_own_disk(rank: int, port: int, root: str, checkpoint_on: dict, results, resume: str = "last") -> None:
    """One rank of `test_every_rank_takes_the_main_process_resume_decision`: its output_dir is its own (a node's disk)."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from safetensors.torch import save_file

    from trainers.checkpoints import resume_point

    output_dir = Path(root) / f"node{rank}"
    for step, ranks in checkpoint_on.items():
        if rank in ranks:
            folder = output_dir / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt"):
                (folder / name).write_text("{}")
            save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results[rank] = repr(resume_point(SimpleNamespace(resume_from_checkpoint=resume, output_dir=str(output_dir))))
    except ValueError as error:
        results[rank] = f"error: {error}"
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("checkpoint_on, expected, resume", [
    ({50: [1]}, ["None", "None"], "last"),  # the main process starts afresh: so does the rank that sees a checkpoint
    ({50: [0]}, ["node0/checkpoint-50", "error: rank 1: the main process resumes from checkpoint-50"], "last"),
    ({40: [0, 1], 50: [0]}, ["node0/checkpoint-50", "error: rank 1: the main process resumes from checkpoint-50"], "last"),
    ({40: [0, 1], 50: [0, 1]}, ["node0/checkpoint-50", "node1/checkpoint-50"], "last"),
    ({50: [1]}, ["error: no complete checkpoint in"] * 2, "true"),  # every rank stops with the error, none hangs
])
def test_every_rank_takes_the_main_process_resume_decision(tmp_path, checkpoint_on, expected, resume):
    """Each rank's output_dir is its own (a node's disk): rank 1 never resumes from its own older checkpoint-40."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_resume_on_own_disk, args=(free_port(), str(tmp_path), checkpoint_on, results, resume), nprocs=2)
    got = [results[rank].replace(repr(str(tmp_path))[1:-1] + "/", "").strip("'") for rank in (0, 1)]
    prefix = lambda got, want: got[: len(want)] if want.startswith("error") else got  # noqa: E731
    assert [prefix(got[0], expected[0]), prefix(got[1], expected[1])] == expected
