"""The GPU check (scripts/gpu_check.sh runs one part per process, then `summary`): every figure that needs a GPU.

    latency   Qwen2.5-7B shape, random weights, bf16: TTFT full vs wrap each vs block at 4K-120K, with SDPA and
              with flash-attention when installed, against the paper's Table 7; encode throughput and peak
              memory (the 120K row is the compress figure)
    fqlora    one FQLoRA training step of the 7B shape with a 4-bit (bitsandbytes NF4) base: time and peak memory
    reuse     16 questions on one memory with and without memory-prefix reuse (`prefill_memory`), 8K and 32K
    bf16      one RL step of a tiny bf16 policy at Table 10's LR 1e-6 under CUDA bf16 autocast: the share of decoder
              weights it moves (float32 master weights: all of them) and the saved dtype (bf16)
    summary   merges the parts into gpu_check.json and gpu_check.md

`--smoke` runs each part at tiny size on CPU; what needs CUDA says it was skipped (the 4-bit step runs
without quantization there). Each part writes `gpu_check_<part>.json` under `--output_dir`; the latency part
rewrites it after every measured length (status `partial: ...`), so a run cut short keeps its finished rows.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from benchmarks import latency, memory_reuse
from benchmarks._outputs import tokens_label
from benchmarks._timing import cuda_peak_bytes, machine_info, time_once

PARTS = ("latency", "fqlora", "reuse", "bf16", "summary")


@dataclass
class GpuCheckConfig:
    """Which part to run and at what size; defaults are the GPU run (about 6 minutes on one H100/H200)."""

    part: str = field(default="summary", metadata={"help": f"one of {PARTS}"})
    output_dir: str = field(default="gpu_check", metadata={"help": "where gpu_check_<part>.json (and the summary) go"})
    smoke: bool = field(default=False, metadata={"help": "tiny sizes on CPU (seconds); CUDA-only steps say skipped"})
    lengths: list[int] = field(default_factory=lambda: list(latency.PAPER_LENGTHS), metadata={"help": "latency context lengths"})
    warmup: int = field(default=1, metadata={"help": "latency warm-up calls (GPU time is short: fewer than the paper's 3)"})
    repeats: int = field(default=5, metadata={"help": "latency timed calls (fewer than the paper's 20; the count is in the JSON)"})
    fqlora_context: int = field(default=4096, metadata={"help": "context tokens encoded (with gradients) in the FQLoRA step"})
    fqlora_target: int = field(default=512, metadata={"help": "target tokens (the loss) in the FQLoRA step"})
    reuse_lengths: list[int] = field(default_factory=lambda: [8192, 32768], metadata={"help": "memory-reuse context lengths"})

    def __post_init__(self):
        if self.part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {self.part!r}.")
        if self.smoke:
            self.lengths, self.warmup, self.repeats = [256, 512], 0, 1
            self.fqlora_context, self.fqlora_target, self.reuse_lengths = 256, 32, [256]

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() and not self.smoke else "cpu")


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


# ---------------------------------------------------------------------------------------------- latency
def run_latency(config: GpuCheckConfig, on_progress=None) -> dict:
    """The Table 7 shape with each available attention implementation; compress at the longest length.
    `on_progress(result)` sees the part's result so far (status `partial: ...`) after every measured length."""
    device = config.device
    if device.type != "cuda" and not config.smoke:
        return skipped("needs a CUDA GPU (the Qwen2.5-7B shape in bf16)")
    runs, notes = {}, []

    def progress(attn: str, report: dict) -> None:
        if on_progress is None:
            return
        done = {**runs, attn: {"report": report, "table7": against_table7(report["results"])}}
        status = (f"partial: {len(report['results'])} of {len(config.lengths)} lengths with {attn} measured when this was "
                  "written (a part cut short by its time limit stops here)")
        on_progress({"status": status, "runs": done, "compress_at_longest": _compress_at_longest(done, config),
                     "notes": list(notes)})

    for attn in ("sdpa", "flash_attention_2"):
        if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            notes.append("flash_attention_2 skipped: the flash-attn package is not installed")
            continue
        if attn == "flash_attention_2" and device.type != "cuda":
            notes.append("flash_attention_2 skipped: needs CUDA")
            continue
        bench = latency.LatencyConfig(
            preset="smoke" if config.smoke else "qwen2.5-7b", lengths=list(config.lengths), warmup=config.warmup,
            repeats=config.repeats, memory=not config.smoke, attn_implementation=attn, device=str(device),
            encoder_batch_size=8 if config.smoke else 256,
        )
        report = latency.run(bench, on_progress=lambda partial, attn=attn: progress(attn, partial))
        runs[attn] = {"report": report, "table7": against_table7(report["results"])}
    return {"status": "ok", "runs": runs, "compress_at_longest": _compress_at_longest(runs, config), "notes": notes}


def _compress_at_longest(runs: dict, config: GpuCheckConfig) -> dict | None:
    """Encode time, throughput and peak at the longest length (the sdpa run), None until that row is measured."""
    longest = max(config.lengths)
    rows = runs.get("sdpa", {}).get("report", {}).get("results", [])
    row = next((r for r in rows if r["context_tokens"] == longest), None)
    if row is None:
        return None
    return {
        "context_tokens": longest,
        "encode_ms": row["encode_ms"],
        "encode_tokens_per_s": row["encode_tokens_per_s"],
        "peak_memory_mb": row.get("peak_memory_mb", {}).get("encode"),
    }


def against_table7(rows: list[dict]) -> list[dict]:
    """Measured TTFT speedup and memory saving next to the paper's (7B, one H100, fp16) per length."""
    out = []
    for row in rows:
        paper = latency.PAPER_TABLE7_7B.get(row["context_tokens"])
        entry = {"context_tokens": row["context_tokens"], "ttft_ms": row["ttft_ms"], "speedup": row.get("ttft_speedup"),
                 "peak_memory_gb": {m: v / 1024 for m, v in row.get("peak_memory_mb", {}).items()}}
        if paper is not None:
            full, ours, full_gb, ours_gb = paper
            entry["paper"] = {"full_ms": full, "ours_ms": ours, "speedup": full / ours, "full_gb": full_gb, "ours_gb": ours_gb}
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------- fqlora
def _scratch_dir(needed_bytes: int) -> str | None:
    """/dev/shm when it has room (the 15 GB random base is written and read back at memory speed), else the default."""
    import shutil

    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > needed_bytes else None


def _save_random_base(folder: str, text_config, tokenizer, dtype: torch.dtype, device: torch.device) -> None:
    """A randomly initialised base LM, built on `device` in `dtype` and saved with the tokenizer, as a user's base."""
    torch.manual_seed(0)
    base = latency.random_base(text_config, dtype, device)
    base.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _reconstruction_batch(model, config: GpuCheckConfig, device: torch.device) -> dict:
    """One CPT-style row: a random context of `fqlora_context` tokens as memory, its first `fqlora_target` as the
    target."""
    from modeling_memcomp import build_prompt
    from modeling_memcomp.tiny import TOKENIZER_SPECIAL_TOKENS

    unwrapped = model.get_base_model() if hasattr(model, "get_base_model") else model
    generator = torch.Generator().manual_seed(1)
    vocab = unwrapped.tokenizer.vocab_size
    context = torch.randint(len(TOKENIZER_SPECIAL_TOKENS), vocab, (config.fqlora_context,), generator=generator).tolist()
    chunk_ids, chunk_mask, _ = unwrapped.chunk_passages([context])
    prompt = build_prompt(unwrapped.tokenizer, unwrapped.config, len(chunk_ids), "Repeat the context.",
                          target=context[: config.fqlora_target])
    return {
        "input_ids": torch.tensor([prompt.input_ids], device=device),
        "labels": torch.tensor([prompt.labels], device=device),
        "chunk_ids": chunk_ids.to(device),
        "chunk_attention_mask": chunk_mask.to(device),
    }


def _timed_steps(model, batch: dict, device: torch.device, steps: int = 2) -> list[dict]:
    """Time `steps` AdamW steps (the first also allocates the optimizer states), with the CUDA peak memory of each."""
    from trainers.param_groups import parameter_groups

    decay = {n for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1}
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-5, 0.1, 1e-4, 0.0, 3e-4, decay_names=decay))

    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    records = []
    for _ in range(steps):
        if device.type == "cuda":
            holder = []
            peak = cuda_peak_bytes(lambda: holder.append(time_once(step, device)), device)
            (seconds, loss), = holder
        else:
            (seconds, loss), peak = time_once(step, device), None
        records.append({"seconds": seconds, "loss": loss, "peak_memory_gb": None if peak is None else peak / 2**30})
    return records


def run_fqlora(config: GpuCheckConfig) -> dict:
    """Save a random base LM of the 7B shape, load it through `load_fqlora_model` (4-bit), take 2 steps."""
    from modeling_memcomp.tiny import train_tokenizer
    from trainers.fqlora import FQLoRAConfig, _bitsandbytes_available, load_fqlora_model, trainable_layers

    device = config.device
    cuda = device.type == "cuda"
    if not cuda and not config.smoke:
        return skipped("needs a CUDA GPU and bitsandbytes (4-bit NF4 base)")
    quantize = cuda and _bitsandbytes_available()
    if cuda and not quantize:
        return skipped("bitsandbytes is not installed (carry its wheel, e.g. bitsandbytes==0.50.2)")
    dtype = torch.bfloat16 if cuda else torch.float32
    tokenizer = train_tokenizer([__doc__, latency.__doc__], vocab_size=512)
    with tempfile.TemporaryDirectory(prefix="gpu-check-base-", dir=_scratch_dir(30 * 2**30)) as folder:
        text_config = latency.base_text_config("smoke" if config.smoke else "qwen2.5-7b", tokenizer,
                                               max_positions=4096 if config.smoke else 32768)
        built_s, _ = time_once(lambda: _save_random_base(folder, text_config, tokenizer, dtype, device), torch.device("cpu"))
        fq = FQLoRAConfig(quantize=quantize, compute_dtype=str(dtype).removeprefix("torch."), lora_dropout=0.0)
        load_s, model = time_once(
            lambda: load_fqlora_model(folder, fq, dtype=dtype, **({"device_map": {"": device.index or 0}} if cuda else {})),
            device,
        )
    model.train()
    batch = _reconstruction_batch(model, config, device)
    steps = _timed_steps(model, batch, device)
    try:
        import bitsandbytes as bnb

        four_bit = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    except ImportError:
        four_bit = 0
    return {
        "status": "ok" if quantize else "ran without 4-bit (no CUDA): the CPU smoke of the same code path",
        "shape": "smoke" if config.smoke else "qwen2.5-7b",
        "quantized_4bit_linears": four_bit,
        "layers": trainable_layers(model),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "decoder_tokens": batch["input_ids"].shape[1],
        "context_tokens": config.fqlora_context,
        "gradient_checkpointing": False,
        "build_and_save_s": built_s,
        "load_s": load_s,
        "steps": steps,
        "losses_finite": all(math.isfinite(s["loss"]) for s in steps),
    }


# ---------------------------------------------------------------------------------------------- reuse
def run_reuse(config: GpuCheckConfig) -> dict:
    """`benchmarks.memory_reuse` on the 7B shape (smoke: its own smoke size)."""
    from modeling_memcomp import MemCompForCausalLM

    device = config.device
    if device.type != "cuda" and not config.smoke:
        return skipped("needs a CUDA GPU")
    if not hasattr(MemCompForCausalLM, "prefill_memory") and not config.smoke:
        return skipped(memory_reuse.UNAVAILABLE)
    if config.smoke:
        bench = memory_reuse.MemoryReuseConfig(smoke=True, lengths=list(config.reuse_lengths), device="cpu")
    else:
        bench = memory_reuse.MemoryReuseConfig(
            preset="qwen2.5-7b", lengths=list(config.reuse_lengths), warmup=1, repeats=3, device=str(device)
        )
    report = memory_reuse.run(bench)
    available = hasattr(MemCompForCausalLM, "prefill_memory")
    return {"status": "ok" if available else "ran without reuse rows: " + memory_reuse.UNAVAILABLE, "report": report}


# ---------------------------------------------------------------------------------------------- bf16
def run_bf16(config: GpuCheckConfig) -> dict:
    """One DAPO step of a tiny bf16 policy at LR 1e-6 (smoke: CPU bf16 autocast): trainable weights held in float32
    must all move, and the final save must be bf16 again (`trainers.precision`)."""
    from safetensors import safe_open

    from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer
    from trainers import MemCompGRPOConfig, MemCompGRPOTrainer
    from trainers.precompute import load_rows, precompute_memory

    device = config.device
    if device.type != "cuda" and not config.smoke:
        return skipped("needs a CUDA GPU")
    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    tokenizer = train_tokenizer((fixtures / "corpus.txt").read_text().splitlines(), vocab_size=512)
    model = build_tiny_memcomp(tokenizer, chunk_size=16).to(device=device, dtype=torch.bfloat16)
    data = precompute_memory(model, load_rows(str(fixtures / "rl" / "qa.jsonl")))
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if n.startswith("language_model.")}
    with tempfile.TemporaryDirectory() as folder:
        args = MemCompGRPOConfig(
            output_dir=folder, per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
            overlong_buffer=4, rollout_batch_prompts=2, mini_batch_prompts=2, lr_warmup_rollouts=0, max_steps=1,
            learning_rate=1e-6, dynamic_sampling_warmup_rollouts=1, bf16=True, use_cpu=device.type != "cuda",
            gradient_checkpointing=False, report_to=[], save_strategy="no", disable_tqdm=True,
        )
        shape = lambda completion_ids, **unused: [float(sum(ids) % 5) for ids in completion_ids]  # noqa: E731
        shape.__name__ = "shape"
        trainer = MemCompGRPOTrainer(model, reward_funcs=[shape], args=args, train_dataset=data)
        trainer.train()
        after = dict(model.named_parameters())
        moved = sum(not torch.equal(after[n].detach().float(), b) for n, b in before.items() if after[n].requires_grad)
        trained = sum(after[n].requires_grad for n in before)
        trainer.save_model(folder + "/final")
        with safe_open(folder + "/final/model.safetensors", framework="pt") as saved:
            saved_dtypes = sorted({saved.get_slice(k).get_dtype() for k in saved.keys()})
    ok = moved == trained and saved_dtypes == ["BF16"]
    return {"status": "ok" if ok else "failed", "device": str(device), "trained_tensors": trained,
            "moved_tensors": moved, "saved_dtypes": saved_dtypes,
            "master_dtypes": sorted({str(after[n].dtype) for n in before if after[n].requires_grad})}


# ---------------------------------------------------------------------------------------------- summary
def summary_markdown(parts: dict) -> str:
    machine = parts.get("machine", {})
    lines = [f"# GPU check on {machine.get('gpu') or machine.get('cpu', '?')} (torch {machine.get('torch')}, "
             f"transformers {machine.get('transformers')})", ""]
    lat = parts.get("latency", {})
    if "runs" in lat:  # finished, or cut short after some lengths (status `partial: ...`)
        if lat.get("status") != "ok":
            lines += [f"Latency: {lat['status']}", ""]
        for attn, run in lat["runs"].items():
            config = run["report"]["config"]
            lines += [f"## Latency, {config['preset']}, {attn}: means of {config['repeats']} after {config['warmup']} warm-up(s)", "",
                      "| Context | Full (ms) | Each (ms) | Block (ms) | Speedup each | Paper speedup | Peak full / each (GB) | Paper (GB) |",
                      "|---|---|---|---|---|---|---|---|"]
            for e in run["table7"]:
                paper, peak, speed = e.get("paper"), e["peak_memory_gb"], e.get("speedup") or {}
                paper_speed = "–" if paper is None else f"{paper['speedup']:.1f}x"
                paper_gb = "–" if paper is None else f"{paper['full_gb']} / {paper['ours_gb']}"
                nan = float("nan")
                lines.append(
                    f"| {tokens_label(e['context_tokens'])} | {e['ttft_ms'].get('full', nan):,.0f} | {e['ttft_ms']['each']:,.1f} "
                    f"| {e['ttft_ms']['block']:,.1f} | {speed.get('each', nan):.1f}x | {paper_speed} | "
                    f"{peak.get('full', nan):.1f} / {peak.get('each', nan):.1f} | {paper_gb} |"
                )
            lines.append("")
        c = lat["compress_at_longest"]
        if c is None:
            lines += ["Compress at the longest length: not measured. " + " ".join(lat.get("notes", [])), ""]
        else:
            lines += [f"Compress at {tokens_label(c['context_tokens'])}: {c['encode_ms']:,.0f} ms, "
                      f"{c['encode_tokens_per_s']:,.0f} tokens/s, peak {c['peak_memory_mb'] or float('nan'):,.0f} MB. "
                      + " ".join(lat.get("notes", [])), ""]
    else:
        lines += [f"Latency: {lat.get('status', 'missing')} ({lat.get('reason', '')})", ""]
    fq = parts.get("fqlora", {})
    if "steps" in fq:
        lines += [f"FQLoRA step ({fq['shape']}, {fq['status']}): {fq['quantized_4bit_linears']} 4-bit linears, "
                  f"{fq['trainable_parameters']:,} trainable parameters, {fq['decoder_tokens']} decoder + {fq['context_tokens']} "
                  "context tokens; " + "; ".join(
                      f"step {i + 1}: {s['seconds']:.2f} s, loss {s['loss']:.3f}, peak {s['peak_memory_gb'] or float('nan'):.1f} GB"
                      for i, s in enumerate(fq["steps"])), ""]
    else:
        lines += [f"FQLoRA step: {fq.get('status', 'missing')} ({fq.get('reason', '')})", ""]
    reuse = parts.get("reuse", {})
    if "report" in reuse:
        lines += [memory_reuse.markdown_table(reuse["report"]), f"Reuse: {reuse['status']}", ""]
    else:
        lines += [f"Memory reuse: {reuse.get('status', 'missing')} ({reuse.get('reason', '')})", ""]
    bf16 = parts.get("bf16", {})
    if "moved_tensors" in bf16:
        lines += [f"bf16 RL step at LR 1e-6 ({bf16['device']}, {bf16['status']}): {bf16['moved_tensors']} of "
                  f"{bf16['trained_tensors']} trained tensors moved (masters {', '.join(bf16['master_dtypes'])}); "
                  f"saved as {', '.join(bf16['saved_dtypes'])}", ""]
    else:
        lines += [f"bf16 RL step: {bf16.get('status', 'missing')} ({bf16.get('reason', '')})", ""]
    return "\n".join(lines)


def run_summary(config: GpuCheckConfig) -> dict:
    out = Path(config.output_dir)
    parts = {"machine": machine_info(config.device), "smoke": config.smoke}
    for part in PARTS[:-1]:
        path = out / f"gpu_check_{part}.json"
        parts[part] = json.loads(path.read_text()) if path.exists() else {"status": "missing", "reason": "part did not finish (see the log)"}
    (out / "gpu_check.json").write_text(json.dumps(parts, indent=2) + "\n")
    (out / "gpu_check.md").write_text(summary_markdown(parts))
    return parts


RUNNERS = {"latency": run_latency, "fqlora": run_fqlora, "reuse": run_reuse, "bf16": run_bf16}


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(GpuCheckConfig, prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    try:
        (config,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:
        print(f"benchmarks.gpu_check: error: {error}", file=sys.stderr)
        return 2
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.device.type == "cpu":
        torch.set_num_threads(1)  # tiny smoke models: one thread is far faster on a shared CPU
    if config.part == "summary":
        print(summary_markdown(run_summary(config)))
        return 0
    started = time.perf_counter()
    path = out / f"gpu_check_{config.part}.json"

    def write(result: dict) -> dict:
        """Write the part's JSON now: a partial one survives the script's time limit (SIGTERM), a later one replaces it."""
        result = {**result, "wall_s": time.perf_counter() - started, "config": asdict(config)}
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(json.dumps(result, indent=2) + "\n")
        partial.replace(path)  # atomic: a kill mid-write leaves the previous JSON whole
        return result

    if config.part == "latency":
        result = write(run_latency(config, on_progress=write))
    else:
        result = write(RUNNERS[config.part](config))
    print(f"gpu_check {config.part}: {result['status']} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
