"""Many questions on one memory: does the memory prefix get prefilled once (issue 19, item 1)?

For each context length and wrap, on a random-weight model: the time of `generate` for one question, and
for 16 questions on the same memory without prefix reuse (every row prefills the whole memory prefix) and
with it (the prefix prefilled once: batched `generate(question=[...])`, and one by one over
`prefill_memory()`'s cache). Target: 16 questions cost < 3x one question at 8K (wrap each, 4-layer model).
Writes `<name>.json`, `<name>.md` and `<name>.png`.

    python -m benchmarks.memory_reuse --warmup 1 --repeats 3     # the committed CPU table
    python -m benchmarks.memory_reuse --smoke                    # seconds
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks import latency
from benchmarks._outputs import benchmark_main, tokens_label, write_outputs
from benchmarks._timing import PAPER_REPEATS, PAPER_WARMUP, machine_info, machine_name, summarize, time_calls
from benchmarks.peers import QUESTIONS
from modeling_memcomp.tiny import TOKENIZER_SPECIAL_TOKENS

TARGET_LENGTH, TARGET_RATIO = 8192, 3.0
MODES = ("one_question", "batch_no_reuse", "batch_reuse", "sequential_reuse")
LABELS = {
    "one_question": "1 question",
    "batch_no_reuse": "N questions, batched, no reuse",
    "batch_reuse": "N questions, batched, prefix reused",
    "sequential_reuse": "N questions one by one over prefill_memory()",
}
UNAVAILABLE = "not available: this build of MemCompForCausalLM has no prefill_memory() (memory-prefix reuse)"


@dataclass
class MemoryReuseConfig:
    """What to measure; `--warmup 1 --repeats 3` gives the committed CPU table."""

    preset: str = field(default="cpu-tiny", metadata={"help": f"model shape: one of {sorted(latency.PRESETS)}"})
    lengths: list[int] = field(default_factory=lambda: [4096, 8192, 16384, 32768], metadata={"help": "context lengths in tokens"})
    questions: int = field(default=16, metadata={"help": f"questions on the one memory (at most {len(QUESTIONS)})"})
    wraps: list[str] = field(default_factory=lambda: ["each"], metadata={"help": "memory wrapping(s): each, block"})
    max_new_tokens: int = field(default=8, metadata={"help": "answer tokens per question (all generated: min_new_tokens too)"})
    chunk_size: int = field(default=16, metadata={"help": "tokens per memory embedding"})
    encoder_batch_size: int = field(default=256, metadata={"help": "chunks per encoder pass"})
    warmup: int = field(default=PAPER_WARMUP, metadata={"help": "untimed calls before each measurement (paper: 3)"})
    repeats: int = field(default=PAPER_REPEATS, metadata={"help": "timed calls per measurement (paper: 20): mean reported"})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu' or 'cuda[:i]'"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    seed: int = field(default=0, metadata={"help": "seed of the random weights and context tokens"})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "where <name>.json/.md/.png go"})
    name: str = field(default="memory_reuse_cpu", metadata={"help": "file stem of the outputs"})
    plot: bool = field(default=True, metadata={"help": "write the plot"})
    smoke: bool = field(default=False, metadata={"help": "tiny model, short contexts, 4 questions, one call: seconds"})

    def __post_init__(self):
        if self.smoke:
            self.preset, self.lengths, self.questions, self.warmup, self.repeats = "smoke", [256, 512], 4, 0, 1
            self.max_new_tokens, self.encoder_batch_size = 2, 8
        if not 1 <= self.questions <= len(QUESTIONS):
            raise ValueError(f"questions must be between 1 and {len(QUESTIONS)}, got {self.questions}.")
        if not self.wraps or any(w not in ("each", "block") for w in self.wraps):
            raise ValueError(f"wraps must be a non-empty list of 'each' / 'block', got {self.wraps}.")
        if not self.lengths or any(n < self.chunk_size for n in self.lengths):
            raise ValueError(f"lengths must be token counts >= chunk_size ({self.chunk_size}), got {self.lengths}.")
        if self.max_new_tokens < 1 or self.warmup < 0 or self.repeats < 1:
            raise ValueError("max_new_tokens and repeats must be >= 1, warmup >= 0.")

    def latency_config(self) -> latency.LatencyConfig:
        return latency.LatencyConfig(
            preset=self.preset, lengths=list(self.lengths), chunk_size=self.chunk_size,
            encoder_batch_size=self.encoder_batch_size, device=self.device, threads=self.threads, seed=self.seed,
        )


def calls(model, memory, questions: list[str], max_new_tokens: int) -> dict:
    """The call timed per mode (None where this build cannot do it)."""
    answer = dict(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, repetition_penalty=1.0,
                  top_k=None, top_p=None, temperature=None)
    reuse = hasattr(model, "prefill_memory")
    no_reuse = {"reuse_prefix": False} if reuse else {}  # before prefill_memory, every batch re-prefills the prefix

    def sequential():
        cache = model.prefill_memory(memory)
        return [model.generate(memory=memory, question=q, memory_cache=cache, **answer) for q in questions]

    return {
        "one_question": lambda: model.generate(memory=memory, question=questions[0], **answer),
        "batch_no_reuse": lambda: model.generate(memory=memory, question=questions, **no_reuse, **answer),
        "batch_reuse": (lambda: model.generate(memory=memory, question=questions, **answer)) if reuse else None,
        "sequential_reuse": sequential if reuse else None,
    }


def run(config: MemoryReuseConfig) -> dict:
    """Measure every wrap and length; returns the JSON-ready report."""
    device = config.latency_config().resolve_device()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with torch.no_grad():
            return _run(config, device)
    finally:
        torch.set_num_threads(threads)


def _run(config: MemoryReuseConfig, device: torch.device) -> dict:
    model = latency.build_model(config.latency_config(), device, config.latency_config().resolve_dtype(device))
    questions = list(QUESTIONS[: config.questions])
    rows = []
    for length in config.lengths:
        generator = torch.Generator().manual_seed(config.seed + length)
        context = torch.randint(len(TOKENIZER_SPECIAL_TOKENS), model.tokenizer.vocab_size, (length,), generator=generator)
        memory = model.compress(context.tolist(), show_progress=False)
        for wrap in config.wraps:
            model.config.wrap = wrap
            timing, unavailable = {}, []
            for mode, fn in calls(model, memory, questions, config.max_new_tokens).items():
                if fn is None:
                    unavailable.append(mode)
                    continue
                timing[mode] = summarize(time_calls(fn, device, config.warmup, config.repeats))
            one = timing["one_question"]["mean_ms"]
            rows.append({
                "context_tokens": length, "wrap": wrap, "memory_embeddings": len(memory), "timing_ms": timing,
                "cost_vs_one_question": {m: t["mean_ms"] / one for m, t in timing.items()},
                "unavailable": {m: UNAVAILABLE for m in unavailable},
            })
    return {"machine": machine_info(device), "config": asdict(config), "results": rows, "targets": check_target(rows, config)}


def check_target(rows: list[dict], config: MemoryReuseConfig) -> dict:
    """16 questions (batched, prefix reused) < 3x one question at 8K with wrap each; None when not measured."""
    row = next((r for r in rows if r["context_tokens"] == TARGET_LENGTH and r["wrap"] == "each"), None)
    ratio = None if row is None else row["cost_vs_one_question"].get("batch_reuse")
    return {
        "questions": config.questions,
        "batch_reuse_over_one_question_at_8k_each": ratio,
        "below_3x": None if ratio is None else ratio < TARGET_RATIO,
    }


def markdown_table(report: dict) -> str:
    machine, config = report["machine"], report["config"]
    n = config["questions"]
    lines = [
        f"# {n} questions on one memory, with and without prefix reuse ({config['preset']}, C={config['chunk_size']})",
        "",
        f"Machine: {machine.get('gpu') or machine_name(machine)}, {machine['torch_threads']} torch thread(s) "
        f"({machine['logical_cpus']} logical CPUs, 1-min load {machine['load_average_1m']} at the end), torch "
        f"{machine['torch']}, transformers {machine['transformers']}. `generate()` wall time, greedy, "
        f"{config['max_new_tokens']} answer tokens per question; means of {config['repeats']} timed calls after "
        f"{config['warmup']} warm-up(s) (median and spread in the JSON). Random weights.",
        "",
        f"| Context | Wrap | 1 question (ms) | {n} batched, no reuse (ms) | x 1 question | {n} batched, reused (ms) "
        f"| x 1 question | {n} one by one, reused (ms) | x 1 question |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        cells = [tokens_label(row["context_tokens"]), row["wrap"], f"{row['timing_ms']['one_question']['mean_ms']:,.0f}"]
        for mode in MODES[1:]:
            if mode in row["timing_ms"]:
                cells += [f"{row['timing_ms'][mode]['mean_ms']:,.0f}", f"{row['cost_vs_one_question'][mode]:.2f}x"]
            else:
                cells += ["not available", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    target = report["targets"]
    if target["below_3x"] is not None:
        verdict = f"{target['batch_reuse_over_one_question_at_8k_each']:.2f}x: " + ("met" if target["below_3x"] else "MISSED")
    elif any("batch_reuse" in r["unavailable"] for r in report["results"]):
        verdict = "not measured: " + UNAVAILABLE
    else:
        verdict = "not measured: no 8K row with wrap each in this run"
    lines += ["", f"Target: {n} questions < {TARGET_RATIO:g}x one question at 8K, wrap each, prefix reused - {verdict}.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Cost of N questions relative to one, vs context length, with and without reuse."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for wrap in dict.fromkeys(r["wrap"] for r in report["results"]):
        rows = [r for r in report["results"] if r["wrap"] == wrap]
        for mode, style in (("batch_no_reuse", "s--"), ("batch_reuse", "o-"), ("sequential_reuse", "^-")):
            mine = [r for r in rows if mode in r["cost_vs_one_question"]]
            if mine:
                axes.plot([r["context_tokens"] for r in mine], [r["cost_vs_one_question"][mode] for r in mine], style,
                          label=f"{LABELS[mode].replace('N', str(report['config']['questions']))}, wrap={wrap}")
    axes.axhline(TARGET_RATIO, color="red", linewidth=0.8, linestyle=":", label=f"target {TARGET_RATIO:g}x")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("context tokens")
    axes.set_ylabel("cost / one question (x)")
    axes.set_title(f"Questions on one memory ({report['config']['preset']}, {report['machine'].get('gpu') or 'CPU'})", fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: dict, config: MemoryReuseConfig) -> dict[str, Path]:
    plot_figure = config.plot
    return write_outputs(
        report, config.output_dir, config.name, markdown_table(report), (lambda path: plot(report, path)) if plot_figure else None
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.memory_reuse`: parse a `MemoryReuseConfig`, run, write the outputs."""
    def check(config: MemoryReuseConfig) -> None:
        latency.check_runnable(config.latency_config(), config.plot, "the memory-reuse plot")

    return benchmark_main(
        MemoryReuseConfig, argv, "python -m benchmarks.memory_reuse", __doc__, run, markdown_table, write_report, check
    )


if __name__ == "__main__":
    sys.exit(main())
