"""Peers and memory-reuse benchmarks: smoke runs (kvpress rows where its environment exists), exact reuse,
bytes kept per context token."""

import json
import warnings

import pytest
import torch

from benchmarks import memory_reuse, peers
from modeling_memcomp import MemCompForCausalLM
from benchmarks._sessions import answer_over, build_lm, cache_bytes, first_token, model_shape, prefill_prefix


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("peers")
    threads = torch.get_num_threads()
    assert peers.main(["--smoke", "--output_dir", str(out), "--name", "smoke"]) == 0
    assert torch.get_num_threads() == threads
    return out, json.loads((out / "smoke.json").read_text())


def _row(report, method):
    return next(r for r in report["results"] if r["method"] == method)


def test_smoke_writes_every_main_row_with_a_table_and_plot(smoke_report):
    out, report = smoke_report
    by_method = {r["method"]: r for r in report["results"]}
    for method in ("full_per_question", "full_reuse", "memcomp_no_reuse"):
        row = by_method[method]
        assert row["available"] and row["questions"] == 3 and len(row["ttft_s"][0]) == 3
        assert row["all_questions_ms"] == pytest.approx(1000 * sum(row["ttft_s"][0]))
        assert row["one_question_ms"] == pytest.approx(row["ttft_first_ms"]["mean_ms"])
    for method in peers.NEEDS_PREFILL_MEMORY:  # the memcomp reuse rows: run when the API exists, never faked
        row = by_method[method]
        if hasattr(MemCompForCausalLM, "prefill_memory"):
            assert row["available"] and len(row["ttft_s"][0]) == 3
        else:
            assert row == {"method": method, "label": peers.LABELS[method], "context_tokens": 256, "available": False,
                           "reason": "not available: this build of MemCompForCausalLM has no prefill_memory() (memory-prefix reuse)"}
    table = (out / "smoke.md").read_text()
    assert "| Context | Method | TTFT 1st question (ms) | TTFT later question (ms) |" in table
    assert "| 256 | (a) full context, prefill per question |" in table
    assert "LLMLingua-2: not run." in table and "tiktoken.encoding_for_model('gpt-3.5-turbo')" in table
    assert (out / "smoke.png").read_bytes()[:4] == b"\x89PNG"


def test_bytes_kept_between_questions(smoke_report):
    _, report = smoke_report
    model = report["model"]
    head_dim = model["hidden_size"] // model["num_attention_heads"]
    per_position = 2 * model["num_hidden_layers"] * model["num_key_value_heads"] * head_dim * 4  # fp32 K and V
    reuse = _row(report, "full_reuse")
    assert reuse["stored_bytes"] == per_position * reuse["cached_positions"]
    assert reuse["cached_positions"] > 256  # the context plus the system turn
    assert _row(report, "full_per_question")["stored_bytes"] == 0
    no_reuse = _row(report, "memcomp_no_reuse")
    assert no_reuse["stored_bytes"] == 256 // 16 * model["hidden_size"] * 4  # the memory embeddings only
    paper = report["bytes_per_context_token"]["qwen2.5-7b_bf16"]
    assert paper["kv_cache"] == 2 * 28 * 4 * 128 * 2 == 57344
    assert paper["kv_pressed"] == 57344 / 16 and paper["memory_embeddings"] == 3584 * 2 / 16
    assert paper["memcomp_prefix_kv_each"] == 57344 * 3 / 16


def test_kvpress_rows_press_the_cache_to_a_sixteenth(smoke_report):
    _, report = smoke_report
    rows = [r for r in report["results"] if r["method"].startswith("kvpress_")]
    if not rows[0]["available"]:
        warnings.warn(f"kvpress rows {rows[0]['reason']}")
        pytest.skip(rows[0]["reason"])
    assert report["machine"]["kvpress_env"]["kvpress"].startswith("0.5.")
    baseline = _row(report, "kvpress_none")["cached_positions"]
    assert baseline == _row(report, "full_reuse")["cached_positions"]  # same prompt in both environments
    for method in ("kvpress_expected_attention", "kvpress_snapkv"):
        row = _row(report, method)
        assert row["available"] and row["cached_positions"] == int(baseline * (1 / 16))
        assert row["stored_bytes"] * baseline == pytest.approx(_row(report, "kvpress_none")["stored_bytes"] * row["cached_positions"])


def test_missing_kvpress_env_skips_its_rows_with_the_fix(tmp_path):
    config = peers.PeersConfig(smoke=True, methods=["kvpress_snapkv"], kvpress_python=str(tmp_path / "none/bin/python"))
    rows, versions = peers.run_kvpress_jobs(config, None, {256: None}, torch.device("cpu"))
    assert versions is None
    assert rows == [{"method": "kvpress_snapkv", "length": 256, "unavailable": (
        f"skipped: {tmp_path / 'none/bin/python'} not found (build it: bash scripts/make_kvpress_env.sh)")}]


@torch.no_grad()
def test_reused_prefix_gives_the_full_prompt_first_token_and_is_restored():
    shape = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True}
    lm = build_lm(shape, seed=0, dtype=torch.float32, device=torch.device("cpu"))
    assert model_shape(lm.config) == shape
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, 97, (1, 120), generator=generator)
    cache = prefill_prefix(lm, prefix)
    size = cache_bytes(cache)
    assert size == 2 * 2 * 2 * 8 * 4 * 120
    for length in (5, 9):
        suffix = torch.randint(0, 97, (1, length), generator=generator)
        reused = answer_over(lm, cache, suffix, prefix.shape[1])
        assert reused.tolist() == first_token(lm, torch.cat([prefix, suffix], dim=1)).tolist()
        assert cache.get_seq_length() == 120 and cache_bytes(cache) == size


def test_bad_peers_settings_are_one_line_errors(capsys):
    assert peers.main(["--methods", "full_reuse", "llmlingua"]) == 2
    assert capsys.readouterr().err.startswith("benchmarks.peers: error: unknown methods ['llmlingua']")
    with pytest.raises(ValueError, match="questions must be between 1 and 16"):
        peers.PeersConfig(questions=17)


def test_memory_reuse_smoke(tmp_path):
    assert memory_reuse.main(["--smoke", "--output_dir", str(tmp_path), "--name", "smoke"]) == 0
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert [(r["context_tokens"], r["wrap"]) for r in report["results"]] == [(256, "each"), (512, "each")]
    for row in report["results"]:
        assert row["cost_vs_one_question"]["one_question"] == 1.0
        assert row["timing_ms"]["batch_no_reuse"]["n"] == 1
    table = (tmp_path / "smoke.md").read_text()
    assert "| Context | Wrap | 1 question (ms) | 4 batched, no reuse (ms) |" in table
    assert report["targets"]["below_3x"] is None  # smoke has no 8K row
    assert (tmp_path / "smoke.png").read_bytes()[:4] == b"\x89PNG"


class _Recorder:
    """Stands in for a model: records the keyword arguments of each generate call."""

    def __init__(self, reuse: bool):
        self.seen = []
        if reuse:
            self.prefill_memory = lambda memory: "cache"

    def generate(self, **kwargs):
        self.seen.append(kwargs)
        return kwargs["question"]


@pytest.mark.parametrize("reuse", [False, True])
def test_memory_reuse_modes_call_the_contracted_api(reuse):
    model = _Recorder(reuse)
    modes = memory_reuse.calls(model, "memory", ["q1", "q2"], max_new_tokens=3)
    modes["batch_no_reuse"]()
    assert model.seen[-1]["question"] == ["q1", "q2"] and model.seen[-1].get("reuse_prefix", False) is False
    assert ("reuse_prefix" in model.seen[-1]) == reuse  # the flag exists only with the reuse API
    assert model.seen[-1]["min_new_tokens"] == model.seen[-1]["max_new_tokens"] == 3
    if not reuse:
        assert modes["batch_reuse"] is None and modes["sequential_reuse"] is None
        return
    modes["sequential_reuse"]()
    assert [(c["question"], c["memory_cache"]) for c in model.seen[-2:]] == [("q1", "cache"), ("q2", "cache")]


@pytest.mark.parametrize("bench", [peers, memory_reuse])
def test_a_plot_without_matplotlib_or_a_gpu_preset_on_cpu_stops_before_the_run(bench, monkeypatch, tmp_path, capsys):
    from modeling_memcomp import extras

    runs = []
    monkeypatch.setattr(bench, "run", lambda *args, **kwargs: runs.append(args))
    prog = bench.__name__
    assert bench.main(["--preset", "qwen2.5-7b", "--device", "cpu", "--plot", "false", "--output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{prog}: error: the qwen2.5-7b preset needs a CUDA device (15 GB of bf16 " \
                                      "weights); on CPU use --preset cpu-tiny.\n"
    real = extras.find_spec
    monkeypatch.setattr(extras, "find_spec", lambda name: None if name == "matplotlib" else real(name))
    assert bench.main(["--smoke", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: the ") and "plot (--plot false skips it) needs matplotlib, which is not " \
        'installed: pip install "memcomp[eval]"' in err and err.count("\n") == 1
    assert runs == [] and not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_the_kvpress_budget_is_labelled_against_memcomps_real_one(smoke_report):
    out, report = smoke_report
    table = (out / "smoke.md").read_text()
    assert "(memcomp's ratio)" not in table
    assert ("kvpress presses keep 1/16 of the KV pairs (memcomp's nominal rate is 16x; its wrap=each memory prefix "
            "keeps 3 positions per 16 context tokens, 3/16 of the KV: 3x kvpress's budget)") in table
    same = peers.kvpress_budget_note({"compression": 16 / 3, "chunk_size": 16})
    assert "1/5.33333 of the KV pairs" in same and "the same budget as kvpress" in same
