"""The synthetic run (issue 20) at toy size: every stage, the evaluation by documents and depth, report, export."""

import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks.eval.harness import Example
from benchmarks.eval.report import paired_bootstrap
from benchmarks.eval.synthetic import (
    WORD_ROLES, CopySystem, ReconstructionProbe, ZeroMemorySystem, aggregate, content_accuracy, error_sources,
    evaluate_systems, length_bucket, needed_documents, qa_examples, score_reconstruction,
)
from benchmarks.eval.systems import FullContextSystem, Generation
from benchmarks.synthetic.clock import StageClock, record_stage, update_timings
from benchmarks.synthetic.config import SyntheticRunConfig
from benchmarks.synthetic.data import make_data
from benchmarks.synthetic.folders import STAGE_TOKENIZER_FILES, model_digest
from benchmarks.synthetic.pipeline import StopSideProcess, ThreadsWhenAlone
from benchmarks.synthetic.run import main
from benchmarks.synthetic.stages import rl_arguments, rl_rows, stage_config

TOY = [
    "--train_episodes", "30", "--heldout_episodes", "40", "--eval_questions", "2", "--multidoc_texts", "20",
    "--hidden_size", "32", "--num_layers", "2", "--batch_size", "4", "--lm_steps", "3", "--cpt1_steps", "3",
    "--cpt2_steps", "3", "--sft_steps", "3", "--baseline_steps", "3", "--recon_chunk_sizes", "8", "--recon_steps", "2",
    "--rl_steps", "2", "--rl_prompts", "8", "--rl_generations", "2", "--rl_batch_size", "4", "--save_steps", "2",
    "--logging_steps", "1", "--max_documents", "3", "--max_single_questions", "4", "--probe_steps", "2",
    "--probe_documents", "3", "--lm_lexicon_texts", "40",
]  # fmt: skip


@pytest.mark.slow
def test_toy_run_trains_every_stage_reports_and_exports(tmp_path):
    run, report_dir, checkpoint = tmp_path / "run", tmp_path / "report", tmp_path / "checkpoint"
    argv = [*TOY, "--output_dir", str(run), "--report_dir", str(report_dir), "--checkpoint_dir", str(checkpoint)]
    report = main(argv)

    stages = SyntheticRunConfig(recon_chunk_sizes=[8]).all_stages
    for stage in stages[1:]:
        assert (run / stage / "config.json").is_file(), stage
        assert json.loads((run / stage / "log_history.json").read_text()), stage
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == {*stages, "eval", "useful_tokens"}
    assert set(timings["useful_tokens"]) == set(stages[1:]) - {"rl"}
    saved = json.loads((report_dir / "report.json").read_text())
    by_k = saved["aggregates"]["qa_em_by_k"]
    assert set(by_k) == {"1", "2", "4", "8", "16", "32", "all"}
    assert set(by_k["32"]) == {"sft", "rl", "full", "zero_memory", "copy"}
    assert by_k["1"]["sft"]["n"] == 2 and by_k["4"]["sft"]["n"] == 6  # 2 questions per (k, depth) cell
    assert set(saved["aggregates"]["qa_em_by_depth"]) == {"first", "middle", "last", "all"}
    assert set(saved["aggregates"]["single_em_by_type"]["all"]) == {"sft", "rl", "full", "zero_memory", "copy"}
    recon = saved["aggregates"]["reconstruction_content_accuracy"]["all"]
    assert set(saved["aggregates"]["reconstruction_content_accuracy_by_role"]) == {"subject", "other name", "value"}
    assert "Content-token accuracy by word role" in (report_dir / "report.md").read_text()
    assert set(recon) == {"C4", "C4_zero_memory", "C8", "C8_zero_memory", "copy"}
    assert saved["targets"][0]["target"].startswith("reconstruction content-token accuracy at C=4")
    assert set(saved["rl_minus_sft"]) == {"1", "2", "4", "8", "16", "32", "all"}
    for name in ("learning_curves.png", "em_by_documents.png", "reconstruction_by_chunk_size.png", "heatmap_rl.png"):
        assert (report_dir / name).stat().st_size > 0, name
    assert "| 32 |" in (report_dir / "report.md").read_text()
    during = saved["reconstruction_during_training"]  # logged at step 2 of CPT-1 (3 steps) and of the C=8 run (2)
    assert set(during) == {"cpt1", "cpt1_c8"} and [r["step"] for r in during["cpt1"]] == [2]
    assert 0 <= during["cpt1"][0]["from_memory"] <= 1 and 0 <= during["cpt1"][0]["zero_memory"] <= 1
    assert "Held-out content-token accuracy during `cpt1` (greedy, 3 documents;" in (report_dir / "report.md").read_text()
    assert set(WORD_ROLES) <= set(during["cpt1"][0])
    assert not any(k.endswith("held-out") for k in saved["final_training_values"])
    assert set(saved["aggregates"]["qa_em_by_answer_kind"]) == {"closed-set value", "name"}
    for source in saved["wrong_answer_sources"].values():
        assert source["wrong"] > 0 and abs(source["distractor"] + source["needed"] + source["elsewhere"] - 1) < 1e-9

    from modeling_memcomp import MemCompForCausalLM

    stage = report["shipped"]["stage"]
    shipped = MemCompForCausalLM.from_pretrained(checkpoint)
    source = MemCompForCausalLM.from_pretrained(run / stage)
    assert shipped.fingerprint == source.fingerprint and shipped.decoder_fingerprint == source.decoder_fingerprint
    assert (checkpoint / "tokenizer.json").is_file() and (checkpoint / "modeling_memcomp.py").is_file()
    assert json.loads((checkpoint / "memcomp_synthetic.json").read_text()) == {"seed": 0}  # the corpus it trained on
    card = (checkpoint / "README.md").read_text()
    assert f"up to its stage (LM pretraining, CPT-1, CPT-2, SFT{', RL' if stage == 'rl' else ''})" in card
    assert f"chunk size {shipped.config.chunk_size} with {shipped.config.wrap} wrapping" in card
    if stage == "rl":  # the paper's system in one folder: SFT encoder + RL decoder
        assert shipped.fingerprint == MemCompForCausalLM.from_pretrained(run / "sft").fingerprint

    # A rerun finds every stage finished: nothing retrains (only the evaluation, from its saved records, adds time).
    # It compares the run with its own export (`previous`, the same weights): a tie, so the checkpoint stays.
    again = main(argv)
    assert again["shipped"]["stage"] is None and "ties" in again["shipped"]["reason"]
    rerun = json.loads((run / "timings.json").read_text())
    assert {s: t for s, t in rerun.items() if s != "eval"} == {s: t for s, t in timings.items() if s != "eval"}

    # Evaluated on the single-document set alone, the report still has that set's table (and no empty k tables).
    single_only = tmp_path / "single_only"
    main([*argv[:-4], "--report_dir", str(single_only), "--checkpoint_dir", "", "--max_passage_questions", "0"])
    text = (single_only / "report.md").read_text()
    assert "## The single-document held-out set" in text and "| **all** |" in text and "by number of documents" not in text


@pytest.mark.slow
def test_a_partial_run_is_evaluated_as_far_as_it_goes(tmp_path, monkeypatch):
    from benchmarks.eval import synthetic

    built = []
    spy = lambda *args, **kwargs: built.append(kwargs) or FullContextSystem(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(synthetic, "FullContextSystem", spy)
    argv = [*TOY, "--output_dir", str(tmp_path / "run"), "--report_dir", str(tmp_path / "report"), "--stages", "data",
            "lm", "baseline", "--parallel", "false", "--baseline_query_aware", "true"]
    report = main([*argv, "--checkpoint_dir", str(tmp_path / "none")])
    assert set(report["aggregates"]["qa_em_by_k"]["all"]) == {"full", "copy"}
    assert built and all(kw["query_aware"] for kw in built)  # evaluated with the prompts it was trained on
    built.clear()  # evaluated again later, without the run's flags: the checkpoint says how it was prompted
    synthetic.evaluate_run(tmp_path / "run", tmp_path / "again", max_single_questions=2, max_passage_questions=2)
    assert built and all(kw["query_aware"] for kw in built)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "retention of" not in text and "RL minus SFT, exact match" not in text  # no empty sections
    assert not (tmp_path / "none").exists()  # nothing to ship


@pytest.mark.slow
def test_a_reconstruction_probe_reports_reconstruction_without_qa_tables(tmp_path):
    report_dir = tmp_path / "report"
    args = ["--output_dir", str(tmp_path / "run"), "--report_dir", str(report_dir), "--checkpoint_dir", ""]
    report = main(TOY + args + ["--stages", "data", "lm", "cpt1"])
    assert report["aggregates"]["qa_em_by_k"] == {} and set(report["aggregates"]["reconstruction_content_accuracy"]["all"])
    text = (report_dir / "report.md").read_text()
    assert "## Reconstruction of held-out documents" in text and "QA exact match" not in text
    assert not (report_dir / "em_by_documents.png").exists()
    # Reported again with no training log (as models trained elsewhere and reused) and no --report_dir: the report
    # goes beside the run, without a learning-curve plot, and the committed report is not touched.
    for log in (tmp_path / "run").glob("*/log_history.json"):
        log.unlink()
    main(TOY + args[:2] + args[4:] + ["--stages", "data", "lm", "cpt1"])
    text = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## Reconstruction of held-out documents" in text and "learning_curves.png" not in text
    assert not (tmp_path / "run" / "report" / "learning_curves.png").exists()


def test_a_checkpoint_dir_the_export_would_wipe_is_refused_before_anything_runs(tmp_path):
    elsewhere = tmp_path / "models"
    (elsewhere / "other_project").mkdir(parents=True)
    (elsewhere / "other_project" / "notes.txt").write_text("keep me")
    args = ["--output_dir", str(tmp_path / "run"), "--checkpoint_dir", str(elsewhere), "--stages", "data"]
    with pytest.raises(ValueError, match="holds files but no memcomp export record .* Or pass --checkpoint_dir '' to not export"):
        main(TOY + args)
    assert (elsewhere / "other_project" / "notes.txt").read_text() == "keep me" and not (tmp_path / "run").exists()
    (elsewhere / "config.json").write_text(json.dumps({"model_type": "memcomp"}))  # a user's checkpoint, not an export
    with pytest.raises(ValueError, match="holds files but no memcomp export record"):
        main(TOY + args)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        main(TOY + args[:2] + ["--checkpoint_dir", str(tmp_path / "file"), "--stages", "data"])


def test_a_stage_whose_only_checkpoints_are_torn_starts_afresh(tmp_path, caplog):
    """Every stage's arguments resume from the newest complete checkpoint (`trainers.checkpoints.resume_point`)."""
    from benchmarks.synthetic.stages import training_args
    from trainers.checkpoints import resume_point

    config = SyntheticRunConfig(output_dir=str(tmp_path))
    args = training_args(config, "sft", 10, 1e-3)
    assert resume_point(args) is None  # nothing there yet
    (tmp_path / "sft" / "checkpoint-250").mkdir(parents=True)  # killed during the stage's first save
    assert resume_point(args) is None
    assert "no complete checkpoint in" in caplog.text and "(checkpoint-250: no trainer_state.json" in caplog.text
    assert "the run starts afresh" in caplog.text
    (tmp_path / "sft" / "checkpoint-500").mkdir()
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt"):
        (tmp_path / "sft" / "checkpoint-500" / name).write_text("{}")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "sft" / "checkpoint-500" / "model.safetensors"))
    assert resume_point(args) is True  # the trainer resumes from checkpoint-500
    assert resume_point(rl_arguments(config)) is None  # RL resumes the same way


def test_a_run_of_data_and_lm_alone_ends_without_a_report_and_times_the_lm_from_its_examples_on(
    tmp_path, caplog, monkeypatch
):
    import time
    import types

    from benchmarks.synthetic import clock, stages

    offset = [0.0]  # seconds the examples "took": the stage's clock must count them (they are rebuilt on a resume)
    monkeypatch.setattr(clock, "time", types.SimpleNamespace(time=lambda: time.time() + offset[0]))
    build = stages.examples_dataset
    monkeypatch.setattr(stages, "examples_dataset", lambda *a: offset.__setitem__(0, 1000.0) or build(*a))
    report_dir = tmp_path / "report"
    args = ["--output_dir", str(tmp_path / "run"), "--report_dir", str(report_dir), "--checkpoint_dir", ""]
    assert main(TOY + args + ["--stages", "data", "lm", "--lm_lexicon_texts", "8"]) == {}
    assert json.loads((tmp_path / "run" / "timings.json").read_text())["lm"] >= 1000
    caplog.clear()
    assert main(TOY + args + ["--stages", "data", "lm", "--lm_lexicon_texts", "8", "--lm_steps", "5"]) == {}
    assert "lm_steps=3 -> 5" in caplog.text and "finished stages (lm) keep the settings they trained with" in caplog.text
    (replaced,) = [json.loads(line) for line in (tmp_path / "run" / "run_config_history.jsonl").read_text().splitlines()]
    assert replaced["lm_steps"] == 3 and json.loads((tmp_path / "run" / "run_config.json").read_text())["lm_steps"] == 5
    caplog.clear()
    assert main(TOY + args + ["--stages", "data", "lm", "--lm_lexicon_texts", "8", "--lm_steps", "5", "--threads", "2"]) == {}
    assert "settings changed" not in caplog.text  # how the run goes, not what a stage learns
    assert (tmp_path / "run" / "lm" / "config.json").is_file() and not report_dir.exists()
    assert (tmp_path / "run" / "data" / "tokenizer").is_dir() and not (tmp_path / "run" / "data" / "tokenizer.partial").exists()
    assert "no stage the evaluation reads yet" in caplog.text


def test_a_killed_stage_keeps_its_time_up_to_its_last_checkpoint(tmp_path):
    config = SyntheticRunConfig(output_dir=str(tmp_path))
    killed = StageClock(config, "sft")
    killed.started -= 100  # it trained 100 s, saved a checkpoint, and was killed
    killed.on_save(None, None, None)
    resumed = StageClock(config, "sft")
    assert 100 <= resumed.carried < 101
    resumed.started -= 50
    record_stage(config, "sft", resumed.elapsed())
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert 150 <= timings["sft"] < 151 and "unfinished" not in timings


def test_the_run_writes_the_distractor_world_it_is_asked_for(tmp_path):
    from trainers.synthetic import is_org_document, read_jsonl

    config = SyntheticRunConfig(output_dir=str(tmp_path), train_episodes=30, heldout_episodes=40, distractors="other_kind")
    make_data(config)
    for split, kind in (("train", "qa"), ("heldout", "qa_passages")):
        for row in read_jsonl(config.data_file(split, kind)):
            answer_in_org = not row["type"].startswith("person")
            assert [is_org_document(d) for d in row["context"]].count(answer_in_org) == 1, row


def test_a_run_on_existing_data_with_other_corpus_settings_is_refused(tmp_path, caplog):
    from benchmarks.synthetic.data import CORPUS_RECORD
    from benchmarks.synthetic.pipeline import run_pipeline

    small = dict(output_dir=str(tmp_path), train_episodes=30, heldout_episodes=40, multidoc_texts=20)
    make_data(SyntheticRunConfig(**small))
    documents = (tmp_path / "data" / "train" / "document.jsonl").read_text()
    (tmp_path / "run_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"train_episodes=60 \(the data has 30\).*distractors='other_kind'"):
        run_pipeline(SyntheticRunConfig(**{**small, "train_episodes": 60, "distractors": "other_kind"}, stages=["data"]))
    assert (tmp_path / "run_config.json").read_text() == "{}"  # the refused command leaves the run's record alone
    run_pipeline(SyntheticRunConfig(**small, stages=["data"]))  # the same settings: the data is reused as it is
    assert (tmp_path / "data" / "train" / "document.jsonl").read_text() == documents
    (tmp_path / "data" / CORPUS_RECORD).unlink()  # data written before the record existed: warned, not refused
    run_pipeline(SyntheticRunConfig(**{**small, "train_episodes": 60}, stages=["data"]))
    assert "cannot be checked" in caplog.text


def test_config_rejects_unknown_stage_and_uneven_rl_batch():
    with pytest.raises(ValueError, match="probe_steps must be >= 0, got -1"):
        SyntheticRunConfig(probe_steps=-1)
    with pytest.raises(ValueError, match="unknown stages"):
        SyntheticRunConfig(stages=["lm", "pretrain"])
    with pytest.raises(ValueError, match="multiple of rl_generations"):
        SyntheticRunConfig(rl_batch_size=10, rl_generations=4)
    with pytest.raises(ValueError, match="lm_lexicon_texts must be >= 0, got -3"):
        SyntheticRunConfig(lm_lexicon_texts=-3)
    with pytest.raises(ValueError, match="cpt1_lr_decay is a share of the steps"):
        SyntheticRunConfig(cpt1_lr_decay=0)
    with pytest.raises(ValueError, match=r"rl_min_documents must be in 1..max_passages \(4\), got 5"):
        SyntheticRunConfig(rl_min_documents=5)
    with pytest.raises(ValueError, match=r"rl_max_documents must be in rl_min_documents..max_passages \(3..4\), got 2"):
        SyntheticRunConfig(rl_min_documents=3, rl_max_documents=2)
    with pytest.raises(ValueError, match=r"rl_temperature must be > 0 \(rollouts are sampled\), got 0"):
        SyntheticRunConfig(rl_temperature=0)
    with pytest.raises(ValueError, match=r"cpt1_name_weight_steps must be >= 0 \(0: every step\), got -1"):
        SyntheticRunConfig(cpt1_name_weight_steps=-1)


def test_cpt1_weighs_the_names_for_its_first_steps_only_when_asked(tmp_path):
    early = stage_config(SyntheticRunConfig(output_dir=str(tmp_path), cpt1_name_weight=4, cpt1_name_weight_steps=3000), "cpt1")
    assert (early.training.emphasis_weight, early.training.emphasis_steps) == (4, 3000) and early.data.emphasis_pattern
    default = stage_config(SyntheticRunConfig(output_dir=str(tmp_path)), "cpt1")
    assert (default.training.emphasis_weight, default.training.emphasis_steps, default.data.emphasis_pattern) == (1, 0, None)


def test_rl_prompts_can_be_limited_to_a_range_of_documents(tmp_path):
    toy = dict(output_dir=str(tmp_path), train_episodes=30, heldout_episodes=40, multidoc_texts=4, rl_prompts=50)
    make_data(SyntheticRunConfig(**toy))
    every = rl_rows(SyntheticRunConfig(**toy))
    assert len(every) == 50 and {row["k"] for row in every} == {1, 2, 3, 4}
    among = rl_rows(SyntheticRunConfig(**toy, rl_min_documents=3))
    assert len(among) == 50 and {row["k"] for row in among} == {3, 4}
    between = rl_rows(SyntheticRunConfig(**toy, rl_min_documents=2, rl_max_documents=3))
    assert len(between) == 50 and {row["k"] for row in between} == {2, 3}


def test_a_training_seed_reorders_training_on_the_same_corpus(tmp_path):
    from benchmarks.synthetic.pipeline import run_pipeline

    toy = dict(output_dir=str(tmp_path), train_episodes=30, heldout_episodes=40, multidoc_texts=4, rl_prompts=50)
    make_data(SyntheticRunConfig(**toy))
    (tmp_path / "run_config.json").write_text("{}")
    documents = (tmp_path / "data" / "train" / "document.jsonl").read_text()
    run_pipeline(SyntheticRunConfig(**toy, training_seed=1, stages=["data"]))  # the same corpus: not refused, not rewritten
    assert (tmp_path / "data" / "train" / "document.jsonl").read_text() == documents
    default, other = SyntheticRunConfig(**toy), SyntheticRunConfig(**toy, training_seed=1)
    assert default.train_seed == default.seed == 0 and other.train_seed == 1
    sft = stage_config(other, "sft")
    assert (sft.training.seed, sft.training.data_seed, sft.data.mixture_seed) == (1, 1, 1)
    assert stage_config(default, "sft").data.mixture_seed == 0
    assert rl_rows(default)["question"] != rl_rows(other)["question"]  # RL prompts are drawn in another order
    assert rl_arguments(default).seed == 0 and rl_arguments(other).seed == 1


def test_cpt1_name_lists_are_a_cpt1_source_of_training_names_written_once(tmp_path):
    from benchmarks.synthetic.data import write_name_lists
    from trainers.data import stage_streams
    from trainers.synthetic import split_names

    toy = dict(output_dir=str(tmp_path), train_episodes=30, heldout_episodes=40, multidoc_texts=4)
    make_data(SyntheticRunConfig(**toy))
    config = SyntheticRunConfig(**toy, cpt1_name_lists=50)
    path = write_name_lists(config)
    for stage in ("cpt1", "cpt1_c8"):
        assert {"path": str(path), "kind": "document"} in stage_config(config, stage).data.sources
    for stage in ("cpt2", "sft"):
        assert str(path) not in str(stage_config(config, stage).data.sources)
    assert str(path) not in str(stage_config(SyntheticRunConfig(**toy), "cpt1").data.sources)  # default: none

    documents = stage_streams(stage_config(config, "cpt1").data.sources)["document"]
    texts = [next(documents)["text"] for _ in range(300)]
    lists = [t for t in texts if " is " not in t and " was " not in t and " works " not in t]
    assert 50 < len(lists) < 200  # one source of three, by weight
    train_pool, heldout_pool = map(set, split_names(config.seed))
    names = {n for t in lists for n in t.removesuffix(".").split(", ")}
    assert names <= train_pool and not names & heldout_pool

    stamp = path.stat().st_mtime_ns
    assert write_name_lists(config) == path and path.stat().st_mtime_ns == stamp  # kept: the cached mixture stays valid
    path.write_text(path.read_text()[:100])  # cut short by a crash: rewritten, never read as it is
    write_name_lists(config)
    assert len(path.read_text().splitlines()) == 50
    with pytest.raises(ValueError, match="cpt1_name_lists must be >= 0, got -1"):
        SyntheticRunConfig(cpt1_name_lists=-1)
    with pytest.raises(ValueError, match="hold held-out names of .*give the --seed the data was made with"):
        write_name_lists(SyntheticRunConfig(**toy, seed=1, cpt1_name_lists=50))  # another seed's training names


def test_rl_rollouts_are_sampled_at_the_temperature_asked_for_table_10s_by_default():
    assert rl_arguments(SyntheticRunConfig()).temperature == 1.0
    args = rl_arguments(SyntheticRunConfig(rl_temperature=1.5, rl_batch_size=64, rl_generations=8))
    assert args.temperature == 1.5 and args.num_generations == 8 and args.rollout_batch_prompts == 8


def _learning_rates(args, steps: int) -> list[float]:
    """The LR at every step of the scheduler the Trainer builds from these arguments."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(steps), num_training_steps=steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step(), scheduler.step()
    return rates


def test_cpt1_lr_decay_holds_the_peak_then_decays_in_cpt1_and_the_curve_stages_only():
    config = SyntheticRunConfig(cpt1_steps=100, recon_steps=40, cpt1_lr_decay=0.25)
    peak = config.learning_rate
    held = _learning_rates(stage_config(config, "cpt1").training, 100)
    assert held[5:75] == pytest.approx([peak] * 70) and held[-1] == pytest.approx(0.1 * peak, rel=0.05)
    assert _learning_rates(stage_config(config, "cpt1_c8").training, 40)[20] == pytest.approx(peak)
    assert _learning_rates(stage_config(config, "cpt2").training, config.cpt2_steps)[config.cpt2_steps // 2] < 0.6 * peak
    cosine = _learning_rates(stage_config(SyntheticRunConfig(cpt1_steps=100, cpt1_lr_decay=1.0), "cpt1").training, 100)
    assert cosine[50] < 0.6 * peak and cosine[-1] == pytest.approx(0.1 * peak, rel=0.05)


def test_sft_lr_decay_holds_sfts_peak_only_and_defaults_to_a_cosine():
    config = SyntheticRunConfig(sft_steps=100, cpt2_steps=100, sft_lr_decay=0.25)
    peak = config.sft_learning_rate
    held = _learning_rates(stage_config(config, "sft").training, 100)
    assert held[5:75] == pytest.approx([peak] * 70) and held[-1] == pytest.approx(0.1 * peak, rel=0.05)
    assert _learning_rates(stage_config(config, "cpt2").training, 100)[50] < 0.6 * config.learning_rate
    cosine = _learning_rates(stage_config(SyntheticRunConfig(sft_steps=100), "sft").training, 100)
    assert cosine[50] < 0.6 * peak and cosine[-1] == pytest.approx(0.1 * peak, rel=0.05)
    with pytest.raises(ValueError, match="sft_lr_decay is a share of the steps"):
        SyntheticRunConfig(sft_lr_decay=0)


def test_baseline_lr_decay_holds_the_baselines_peak_and_defaults_to_a_cosine():
    from benchmarks.synthetic.stages import baseline_arguments

    peak = SyntheticRunConfig().sft_learning_rate
    held = _learning_rates(baseline_arguments(SyntheticRunConfig(baseline_steps=100, baseline_lr_decay=0.25)), 100)
    assert held[5:75] == pytest.approx([peak] * 70) and held[-1] == pytest.approx(0.1 * peak, rel=0.05)
    cosine = _learning_rates(baseline_arguments(SyntheticRunConfig(baseline_steps=100)), 100)
    assert cosine[50] < 0.6 * peak and cosine[-1] == pytest.approx(0.1 * peak, rel=0.05)
    with pytest.raises(ValueError, match="baseline_lr_decay is a share of the steps"):
        SyntheticRunConfig(baseline_lr_decay=1.5)


def test_targets_without_a_full_context_baseline_are_not_measured_rather_than_met():
    from benchmarks.eval.synthetic_report import check_targets

    em = lambda **systems: {name: {"mean": value, "n": 60} for name, value in systems.items()}  # noqa: E731
    by_k = {1: em(sft=0.9, rl=0.9), 4: em(sft=0.5, rl=0.5), 16: em(sft=0.1, rl=0.1), "all": em(sft=0.5, rl=0.5)}
    aggregates = {"reconstruction_content_accuracy": {}, "qa_em_by_k": by_k}
    alone = {t["target"]: t for t in check_targets(aggregates, {}, max_passages=4)}
    for name in ("sft retention (EM / full EM, %) at every k <= 4 (lowest)", "rl EM minus full-context EM at k = 16"):
        assert alone[name]["measured"] is None and alone[name]["met"] is None
    for k, full in ((1, 0.8), (4, 0.4), (16, 0.2)):
        by_k[k]["full"] = {"mean": full, "n": 60}
    both = {t["target"]: t for t in check_targets(aggregates, {}, max_passages=4)}
    assert both["sft retention (EM / full EM, %) at every k <= 4 (lowest)"]["measured"] == pytest.approx(112.5)
    assert both["sft retention (EM / full EM, %) at every k <= 4 (lowest)"]["met"]
    assert both["rl EM minus full-context EM at k = 16"]["measured"] == pytest.approx(-0.1)
    assert not both["rl EM minus full-context EM at k = 16"]["met"]


def test_a_process_takes_every_thread_once_the_other_one_has_finished():
    import threading

    other_done, before = threading.Event(), torch.get_num_threads()
    callback = ThreadsWhenAlone(other_done.is_set, threads=2)  # as the second process gets it: the main one's event
    state = type("State", (), {"global_step": 7})()
    try:
        torch.set_num_threads(1)
        callback.on_step_end(None, state, None)
        assert torch.get_num_threads() == 1  # the other process still trains beside it
        other_done.set()
        callback.on_step_end(None, state, None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_second_process_starts_only_when_both_processes_have_stages_left(tmp_path):
    """A phase with only the baseline left (the proof's `other_kind_baseline`) trains it in the main process, on
    `threads_alone`, instead of a one-thread second process beside an idle main one."""
    from benchmarks.synthetic.pipeline import pending_stages

    config = SyntheticRunConfig(output_dir=str(tmp_path), stages=["data", "baseline"])
    assert pending_stages(config) == ([], ["baseline"])
    config = SyntheticRunConfig(output_dir=str(tmp_path), stages=["data", "cpt1", "baseline"])
    assert pending_stages(config) == (["cpt1"], ["baseline"])


def test_the_second_process_stops_when_the_main_one_fails_or_is_gone():
    import threading

    state, stop = type("State", (), {"global_step": 7})(), threading.Event()
    StopSideProcess(os.getppid(), stop).on_step_end(None, state, None)  # its parent is alive and asks nothing: it trains on
    with pytest.raises(SystemExit, match=r"the main process \(\d+\) is gone: stopping at step 7; rerun the command"):
        StopSideProcess(os.getpid(), stop).on_step_end(None, state, None)  # never its own parent
    stop.set()
    with pytest.raises(SystemExit, match="the main process failed: stopping at step 7"):
        StopSideProcess(os.getppid(), stop).on_step_end(None, state, None)


def test_an_orphaned_second_process_is_interrupted_between_steps(monkeypatch):
    from benchmarks.synthetic import pipeline

    parents, interrupted = iter([41, 1, 1, 1, 1]), []
    monkeypatch.setattr(pipeline.os, "getppid", lambda: next(parents))
    monkeypatch.setattr(pipeline._thread, "interrupt_main", lambda: interrupted.append(True))
    pipeline.watch_parent(41, grace_s=0.02, poll_s=0.01)  # returns once it has interrupted
    assert interrupted == [True]


@pytest.mark.parametrize("stops_in_time", [True, False])
def test_a_failing_main_stage_stops_the_second_process_at_once(tmp_path, monkeypatch, stops_in_time):
    import threading
    from types import SimpleNamespace

    from benchmarks.synthetic import pipeline

    class Side:
        def __init__(self, target, args):
            self.target, self.args, self.alive, self.terminated, self.exitcode = target, args, True, False, None
            sides.append(self)

        def start(self):
            pass

        def is_alive(self):
            return self.alive

        def terminate(self):
            self.terminated, self.alive = True, False

        def join(self, timeout=None):
            if stops_in_time and self.args[2].is_set():  # its guard stops it at its next step
                self.alive = False

    def fails(*args, **kwargs):
        raise RuntimeError("cpt1 failed")

    sides = []
    context = SimpleNamespace(Process=Side, Event=threading.Event)
    monkeypatch.setattr(pipeline.multiprocessing, "get_context", lambda method: context)
    monkeypatch.setattr(pipeline, "train_memcomp_stage", fails)
    with pytest.raises(RuntimeError, match="cpt1 failed"):
        pipeline.run_pipeline(SyntheticRunConfig(output_dir=str(tmp_path), stages=["cpt1", "baseline"]))
    (side,) = sides
    assert side.args[1] == os.getpid() and side.args[2].is_set()  # asked to stop, not left training for hours
    assert not side.is_alive() and side.terminated == (not stops_in_time)  # terminated only if it did not stop


def test_timings_are_replaced_whole_under_the_lock(tmp_path):
    config = SyntheticRunConfig(output_dir=str(tmp_path))
    update_timings(config, lambda t: t.__setitem__("lm", 1.0))
    update_timings(config, lambda t: t.__setitem__("cpt1", 2.0))
    assert json.loads((tmp_path / "timings.json").read_text()) == {"lm": 1.0, "cpt1": 2.0}
    assert not list(tmp_path.glob("*.partial"))


def test_the_curve_leaves_out_cpt1_own_chunk_size():
    assert SyntheticRunConfig(chunk_size=8).recon_stages == ("cpt1_c16",)  # CPT-1 is the curve's point at C = 8
    assert SyntheticRunConfig().recon_stages == ("cpt1_c8", "cpt1_c16")
    with pytest.raises(ValueError, match=r"unknown stages \['cpt1_c8'\]"):
        SyntheticRunConfig(chunk_size=8, stages=["cpt1_c8"])


def test_paired_bootstrap_interval():
    result = paired_bootstrap([1.0] * 30 + [0.0] * 10, [0.0] * 40)
    assert result["mean"] == pytest.approx(0.75) and 0.6 < result["low"] < 0.75 < result["high"] < 0.9
    tie = paired_bootstrap([1.0, 0.0] * 20, [1.0, 0.0] * 20)
    assert tie == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 40}
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0], [])


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


def test_content_accuracy_by_word_role_splits_subject_other_names_and_values():
    reference = "Kobe lives in Oslo. Kobe works for Lusu. Kobe is a nurse."
    prediction = "Kobe lives in Oslo. Kobe works for Dara. Kobe is a pilot."
    assert content_accuracy(prediction, reference, "subject") == 1.0
    assert content_accuracy(prediction, reference, "other name") == 0.0
    assert content_accuracy(prediction, reference, "value") == 0.5
    assert content_accuracy(prediction, reference) == pytest.approx(4 / 6)
    assert content_accuracy(prediction, "Oslo is red.", "other name") is None
    scores = score_reconstruction(Example("d", "", "", reference, ""), Generation(prediction, 0, 0))
    records = [{"system": "C4", "length": 16, **scores}]
    by_role = aggregate({"reconstruction": records})["reconstruction_content_accuracy_by_role"]
    assert {role: row["C4"]["mean"] for role, row in by_role.items()} == {"subject": 1.0, "other name": 0.0, "value": 0.5}


def test_wrong_answers_are_traced_to_a_distractor_a_needed_document_or_nowhere():
    people = "Bako works for Zute. Bako lives in Rome. Bako was born in 1950."
    org, other = "Zute was founded in 1901.", "Kumo lives in Oslo."
    row = {"context": [other, org, people], "question": "In which year was the company Bako works for founded?"}
    assert needed_documents(row["context"], row["question"]) == [org, people]  # the two-hop bridge is followed
    records = [
        {"id": "qa_k0", "system": "s", "k": 3, "em": 0.0, "response": response}
        for response in ("Oslo", "1950", "Lima", "Oslo")
    ] + [{"id": "qa_k0", "system": "s", "k": 3, "em": 1.0, "response": "1901"},
         {"id": "qa_k0", "system": "s", "k": 1, "em": 0.0, "response": "Oslo"}]  # right, or no distractors: not counted
    assert error_sources(records, [row]) == {"s": {"wrong": 4, "needed": 0.25, "distractor": 0.5, "elsewhere": 0.25}}


def test_the_type_guess_control_is_one_over_the_values_of_the_answers_set_the_context_states():
    from benchmarks.eval.synthetic import type_guess_records

    people, other = "Bako lives in Oslo. Bako was born in 1950.", "Kumo lives in Perth. Kumo was born in 1950."
    org = "Zute was founded in 1901. Zute is based in Oslo."
    rows = [
        {"context": [other, people, org], "type": "person_city", "answer": "Oslo"},  # Perth, Oslo: 1/2
        {"context": [other, people, org], "type": "org_founded", "answer": "1901"},  # 1950, 1901: 1/2
        {"context": [people], "type": "person_year", "answer": "1950"},  # one year: 1
        {"context": [other, people], "type": "person_employer", "answer": "Zute"},  # a name: no control
    ]
    records = [{"id": f"qa_k{i}", "system": s, "k": len(r["context"]), "depth": "first"} for i, r in enumerate(rows)
               for s in ("sft", "full")]
    guesses = type_guess_records(records, rows)
    assert [(g["id"], g["system"], g["em"]) for g in guesses] == [
        ("qa_k0", "type_guess", 0.5), ("qa_k1", "type_guess", 0.5), ("qa_k2", "type_guess", 1.0)]
    table = aggregate({"qa_passages": []}, guesses)["qa_em_by_answer_kind"]["closed-set value"]
    assert table[3]["type_guess"]["mean"] == 0.5 and table[1]["type_guess"]["mean"] == 1.0


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


def test_reconstruction_probe_logs_every_n_steps_and_leaves_the_model_as_it_found_it(model):
    from types import SimpleNamespace

    documents = ["Kobe Lima is a nurse in Paris. Her favourite colour is blue.", "Nano Vera founded Tiko in 1990."]
    probe = ReconstructionProbe(documents, every=3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = SimpleNamespace(global_step=0, log_history=[], is_world_process_zero=True)
    for step in range(1, 7):
        state.global_step = step
        probe.on_step_end(None, state, None, model=model)
    assert [e["step"] for e in state.log_history] == [3, 6]
    for entry in state.log_history:
        assert 0 <= entry["heldout_content_accuracy"] <= 1 and 0 <= entry["heldout_content_accuracy_zero_memory"] <= 1
        assert all(0 <= entry[f"heldout_content_accuracy/{role}"] <= 1 for role in WORD_ROLES)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Greedy: measuring twice gives the same figures.
    assert probe.measure(model) == probe.measure(model)
    with pytest.raises(ValueError, match="every must be >= 0"):
        ReconstructionProbe(documents, every=-1)


def test_the_defaults_are_the_committed_runs_settings():
    """`python examples/train_synthetic.py` reproduces the committed report: every setting the report records (where
    the run's folders, which stages and how many threads aside) is today's default."""
    report = Path(__file__).parent.parent / "benchmarks" / "results" / "synthetic" / "report.json"
    recorded = json.loads(report.read_text())["config"]
    defaults = vars(SyntheticRunConfig())
    placement = {"output_dir", "stages", "threads", "threads_alone", "parallel"}
    differ = {k: (v, defaults[k]) for k, v in recorded.items() if k not in placement and v != defaults[k]}
    assert not differ, f"recorded vs default: {differ}"
    assert SyntheticRunConfig().cpt1_task_weights == {"reconstruction": 1.0}


@pytest.mark.parametrize("query_aware", [False, True])
def test_the_baseline_trains_on_exactly_the_prompts_it_is_evaluated_with(model, query_aware):
    """Query-aware or not, a training example is the evaluation prompt followed by the answer (loss on it only)."""
    from benchmarks.synthetic.stages import baseline_examples

    row = {"context": ["Kobe is a doctor.", "Nano lives in Oslo."], "question": "Where does Nano live?"}
    row["answer"] = "Oslo"
    (example,) = baseline_examples(model.tokenizer, model.config, [row], max_length=512, query_aware=query_aware)
    prompt, _ = FullContextSystem(model, query_aware=query_aware).prompt_ids(row["context"], row["question"])
    answer = model.tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
    assert example["input_ids"][: len(prompt)] == prompt
    assert [t for t in example["labels"] if t != -100][: len(answer)] == answer
    question = model.tokenizer("Where does Nano live?", add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(prompt)) if prompt[i : i + len(question)] == question]
    assert len(starts) == (2 if query_aware else 1)  # asked before the passages as well
    assert SyntheticRunConfig().baseline_query_aware is False  # the committed run's baseline reads the passages first


def test_the_ship_rule_breaks_a_tie_on_the_single_document_set_by_documents_only_with_an_interval_above_zero():
    from benchmarks.eval.synthetic_report import choose_shipped_stage

    def report(new: float, old: float, low: float | None, high: float = 0.2, loaded: bool = False) -> dict:
        by_k = {("1" if loaded else 1): {"sft": {"mean": 0.9}, "rl": {"mean": 0.95}}, "all": {}}
        gain = {} if low is None else {"rl": {"all": {"mean": (low + high) / 2, "low": low, "high": high, "n": 900}}}
        single = {"all": {"rl": {"mean": new}, "previous": {"mean": old}}}
        return {"config": {"max_passages": 4}, "minus_previous": gain,
                "aggregates": {"qa_em_by_k": by_k, "single_em_by_type": single}}

    assert choose_shipped_stage(report(1.0, 0.98, None))[0] == "rl"
    assert choose_shipped_stage(report(1.0, 0.98, None, loaded=True))[0] == "rl"  # a report read back from JSON
    stage, reason = choose_shipped_stage(report(0.97, 0.98, 0.05))
    assert stage is None and "0.970 EM on the single-document set, the shipped one 0.980" in reason
    stage, reason = choose_shipped_stage(report(1.0, 1.0, 0.05))
    assert stage == "rl" and "held-out set by documents: +12.5 points EM [+5.0, +20.0] over it" in reason
    for low in (-0.01, 0.0):  # 0.0: the same weights again, whose bootstrap interval is [0, 0]
        stage, reason = choose_shipped_stage(report(1.0, 1.0, low))
        assert stage is None and "ties" in reason
    assert choose_shipped_stage(report(1.0, 1.0, None))[0] is None
    stage, reason = choose_shipped_stage(report(1.0, 0.98, -0.2, high=-0.05))  # better alone, worse among distractors
    assert stage is None and "an interval below zero" in reason


def test_the_report_says_what_a_second_process_trained_only_when_one_did():
    from benchmarks.eval.synthetic_report import render_markdown

    results = Path(__file__).parent.parent / "benchmarks" / "results" / "synthetic"
    committed = render_markdown(json.loads((results / "report.json").read_text()))
    assert "(a second process trained `baseline` alongside)." in committed and "contexts hold up to 32." in committed
    schedule = json.loads((results / "probes" / "session_schedule_cpt1_14000" / "report.json").read_text())
    assert "baseline" not in schedule["config"]["stages"]  # its last phase, RL; earlier phases trained the baseline
    assert "(a second process trained `baseline` alongside)." in render_markdown(schedule)
    for probe in ("cpt1_name_lists/training_seed_0", "baseline_6000_steps"):  # run alone; only a baseline trained
        alone = render_markdown(json.loads((results / "probes" / probe / "report.json").read_text()))
        assert "from start to report.  \n" in alone and "second process" not in alone, probe


def test_a_model_trained_on_another_seed_is_refused(tmp_path):
    from benchmarks.synthetic.pipeline import run_pipeline

    trained = tmp_path / "seed0"
    (trained / "sft").mkdir(parents=True)
    (trained / "sft" / "config.json").write_text("{}")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(trained / "sft" / "model.safetensors"))
    for name in STAGE_TOKENIZER_FILES:
        (trained / "sft" / name).write_text("{}")
    (trained / "run_config.json").write_text(json.dumps({"seed": 0}))
    (trained / "sft" / "checkpoint-500").mkdir()  # a checkpoint of the stage: its run is two folders up
    for field, folder in (("reuse", "sft"), ("start_from", "sft"), ("start_from", "sft/checkpoint-500")):
        stages = ["rl"] if field == "reuse" else ["sft"]
        config = SyntheticRunConfig(output_dir=str(tmp_path / field), seed=1, stages=stages, **{field: {"sft": str(trained / folder)}})
        with pytest.raises(ValueError, match=rf"{field} sft -> .*seed0/{folder} was trained in a run of seed 0 .* Give --seed 0"):
            run_pipeline(config)
        assert not (tmp_path / field).exists()  # refused before anything was written


def test_a_shipped_checkpoint_of_another_seed_is_refused_before_anything_runs(tmp_path):
    from benchmarks.synthetic.folders import SEED_RECORD, trained_seed

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / ".memcomp-export.json").write_text(json.dumps({"files": [SEED_RECORD]}))  # an export wrote it
    (shipped / SEED_RECORD).write_text(json.dumps({"seed": 0}))
    args = ["--output_dir", str(tmp_path / "run"), "--checkpoint_dir", str(shipped), "--stages", "data"]
    with pytest.raises(ValueError, match=r"checkpoint_dir -> .*shipped was trained in a run of seed 0 .* this run's corpus is seed 1"):
        main(TOY + args + ["--seed", "1"])
    assert not (tmp_path / "run").exists()
    demo = (Path(__file__).parents[1] / "checkpoints" / "memcomp-synthetic-tiny").resolve()
    assert trained_seed(demo) == (0, demo / SEED_RECORD)  # the shipped checkpoint says its seed


@pytest.mark.parametrize("value", ["", "None"])
def test_checkpoint_dir_empty_or_none_exports_nothing(value):
    from transformers import HfArgumentParser

    from benchmarks.synthetic.run import ReportArguments

    (report_args,) = HfArgumentParser(ReportArguments).parse_args_into_dataclasses(["--checkpoint_dir", value, "--report_dir", "None"])
    assert not report_args.checkpoint_dir and report_args.report_dir is None


def test_the_copy_of_the_shipped_checkpoint_is_made_whole_or_not_at_all_and_kept_past_this_runs_export(tmp_path):
    from benchmarks.synthetic.run import keep_previous_checkpoint

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "config.json").write_text("{}")
    (shipped / "model.safetensors").write_text("weights")
    config = SyntheticRunConfig(output_dir=str(tmp_path / "run"))
    (tmp_path / "run" / "previous.partial").mkdir(parents=True)  # a copy cut short by a kill
    (tmp_path / "run" / "previous.partial" / "config.json").write_text("{}")
    previous = keep_previous_checkpoint(config, str(shipped))
    assert previous == tmp_path / "run" / "previous" and not (tmp_path / "run" / "previous.partial").exists()
    assert (previous / "model.safetensors").read_text() == "weights"
    (shipped / "model.safetensors").write_text("this run's export")
    (tmp_path / "run" / "exported.json").write_text(json.dumps({"digest": model_digest(shipped)}))
    assert (keep_previous_checkpoint(config, str(shipped)) / "model.safetensors").read_text() == "weights"  # kept


def test_a_refused_run_copies_no_shipped_checkpoint(tmp_path):
    shipped = tmp_path / "shipped"  # an earlier export: the run may replace it
    shipped.mkdir()
    (shipped / "config.json").write_text("{}")
    (shipped / ".memcomp-export.json").write_text(json.dumps({"files": ["config.json"]}))
    with pytest.raises(FileNotFoundError, match="holds no finished sft"):
        main([*TOY, "--output_dir", str(tmp_path / "run"), "--checkpoint_dir", str(shipped), "--reuse",
              json.dumps({"sft": str(tmp_path / "missing")})])
    assert not (tmp_path / "run").exists()


def test_a_kill_mid_export_keeps_the_copy_and_a_checkpoint_shipped_during_evaluation_is_not_overwritten(
    tmp_path, monkeypatch
):
    from benchmarks.synthetic import run as run_module

    shipped, config = tmp_path / "shipped", SyntheticRunConfig(output_dir=str(tmp_path / "run"))
    shipped.mkdir()
    (shipped / "config.json").write_text("{}")
    (shipped / "model.safetensors").write_text("old")
    previous = run_module.keep_previous_checkpoint(config, str(shipped))
    exports = []
    monkeypatch.setattr(run_module, "export_checkpoint", lambda *a: exports.append(a[1]) or (shipped / "model.safetensors").write_text(a[1]))
    (shipped / "model.safetensors").write_text("a newer run's export")  # shipped while this run evaluated
    refused = run_module.ship(config, "rl", str(shipped), previous)
    assert "changed while this run evaluated" in refused and exports == []
    (shipped / "model.safetensors").write_text("old")
    before = model_digest(shipped)
    (config.root / "exported.json").write_text(json.dumps({"in_progress": True, "stage": "rl", "before": before}))
    (shipped / "model.safetensors").write_text("torn")  # killed mid-export: the folder's own record says so
    (shipped / ".memcomp-export.json").write_text(json.dumps({"in_progress": True, "kept": []}))
    assert (run_module.keep_previous_checkpoint(config, str(shipped)) / "model.safetensors").read_text() == "old"
    assert run_module.ship(config, "rl", str(shipped), previous) is None and exports == ["rl"]  # the rerun mends it
    assert json.loads((config.root / "exported.json").read_text())["digest"] == model_digest(shipped)
    assert (run_module.keep_previous_checkpoint(config, str(shipped)) / "model.safetensors").read_text() == "old"
    # An export of this run's that failed before writing, then another run shipped a whole checkpoint: the stale
    # record does not stop the copy from following it (nor let this run overwrite it uncompared).
    (config.root / "exported.json").write_text(json.dumps({"in_progress": True, "stage": "rl", "before": before}))
    (shipped / ".memcomp-export.json").write_text(json.dumps({"files": ["model.safetensors"]}))
    (shipped / "model.safetensors").write_text("another run's")
    assert (run_module.keep_previous_checkpoint(config, str(shipped)) / "model.safetensors").read_text() == "another run's"
    (shipped / "model.safetensors").write_text("a third run's")
    assert "changed while this run evaluated" in run_module.ship(config, "rl", str(shipped), previous)


def test_a_second_copy_of_a_run_on_the_same_folder_is_refused_before_it_writes(tmp_path):
    import fcntl

    from benchmarks.synthetic.pipeline import run_pipeline

    config = SyntheticRunConfig(output_dir=str(tmp_path / "run"), stages=["data"])
    config.root.mkdir(parents=True)
    with open(config.root / "run.lock", "w") as held:  # the first copy, training
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        with pytest.raises(RuntimeError, match=r"in use by another run \(process 4242\).*Wait for it"):
            run_pipeline(config)
    assert not (config.root / "data").exists() and not (config.root / "run_config.json").exists()
    with open(config.root / "run.side.lock", "w") as held:  # an earlier run's second process, not yet stopped
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="the second process of an earlier run, still stopping"):
            run_pipeline(config)
    assert not (config.root / "data").exists()
    run_pipeline(SyntheticRunConfig(output_dir=str(tmp_path / "run"), stages=["data"], train_episodes=30, heldout_episodes=40))
    assert (config.root / "data" / "tokenizer").is_dir()  # the locks went with their holders


def test_a_checkpoint_shipped_by_another_run_since_replaces_the_copy_to_compare_with(tmp_path, caplog):
    from benchmarks.synthetic.run import keep_previous_checkpoint

    shipped, config = tmp_path / "shipped", SyntheticRunConfig(output_dir=str(tmp_path / "run"))
    shipped.mkdir()
    (shipped / "config.json").write_text("{}")
    (shipped / "model.safetensors").write_text("weights")
    keep_previous_checkpoint(config, str(shipped))
    (shipped / "model.safetensors").write_text("a newer run's export")  # not this run's: no exported.json says so
    previous = keep_previous_checkpoint(config, str(shipped))
    assert (previous / "model.safetensors").read_text() == "a newer run's export"
    assert "shipped after this run's copy" in caplog.text


def test_the_evaluation_decodes_every_system_with_plain_greedy(model, tmp_path):
    """do_sample=False alone would leave the memcomp checkpoint's repetition penalty on and the baseline's LM off."""
    assert model.generation_config.repetition_penalty == 1.05
    assert model.language_model.generation_config.repetition_penalty in (None, 1.0)
    seen = {}

    class Recording:
        def __init__(self, name):
            self.name = name

        def generate(self, contexts, instructions, **kwargs):
            seen[self.name] = kwargs
            return [Generation("Tide", 1, 10)] * len(contexts)

    row = {"context": ["Ena lives in Tide."], "question": "Where does Ena live?", "answer": "Tide", "type": "person_city", "k": 1}
    evaluate_systems("qa_passages", qa_examples([row], "qa_k"), [Recording("sft"), Recording("full")], tmp_path, 8)
    assert seen == {name: {"do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": 8} for name in ("sft", "full")}


def test_rl_checkpoints_every_save_steps_as_the_other_stages(tmp_path):
    """A killed RL stage resumes from at most `save_steps` back (it saved every rl_steps / 4 before: 375 of 1,500)."""
    from benchmarks.synthetic.stages import rl_arguments

    args = rl_arguments(SyntheticRunConfig(output_dir=str(tmp_path), rl_steps=1500, save_steps=250))
    assert (args.save_strategy, args.save_steps, args.max_steps) == ("steps", 250, 1500)
