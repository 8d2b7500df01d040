"""What the vLLM CPU benchmarks share: the engine's CPU settings, the tiny random model they time, the machine line."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from benchmarks._timing import machine_info, machine_name
from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer
from modeling_memcomp.vllm_backend import require_vllm

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus.txt"
CPU = torch.device("cpu")


def pin_threads(threads: int, kv_cache_gib: int) -> None:
    """Give torch `threads` threads and vLLM's CPU worker cores 0..threads-1 and a `kv_cache_gib` GiB KV cache (unless
    VLLM_CPU_OMP_THREADS_BIND / VLLM_CPU_KVCACHE_SPACE already say otherwise); before the engine starts."""
    torch.set_num_threads(threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")


def tiny_model(hidden_size: int, num_layers: int, **config) -> tuple[object, list[str]]:
    """A random tiny MemComp (Qwen2 base) with a tokenizer trained on the test corpus, and the corpus's lines."""
    corpus = CORPUS.read_text().splitlines()
    model = build_tiny_memcomp(train_tokenizer(corpus, vocab_size=512), hidden_size=hidden_size, num_layers=num_layers, **config)
    return model, corpus


def measured_on() -> dict:
    """The fields `machine_line` reads, for a report: the machine, vLLM's worker cores and the library versions."""
    return {
        "machine": machine_info(CPU),
        "vllm_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        "versions": {"torch": torch.__version__, "vllm": require_vllm().__version__},
    }


def machine_line(report: dict) -> str:
    """Where a report was measured, for its table: CPU, vLLM worker cores, load, versions."""
    machine = report["machine"]
    return (f"Machine: {machine_name(machine)} ({machine['logical_cpus']} logical CPUs, load average {machine['load_average_1m']} "
            f"at the end), torch threads {machine['torch_threads']}, vLLM worker cores {report['vllm_threads_bind']}; "
            f"versions {report['versions']}.")
