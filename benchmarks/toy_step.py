"""Seconds per training step of the synthetic run's toy on this CPU, by execution mode and torch threads.

The toy (`benchmarks.synthetic.config`'s defaults: Qwen2, hidden 128, 4 layers, vocabulary 1,027, C = 4) trains in
fp32 eager mode. This measures one CPT-1-shaped optimizer step (a batch of reconstruction rows: each example's context
encoded chunk by chunk, the decoder reading its memory and writing the context back) in that mode, under bf16
autocast and under `torch.compile`, at each thread count: whether a switch would let the run fit in less wall time.

    python -m benchmarks.toy_step                  # the committed CPU table (about 5 minutes)
    python -m benchmarks.toy_step --smoke          # seconds
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from benchmarks._outputs import benchmark_main, write_outputs
from benchmarks._timing import PAPER_REPEATS, PAPER_WARMUP, machine_info, machine_name, summarize, time_calls

MODES = ("fp32", "bf16_autocast", "compile")
LABELS = {"fp32": "fp32 eager (the run's)", "bf16_autocast": "bf16 autocast", "compile": "torch.compile, fp32"}


@dataclass
class ToyStepConfig:
    """What to measure; the defaults are the synthetic run's model and batch, and the committed CPU table."""

    modes: list[str] = field(default_factory=lambda: list(MODES), metadata={"help": f"execution modes, of {list(MODES)}"})
    threads: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "torch thread counts"})
    hidden_size: int = field(default=128, metadata={"help": "toy width (synthetic run: 128)"})
    num_layers: int = field(default=4, metadata={"help": "toy depth (synthetic run: 4)"})
    vocab_size: int = field(default=1027, metadata={"help": "vocabulary (the synthetic run's tokenizer: 1,027)"})
    chunk_size: int = field(default=4, metadata={"help": "tokens per memory embedding (synthetic run: 4)"})
    batch_size: int = field(default=32, metadata={"help": "examples per step (synthetic run: 32)"})
    context_tokens: int = field(
        default=64, metadata={"help": "context tokens per example, compressed and written back (a CPT-1 step: ~4,000 non-padding tokens)"}
    )
    warmup: int = field(default=PAPER_WARMUP, metadata={"help": "untimed steps before each measurement (compile: its first)"})
    repeats: int = field(default=PAPER_REPEATS, metadata={"help": "timed steps per measurement: mean reported"})
    seed: int = field(default=0, metadata={"help": "seed of the random weights and tokens"})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "where <name>.json/.md go"})
    name: str = field(default="toy_step_cpu", metadata={"help": "file stem of the outputs"})
    smoke: bool = field(default=False, metadata={"help": "a smaller model and batch, one timed step: seconds"})

    def __post_init__(self):
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown:
            raise ValueError(f"unknown modes {unknown}; choose from {list(MODES)}.")
        if any(t < 1 for t in self.threads):
            raise ValueError(f"threads must be >= 1, got {self.threads}.")
        if self.context_tokens % self.chunk_size:
            raise ValueError(f"context_tokens ({self.context_tokens}) must be a multiple of chunk_size ({self.chunk_size}).")
        if self.smoke:
            self.hidden_size, self.num_layers, self.batch_size, self.context_tokens = 32, 1, 2, 16
            self.warmup, self.repeats = 1, 1


def build_toy(config: ToyStepConfig):
    """The random toy and a reconstruction batch for it: `<MEM>` x (context / C), then the context as labels."""
    from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer

    tokenizer = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 50, vocab_size=300)
    model = build_tiny_memcomp(
        tokenizer, chunk_size=config.chunk_size, seed=config.seed, hidden_size=config.hidden_size,
        num_layers=config.num_layers,
    ).train()
    model.language_model.resize_token_embeddings(config.vocab_size)  # the run's vocabulary, so the LM head costs as much
    generator = torch.Generator().manual_seed(config.seed)
    context = torch.randint(len(tokenizer), config.vocab_size, (config.batch_size, config.context_tokens), generator=generator)
    slots = config.context_tokens // config.chunk_size
    memory = torch.full((config.batch_size, slots), model.config.mem_token_id)
    input_ids = torch.cat([memory, context], dim=1)
    labels = torch.cat([torch.full_like(memory, -100), context], dim=1)
    chunks = context.reshape(-1, config.chunk_size)
    batch = {"input_ids": input_ids, "labels": labels, "chunk_ids": chunks, "chunk_attention_mask": torch.ones_like(chunks)}
    return model, batch


def measure(config: ToyStepConfig, mode: str, threads: int) -> dict:
    """Mean seconds of one optimizer step (forward, backward, fused AdamW) in `mode` with `threads` torch threads."""
    model, batch = build_toy(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    forward = torch.compile(model) if mode == "compile" else model

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16_autocast"):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seconds = time_calls(step, torch.device("cpu"), config.warmup, config.repeats)
    finally:
        torch.set_num_threads(before)
    tokens = batch["input_ids"].numel() + batch["chunk_ids"].numel()  # decoder + encoder tokens, none padding
    summary = summarize(seconds)
    return {"mode": mode, "threads": threads, **summary, "tokens_per_step": tokens,
            "tokens_per_s": tokens / (summary["mean_ms"] / 1000)}


def run(config: ToyStepConfig) -> dict:
    rows = [measure(config, mode, threads) for threads in config.threads for mode in config.modes]
    for row in rows:
        eager = next((r for r in rows if r["mode"] == "fp32" and r["threads"] == row["threads"]), None)
        row["speedup_vs_fp32"] = eager["mean_ms"] / row["mean_ms"] if eager else None
    settings = {k: v for k, v in vars(config).items() if k not in ("output_dir", "name")}
    return {"benchmark": "toy_step", "machine": machine_info(torch.device("cpu")), "config": settings, "rows": rows}


def markdown_table(report: dict) -> str:
    machine, c = report["machine"], report["config"]
    lines = [
        f"# Toy training step on CPU\n\nMachine: {machine_name(machine)}, {machine['logical_cpus']} logical CPUs, torch "
        f"{machine['torch']}. Model: Qwen2 hidden {c['hidden_size']}, {c['num_layers']} layers, vocabulary "
        f"{c['vocab_size']}, C = {c['chunk_size']}; batch {c['batch_size']} x {c['context_tokens']} context tokens "
        f"(reconstruction). Mean of {c['repeats']} steps after {c['warmup']} untimed.\n",
        "| mode | threads | s / step (mean) | median | stdev | tokens / s | vs fp32 eager |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        speedup = f"{r['speedup_vs_fp32']:.2f}x" if r["speedup_vs_fp32"] else "-"
        lines.append(
            f"| {LABELS[r['mode']]} | {r['threads']} | {r['mean_ms'] / 1000:.3f} | {r['median_ms'] / 1000:.3f} | "
            f"{r['stdev_ms'] / 1000:.3f} | {r['tokens_per_s']:,.0f} | {speedup} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict, config: ToyStepConfig):
    return write_outputs(report, config.output_dir, config.name, markdown_table(report))


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(ToyStepConfig, argv, "python -m benchmarks.toy_step", __doc__, run, markdown_table, write_report)


if __name__ == "__main__":
    sys.exit(main())
