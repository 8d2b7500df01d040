"""How the tests launch training runs: every command line in one place. Ports are free ones, found by binding port 0."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"sft": "examples/train_sft.py", "cpt": "examples/train_cpt.py", "precompute": "examples/precompute_memory.py"}


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env(**extra: str) -> dict[str, str]:
    """Environment of a launched run: one thread per rank, offline, the worktree importable."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": pythonpath, **extra,
    }


def stage_overrides(overrides: dict[str, object]) -> list[str]:
    """`{"training.max_steps": 4}` (the section is only a reminder) -> the stage scripts' `--max_steps 4` fields."""
    arguments = []
    for key, value in overrides.items():
        text = str(value).lower() if isinstance(value, bool) else json.dumps(value) if isinstance(value, dict) else str(value)
        arguments += [f"--{key.rsplit('.', 1)[-1]}", text]
    return arguments


def stage_command(stage: str, config: str, overrides: dict[str, object], accelerate_config: str | None = None) -> list[str]:
    """Command for one CPT/SFT stage: `python script` alone, or under `accelerate launch` with a config file."""
    script = [SCRIPTS[stage], "--config", config, *stage_overrides(overrides)]
    if accelerate_config is None:
        return [sys.executable, *script]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config]
    return [*launcher, "--main_process_port", str(free_port()), *script]


def precompute_command(arguments: dict[str, object], accelerate_config: str | None = None) -> list[str]:
    """Command for `examples/precompute_memory.py` (HfArgumentParser flags), alone or under `accelerate launch`."""
    flags = [item for key, value in arguments.items() for item in (f"--{key}", str(value))]
    script = [SCRIPTS["precompute"], *flags]
    if accelerate_config is None:
        return [sys.executable, *script]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config]
    return [*launcher, "--main_process_port", str(free_port()), *script]


def run(command: list[str], timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    """Run from the repository root; the caller asserts on the return code and output."""
    return subprocess.run(command, cwd=ROOT, env=launch_env(**env), capture_output=True, text=True, timeout=timeout)


def logged_losses(output_dir: str | Path) -> list[float]:
    """Training losses logged at each logging step, from the last checkpoint's `trainer_state.json`."""
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoint-* folder in {output_dir}: set save_strategy so that one is written.")
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]
