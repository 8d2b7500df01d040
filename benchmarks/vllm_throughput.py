"""Decoding throughput from compressed memory: HF `generate` vs vLLM on prompt embeddings (same tiny model).

Both sides answer the same questions from the same precomputed memories, greedy, with a fixed number of
new tokens (stop tokens suppressed until then), vLLM's prefix cache off (the warm-up and each timed run send the same
prompts), so they do identical work and must emit identical tokens.
Timed: prompt building + generation (compression is done once, before). Run in the vLLM environment:

    .venv-vllm/bin/python -m benchmarks.vllm_throughput --output_dir benchmarks/results
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks._outputs import benchmark_main, write_outputs
from benchmarks._timing import summarize, time_calls
from benchmarks._vllm_cpu import CPU, machine_line, measured_on, pin_threads, tiny_model
from modeling_memcomp.vllm_backend import VLLMDecoder, build_prompt_embeds


@dataclass
class ThroughputConfig:
    """Model size, workload and timing settings of one HF-vs-vLLM comparison."""

    hidden_size: int = field(default=256, metadata={"help": "Width of the random Qwen2 base (issue 8's CPU config)."})
    num_layers: int = field(default=4, metadata={"help": "Layers of the random Qwen2 base."})
    wrap: str = field(default="each", metadata={"help": "Memory wrapping: 'each' or 'block'."})
    num_prompts: int = field(default=32, metadata={"help": "Questions answered per run (one memory each)."})
    context_lines: int = field(default=4, metadata={"help": "Corpus lines per context (~50 tokens each)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens generated per prompt (fixed)."})
    hf_batch_size: int = field(default=32, metadata={"help": "Prompts per HF generate call (left-padded batch)."})
    repeats: int = field(default=3, metadata={"help": "Timed runs per backend after one warm-up; the median is kept."})
    threads: int = field(default=1, metadata={"help": "CPU threads for HF (torch) and for vLLM's worker (cores 0..threads-1)."})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Folder for vllm_throughput.json / .md."})


def measure(model, decoder: VLLMDecoder, config: ThroughputConfig, corpus: list[str]) -> dict:
    """Time HF and vLLM answering the same questions from the same memories; return the result record."""
    contexts = [" ".join(corpus[i * config.context_lines : (i + 1) * config.context_lines]) for i in range(config.num_prompts)]
    memories = [model.compress(context) for context in contexts]
    questions = [f"Question {i}: what happened in the story?" for i in range(config.num_prompts)]
    fixed = dict(do_sample=False, repetition_penalty=1.0, max_new_tokens=config.max_new_tokens)

    def hf_run() -> list[list[int]]:
        tokens = []
        for start in range(0, config.num_prompts, config.hf_batch_size):
            stop = start + config.hf_batch_size
            batch = model.prepare_prompts(memories[start:stop], questions[start:stop])
            output = model.generate(**batch, **fixed, min_new_tokens=config.max_new_tokens)
            tokens += output[:, batch["input_ids"].shape[1] :].tolist()
        return tokens

    params = decoder.sampling_params(**fixed, min_new_tokens=config.max_new_tokens, ignore_eos=True)

    def vllm_run() -> list[list[int]]:
        return decoder.generate(build_prompt_embeds(model, memories, questions), params)

    with torch.no_grad():
        hf_tokens = hf_run()  # the warm-up; greedy, so every timed run emits the same tokens
        hf_calls = summarize(time_calls(hf_run, CPU, warmup=0, repeats=config.repeats))
    vllm_tokens = vllm_run()
    vllm_calls = summarize(time_calls(vllm_run, CPU, warmup=0, repeats=config.repeats))
    hf_seconds, vllm_seconds = hf_calls["median_ms"] / 1000, vllm_calls["median_ms"] / 1000
    generated = config.num_prompts * config.max_new_tokens
    text = model.config.text_config
    return {
        "config": {**asdict(config), "hidden_size": text.hidden_size, "num_layers": text.num_hidden_layers, "wrap": model.config.wrap},
        **measured_on(),
        "memory_embeddings_per_prompt": statistics.mean(len(m) for m in memories),
        "prompt_length_mean": statistics.mean(len(e) for e in build_prompt_embeds(model, memories, questions)),
        "generated_tokens": generated,
        "hf_seconds": hf_seconds,
        "vllm_seconds": vllm_seconds,
        "hf_calls_ms": hf_calls,
        "vllm_calls_ms": vllm_calls,
        "hf_tokens_per_s": generated / hf_seconds,
        "vllm_tokens_per_s": generated / vllm_seconds,
        "speedup": hf_seconds / vllm_seconds,
        "vllm_prefix_caching": decoder.llm_settings["enable_prefix_caching"],
        "tokens_identical": hf_tokens == vllm_tokens,
    }


def run(config: ThroughputConfig) -> dict:
    pin_threads(config.threads, kv_cache_gib=1)
    model, corpus = tiny_model(config.hidden_size, config.num_layers, wrap=config.wrap)
    # Prefix caching off: the repeated runs send the same prompts, which vLLM would serve from cache while HF prefills.
    decoder = VLLMDecoder(model, max_model_len=1024, seed=0, enable_prefix_caching=False)
    return measure(model, decoder, config, corpus)


def _spread(calls_ms: dict) -> str:
    return f"{calls_ms['min_ms'] / 1000:.2f} - {calls_ms['max_ms'] / 1000:.2f}"


def markdown_table(result: dict) -> str:
    c = result["config"]
    return "\n".join([
        f"# Decoding throughput from memory: HF vs vLLM ({c['num_layers']}-layer {c['hidden_size']}-wide random Qwen2, wrap={c['wrap']})",
        "",
        machine_line(result),
        f"{c['num_prompts']} prompts (mean {result['prompt_length_mean']:.0f} positions, "
        f"{result['memory_embeddings_per_prompt']:.1f} memory embeddings each), {c['max_new_tokens']} greedy tokens each; "
        f"median of {c['repeats']} runs after a warm-up; vLLM's prefix cache "
        f"{'on' if result['vllm_prefix_caching'] else 'off'}.",
        "",
        "| backend | seconds (median) | min - max | tokens/s |",
        "|---|---|---|---|",
        f"| HF generate (batch {c['hf_batch_size']}) | {result['hf_seconds']:.2f} | {_spread(result['hf_calls_ms'])} | "
        f"{result['hf_tokens_per_s']:.0f} |",
        f"| vLLM prompt_embeds | {result['vllm_seconds']:.2f} | {_spread(result['vllm_calls_ms'])} | "
        f"{result['vllm_tokens_per_s']:.0f} |",
        "",
        f"vLLM speedup: {result['speedup']:.2f}x. Identical tokens: {result['tokens_identical']}.",
        "",
    ])


def write_report(result: dict, config: ThroughputConfig) -> dict[str, Path]:
    return write_outputs(result, config.output_dir, "vllm_throughput", markdown_table(result))


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(ThroughputConfig, argv, "python -m benchmarks.vllm_throughput", __doc__, run, markdown_table,
                          write_report)


if __name__ == "__main__":
    raise SystemExit(main())
