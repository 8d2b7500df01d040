"""Does vLLM's prefix caching reuse the memory prefix of prompt embeddings? Many questions on one memory, measured.

With prefix caching on, vLLM hashes each full KV block by its token ids and, for prompt-embedding requests, by the
embeddings in the block too, so requests whose prompts start with the same embeddings (same system turn, same
memory) share those blocks. This run answers `num_questions` questions about one memory (after one warm-up request
that fills the cache) and the same number of questions each about its own memory of the same length (nothing to
share), greedy, one token each (TTFT-like), and reads vLLM's prefix-cache counters. Run in the vLLM environment:

    .venv-vllm/bin/python -m benchmarks.vllm_prefix_cache --output_dir benchmarks/results
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks._outputs import benchmark_main, write_outputs
from benchmarks._timing import median, time_calls
from benchmarks._vllm_cpu import CPU, machine_line, measured_on, pin_threads, tiny_model
from modeling_memcomp.vllm_backend import VLLMDecoder, build_prompt_embeds


@dataclass
class PrefixCacheConfig:
    """Model size, workload and timing settings of the prefix-cache measurement."""

    hidden_size: int = field(default=256, metadata={"help": "Width of the random Qwen2 base."})
    num_layers: int = field(default=4, metadata={"help": "Layers of the random Qwen2 base."})
    context_tokens: int = field(default=4096, metadata={"help": "Context tokens per memory (C=16, wrap each: 768 positions)."})
    num_questions: int = field(default=16, metadata={"help": "Questions per measurement."})
    repeats: int = field(default=3, metadata={"help": "Timed runs per case; the median is kept."})
    threads: int = field(default=1, metadata={"help": "vLLM worker cores (0..threads-1)."})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Folder for vllm_prefix_cache.json / .md."})


def prefix_counters(llm) -> dict[str, float]:
    """vLLM's prefix-cache query and hit counters (tokens), summed over its metrics."""
    totals = {"queries": 0.0, "hits": 0.0}
    for metric in llm.get_metrics():
        for key in totals:
            if metric.name == f"vllm:prefix_cache_{key}":
                totals[key] += float(getattr(metric, "value", 0) or 0)
    return totals


def measure(model, decoder: VLLMDecoder, config: PrefixCacheConfig) -> dict:
    """Time questions on one memory against questions on a memory each, on an engine with prefix caching and stats on;
    return the result record."""
    vocab = model.get_input_embeddings().num_embeddings - 8
    generator = torch.Generator().manual_seed(0)
    contexts = [torch.randint(3, vocab, (config.context_tokens,), generator=generator).tolist() for _ in range(config.num_questions + 1)]
    memories = [model.compress(c) for c in contexts]
    questions = [f"Question {i}: what happened in the story?" for i in range(config.num_questions)]
    shared = build_prompt_embeds(model, memories[0], questions)                       # one memory, many questions
    separate = build_prompt_embeds(model, memories[1:], questions)                    # a memory each: nothing shared
    params = decoder.sampling_params(do_sample=False, max_new_tokens=1, repetition_penalty=1.0)
    decoder.generate(shared[:1], params)  # the first question fills the cache with the memory prefix
    before = prefix_counters(decoder.llm)
    shared_s = median(time_calls(lambda: decoder.generate(shared, params), CPU, warmup=0, repeats=config.repeats))
    after = prefix_counters(decoder.llm)

    def separate_run():
        decoder.llm.reset_prefix_cache()
        return decoder.generate(separate, params)

    separate_s = median(time_calls(separate_run, CPU, warmup=0, repeats=config.repeats))
    hits, queries = after["hits"] - before["hits"], after["queries"] - before["queries"]
    return {
        "config": {**asdict(config), "hidden_size": model.config.text_config.hidden_size,
                   "num_layers": model.config.text_config.num_hidden_layers},
        **measured_on(),
        "prompt_positions": len(shared[0]),
        "shared_memory_s": shared_s,
        "separate_memories_s": separate_s,
        "speedup": separate_s / shared_s,
        "prefix_cache_hit_rate": hits / queries if queries else None,
    }


def run(config: PrefixCacheConfig) -> dict:
    pin_threads(config.threads, kv_cache_gib=2)
    model, _ = tiny_model(config.hidden_size, config.num_layers)
    decoder = VLLMDecoder(model, max_model_len=2048, seed=0, disable_log_stats=False)  # prefix caching: on by default
    return measure(model, decoder, config)


def markdown_table(result: dict) -> str:
    c = result["config"]
    rate = "n/a" if result["prefix_cache_hit_rate"] is None else f"{100 * result['prefix_cache_hit_rate']:.0f}%"
    return "\n".join([
        f"# vLLM prefix caching with prompt embeddings ({c['num_layers']}-layer {c['hidden_size']}-wide random Qwen2)",
        "",
        machine_line(result),
        f"{c['num_questions']} questions, {result['prompt_positions']} prompt positions each ({c['context_tokens']} "
        f"context tokens, C=16, wrap each), one greedy token each, median of {c['repeats']}.",
        "",
        "| case | seconds | prefix-cache hit rate |",
        "|---|---|---|",
        f"| one memory, {c['num_questions']} questions (cache warm) | {result['shared_memory_s']:.2f} | {rate} |",
        f"| a memory per question (nothing to share) | {result['separate_memories_s']:.2f} | – |",
        "",
        f"Speedup from reusing the memory prefix: {result['speedup']:.2f}x.",
        "",
    ])


def write_report(result: dict, config: PrefixCacheConfig) -> dict[str, Path]:
    return write_outputs(result, config.output_dir, "vllm_prefix_cache", markdown_table(result))


def main(argv: list[str] | None = None) -> int:
    return benchmark_main(PrefixCacheConfig, argv, "python -m benchmarks.vllm_prefix_cache", __doc__, run, markdown_table,
                          write_report)


if __name__ == "__main__":
    raise SystemExit(main())
