"""Timing and peak-memory helpers shared by the speed benchmarks: warm-ups, summaries, CUDA events, RSS peaks.

The protocol is the paper's (Appendix E): 3 untimed warm-up calls, then the mean of 20 timed calls; the
median and the spread (sample standard deviation, min, max) are reported beside it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


PAPER_WARMUP = 3
PAPER_REPEATS = 20
"""Appendix E: 3 warm-up calls, then the mean of 20 timed calls."""


def time_calls(
    fn: Callable[[], object], device: torch.device, warmup: int = PAPER_WARMUP, repeats: int = PAPER_REPEATS
) -> list[float]:
    """Seconds taken by each of `repeats` calls of `fn` after `warmup` untimed ones (CUDA events on GPU)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    for _ in range(warmup):
        fn()
    return [time_once(fn, device)[0] for _ in range(repeats)]


def time_once(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds taken by one call of `fn` (CUDA events on GPU) and what it returned."""
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        result = fn()
        stop.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(stop) / 1000, result
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(seconds: list[float]) -> dict:
    """Mean (the reported figure), median and spread of timed calls, in milliseconds, with their count."""
    if not seconds:
        raise ValueError("summarize needs at least one timed call.")
    ms = [1000 * s for s in seconds]
    return {
        "mean_ms": statistics.fmean(ms),
        "median_ms": statistics.median(ms),
        "stdev_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "min_ms": min(ms),
        "max_ms": max(ms),
        "n": len(ms),
    }


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """`torch.cuda.max_memory_allocated` over one call of `fn`: weights included, as in the paper's Table 7."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def rss_peak_bytes(fn: Callable[[], object]) -> int:
    """Resident-memory high-water reached during one call of `fn`, above the resident size before it.

    Linux only: resets the kernel's high-water mark (`/proc/self/clear_refs`, value 5), runs `fn`, reads
    `VmHWM`. Call it in a fresh process: memory freed by earlier work stays resident in the allocator and
    would hide part of the peak.
    """
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_kib("VmRSS")
    fn()
    return max(_status_kib("VmHWM") - before, 0) * 1024


def machine_name(machine: dict) -> str:
    """The CPU of a `machine_info` record as report lines name it: model and vector extension ('AMD EPYC, AVX2')."""
    capability = machine.get("cpu_capability")
    return f"{machine.get('cpu')}, {capability}" if capability else str(machine.get("cpu"))


def machine_info(device: torch.device) -> dict:
    """What the figures were measured on: CPU model and vector extension, threads, load, accelerator and library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2 / AVX512: other kernels, speed and rounding
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
