"""Real two-process data-parallel training on CPU (gloo), launched the way users launch it."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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
