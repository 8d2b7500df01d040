"""Latency benchmark (paper Appendix E, Table 7): full-context TTFT vs TTFT from a precomputed memory.

For each context length, one run measures side by side on a randomly initialised model (timing does not
depend on the weights): full-context TTFT (the base LM prefilling the raw tokens), TTFT from a precomputed
memory with `wrap="each"` and `wrap="block"`, encode time and throughput, end-to-end (encode + TTFT) and the
peak memory of each. Writes `<name>.json`, `<name>.md` (Table 7 shape) and `<name>.png` (speedup vs length).

    python -m benchmarks.latency --threads 1 --full_max_length 32768 --warmup 1 --repeats 3   # the committed CPU table
    python -m benchmarks.latency --preset qwen2.5-7b --name latency_h100   # CUDA: Qwen2.5-7B config, bf16
    python -m benchmarks.latency --smoke                          # seconds; used by the test suite

TTFT is one prefill forward with a KV cache and `logits_to_keep=1`, then the greedy first token; it includes
placing the memory in the decoder's input embeddings but not tokenization (for either side). Each figure is
the mean of `--repeats` (20) timed calls after `--warmup` (3), as in Appendix E; median and spread are in
the JSON and the markdown's second table (CPU tables may use fewer repeats: the count is written with them).
"""

from __future__ import annotations

import concurrent.futures
import copy
import importlib.util
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM

from benchmarks._outputs import benchmark_main, tokens_label, write_outputs
from benchmarks._timing import (
    PAPER_REPEATS,
    PAPER_WARMUP,
    cuda_peak_bytes,
    machine_info,
    machine_name,
    rss_peak_bytes,
    summarize,
    time_calls,
)
from modeling_memcomp import MemCompForCausalLM, build_prompt
from modeling_memcomp.extras import MissingExtraError, require_extra
from modeling_memcomp.tiny import TOKENIZER_SPECIAL_TOKENS, tiny_qwen2_config, train_tokenizer

PRESETS = {
    "cpu-tiny": dict(hidden_size=256, num_layers=4),
    "smoke": dict(hidden_size=64, num_layers=2),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
}
"""Model shapes: the CPU reference config of the issue, a smoke-test config and the paper's 7B decoder."""
CUDA_PRESETS = {
    "qwen2.5-7b": "the qwen2.5-7b preset needs a CUDA device (15 GB of bf16 weights); on CPU use --preset cpu-tiny.",
}
"""Presets too large for the CPU, with the one-line error a run on CPU stops with."""

PAPER_LENGTHS = (4096, 8192, 16384, 32768, 65536, 122880)
CPU_LENGTHS = (4096, 8192, 16384, 32768, 65536, 122880)
PAPER_TABLE7_7B = {  # context: (full TTFT ms, ours TTFT ms, full peak GB, ours peak GB), 7B on one H100, fp16
    4096: (126, 43, 15.3, 14.7),
    8192: (261, 53, 16.1, 14.9),
    16384: (577, 100, 17.7, 15.1),
    32768: (1450, 189, 20.8, 15.7),
    65536: (4071, 408, 27.1, 16.9),
    122880: (11241, 842, 37.5, 18.9),
}
QUESTION = "What is the best thing to do in San Francisco?"
ATTENTION = ("sdpa", "flash_attention_2", "eager")
MODES = ("full", "each", "block", "encode")


@dataclass
class LatencyConfig:
    """What to measure; the defaults are the paper's protocol on the CPU shape (the committed table: see the docstring)."""

    preset: str = field(default="cpu-tiny", metadata={"help": f"model shape: one of {sorted(PRESETS)}"})
    lengths: list[int] = field(default_factory=lambda: list(CPU_LENGTHS), metadata={"help": "context lengths in tokens"})
    full_max_length: int | None = field(
        default=None, metadata={"help": "skip full-context prefill above this length (CPU time); None: all lengths"}
    )
    chunk_size: int = field(default=16, metadata={"help": "tokens per memory embedding (paper: 16)"})
    encoder_batch_size: int = field(default=256, metadata={"help": "chunks per encoder forward pass"})
    warmup: int = field(default=PAPER_WARMUP, metadata={"help": "untimed calls before timing each measurement (paper: 3)"})
    repeats: int = field(
        default=PAPER_REPEATS,
        metadata={"help": "timed calls per measurement (paper: 20); the mean is reported, median and spread beside it"},
    )
    memory: bool = field(default=True, metadata={"help": "measure peak memory (CPU: one fresh process per figure)"})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu' or 'cuda[:i]'"})
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "attention kernels: 'sdpa', 'flash_attention_2' (needs flash-attn) or 'eager'"}
    )
    dtype: str = field(default="auto", metadata={"help": "'auto' (bf16 on CUDA, fp32 on CPU), 'float32', 'bfloat16', 'float16'"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads (the CPU is shared: keep it small)"})
    seed: int = field(default=0, metadata={"help": "seed of the random weights and context tokens"})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "where <name>.json/.md/.png go"})
    name: str = field(default="latency_cpu", metadata={"help": "file stem of the outputs"})
    plot: bool = field(default=True, metadata={"help": "write the speedup-vs-length plot"})
    smoke: bool = field(default=False, metadata={"help": "tiny model, short lengths, one repeat, no memory: seconds"})

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive token count, got {self.chunk_size}.")
        if not self.lengths or any(length < self.chunk_size for length in self.lengths):
            raise ValueError(
                f"lengths must be a non-empty list of token counts >= chunk_size ({self.chunk_size}), got {self.lengths}."
            )
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"warmup must be >= 0 and repeats >= 1, got warmup={self.warmup}, repeats={self.repeats}.")
        if self.smoke:  # explicit lengths are kept; only the default list is replaced
            self.preset, self.warmup, self.repeats, self.memory = "smoke", 0, 1, False
            self.lengths = [256, 512] if self.lengths == list(CPU_LENGTHS) else self.lengths
            self.encoder_batch_size = 8
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}.")
        if self.attn_implementation not in ATTENTION:
            raise ValueError(f"attn_implementation must be one of {ATTENTION}, got {self.attn_implementation!r}.")
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError("attn_implementation='flash_attention_2' needs the flash-attn package; use 'sdpa'.")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {self.dtype!r}.")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but CUDA is not available; use --device cpu.")
        return device

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype)


def check_runnable(config: LatencyConfig, plot: bool, plot_name: str = "the speedup plot") -> None:
    """Refuse, before any work, what would fail later: a CUDA-only preset or device without CUDA, or `plot` without
    matplotlib (the eval extra). A ValueError, so the command stops with its one-line `error:` message."""
    device = config.resolve_device()
    if config.preset in CUDA_PRESETS and device.type != "cuda":
        raise ValueError(CUDA_PRESETS[config.preset])
    if plot:
        try:
            require_extra("eval", f"{plot_name} (--plot false skips it)", modules=["matplotlib"])
        except MissingExtraError as error:
            raise ValueError(str(error)) from None


def base_text_config(preset: str, tokenizer, max_positions: int) -> Qwen2Config:
    """The preset's Qwen2 config for `tokenizer`: a full shape (qwen2.5-7b) as given, a small one sized to it."""
    shape = dict(PRESETS[preset])
    if "num_hidden_layers" in shape:
        text_config = Qwen2Config(max_position_embeddings=max_positions, **shape)
    else:
        text_config = tiny_qwen2_config(
            len(tokenizer), shape["hidden_size"], shape["num_layers"], max_position_embeddings=max_positions
        )
    text_config.pad_token_id, text_config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    return text_config


def random_base(text_config: Qwen2Config, dtype: torch.dtype, device: torch.device) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 LM built on `device` in `dtype` (a 7B one never exists in float32 on the host)."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return Qwen2ForCausalLM(text_config)
    finally:
        torch.set_default_dtype(default_dtype)


def build_model(config: LatencyConfig, device: torch.device, dtype: torch.dtype) -> MemCompForCausalLM:
    """A randomly initialised memcomp model of the preset's shape, with a tokenizer trained offline."""
    if config.preset in CUDA_PRESETS and device.type != "cuda":
        raise ValueError(CUDA_PRESETS[config.preset])
    torch.manual_seed(config.seed)
    tokenizer = train_tokenizer([QUESTION, __doc__], vocab_size=512)
    text_config = base_text_config(config.preset, tokenizer, max_positions=max(config.lengths) + 1024)
    text_config._attn_implementation = config.attn_implementation
    base = random_base(text_config, dtype, device)
    model = MemCompForCausalLM.from_base(
        base, chunk_size=config.chunk_size, tokenizer=tokenizer, encoder_batch_size=config.encoder_batch_size
    )
    return model.to(device).eval()


@dataclass
class Case:
    """Decoder inputs for one context length: raw context, full-context prompt and the two memory prompts."""

    context_ids: list[int]
    full_ids: torch.Tensor
    each_ids: torch.Tensor
    block_ids: torch.Tensor
    num_chunks: int


def build_case(model: MemCompForCausalLM, length: int, seed: int = 0) -> Case:
    """Random context tokens and the same ChatML prompt with the raw context or its memory in it."""
    tokenizer, device = model.tokenizer, model.device
    generator = torch.Generator().manual_seed(seed + length)
    low, high = len(TOKENIZER_SPECIAL_TOKENS), tokenizer.vocab_size
    context_ids = torch.randint(low, high, (length,), generator=generator).tolist()
    num_chunks = -(-length // model.config.chunk_size)

    def prompt(wrap: str, num_memory: int) -> list[int]:
        config = copy.copy(model.config)
        config.wrap = wrap
        return build_prompt(tokenizer, config, num_memory, QUESTION).input_ids

    block_of_one = prompt("block", 1)
    start = block_of_one.index(model.config.mem_start_token_id)
    full = block_of_one[:start] + context_ids + block_of_one[start + 3 :]
    as_tensor = lambda ids: torch.tensor([ids], device=device)  # noqa: E731
    return Case(context_ids, as_tensor(full), as_tensor(prompt("each", num_chunks)), as_tensor(prompt("block", num_chunks)), num_chunks)


def measurement(model: MemCompForCausalLM, case: Case, mode: str, memory_embeds: torch.Tensor | None = None):
    """The call timed for `mode`: a prefill returning the first token, or encoding the context."""
    if mode == "encode":
        return lambda: model.compress(case.context_ids, show_progress=False)
    if mode == "full":
        return lambda: model.language_model(input_ids=case.full_ids, use_cache=True, logits_to_keep=1).logits.argmax(-1)
    ids = case.each_ids if mode == "each" else case.block_ids
    return lambda: model(input_ids=ids, memory_embeds=memory_embeds, use_cache=True, logits_to_keep=1).logits.argmax(-1)


@torch.no_grad()
def _cpu_peak_in_fresh_process(config_dict: dict, length: int, mode: str) -> int:
    """Runs in a spawned process: build the model and inputs, then measure one call's RSS peak."""
    config = LatencyConfig(**config_dict)
    torch.set_num_threads(config.threads)
    model = build_model(config, torch.device("cpu"), config.resolve_dtype(torch.device("cpu")))
    case = build_case(model, length, config.seed)
    memory = torch.randn(case.num_chunks, model.config.hidden_size, dtype=model.dtype)  # values do not matter
    small = build_case(model, 4 * config.chunk_size, config.seed)  # initialise kernels without a big allocation
    measurement(model, small, mode, torch.randn(small.num_chunks, model.config.hidden_size, dtype=model.dtype))()
    return rss_peak_bytes(measurement(model, case, mode, memory))


def peak_memory_bytes(config: LatencyConfig, model, case: Case, mode: str, memory_embeds, device) -> int:
    """CUDA: max_memory_allocated (weights included). CPU: RSS high-water above the loaded process."""
    if device.type == "cuda":
        return cuda_peak_bytes(measurement(model, case, mode, memory_embeds), device)
    if not os.path.exists("/proc/self/clear_refs"):
        raise ValueError("CPU peak memory needs Linux (/proc/self/clear_refs); pass --memory false elsewhere.")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_cpu_peak_in_fresh_process, asdict(config), len(case.context_ids), mode).result()


def run(config: LatencyConfig, on_progress=None) -> dict:
    """Measure every length; returns the JSON-ready report. `on_progress(report)` sees it after each length."""
    device = config.resolve_device()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(config.threads)
    try:
        return _run(config, device, on_progress)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _run(config: LatencyConfig, device: torch.device, on_progress=None) -> dict:
    model = build_model(config, device, config.resolve_dtype(device))
    rows = []
    for length in tqdm(config.lengths, desc="latency", unit="length"):
        case = build_case(model, length, config.seed)
        memory = model.compress(case.context_ids, show_progress=False)
        modes = [m for m in MODES if m != "full" or config.full_max_length is None or length <= config.full_max_length]
        timing = {
            m: summarize(time_calls(measurement(model, case, m, memory.embeds), device, config.warmup, config.repeats))
            for m in modes
        }
        seconds = {m: stats["mean_ms"] / 1000 for m, stats in timing.items()}
        row = {
            "context_tokens": length,
            "memory_embeddings": case.num_chunks,
            "decoder_tokens": {"full": case.full_ids.shape[1], "each": case.each_ids.shape[1], "block": case.block_ids.shape[1]},
            "ttft_ms": {m: 1000 * seconds[m] for m in ("full", "each", "block") if m in seconds},
            "encode_ms": 1000 * seconds["encode"],
            "encode_tokens_per_s": length / seconds["encode"],
            "end_to_end_ms": {m: 1000 * (seconds["encode"] + seconds[m]) for m in ("each", "block")},
            "timing_ms": timing,  # per mode: mean (the figures above), median, stdev, min, max, n
            "load_average_1m": round(os.getloadavg()[0], 2),  # contention while this row was timed
        }
        if "full" in seconds:
            row["ttft_speedup"] = {m: seconds["full"] / seconds[m] for m in ("each", "block")}
            row["end_to_end_speedup"] = {m: seconds["full"] / (seconds["encode"] + seconds[m]) for m in ("each", "block")}
        if config.memory:
            peaks = {m: peak_memory_bytes(config, model, case, m, memory.embeds, device) for m in ("full", "each", "encode") if m in modes}
            row["peak_memory_mb"] = {m: b / 2**20 for m, b in peaks.items()}
            if "full" in peaks:
                row["memory_saving"] = peaks["full"] / max(peaks["each"], 1)
        rows.append(row)
        rows.sort(key=lambda r: r["context_tokens"])
        report = {"machine": machine_info(device), "config": asdict(config), "results": rows, "targets": check_targets(rows)}
        if on_progress is not None:
            on_progress(report)
    return report


def check_targets(rows: list[dict]) -> dict:
    """The issue's CPU targets, evaluated on the measured rows (None where a length was not measured)."""
    by_length = {row["context_tokens"]: row for row in rows}
    at_4k = by_length.get(4096, {}).get("ttft_speedup")
    throughput = [row["encode_tokens_per_s"] for row in rows]  # rows are sorted by length
    paid_off = [row["end_to_end_speedup"]["each"] > 1 for row in rows if row["context_tokens"] >= 16384 and "end_to_end_speedup" in row]
    return {
        "ttft_speedup_each_at_4k_ge_7": None if at_4k is None else at_4k["each"] >= 7,
        "ttft_speedup_block_at_4k_ge_12": None if at_4k is None else at_4k["block"] >= 12,
        "encode_throughput_longest_over_shortest": throughput[-1] / throughput[0],
        "encode_throughput_within_1_5x": 1 / 1.5 <= throughput[-1] / throughput[0] <= 1.5,
        "end_to_end_faster_from_16k": all(paid_off) if paid_off else None,
    }


def markdown_table(report: dict) -> str:
    """Table 7 layout (TTFT and peak memory, full vs ours) plus encode and end-to-end columns."""
    machine, config = report["machine"], report["config"]
    lines = [
        f"# Latency: full context vs precomputed memory ({config['preset']}, C={config['chunk_size']}, "
        f"{config.get('attn_implementation', 'sdpa')} attention)",
        "",
        f"Machine: {machine.get('gpu') or machine_name(machine)}, {machine['torch_threads']} torch threads "
        f"({machine['logical_cpus']} logical CPUs, 1-min load {machine['load_average_1m']} when the run ended), "
        f"torch {machine['torch']}, transformers {machine['transformers']}. {_protocol(report)} "
        "Random weights: timing does not depend on them.",
        "",
        "| Context | TTFT Full (ms) | Ours each (ms) | Speedup | Ours block (ms) | Speedup | Encode (ms) | Encode tok/s "
        "| End-to-end each (ms) | E2E speedup | Peak Full (MB) | Peak Ours (MB) | Saving | Peak Encode (MB) | Load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dash = "–"
    for row in report["results"]:
        ttft, speed, e2e = row["ttft_ms"], row.get("ttft_speedup", {}), row.get("end_to_end_speedup", {})
        peak = row.get("peak_memory_mb", {})
        cells = [
            tokens_label(row["context_tokens"]),
            f"{ttft['full']:,.0f}" if "full" in ttft else dash,
            f"{ttft['each']:,.1f}",
            f"{speed['each']:.1f}x" if speed else dash,
            f"{ttft['block']:,.1f}",
            f"{speed['block']:.1f}x" if speed else dash,
            f"{row['encode_ms']:,.0f}",
            f"{row['encode_tokens_per_s']:,.0f}",
            f"{row['end_to_end_ms']['each']:,.0f}",
            f"{e2e['each']:.2f}x" if e2e else dash,
            f"{peak['full']:,.0f}" if "full" in peak else dash,
            f"{peak['each']:,.0f}" if "each" in peak else dash,
            f"{row['memory_saving']:.2f}x" if "memory_saving" in row else dash,
            f"{peak['encode']:,.0f}" if "encode" in peak else dash,
            f"{row['load_average_1m']:.1f}" if "load_average_1m" in row else dash,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _spread_table(report)
    lines += ["", "Targets: " + ", ".join(f"{k}={_fmt(v)}" for k, v in report["targets"].items()), ""]
    lines += ["Paper, Table 7 (Qwen2.5-7B, one H100, fp16): " + ", ".join(
        f"{tokens_label(n)} {f / o:.1f}x / {pf / po:.2f}x" for n, (f, o, pf, po) in PAPER_TABLE7_7B.items()
    ) + " (TTFT speedup / memory saving).", ""]
    return "\n".join(lines)


def _protocol(report: dict) -> str:
    """How the figures were aggregated: tables written before the Appendix E protocol used medians."""
    config = report["config"]
    aggregate = "Means" if any("timing_ms" in row for row in report["results"]) else "Medians"
    paper = " (the paper's protocol)" if (config["warmup"], config["repeats"]) == (PAPER_WARMUP, PAPER_REPEATS) else (
        f" (fewer than the paper's {PAPER_REPEATS} after {PAPER_WARMUP})"
    )
    return f"{aggregate} of {config['repeats']} timed calls after {config['warmup']} warm-up(s){paper}."


def _spread_table(report: dict) -> list[str]:
    """Median and spread beside each mean (rows measured with the Appendix E protocol only)."""
    rows = [row for row in report["results"] if "timing_ms" in row]
    if not rows:
        return []
    lines = ["", "| Context | Call | Mean (ms) | Median (ms) | Std dev (ms) | Min (ms) | Max (ms) | n |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for mode, stats in row["timing_ms"].items():
            lines.append(
                f"| {tokens_label(row['context_tokens'])} | {mode} | {stats['mean_ms']:,.1f} | {stats['median_ms']:,.1f} | "
                f"{stats['stdev_ms']:,.1f} | {stats['min_ms']:,.1f} | {stats['max_ms']:,.1f} | {stats['n']} |"
            )
    return lines


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def plot_speedups(report: dict, path: Path) -> None:
    """Speedup vs context length (log-2 x axis), with the paper's 7B curve for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in report["results"] if "ttft_speedup" in row]
    figure, axes = plt.subplots(figsize=(6, 4))
    lengths = [row["context_tokens"] for row in rows]
    axes.plot(lengths, [r["ttft_speedup"]["each"] for r in rows], "o-", label="TTFT, wrap=each")
    axes.plot(lengths, [r["ttft_speedup"]["block"] for r in rows], "s-", label="TTFT, wrap=block")
    axes.plot(lengths, [r["end_to_end_speedup"]["each"] for r in rows], "^--", label="encode + TTFT, wrap=each")
    axes.plot(list(PAPER_TABLE7_7B), [f / o for f, o, _, _ in PAPER_TABLE7_7B.values()], "k:", label="paper 7B (H100)")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(set(lengths) | set(PAPER_TABLE7_7B)), [tokens_label(n) for n in sorted(set(lengths) | set(PAPER_TABLE7_7B))])
    axes.set_xlabel("context tokens")
    axes.set_ylabel("speedup over full context (x)")
    axes.set_title(f"memcomp TTFT speedup ({report['config']['preset']}, {report['machine'].get('gpu') or 'CPU'})", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: dict, config: LatencyConfig) -> dict[str, Path]:
    """Write `<name>.json`, `<name>.md` and (optionally) `<name>.png` under `config.output_dir`."""
    plot = config.plot and any("ttft_speedup" in row for row in report["results"])
    return write_outputs(
        report, config.output_dir, config.name, markdown_table(report), (lambda path: plot_speedups(report, path)) if plot else None
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.latency` / `memcomp bench`: parse a `LatencyConfig`, run, write the outputs."""
    def check(config: LatencyConfig) -> None:
        check_runnable(config, config.plot)

    def run_writing_partials(config: LatencyConfig) -> dict:
        return run(config, on_progress=lambda partial: write_report(partial, config))  # partial tables survive a stop

    return benchmark_main(LatencyConfig, argv, "memcomp bench", __doc__, run_writing_partials, markdown_table, write_report, check)


if __name__ == "__main__":
    sys.exit(main())
