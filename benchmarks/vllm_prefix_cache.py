"""Does vLLM's prefix caching reuse the memory prefix of prompt embeddings? Many questions on one memory, measured.

With prefix caching on, vLLM hashes each full KV block by its token ids and, for prompt-embedding requests, by the
embeddings in the block too, so requests whose prompts start with the same embeddings (same system turn, same
memory) share those blocks. This run answers `num_questions` questions about one memory (after one warm-up request
that fills the cache) and the same number of questions each about its own memory of the same length (nothing to
share), greedy, one token each (TTFT-like), and reads vLLM's prefix-cache counters. Run in the vLLM environment:

    .venv-vllm/bin/python benchmarks/vllm_prefix_cache.py --out benchmarks/results
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer
from modeling_memcomp.vllm_backend import VLLMDecoder, build_prompt_embeds, require_vllm

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus.txt"


@dataclass
class PrefixCacheConfig:
    hidden_size: int = field(default=256, metadata={"help": "Width of the random Qwen2 base."})
    num_layers: int = field(default=4, metadata={"help": "Layers of the random Qwen2 base."})
    context_tokens: int = field(default=4096, metadata={"help": "Context tokens per memory (C=16, wrap each: 768 positions)."})
    num_questions: int = field(default=16, metadata={"help": "Questions per measurement."})
    repeats: int = field(default=3, metadata={"help": "Timed runs per case; the median is kept."})
    threads: int = field(default=1, metadata={"help": "vLLM worker cores (0..threads-1)."})
    out: str = field(default="benchmarks/results", metadata={"help": "Folder for vllm_prefix_cache.json / .md."})


def prefix_counters(llm) -> dict[str, float]:
    """vLLM's prefix-cache query and hit counters (tokens), summed over its metrics."""
    totals = {"queries": 0.0, "hits": 0.0}
    for metric in llm.get_metrics():
        for key in totals:
            if metric.name == f"vllm:prefix_cache_{key}":
                totals[key] += float(getattr(metric, "value", 0) or 0)
    return totals


def timed(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    (config,) = HfArgumentParser(PrefixCacheConfig).parse_args_into_dataclasses()
    torch.set_num_threads(config.threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{config.threads - 1}")
    corpus = CORPUS.read_text().splitlines()
    model = build_tiny_memcomp(train_tokenizer(corpus, vocab_size=512), hidden_size=config.hidden_size, num_layers=config.num_layers)
    vocab = model.get_input_embeddings().num_embeddings - 8
    generator = torch.Generator().manual_seed(0)
    contexts = [torch.randint(3, vocab, (config.context_tokens,), generator=generator).tolist() for _ in range(config.num_questions + 1)]
    memories = [model.compress(c) for c in contexts]
    questions = [f"Question {i}: what happened in the story?" for i in range(config.num_questions)]
    shared = build_prompt_embeds(model, memories[0], questions)                       # one memory, many questions
    separate = build_prompt_embeds(model, memories[1:], questions)                    # a memory each: nothing shared
    decoder = VLLMDecoder(model, max_model_len=2048, seed=0, disable_log_stats=False)  # prefix caching: on by default
    params = decoder.sampling_params(do_sample=False, max_new_tokens=1, repetition_penalty=1.0)
    decoder.generate(shared[:1], params)  # the first question fills the cache with the memory prefix
    before = prefix_counters(decoder.llm)
    shared_s = timed(lambda: decoder.generate(shared, params), config.repeats)
    after = prefix_counters(decoder.llm)
    separate_s = timed(lambda: (decoder.llm.reset_prefix_cache(), decoder.generate(separate, params)), config.repeats)
    hits, queries = after["hits"] - before["hits"], after["queries"] - before["queries"]
    from benchmarks._timing import machine_info

    result = {
        "config": asdict(config),
        "machine": machine_info(torch.device("cpu")),
        "prompt_positions": len(shared[0]),
        "shared_memory_s": shared_s,
        "separate_memories_s": separate_s,
        "speedup": separate_s / shared_s,
        "prefix_cache_hit_rate": hits / queries if queries else None,
        "versions": {"torch": torch.__version__, "vllm": require_vllm().__version__},
    }
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vllm_prefix_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    rate = "n/a" if result["prefix_cache_hit_rate"] is None else f"{100 * result['prefix_cache_hit_rate']:.0f}%"
    table = "\n".join([
        f"# vLLM prefix caching with prompt embeddings ({config.num_layers}-layer {config.hidden_size}-wide random Qwen2)",
        "",
        f"{config.num_questions} questions, {result['prompt_positions']} prompt positions each ({config.context_tokens} "
        f"context tokens, C=16, wrap each), one greedy token each, median of {config.repeats}; versions {result['versions']}; "
        f"{result['machine'].get('cpu')}, {config.threads} vLLM worker core(s), with a training job on the other core.",
        "",
        "| case | seconds | prefix-cache hit rate |",
        "|---|---|---|",
        f"| one memory, {config.num_questions} questions (cache warm) | {shared_s:.2f} | {rate} |",
        f"| a memory per question (nothing to share) | {separate_s:.2f} | – |",
        "",
        f"Speedup from reusing the memory prefix: {result['speedup']:.2f}x.",
        "",
    ])
    (out / "vllm_prefix_cache.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
