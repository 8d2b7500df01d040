"""Decoding throughput from compressed memory: HF `generate` vs vLLM on prompt embeddings (same tiny model).

Both sides answer the same questions from the same precomputed memories, greedy, with a fixed number of
new tokens (stop tokens suppressed until then), vLLM's prefix cache off (the warm-up and each timed run send the same
prompts), so they do identical work and must emit identical tokens.
Timed: prompt building + generation (compression is done once, before). Run in the vLLM environment:

    .venv-vllm/bin/python benchmarks/vllm_throughput.py --out benchmarks/results
"""

from __future__ import annotations

import json
import os
import platform
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
    out: str = field(default="benchmarks/results", metadata={"help": "Folder for vllm_throughput.json / .md."})


def median_seconds(run, repeats: int) -> tuple[float, object]:
    """Median wall time of `run()` over `repeats` calls after a warm-up, and the last result."""
    result, times = run(), []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def machine(threads: int) -> str:
    """CPU model, threads and OS, for the results table."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    return f"{cpu}, {threads} threads ({os.cpu_count()} cores visible, shared), {platform.system()}"


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
        hf_seconds, hf_tokens = median_seconds(hf_run, config.repeats)
    vllm_seconds, vllm_tokens = median_seconds(vllm_run, config.repeats)
    generated = config.num_prompts * config.max_new_tokens
    text = model.config.text_config
    return {
        "config": {**asdict(config), "hidden_size": text.hidden_size, "num_layers": text.num_hidden_layers, "wrap": model.config.wrap},
        "machine": machine(config.threads),
        "memory_embeddings_per_prompt": statistics.mean(len(m) for m in memories),
        "prompt_length_mean": statistics.mean(len(e) for e in build_prompt_embeds(model, memories, questions)),
        "generated_tokens": generated,
        "hf_seconds": hf_seconds,
        "vllm_seconds": vllm_seconds,
        "hf_tokens_per_s": generated / hf_seconds,
        "vllm_tokens_per_s": generated / vllm_seconds,
        "speedup": hf_seconds / vllm_seconds,
        "vllm_prefix_caching": decoder.llm_settings["enable_prefix_caching"],
        "tokens_identical": hf_tokens == vllm_tokens,
        "vllm_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        "versions": {"torch": torch.__version__, "vllm": require_vllm().__version__},
    }


def main() -> None:
    (config,) = HfArgumentParser(ThroughputConfig).parse_args_into_dataclasses()
    torch.set_num_threads(config.threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{config.threads - 1}")
    corpus = CORPUS.read_text().splitlines()
    model = build_tiny_memcomp(
        train_tokenizer(corpus, vocab_size=512), hidden_size=config.hidden_size, num_layers=config.num_layers, wrap=config.wrap
    )
    # Prefix caching off: the repeated runs send the same prompts, which vLLM would serve from cache while HF prefills.
    decoder = VLLMDecoder(model, max_model_len=1024, seed=0, enable_prefix_caching=False)
    write(measure(model, decoder, config, corpus), Path(config.out))


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "vllm_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    c = result["config"]
    table = "\n".join(
        [
            f"# Decoding throughput from memory: HF vs vLLM ({c['num_layers']}-layer {c['hidden_size']}-wide random Qwen2, wrap={c['wrap']})",
            "",
            f"Machine: {result['machine']}. vLLM worker cores: {result['vllm_threads_bind']}. Versions: {result['versions']}.",
            f"{c['num_prompts']} prompts (mean {result['prompt_length_mean']:.0f} positions, "
            f"{result['memory_embeddings_per_prompt']:.1f} memory embeddings each), {c['max_new_tokens']} greedy tokens each; "
            f"median of {c['repeats']} runs after a warm-up; vLLM's prefix cache "
            f"{'on' if result.get('vllm_prefix_caching', True) else 'off'}.",
            "",
            "| backend | seconds | tokens/s |",
            "|---|---|---|",
            f"| HF generate (batch {c['hf_batch_size']}) | {result['hf_seconds']:.2f} | {result['hf_tokens_per_s']:.0f} |",
            f"| vLLM prompt_embeds | {result['vllm_seconds']:.2f} | {result['vllm_tokens_per_s']:.0f} |",
            "",
            f"vLLM speedup: {result['speedup']:.2f}x. Identical tokens: {result['tokens_identical']}.",
            "",
        ]
    )
    (out / "vllm_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
