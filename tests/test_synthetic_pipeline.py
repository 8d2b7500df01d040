"""The synthetic demo pipeline (issue 11) at toy size, its evaluation metrics and controls."""

import json

import pytest

from benchmarks.eval.synthetic import CopySystem, ZeroMemorySystem, content_accuracy, length_bucket
from trainers.synthetic_pipeline import STAGES, SyntheticRunConfig, main

TOY = [
    "--train_episodes", "30", "--heldout_episodes", "4", "--hidden_size", "32", "--num_layers", "2",
    "--batch_size", "4", "--lm_steps", "3", "--cpt1_steps", "3", "--cpt2_steps", "3", "--sft_steps", "3",
    "--baseline_steps", "3", "--rl_steps", "2", "--rl_prompts", "8", "--rl_generations", "2", "--rl_batch_size", "4",
    "--save_steps", "2", "--logging_steps", "1", "--max_documents", "3", "--max_questions", "6",
]  # fmt: skip


def test_toy_pipeline_trains_every_stage_reports_and_exports(tmp_path):
    run, report_dir, checkpoint = tmp_path / "run", tmp_path / "report", tmp_path / "checkpoint"
    argv = [*TOY, "--output_dir", str(run), "--report_dir", str(report_dir), "--checkpoint_dir", str(checkpoint)]
    report = main(argv)

    for stage in STAGES[1:]:
        assert (run / stage / "config.json").is_file(), stage
        assert json.loads((run / stage / "log_history.json").read_text()), stage
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == {*STAGES, "eval"}
    saved = json.loads((report_dir / "report.json").read_text())
    assert saved["aggregates"] == json.loads(json.dumps(report["aggregates"]))
    qa = saved["aggregates"]["qa_em"]["all"]
    assert set(qa) == {"sft", "rl", "rl_self", "full", "zero_memory", "copy"}
    assert all(q["n"] == 6 for q in qa.values())
    assert set(saved["aggregates"]["reconstruction_rougeL"]["all"]) == {"cpt1", "cpt2", "zero_memory", "copy"}
    assert set(saved["aggregates"]["reconstruction_rougeL_by_kind"]) == {"document", "episode", "all"}
    assert saved["targets"][0]["target"].startswith("held-out document reconstruction ROUGE-L >= 0.9")
    assert (report_dir / "learning_curves.png").stat().st_size > 0
    assert "| rl |" in (report_dir / "report.md").read_text()

    from modeling_memcomp import MemCompForCausalLM

    shipped = MemCompForCausalLM.from_pretrained(checkpoint)
    source = MemCompForCausalLM.from_pretrained(run / report["shipped_stage"])
    assert shipped.fingerprint == source.fingerprint
    assert (checkpoint / "tokenizer.json").is_file() and (checkpoint / "modeling_memcomp.py").is_file()

    # A rerun finds every stage finished: nothing retrains (only the evaluation, from its saved records, adds time).
    main(argv)
    rerun = json.loads((run / "timings.json").read_text())
    assert {s: t for s, t in rerun.items() if s != "eval"} == {s: t for s, t in timings.items() if s != "eval"}


def test_config_rejects_unknown_stage_and_uneven_rl_batch():
    with pytest.raises(ValueError, match="unknown stages"):
        SyntheticRunConfig(stages=["lm", "pretrain"])
    with pytest.raises(ValueError, match="multiple of rl_generations"):
        SyntheticRunConfig(rl_batch_size=10, rl_generations=4)


def test_content_accuracy_counts_aligned_names_and_values_only():
    reference = "Kobe lives in Oslo. Kobe is a nurse. Lusu was founded in 1962."
    assert content_accuracy(reference, reference) == 1.0
    # template words wrong, every content word right and in order: still perfect
    assert content_accuracy("Kobe stays at Oslo; Kobe, nurse; Lusu since 1962", reference) == 1.0
    # one value wrong out of six content words (Kobe, Oslo, Kobe, nurse, Lusu, 1962)
    assert content_accuracy(reference.replace("nurse", "pilot"), reference) == pytest.approx(5 / 6)
    # right words in the wrong order cannot all align
    assert content_accuracy("1962 Lusu nurse Kobe Oslo Kobe", reference) == 0.5  # "Kobe Oslo Kobe" aligns
    assert content_accuracy("anything", "The end of it.") is None


def test_length_buckets():
    assert [length_bucket(n) for n in (3, 16, 31, 47, 48, 90)] == [16, 16, 16, 32, 48, 64]


def test_zero_memory_control_reads_zeros_and_copy_control_copies_the_prompt(model):
    control = ZeroMemorySystem(model)
    memory = control.memories(["Some context to compress, long enough for two chunks or more."])[0]
    assert memory.num_embeddings > 1 and not memory.embeds.any()
    assert model.compress("Some context to compress, long enough for two chunks or more.").embeds.any()
    copy = CopySystem(model.tokenizer)
    out = copy.generate(["Kobe is a nurse."], ["Who founded the company that Nano works for?"])[0]
    assert out.text == "Nano" and out.context_tokens == len(model.tokenizer("Kobe is a nurse.")["input_ids"])
    assert copy.generate(["Kobe is a nurse."], ["Reconstruct the original text."])[0].text == ""
