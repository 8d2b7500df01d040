"""Each benchmark end to end on a tiny random model and small local fixtures, the baseline prompt, and resuming."""

import json
from pathlib import Path

import pytest

from benchmarks.eval import EvalArguments, LongBenchArguments, MultiHopArguments, NIAHArguments, ReconstructionArguments
from benchmarks.eval import longbench, multihop, niah, qa, reconstruction, response_length
from benchmarks.eval.loaders import load_qa, read_rows, read_texts
from benchmarks.eval.systems import FullContextSystem, MemCompSystem
from modeling_memcomp.prompting import build_prompt

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
TINY = dict(max_new_tokens=4)


def qa_sets(hotpot=True):
    squad = load_qa(str(FIXTURES / "squad.jsonl"))
    return dict([load_qa(f"hotpotqa={FIXTURES / 'hotpotqa.jsonl'}"), squad] if hotpot else [squad])


def check_outputs(out: Path, benchmark: str, plots: list[str], n_examples: int, systems=("full", "memcomp")):
    results = json.loads((out / "results.json").read_text())
    assert results["benchmark"] == benchmark and results["num_errors"] == 0
    assert sorted({r["system"] for r in results["records"]}) == sorted(systems)
    assert len(results["records"]) == n_examples * len(systems)
    for record in results["records"]:
        assert isinstance(record["response"], str) and record["response_tokens"] <= TINY["max_new_tokens"]
    table = (out / "table.md").read_text()
    assert table.startswith(f"# {benchmark}") and "| **all** |" in table
    for name in plots:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    return results


def test_reconstruction_end_to_end(model, tmp_path):
    docs = read_texts(FIXTURES / "documents.jsonl")
    results = reconstruction.evaluate(model, EvalArguments(output_dir=str(tmp_path), **TINY), ReconstructionArguments(lengths=[32, 64], samples_per_length=1), docs)
    check_outputs(tmp_path, "reconstruction", ["rouge1_vs_length.png", "rougeL_vs_length.png"], 2)
    assert results["settings"]["template"] == "plain"  # the paper's Stage-1 format, whatever --template says
    assert set(results["aggregates"]["rouge1"]) == {"32", "64", "all"} or set(results["aggregates"]["rouge1"]) == {32, 64, "all"}
    assert all(0 <= r["rouge1"] <= 1 and r["reference"] for r in results["records"])


def test_reconstruction_caps_each_length_at_its_own_budget_and_hashes_the_rule(model, tmp_path, monkeypatch):
    """1.25 x each context's length (+16), not the longest one's; the rule is in the settings hash."""
    from benchmarks.eval.systems import Generation

    seen = []
    monkeypatch.setattr(MemCompSystem, "generate", lambda self, c, i, **k: seen.append(k["max_new_tokens"]) or [Generation("x", 1, 8)] * len(c))
    docs = read_texts(FIXTURES / "documents.jsonl")
    args = EvalArguments(output_dir=str(tmp_path), systems=["memcomp"])
    results = reconstruction.evaluate(model, args, ReconstructionArguments(lengths=[32, 64], samples_per_length=1), docs)
    assert seen == [56, 96] and results["settings"]["max_new_tokens_rule"] == reconstruction.CAP_RULE
    reconstruction.evaluate(model, args, ReconstructionArguments(lengths=[32], samples_per_length=1), docs)
    assert seen == [56, 96]  # fewer lengths, same cap per example: the record is reused
    capped = EvalArguments(output_dir=str(tmp_path / "capped"), systems=["memcomp"], max_new_tokens=5, batch_size=2)
    reconstruction.evaluate(model, capped, ReconstructionArguments(lengths=[32, 64], samples_per_length=1), docs)
    assert seen[2:] == [5]  # the user's --max_new_tokens wins over the per-length caps: one batch


def test_synthetic_reconstruction_caps_each_document_and_does_not_reuse_another_caps_records(tmp_path):
    from benchmarks.eval.harness import Example
    from benchmarks.eval.synthetic import document_max_new_tokens, evaluate_systems
    from benchmarks.eval.systems import Generation

    seen = []

    class Recording:
        name = "C4"

        def generate(self, contexts, instructions, **kwargs):
            seen.append((len(contexts), kwargs["max_new_tokens"]))
            return [Generation("Ena", 1, 8)] * len(contexts)

    examples = [Example(f"document{i}", "Ena lives in Tide.", "Rebuild.", "Ena lives in Tide.", meta={"tokens": n})
                for i, n in enumerate((16, 40, 16, 19))]
    evaluate_systems("reconstruction", examples, [Recording()], tmp_path, document_max_new_tokens)
    # int(1.25 x tokens) + 8 per document (28, 58, 28, 31), rounded up to 32s: documents of one cap batched together
    assert seen == [(3, 32), (1, 64)]
    evaluate_systems("reconstruction", examples, [Recording()], tmp_path, 64)
    assert seen[2:] == [(3, 64)]  # records are keyed by their cap: only the document already answered under 64 is reused


def test_qa_end_to_end_with_judge_and_retention(model, tmp_path):
    class AlwaysCorrect:
        def complete(self, prompt):
            return "Verdict: CORRECT"

    from trainers.judges import LLMJudge

    args = EvalArguments(output_dir=str(tmp_path), batch_size=2, **TINY)  # batches of 2, 2, 1
    results = qa.evaluate(model, args, qa_sets(), judge=LLMJudge(AlwaysCorrect()))
    check_outputs(tmp_path, "qa", ["qa_accuracy.png"], 5)
    overall = results["aggregates"]["accuracy"]["all"]
    assert overall["memcomp"]["mean"] == overall["full"]["mean"] == 1.0
    table = (tmp_path / "table.md").read_text()
    assert "| **all** | 100.00 | 100.00 | 100.0 | 5 |" in table  # retention of a perfect judge is 100 %
    assert "in-distribution" in table and "Average response length" in table
    assert "Judge: 0 of 10 verdicts failed" in table and results["num_judge_failures"] == 0


def test_niah_end_to_end_writes_one_heatmap_per_system(model, tmp_path):
    haystack = (FIXTURES / "haystack.txt").read_text()
    results = niah.evaluate(model, EvalArguments(output_dir=str(tmp_path), **TINY), NIAHArguments(lengths=[64], depths=[0, 100]), haystack)
    check_outputs(tmp_path, "niah", ["niah_score_vs_length.png", "niah_heatmap_memcomp.png", "niah_heatmap_full.png"], 2)
    assert results["settings"]["temperature"] is None and all(1 <= r["score"] <= 10 for r in results["records"])


def test_niah_report_is_written_when_a_system_has_no_scored_example(model, tmp_path, monkeypatch):
    """Every full-context example too long: its heatmap is a blank grid and table.md / results.json are still written."""
    monkeypatch.setattr("benchmarks.eval.systems.max_positions", lambda config: 16)
    haystack = (FIXTURES / "haystack.txt").read_text()
    results = niah.evaluate(model, EvalArguments(output_dir=str(tmp_path), **TINY), NIAHArguments(lengths=[64], depths=[0, 100]), haystack)
    assert results["num_errors"] == 2 and all("positions" in r["error"] for r in results["records"] if r["system"] == "full")
    assert "2 example(s) not evaluated" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "niah_heatmap_full.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multihop_end_to_end(model, tmp_path):
    datasets = {"hotpotqa": load_qa(str(FIXTURES / "hotpotqa.jsonl"))[1]}
    data = MultiHopArguments(samples_per_set=1, lengths=[64, 128])
    results = multihop.evaluate(model, EvalArguments(output_dir=str(tmp_path), template="rl", **TINY), data, datasets)
    check_outputs(tmp_path, "multihop", ["multihop_accuracy_vs_length.png"], 2)
    assert {r["length"] for r in results["records"]} == {64, 128}
    assert all(r["accuracy"] == r["subspan_em"] for r in results["records"])


def test_longbench_end_to_end(model, tmp_path):
    rows = read_rows(FIXTURES / "longbench.jsonl")
    results = longbench.evaluate(model, EvalArguments(output_dir=str(tmp_path), **TINY), LongBenchArguments(max_tokens=400, buckets=[0, 200]), rows)
    check_outputs(tmp_path, "longbench", ["longbench_accuracy_vs_length.png"], 2)
    assert list(results["aggregates"]["accuracy_by_bucket"])[-1] == "all"


def test_response_length_from_finished_runs(model, tmp_path):
    qa.evaluate(model, EvalArguments(output_dir=str(tmp_path / "qa"), **TINY), qa_sets(hotpot=False))
    report = response_length.evaluate([tmp_path / "qa"], tmp_path / "lengths")
    records = json.loads((tmp_path / "qa" / "results.json").read_text())["records"]
    memcomp = [r["response_tokens"] for r in records if r["system"] == "memcomp"]
    assert report["summary"]["all"]["memcomp"]["mean"] == pytest.approx(sum(memcomp) / len(memcomp))
    assert (tmp_path / "lengths" / "response_length.png").exists() and "squad" in report["table"]
    with pytest.raises(ValueError, match="no results"):
        response_length.evaluate([tmp_path / "nowhere"], tmp_path / "lengths")


def test_response_length_keeps_benchmarks_apart_and_refuses_to_pool_two_runs_of_a_system(tmp_path):
    def results(folder, benchmark, tokens, fingerprint="m1", dataset="hotpotqa"):
        (tmp_path / folder).mkdir()
        records = [{"id": "q1", "system": "memcomp", "dataset": dataset, "response_tokens": tokens}]
        (tmp_path / folder / "results.json").write_text(json.dumps(
            {"benchmark": benchmark, "settings": {"model_fingerprint": fingerprint}, "records": records}))
        return tmp_path / folder

    qa_run, multihop_run = results("qa", "qa", 10), results("multihop", "multihop", 30)
    summary = response_length.evaluate([qa_run, multihop_run], tmp_path / "lengths")["summary"]
    assert (summary["qa/hotpotqa"]["memcomp"]["mean"], summary["multihop/hotpotqa"]["memcomp"]["mean"]) == (10, 30)
    with pytest.raises(ValueError, match="qa/hotpotqa has 'memcomp' responses in both"):
        response_length.evaluate([qa_run, results("qa_again", "qa", 20)], tmp_path / "lengths")
    with pytest.raises(ValueError, match="'memcomp' comes from two models"):
        response_length.evaluate([qa_run, results("other", "qa", 20, fingerprint="m2", dataset="squad")], tmp_path / "lengths")


def test_model_index_feeds_the_model_card(model, tmp_path):
    from benchmarks.eval.model_index import model_index
    from hub_cards import load_evaluation

    results = qa.evaluate(model, EvalArguments(output_dir=str(tmp_path / "qa"), systems=["memcomp"], **TINY), qa_sets(hotpot=False))
    name, rows = load_evaluation(model_index([tmp_path / "qa"], "memcomp-tiny"))
    assert name == "memcomp-tiny" and len(rows) == 1  # one row per QA dataset, memcomp only
    expected = results["aggregates"]["accuracy"]["squad"]["memcomp"]["mean"] * 100
    assert (rows[0].dataset_name, rows[0].metric_type, rows[0].metric_value) == ("squad", "accuracy", pytest.approx(expected, abs=0.01))


def test_full_context_prompt_is_the_memcomp_prompt_with_text_for_memory(model):
    """Same template, system prompt and instruction: only the memory block becomes the context's text."""
    tokenizer, context, question = model.tokenizer, "The old library painted an ancient map.", "What did it paint?"
    memory = model.compress(context)
    compressed = build_prompt(tokenizer, model.config, len(memory), question, template="chat", system_prompt="S.").input_ids
    full, n_context = FullContextSystem(model, template="chat", system_prompt="S.").prompt_ids(context, question)
    mem_ids = set(model.config.memory_token_ids)
    first = next(i for i, t in enumerate(compressed) if t in mem_ids)
    last = max(i for i, t in enumerate(compressed) if t in mem_ids)
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    assert full[:first] == compressed[:first]  # system turn and user header
    assert full[first + 1 : first + 1 + len(context_ids)] == context_ids and n_context == len(context_ids)
    assert full[-(len(compressed) - last - 1) :] == compressed[last + 1 :]  # question and assistant header


def test_a_context_too_long_for_the_baseline_is_recorded_not_fatal(model, tmp_path):
    """The tiny base LM has 4096 positions: the full-context baseline must fail cleanly where memcomp still answers."""
    long_doc = " ".join((FIXTURES / "haystack.txt").read_text().split() * 25)
    datasets = {"long": [load_qa(str(FIXTURES / "squad.jsonl"))[1][0]]}
    datasets["long"][0].passages = [long_doc]
    results = qa.evaluate(model, EvalArguments(output_dir=str(tmp_path), **TINY), datasets)
    by_system = {r["system"]: r for r in results["records"]}
    assert "positions" in by_system["full"]["error"] and "accuracy" not in by_system["full"]
    assert by_system["memcomp"]["context_tokens"] > 4096 and "error" not in by_system["memcomp"]
    assert results["num_errors"] == 1 and "not evaluated" in (tmp_path / "table.md").read_text()


def test_the_baseline_window_must_hold_the_prompt_and_the_answer(model):
    context, question = "The old library painted an ancient map.", "What did it paint?"
    system = FullContextSystem(model, template="chat")
    system.max_positions = len(system.prompt_ids(context, question)[0]) + 2
    with pytest.raises(ValueError, match=r"need \d+ \+ 3 positions"):
        system.generate([context], [question], max_new_tokens=3, do_sample=False)
    assert len(system.generate([context], [question], max_new_tokens=2, do_sample=False)) == 1


def test_interrupted_run_resumes_without_recomputing_and_matches_an_uninterrupted_run(model, tmp_path, monkeypatch):
    args = dict(systems=["memcomp"], temperature=0.7, **TINY)  # sampled: resuming must not change any answer
    datasets = {"hotpotqa": load_qa(str(FIXTURES / "hotpotqa.jsonl"))[1]}
    reference = qa.evaluate(model, EvalArguments(output_dir=str(tmp_path / "ref"), **args), datasets)

    calls = []
    original = MemCompSystem.generate

    def crash_after_two(self, contexts, instructions, **kwargs):
        calls.append(len(contexts))
        if len(calls) > 2:
            raise KeyboardInterrupt  # the process dies mid-run
        return original(self, contexts, instructions, **kwargs)

    monkeypatch.setattr(MemCompSystem, "generate", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        qa.evaluate(model, EvalArguments(output_dir=str(tmp_path / "run"), **args), datasets)
    assert len((tmp_path / "run" / "records.jsonl").read_text().splitlines()) == 2

    calls.clear()
    monkeypatch.setattr(MemCompSystem, "generate", lambda self, c, i, **k: calls.append(len(c)) or original(self, c, i, **k))
    resumed = qa.evaluate(model, EvalArguments(output_dir=str(tmp_path / "run"), **args), datasets)
    assert sum(calls) == 1  # only the unfinished example is generated again
    assert [(r["id"], r["response"]) for r in resumed["records"]] == [(r["id"], r["response"]) for r in reference["records"]]

    calls.clear()
    qa.evaluate(model, EvalArguments(output_dir=str(tmp_path / "run"), **{**args, "temperature": 0.1}), datasets)
    assert sum(calls) == 3  # another temperature is another config: nothing is reused


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, options",
    [
        ("evaluate_qa.py", ["--datasets", f"hotpotqa={FIXTURES / 'hotpotqa.jsonl'}", "--limit", "2"]),
        ("evaluate_niah.py", ["--haystack", str(FIXTURES / "haystack.txt"), "--lengths", "64", "--depths", "0", "100"]),
        ("evaluate_longbench.py", ["--source", str(FIXTURES / "longbench.jsonl"), "--max_tokens", "400", "--buckets", "0", "200"]),
    ],
)
def test_entry_points_run_on_a_tiny_model(script, options, tmp_path):
    """The thin scripts parse their dataclasses and write the report (model 'tiny': untrained, built offline)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    command = [sys.executable, str(root / "examples" / script), "--model", "tiny", "--output_dir", str(tmp_path), "--max_new_tokens", "4", *options]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| **all** |" in done.stdout and (tmp_path / "results.json").exists()


def test_a_separate_baseline_model_with_yarn_positions(model, tokenizer, tmp_path):
    """`--full_context_model` loads another LM (the paper's Instruct baseline) and its tokenizer; YaRN widens its window."""
    from benchmarks.eval.runtime import build_systems
    from modeling_memcomp.tiny import tiny_qwen2_config
    from transformers import Qwen2ForCausalLM

    config = tiny_qwen2_config(len(tokenizer), max_position_embeddings=256)
    config.pad_token_id = tokenizer.pad_token_id
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    args = EvalArguments(output_dir=str(tmp_path / "qa"), systems=["full"], full_context_model=str(tmp_path / "base"), **TINY)
    (plain,) = build_systems(model, args)
    (widened,) = build_systems(model, EvalArguments(**{**vars(args), "full_context_yarn_factor": 4.0}))
    assert (plain.max_positions, widened.max_positions) == (256, 1024)
    assert widened.language_model.config.rope_parameters["rope_type"] == "yarn" and plain.language_model is not model.language_model
    results = qa.evaluate(model, args, qa_sets(hotpot=False))
    assert [r["system"] for r in results["records"]] == ["full", "full"] and results["num_errors"] == 0


def test_evaluation_arguments_come_from_a_yaml_file_and_the_command_line(tmp_path):
    from trl import TrlParser

    from benchmarks.eval import EvalArguments, QAArguments

    config = tmp_path / "qa.yaml"
    config.write_text("model: tiny\nlimit: 5\ndatasets: [hotpotqa, squad]\ntemperature: 0.0\n")
    args, data = TrlParser((EvalArguments, QAArguments)).parse_args_and_config(["--config", str(config), "--limit", "3"])
    assert (args.model, args.limit, args.temperature, data.datasets) == ("tiny", 3, 0.0, ["hotpotqa", "squad"])
    assert args.template is None and args.encoder_model is None and args.trust_remote_code is False
