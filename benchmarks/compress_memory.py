"""Peak memory of `compress` vs context length and encoder micro-batch size (CPU, random tiny Qwen2).

    python -m benchmarks.compress_memory                         # writes benchmarks/results/compress_memory_cpu.*
    python -m benchmarks.compress_memory --smoke --output_dir /tmp/compress

Each cell runs in a fresh process (memory freed by earlier cells would hide part of its peak) and measures the RSS
high-water mark during one `compress` above the RSS before it (`_timing.rss_peak_bytes`), minus the output memory
itself (chunks x hidden x 4 bytes, which must grow with the context). Expectation: the rest, the working memory,
grows with the micro-batch size and stays flat in the context length. Linux only.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ._outputs import benchmark_main, write_outputs
from ._timing import machine_info, rss_peak_bytes

MIB = 2**20


@dataclass
class CompressMemoryConfig:
    lengths: list[int] = field(default_factory=lambda: [4096, 32768, 122880], metadata={"help": "Context lengths (tokens)."})
    micro_batches: list[int] = field(
        default_factory=lambda: [16, 64, 256], metadata={"help": "Encoder micro-batch sizes (chunks per forward pass)."}
    )
    chunk_size: int = field(default=16, metadata={"help": "Tokens per memory embedding."})
    hidden_size: int = field(default=256, metadata={"help": "Width of the random tiny Qwen2."})
    num_layers: int = field(default=4, metadata={"help": "Depth of the random tiny Qwen2."})
    threads: int = field(default=2, metadata={"help": "Torch threads of each cell's process."})
    seed: int = field(default=0, metadata={"help": "Context token ids."})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Folder for <name>.json and <name>.md."})
    name: str = field(default="compress_memory_cpu", metadata={"help": "File stem of the results."})
    smoke: bool = field(default=False, metadata={"help": "Tiny sizes for a seconds-long check (tests)."})

    def __post_init__(self):
        if self.smoke:
            self.lengths, self.micro_batches, self.hidden_size, self.num_layers = [64, 256], [4], 32, 1
        if min(*self.lengths, *self.micro_batches, self.chunk_size, self.threads) < 1:
            raise ValueError("lengths, micro_batches, chunk_size and threads must be positive.")


def _build(config: CompressMemoryConfig, micro_batch: int):
    from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer

    corpus = (Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus.txt").read_text().splitlines()
    return build_tiny_memcomp(
        train_tokenizer(corpus, vocab_size=300), chunk_size=config.chunk_size, hidden_size=config.hidden_size,
        num_layers=config.num_layers, encoder_batch_size=micro_batch,
    )


@torch.no_grad()
def measure_cell(config_dict: dict, length: int, micro_batch: int) -> dict:
    """One cell, in a fresh process: build the model, warm it up on one chunk, measure one `compress` of `length`."""
    config = CompressMemoryConfig(**config_dict)
    torch.set_num_threads(config.threads)
    model = _build(config, micro_batch)
    vocab = model.get_input_embeddings().num_embeddings - 4  # plain tokens only
    ids = torch.randint(5, vocab, (length,), generator=torch.Generator().manual_seed(config.seed)).tolist()
    model.compress(ids[: config.chunk_size], show_progress=False)  # kernels loaded, no batch-sized buffers yet
    memories = []
    start = time.perf_counter()
    peak = rss_peak_bytes(lambda: memories.append(model.compress(ids, show_progress=False)))
    seconds = time.perf_counter() - start
    output = memories[0].embeds.numel() * memories[0].embeds.element_size()
    return {"tokens": length, "micro_batch": micro_batch, "chunks": len(memories[0]), "seconds": seconds,
            "peak_mib": peak / MIB, "output_mib": output / MIB, "working_mib": max(0, peak - output) / MIB}


def check_platform(config: CompressMemoryConfig) -> None:
    if not os.path.exists("/proc/self/clear_refs"):
        raise ValueError("this benchmark needs Linux (/proc/self/clear_refs) to reset the RSS high-water mark.")


def run(config: CompressMemoryConfig) -> dict:
    """Every (micro-batch, length) cell, each in its own spawned process; returns the JSON-ready report."""
    check_platform(config)
    rows = []
    for micro_batch in config.micro_batches:
        for length in config.lengths:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                rows.append(pool.submit(measure_cell, asdict(config), length, micro_batch).result())
    machine = {**machine_info(torch.device("cpu")), "torch_threads": config.threads}
    return {"benchmark": "compress_memory", "config": asdict(config), "machine": machine, "rows": rows}


def markdown_table(report: dict) -> str:
    config, machine = report["config"], report["machine"]
    lines = [
        "# compress() peak memory on CPU", "",
        f"Machine: {machine['cpu']}, {machine['torch_threads']} torch threads. Model: random Qwen2, "
        f"{config['num_layers']} layers, hidden {config['hidden_size']}, fp32, C={config['chunk_size']}.",
        "Peak = RSS high-water mark during the call above the RSS before it; working = peak minus the output tensor.", "",
        "| tokens | micro-batch | chunks | seconds | peak (MiB) | output (MiB) | working (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['tokens']} | {r['micro_batch']} | {r['chunks']} | {r['seconds']:.2f} | {r['peak_mib']:.1f} | "
        f"{r['output_mib']:.1f} | {r['working_mib']:.1f} |"
        for r in report["rows"]
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict, config: CompressMemoryConfig) -> dict[str, Path]:
    return write_outputs(report, config.output_dir, config.name, markdown_table(report))


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(CompressMemoryConfig, argv, "python -m benchmarks.compress_memory", __doc__, run,
                          markdown_table, write_report, check=check_platform)


if __name__ == "__main__":
    raise SystemExit(main())
