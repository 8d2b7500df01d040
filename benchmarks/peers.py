"""Peers side by side: one context, several questions, on one random-weight model shape.

For each context length, every method answers the same questions (TTFT: prefill work, the question, the
greedy first token) and keeps what it needs between questions:

    full_per_question   (a) full context, the whole prompt prefilled again for every question
    full_reuse          (b) full context, its KV prefix prefilled once and reused (transformers' DynamicCache)
    kvpress_<press>     (c) NVIDIA kvpress: prefill + press once to 1/16 of the KV pairs, each question over it
                            (run in .venv-kvpress, see scripts/make_kvpress_env.sh; press `none` = (b) there).
                            1/16 is memcomp's nominal rate; its wrap="each" prefix keeps 3 positions per 16
                            tokens, 3x kvpress's budget (`--compression 5.33` gives kvpress the same budget)
    memcomp_no_reuse        memcomp from a precomputed memory, the memory prefix prefilled per question
    memcomp_reuse       (d) memcomp from a precomputed memory, the memory prefix prefilled once (prefill_memory)
    memcomp_e2e         (d) the same, end to end: encode the context first

Reported per method and length: TTFT of the first question and of each later one, time for 1 and for N
questions, peak memory, and the bytes kept between questions per context token (also on paper for the
Qwen2.5-7B shape). Writes `<name>.json`, `<name>.md` and `<name>.png`.

    python -m benchmarks.peers                     # the committed CPU table (4-layer 256-wide Qwen2)
    python -m benchmarks.peers --smoke             # seconds; used by the test suite
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks import latency
from benchmarks._sessions import (
    WARMUP_TOKENS,
    cache_bytes,
    full_per_question,
    lm_session,
    model_shape,
    reuse_prefix,
    run_job,
)
from benchmarks._outputs import benchmark_main, tokens_label, write_outputs
from benchmarks._timing import PAPER_WARMUP, machine_info, machine_name, summarize, time_once
from modeling_memcomp import build_prompt
from modeling_memcomp.tiny import TOKENIZER_SPECIAL_TOKENS

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = (
    "Who signed the agreement?", "When was the report published?", "Which city hosted the meeting?",
    "What was the total budget?", "Why was the project delayed?", "Who led the second team?",
    "How many people attended?", "What did the committee decide?", "Where is the main office?",
    "Which product sold best?", "What risk did the audit find?", "Who wrote the final chapter?",
    "When does the contract end?", "What was measured first?", "Which rule changed last year?",
    "How long did the trial run?",
)
"""Distinct questions (random weights: only their token counts matter), also used by `memory_reuse`."""

MAIN_METHODS = ("full_per_question", "full_reuse", "memcomp_no_reuse", "memcomp_reuse", "memcomp_e2e")
KVPRESS_PRESSES = ("none", "expected_attention", "snapkv")
LABELS = {
    "full_per_question": "(a) full context, prefill per question",
    "full_reuse": "(b) full context, KV prefix reused",
    "kvpress_none": "(b) full context, KV prefix reused, kvpress env",
    "kvpress_expected_attention": "(c) kvpress ExpectedAttentionPress",
    "kvpress_snapkv": "(c) kvpress SnapKVPress",
    "memcomp_no_reuse": "memcomp, memory prefix per question",
    "memcomp_reuse": "(d) memcomp, memory prefix reused",
    "memcomp_e2e": "(d) memcomp, encode + answer, reused",
}
NEEDS_PREFILL_MEMORY = ("memcomp_reuse", "memcomp_e2e")
QWEN7B = latency.PRESETS["qwen2.5-7b"]
GREEDY_ONE_TOKEN = dict(do_sample=False, max_new_tokens=1, repetition_penalty=1.0, top_k=None, top_p=None, temperature=None)


@dataclass
class PeersConfig:
    """What to measure; defaults give the committed CPU table."""

    preset: str = field(default="cpu-tiny", metadata={"help": f"model shape: one of {sorted(latency.PRESETS)}"})
    lengths: list[int] = field(default_factory=lambda: [4096, 16384, 32768], metadata={"help": "context lengths in tokens"})
    questions: int = field(default=8, metadata={"help": f"questions per session (at most {len(QUESTIONS)})"})
    methods: list[str] = field(
        default_factory=lambda: list(MAIN_METHODS) + [f"kvpress_{p}" for p in KVPRESS_PRESSES],
        metadata={"help": "methods to run (see the module docstring)"},
    )
    chunk_size: int = field(default=16, metadata={"help": "memcomp tokens per memory embedding (16x)"})
    compression: float = field(default=16.0, metadata={
        "help": "kvpress keeps 1/compression of the KV pairs (16: memcomp's nominal rate; memcomp's wrap=each prefix "
                "keeps 3/chunk_size of the positions, so chunk_size/3 gives kvpress the same KV budget)"})
    encoder_batch_size: int = field(default=256, metadata={"help": "memcomp chunks per encoder pass"})
    warmup: int = field(default=PAPER_WARMUP, metadata={"help": f"untimed warm-up sessions ({WARMUP_TOKENS}-token context, 2 questions)"})
    repeats: int = field(default=1, metadata={"help": "measured sessions per method and length (CPU: 1, stated in the table)"})
    memory: bool = field(default=True, metadata={"help": "measure peak memory (CPU: one fresh process per method and length)"})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu' or 'cuda[:i]'"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (the CPU is shared: keep it small)"})
    seed: int = field(default=0, metadata={"help": "seed of the random weights and context tokens"})
    kvpress_python: str = field(
        default=".venv-kvpress/bin/python", metadata={"help": "python of the kvpress environment (relative to the repo root)"}
    )
    output_dir: str = field(default="benchmarks/results", metadata={"help": "where <name>.json/.md/.png go"})
    name: str = field(default="peers_cpu", metadata={"help": "file stem of the outputs"})
    plot: bool = field(default=True, metadata={"help": "write the plot"})
    smoke: bool = field(default=False, metadata={"help": "tiny model, one short context, 3 questions, no memory: seconds"})

    def __post_init__(self):
        if self.smoke:
            self.preset, self.questions, self.warmup, self.repeats, self.memory = "smoke", 3, 0, 1, False
            self.lengths, self.encoder_batch_size = [256], 8
        known = set(MAIN_METHODS) | {f"kvpress_{p}" for p in KVPRESS_PRESSES}
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {sorted(known)}.")
        if not 1 <= self.questions <= len(QUESTIONS):
            raise ValueError(f"questions must be between 1 and {len(QUESTIONS)}, got {self.questions}.")
        if not self.lengths or any(n < 2 * self.chunk_size for n in self.lengths):
            raise ValueError(f"lengths must be token counts >= {2 * self.chunk_size}, got {self.lengths}.")
        if self.compression <= 1:
            raise ValueError(f"compression must be > 1 (16 keeps 1/16 of the KV pairs), got {self.compression}.")
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"warmup must be >= 0 and repeats >= 1, got warmup={self.warmup}, repeats={self.repeats}.")

    def latency_config(self) -> latency.LatencyConfig:
        """The latency benchmark's config for the same model shape (its `build_model` builds the model)."""
        return latency.LatencyConfig(
            preset=self.preset, lengths=list(self.lengths), chunk_size=self.chunk_size,
            encoder_batch_size=self.encoder_batch_size, device=self.device, threads=self.threads, seed=self.seed,
        )


@dataclass
class PeersCase:
    """One context and its questions: raw context ids, the shared full-context prefix and one suffix per question."""

    context_ids: list[int]
    prefix: torch.Tensor
    suffixes: list[torch.Tensor]
    questions: list[str]


def build_case(model, length: int, questions: int, seed: int = 0) -> PeersCase:
    """Random context tokens in the ChatML prompt; the prompt splits after the context (+ its newline)."""
    tokenizer, device = model.tokenizer, model.device
    generator = torch.Generator().manual_seed(seed + length)
    context = torch.randint(len(TOKENIZER_SPECIAL_TOKENS), tokenizer.vocab_size, (length,), generator=generator).tolist()
    config = copy.copy(model.config)
    config.wrap = "block"
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    prefix, suffixes = None, []
    for question in QUESTIONS[:questions]:
        ids = build_prompt(tokenizer, config, 1, question).input_ids
        start = ids.index(model.config.mem_start_token_id)
        after = start + 3  # <MEM_START> <MEM> <MEM_END>
        assert ids[after : after + len(newline)] == newline, "the prompt layout changed: update build_case"
        head = ids[:start] + context + newline
        if prefix is not None and head != prefix:
            raise AssertionError("the full-context prefix differs between questions")
        prefix = head
        suffixes.append(torch.tensor([ids[after + len(newline) :]], device=device))
    return PeersCase(context, torch.tensor([prefix], device=device), suffixes, list(QUESTIONS[:questions]))


# ---------------------------------------------------------------------------------------------- memcomp sessions
def memcomp_session(model, method: str, memory, context_ids: list[int], questions: list[str], device) -> dict:
    """One memcomp session through the public API (`generate`, `prefill_memory`): prompt building included."""
    embeds_bytes = memory.embeds.numel() * memory.embeds.element_size()
    if method == "memcomp_no_reuse":
        ask = lambda q: model.generate(memory=memory, question=q, **GREEDY_ONE_TOKEN)  # noqa: E731
        return {"ttft_s": [time_once(lambda: ask(q), device)[0] for q in questions], "stored_bytes": embeds_bytes,
                "cached_positions": 0}
    encode_s = 0.0
    if method == "memcomp_e2e":
        encode_s, memory = time_once(lambda: model.compress(context_ids, show_progress=False), device)
    prefill_s, cache = time_once(lambda: model.prefill_memory(memory), device)
    ask = lambda q: model.generate(memory=memory, question=q, memory_cache=cache, **GREEDY_ONE_TOKEN)  # noqa: E731
    seconds = [time_once(lambda: ask(q), device)[0] for q in questions]
    seconds[0] += encode_s + prefill_s
    kv_cache = getattr(cache, "cache", cache)  # a MemoryPrefix holds the transformers cache of its prefix
    kv = cache_bytes(kv_cache) if hasattr(kv_cache, "layers") else None
    return {
        "ttft_s": seconds,
        "encode_s": encode_s,
        "prefill_s": prefill_s,
        "stored_bytes": None if kv is None else embeds_bytes + kv,
        "cached_positions": kv_cache.get_seq_length() if hasattr(kv_cache, "get_seq_length") else None,
    }


def unavailable_reason(model, method: str) -> str | None:
    """Why a method cannot run with this build (None when it can)."""
    if method in NEEDS_PREFILL_MEMORY and not hasattr(model, "prefill_memory"):
        return "not available: this build of MemCompForCausalLM has no prefill_memory() (memory-prefix reuse)"
    return None


# ---------------------------------------------------------------------------------------------- jobs
def _main_env_job(model, case: PeersCase, method: str, config: PeersConfig, device) -> dict:
    """Run one method on one case in this process (warm-ups, measured sessions, peak of the first)."""
    if method.startswith("full_"):
        fn = full_per_question if method == "full_per_question" else reuse_prefix
        session = lm_session(fn, model.language_model, case.prefix, case.suffixes, device)
    else:
        memory = model.compress(case.context_ids, show_progress=False)
        warm_ids = case.context_ids[:WARMUP_TOKENS]
        warm_memory = model.compress(warm_ids, show_progress=False)

        def session(warm: bool) -> dict:
            if warm:
                return memcomp_session(model, method, warm_memory, warm_ids, case.questions[:2], device)
            return memcomp_session(model, method, memory, case.context_ids, case.questions, device)

    return run_job(session, device, config.warmup, config.repeats, config.memory)


@torch.no_grad()
def _job_in_fresh_process(config_dict: dict, method: str, length: int) -> dict:
    """Spawned per (method, length) when peak memory is measured: a clean allocator for the RSS high-water."""
    config = PeersConfig(**config_dict)
    torch.set_num_threads(config.threads)
    device = config.latency_config().resolve_device()
    model = latency.build_model(config.latency_config(), device, config.latency_config().resolve_dtype(device))
    return _main_env_job(model, build_case(model, length, config.questions, config.seed), method, config, device)


def run_main_env_jobs(config: PeersConfig, model, cases: dict[int, PeersCase], device) -> list[dict]:
    """Every requested non-kvpress method on every length (a fresh process per job when measuring memory)."""
    results = []
    for length, case in cases.items():
        for method in [m for m in config.methods if not m.startswith("kvpress_")]:
            reason = unavailable_reason(model, method)
            if reason is not None:
                results.append({"method": method, "length": length, "unavailable": reason})
                continue
            if config.memory and device.type == "cpu":
                context = multiprocessing.get_context("spawn")
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                    result = pool.submit(_job_in_fresh_process, asdict(config), method, length).result()
            else:
                with torch.no_grad():
                    result = _main_env_job(model, case, method, config, device)
            results.append({"method": method, "length": length, **result})
    return results


def kvpress_python(config: PeersConfig) -> tuple[Path | None, str | None]:
    """The kvpress environment's python, or why it cannot be used."""
    python = Path(config.kvpress_python)
    python = python if python.is_absolute() else ROOT / python
    if not python.exists():
        return None, f"skipped: {config.kvpress_python} not found (build it: bash scripts/make_kvpress_env.sh)"
    check = subprocess.run([str(python), "-c", "import kvpress"], capture_output=True, text=True)
    if check.returncode != 0:
        return None, f"skipped: kvpress does not import in {config.kvpress_python}: {check.stderr.strip().splitlines()[-1:]}"
    return python, None


def run_kvpress_jobs(config: PeersConfig, model, cases: dict[int, PeersCase], device) -> tuple[list[dict], dict | None]:
    """The kvpress methods, in .venv-kvpress subprocesses (one per job when measuring memory); merged results."""
    methods = [m for m in config.methods if m.startswith("kvpress_")]
    if not methods:
        return [], None
    python, reason = kvpress_python(config)
    if python is None:
        return [{"method": m, "length": n, "unavailable": reason} for n in cases for m in methods], None
    jobs = [{"method": m, "length": n} for n in cases for m in methods]
    batches = [[job] for job in jobs] if config.memory else [jobs]
    spec = {
        "shape": model_shape(model.config.text_config), "seed": config.seed, "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(device), "threads": config.threads, "warmup": config.warmup, "repeats": config.repeats,
        "memory": config.memory, "compression": config.compression,
        "cases": {str(n): {"prefix": c.prefix[0].tolist(), "suffixes": [s[0].tolist() for s in c.suffixes]} for n, c in cases.items()},
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(config.threads), "TOKENIZERS_PARALLELISM": "false"}
    results, versions = [], None
    with tempfile.TemporaryDirectory(prefix="peers-kvpress-") as tmp:
        for index, batch in enumerate(batches):
            spec_path, out_path = Path(tmp) / f"spec{index}.json", Path(tmp) / f"out{index}.json"
            spec_path.write_text(json.dumps({**spec, "jobs": batch}))
            done = subprocess.run(
                [str(python), "-m", "benchmarks._kvpress_worker", str(spec_path), str(out_path)],
                cwd=ROOT, env=env, capture_output=True, text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"the kvpress worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            merged = json.loads(out_path.read_text())
            results += merged["results"]
            versions = merged["versions"]
    return results, versions


# ---------------------------------------------------------------------------------------------- report
def bytes_per_context_token(shape: dict, dtype_bytes: int, chunk_size: int, compression: float) -> dict:
    """What each method keeps between questions, per context token, from the model shape alone."""
    head_dim = shape.get("head_dim") or shape["hidden_size"] // shape["num_attention_heads"]
    kv = 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim * dtype_bytes
    return {
        "kv_cache": kv,
        "kv_pressed": kv / compression,
        "memory_embeddings": shape["hidden_size"] * dtype_bytes / chunk_size,
        "memcomp_prefix_kv_each": kv * 3 / chunk_size,  # <MEM_START> <MEM> <MEM_END> per chunk
        "memcomp_prefix_kv_block": kv / chunk_size,
    }


def summarize_result(result: dict, questions: int) -> dict:
    """A job's sessions -> the row: first / later TTFT (mean, median, spread), totals, peak, bytes kept."""
    row = {"method": result["method"], "label": LABELS[result["method"]], "context_tokens": result["length"]}
    if "unavailable" in result:
        return {**row, "available": False, "reason": result["unavailable"]}
    sessions = result["sessions"]
    first = [s["ttft_s"][0] for s in sessions]
    later = [t for s in sessions for t in s["ttft_s"][1:]]
    stored = sessions[0]["stored_bytes"]
    return {
        **row,
        "available": True,
        "questions": questions,
        "sessions": len(sessions),
        "ttft_first_ms": summarize(first),
        "ttft_later_ms": summarize(later) if later else None,
        "one_question_ms": 1000 * statistics.fmean(first),
        "all_questions_ms": 1000 * statistics.fmean(sum(s["ttft_s"]) for s in sessions),
        "peak_memory_mb": result.get("peak_memory_mb"),
        "load_average_1m": result.get("load_average_1m"),
        "stored_bytes": stored,
        "stored_bytes_per_context_token": None if stored is None else stored / result["length"],
        "cached_positions": sessions[0].get("cached_positions"),
        "ttft_s": [s["ttft_s"] for s in sessions],
    }


def run(config: PeersConfig) -> dict:
    """Measure every method on every length; returns the JSON-ready report."""
    device = config.latency_config().resolve_device()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with torch.no_grad():
            model = latency.build_model(config.latency_config(), device, config.latency_config().resolve_dtype(device))
            cases = {n: build_case(model, n, config.questions, config.seed) for n in config.lengths}
        results = run_main_env_jobs(config, model, cases, device)
        kv_results, kv_versions = run_kvpress_jobs(config, model, cases, device)
        machine = machine_info(device)
    finally:
        torch.set_num_threads(threads)
    order = {m: i for i, m in enumerate(LABELS)}
    rows = sorted((summarize_result(r, config.questions) for r in results + kv_results),
                  key=lambda r: (r["context_tokens"], order[r["method"]]))
    shape = model_shape(model.config.text_config)
    dtype_bytes = torch.empty((), dtype=model.dtype).element_size()
    return {
        "machine": {**machine, "kvpress_env": kv_versions},
        "config": asdict(config),
        "model": {**shape, "dtype": str(model.dtype), "chunk_size": config.chunk_size},
        "results": rows,
        "bytes_per_context_token": {
            "this_model": bytes_per_context_token(shape, dtype_bytes, config.chunk_size, config.compression),
            "qwen2.5-7b_bf16": bytes_per_context_token(QWEN7B, 2, config.chunk_size, config.compression),
        },
        "not_run": {"llmlingua2": LLMLINGUA2_NOT_RUN},
    }


LLMLINGUA2_NOT_RUN = (
    "LLMLingua-2 (llmlingua 0.2.2) cannot run offline: PromptCompressor.__init__ always calls "
    "tiktoken.encoding_for_model('gpt-3.5-turbo'), which downloads cl100k_base.tiktoken from "
    "openaipublic.blob.core.windows.net at run time (here: requests.exceptions.ConnectionError ... Failed to "
    "resolve 'openaipublic.blob.core.windows.net'), whatever local classifier is given; tiktoken checks the "
    "file's hash, so no locally built stand-in can replace it."
)


def kvpress_budget_note(config: dict) -> str:
    """What the kvpress rows keep next to what memcomp keeps (wrap=each: 3 prefix positions per chunk)."""
    compression, chunk = config["compression"], config["chunk_size"]
    ratio = 3 * compression / chunk
    relation = "the same budget as kvpress" if abs(ratio - 1) < 0.01 else f"{ratio:.3g}x kvpress's budget"
    return (f"kvpress presses keep 1/{compression:g} of the KV pairs (memcomp's nominal rate is {chunk}x; its wrap=each "
            f"memory prefix keeps 3 positions per {chunk} context tokens, 3/{chunk} of the KV: {relation}).")


def _load(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _ms(value) -> str:
    return "–" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def markdown_table(report: dict) -> str:
    """Side-by-side table per context length, the skipped rows with their reason, and the bytes on paper."""
    machine, config, model = report["machine"], report["config"], report["model"]
    n = config["questions"]
    kv_env = machine.get("kvpress_env")
    lines = [
        f"# Peers: one context, {n} questions ({config['preset']}: {model['num_hidden_layers']} layers, hidden "
        f"{model['hidden_size']}, {model['dtype'].removeprefix('torch.')}, random weights)",
        "",
        f"Machine: {machine.get('gpu') or machine_name(machine)}, {machine['torch_threads']} torch thread(s) "
        f"({machine['logical_cpus']} logical CPUs, 1-min load {machine['load_average_1m']} at the end), torch "
        f"{machine['torch']}, transformers {machine['transformers']}"
        + (f"; kvpress {kv_env['kvpress']} with transformers {kv_env['transformers']} in its own env" if kv_env else "")
        + f". Each row: {config['repeats']} measured session(s) after {config['warmup']} warm-up session(s) on a "
        f"{WARMUP_TOKENS}-token context; 'later' is the mean over the session's {n - 1} later questions. Peak memory: "
        "CUDA max allocated; CPU the resident-set high-water above the process before the session, each row in "
        "a fresh process. Load 1m: the CPU's load average when the row ended (2 logical CPUs shared). TTFT = "
        "prefill work + question + greedy first token; memcomp rows go through `generate()` (prompt building "
        "and tokenization of the question included), the others are raw forwards. " + kvpress_budget_note(config),
        "",
        f"| Context | Method | TTFT 1st question (ms) | TTFT later question (ms) | 1 question (ms) | {n} questions (ms) "
        "| Peak memory (MB) | Kept between questions (B / context token) | Load 1m |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    skipped = []
    for row in report["results"]:
        if not row["available"]:
            skipped.append(f"- {tokens_label(row['context_tokens'])}, {row['label']}: {row['reason']}")
            continue
        later = row["ttft_later_ms"]
        per_token = row["stored_bytes_per_context_token"]
        lines.append(
            f"| {tokens_label(row['context_tokens'])} | {row['label']} | {_ms(row['ttft_first_ms']['mean_ms'])} | "
            f"{_ms(later['mean_ms'] if later else None)} | {_ms(row['one_question_ms'])} | {_ms(row['all_questions_ms'])} | "
            f"{_ms(row['peak_memory_mb'])} | {'–' if per_token is None else f'{per_token:,.0f}'} | "
            f"{_load(row.get('load_average_1m'))} |"
        )
    if skipped:
        lines += ["", "Not run:", *skipped]
    lines += ["", f"- LLMLingua-2: not run. {report['not_run']['llmlingua2']}", ""]
    ours, paper = report["bytes_per_context_token"]["this_model"], report["bytes_per_context_token"]["qwen2.5-7b_bf16"]
    names = {
        "kv_cache": "KV cache, (b)", "kv_pressed": f"pressed KV cache at {config['compression']:g}x, (c)",
        "memory_embeddings": "memcomp memory embeddings (on disk / in a store)",
        "memcomp_prefix_kv_each": "memcomp memory-prefix KV cache, wrap=each, (d)",
        "memcomp_prefix_kv_block": "memcomp memory-prefix KV cache, wrap=block",
    }
    lines += [
        "Bytes kept between questions per context token, from the model shape (weights excluded):",
        "",
        f"| What is kept | This model ({model['dtype'].removeprefix('torch.')}) | Qwen2.5-7B shape (bf16: 28 layers, 4 KV heads x 128, hidden 3584) |",
        "|---|---|---|",
    ]
    lines += [f"| {names[key]} | {ours[key]:,.0f} | {paper[key]:,.0f} |" for key in names]
    lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Time for the first question and for all questions vs context length, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r["available"]]
    figure, (first, total) = plt.subplots(1, 2, figsize=(11, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        lengths = [r["context_tokens"] for r in mine]
        first.plot(lengths, [r["one_question_ms"] for r in mine], "o-", label=LABELS[method])
        total.plot(lengths, [r["all_questions_ms"] for r in mine], "o-", label=LABELS[method])
    n = report["config"]["questions"]
    for axes, title in ((first, "1 question: TTFT (ms)"), (total, f"{n} questions: sum of TTFTs (ms)")):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("context tokens")
        axes.set_title(title, fontsize=9)
    total.legend(fontsize=7)
    figure.suptitle(f"Peers on {report['config']['preset']} ({report['machine'].get('gpu') or 'CPU'})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: dict, config: PeersConfig) -> dict[str, Path]:
    plot_figure = config.plot and any(r["available"] for r in report["results"])
    return write_outputs(
        report, config.output_dir, config.name, markdown_table(report), (lambda path: plot(report, path)) if plot_figure else None
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.peers`: parse a `PeersConfig`, run, write the outputs."""
    def check(config: PeersConfig) -> None:
        latency.check_runnable(config.latency_config(), config.plot, "the peers plot")

    return benchmark_main(PeersConfig, argv, "python -m benchmarks.peers", __doc__, run, markdown_table, write_report, check)


if __name__ == "__main__":
    sys.exit(main())
