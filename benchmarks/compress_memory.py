"""Peak memory of `compress` vs context length and encoder micro-batch size (CPU, random tiny-ish model).

Each cell runs in a fresh subprocess that resets its RSS high-water mark (`/proc/self/clear_refs`)
right before `compress`; the figure reported is the high-water mark above the RSS before the call, minus
the output memory itself (num_chunks x hidden x 4 bytes, which must grow with the context). Expectation: the rest
grows with the micro-batch size and stays flat in the context length.

    python benchmarks/compress_memory.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

CELL = r"""
import json, re, sys, time
import torch
from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer
torch.set_num_threads(2)
length, batch = int(sys.argv[1]), int(sys.argv[2])
def status_kib(field):
    return int(re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1))
tokenizer = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 50, vocab_size=300)
model = build_tiny_memcomp(tokenizer, hidden_size=256, num_layers=4, encoder_batch_size=batch)
ids = torch.randint(5, 290, (length,)).tolist()
model.compress(ids[:16], show_progress=False)  # warm-up on one chunk: kernels loaded, no batch-sized buffers yet
before = status_kib("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the RSS high-water mark (VmHWM) to the current RSS
start = time.perf_counter()
memory = model.compress(ids, show_progress=False)
seconds = time.perf_counter() - start
peak = (status_kib("VmHWM") - before) * 1024
output = memory.embeds.numel() * memory.embeds.element_size()
print(json.dumps({"tokens": length, "micro_batch": batch, "chunks": len(memory), "seconds": seconds,
                  "peak_mib": peak / 2**20, "output_mib": output / 2**20, "working_mib": max(0, peak - output) / 2**20}))
"""


def run_cell(length: int, batch: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CELL, str(length), str(batch)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{cpu}, 2 torch threads, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768, 122880])
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    rows = [run_cell(length, batch) for batch in args.micro_batches for length in args.lengths]
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "compress_memory", "machine": machine(), "model": "Qwen2 4 layers, hidden 256, fp32, C=16", "rows": rows}
    (args.out / "compress_memory_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# compress() peak memory on CPU\n\nMachine: {report['machine']}. Model: {report['model']}.",
        "Peak = RSS high-water mark during the call above the RSS before it; working = peak minus the output tensor.\n",
        "| tokens | micro-batch | chunks | seconds | peak (MiB) | output (MiB) | working (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['tokens']} | {r['micro_batch']} | {r['chunks']} | {r['seconds']:.2f} | {r['peak_mib']:.1f} | {r['output_mib']:.1f} | {r['working_mib']:.1f} |"
        for r in rows
    ]
    (args.out / "compress_memory_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
