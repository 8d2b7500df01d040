"""A schedule of synthetic runs (`benchmarks.synthetic.schedule`): phases that reuse or go on from earlier phases'
stages, one resumable command; the shipped checkpoint's schedule is the chain of probes that made it."""

import json
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.synthetic.config import SyntheticRunConfig
from benchmarks.synthetic.folders import STAGE_TOKENIZER_FILES, check_reused_stages, check_start_folders, link_reused_stages
from benchmarks.synthetic.run import ReportArguments
from benchmarks.synthetic.schedule import load_schedule, main
from test_synthetic_pipeline import TOY

PROBES = Path(__file__).parents[1] / "benchmarks" / "results" / "synthetic" / "probes"
SCHEDULE_PROBES = sorted(schedule.parent.name for schedule in PROBES.glob("*/schedule.yaml"))
SHIPPED_YAML = Path(__file__).parents[1] / "examples" / "configs" / "synthetic_shipped.yaml"
SESSION_YAML = Path(__file__).parents[1] / "examples" / "configs" / "synthetic_session.yaml"
PROOF_YAML = Path(__file__).parents[1] / "examples" / "configs" / "synthetic_proof.yaml"
REPORT_FIELDS = {f.name for f in fields(ReportArguments)}
TOY_RUN = {k[2:]: v for k, v in zip(TOY[::2], TOY[1::2]) if k[2:] not in REPORT_FIELDS}
TOY_REPORT = [arg for k, v in zip(TOY[::2], TOY[1::2]) if k[2:] in REPORT_FIELDS for arg in (k, v)]


def _write(tmp_path, spec: dict) -> Path:
    path = tmp_path / "schedule.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _recorded_config(report: Path) -> dict:
    return json.loads(report.read_text())["config"]


COMMITTED = PROBES.parent / "report.json"
WORLD = ("seed", "train_episodes", "heldout_episodes", "multidoc_texts", "distractors", "max_passages", "lm_lexicon_texts",
         "lm_qa_text", "batch_size", "max_length", "chunk_size", "wrap", "hidden_size", "num_layers", "system_prompt")


@pytest.mark.parametrize(
    "phase, report, trained",
    [
        ("any", COMMITTED, ("lm_", "cpt1_", "cpt2_", "learning_rate", "projection_learning_rate")),
        ("any", PROBES / "sft_15000_steps_held_lr" / "report.json", ("sft_", "baseline_")),
        ("other_kind", PROBES / "other_kind_world_trained" / "report.json", ("sft_", "baseline_")),
        ("rl_2_16_documents", PROBES / "rl_2_16_over_shipped_sft" / "report.json", ("rl_", "eval_questions")),
    ],
)
def test_the_shipped_schedule_trains_each_phase_as_the_run_that_made_the_shipped_checkpoint(phase, report, trained):
    """Every setting a phase's stages train with equals the one recorded in the committed report of the run (probe)
    that trained them (fields a report predates are skipped)."""
    phases = {p.name: p.config for p in load_schedule(SHIPPED_YAML).phases}
    ours, theirs = asdict(phases[phase]), _recorded_config(report)
    compared = [n for n in ours if n in theirs and (n in WORLD or n.startswith(trained))]
    assert len(compared) > 8
    assert {n: ours[n] for n in compared} == {n: theirs[n] for n in compared}


def test_the_shipped_schedule_chains_the_phases_as_the_probes_did():
    schedule = load_schedule(SHIPPED_YAML)
    root = schedule.output_dir
    any_, other, rl = (p.config for p in schedule.phases)
    assert any_.stages == ["data", "lm", "cpt1", "cpt2", "sft", "baseline"] and not any_.reuse and not any_.start_from
    assert dict(other.start_from) == {"sft": str(root / "any/sft"), "baseline": str(root / "any/baseline")}
    assert rl.stages == ["data", "rl"] and rl.reuse["sft"] == str(root / "other_kind/sft")
    assert rl.reuse["baseline"] == str(root / "other_kind/baseline") and rl.rl_min_documents == 2


def _assert_trains_as_the_probes(schedule_yaml: Path, probe: str, names: dict, unused: dict, data: dict | None = None,
                                 unneeded: dict | None = None):
    """Each phase of `schedule_yaml` trains with the settings of the probe phase `names` maps it to (in `probe`'s
    schedule), reuses and starts from the same stages under the new phase names (less `unneeded[phase]`, reused
    only for a stage it no longer trains), and trains the same stages less `unused[phase]`. `data` maps a probe's
    data folder to the chain's, or to None where the phase draws it itself; either way from the same world."""
    data, unneeded = data or {}, unneeded or {}
    chain = load_schedule(schedule_yaml)
    mine_by_name = {p.name: p.config for p in chain.phases}
    probe_schedule = load_schedule(PROBES / probe / "schedule.yaml")
    probes = {p.name: p.config for p in probe_schedule.phases}
    renamed = {theirs: mine for mine, theirs in names.items()}

    def world(config: SyntheticRunConfig) -> list:
        return [getattr(config, f) for f in (*WORLD, "eval_questions")]

    assert [p.name for p in chain.phases] == list(names)
    for phase in chain.phases:
        theirs = probes[names[phase.name]]
        mine = asdict(phase.config)
        untrained = {"lm", "cpt1", "cpt2", "sft", "baseline", "rl"} - set(phase.config.stages)
        differs = {k for k in mine if mine[k] != asdict(theirs)[k] and k.split("_")[0] not in untrained}
        assert differs <= {"output_dir", "reuse", "start_from", "stages"}, (phase.name, differs)
        for key in ("reuse", "start_from"):  # the same '<phase>/<stage>', the probe's phases under their new names
            relative = {stage: Path(folder).relative_to(chain.output_dir).as_posix()
                        for stage, folder in getattr(phase.config, key).items()}
            expected = {}
            for stage, folder in getattr(theirs, key).items():
                folder = Path(folder).relative_to(probe_schedule.output_dir).as_posix()
                if stage in unneeded.get(phase.name, set()):
                    continue
                if folder not in data:
                    expected[stage] = f"{renamed[Path(folder).parent.name]}/{Path(folder).name}"
                    continue
                drawn_by = phase.config if data[folder] is None else mine_by_name[Path(data[folder]).parent.name]
                assert world(drawn_by) == world(probes[Path(folder).parent.name]), (phase.name, folder)
                if data[folder] is not None:
                    expected[stage] = data[folder]
            assert relative == expected, (phase.name, key)
        assert phase.config.stages == [s for s in theirs.stages if s not in unused.get(phase.name, set())]


def test_the_session_schedule_trains_every_stage_as_the_probes_that_measured_it():
    """synthetic_session.yaml is the chain of two committed probes less the SFT the chain did not use."""
    names = {"any": "any", "other_kind": "other_kind", "other_kind_sft": "other_kind_sft_10000", "rl": "rl_after_sft_10000"}
    _assert_trains_as_the_probes(SESSION_YAML, "session_schedule_cpt1_18000_sft_10000", names, {"other_kind": {"sft"}})


def test_the_proof_schedule_trains_every_stage_as_the_probes_that_measured_it():
    """synthetic_proof.yaml is the chain of probes whose RL beat SFT at every k >= 4, less the stages it does not use."""
    names = {"any": "any", "other_kind": "other_kind", "other_kind_baseline": "other_kind_sft_10000",
             "cpt2_any": "cpt2_any", "sft_any": "sft_any_15000", "sft_other_kind": "sft_any_15000_other_kind_5000",
             "rl": "rl_2_16_shipped_sft_order"}
    unused = {"other_kind": {"cpt2", "sft"}, "other_kind_baseline": {"sft"}}
    data = {"other_kind_sft_10000/data": "other_kind/data", "heldout_240_rl_5_16/data": None}
    unneeded = {"other_kind_baseline": {"cpt1", "cpt2"}}  # the probe's SFT beside the baseline needed them
    _assert_trains_as_the_probes(PROOF_YAML, "session_schedule_rl_2_16_shipped_sft_order", names, unused, data, unneeded)


@pytest.mark.parametrize("probe", SCHEDULE_PROBES)
def test_a_committed_schedule_probe_is_the_run_its_report_records(probe):
    """A session-sized schedule's committed report was made by its committed schedule file, phase by phase."""
    folder = PROBES / probe
    schedule = load_schedule(folder / "schedule.yaml")
    recorded = json.loads((folder / "report.json").read_text())["phases"]
    assert [p["output_dir"] for p in recorded] == [str(p.config.root) for p in schedule.phases]
    for phase, record in zip(schedule.phases, recorded):
        settings = {**asdict(SyntheticRunConfig()), **record["config"]}  # a field added since: the run had its default
        assert asdict(phase.config) == {name: settings[name] for name in asdict(phase.config)}


def test_a_schedule_refuses_what_would_fail_or_mislead_hours_later(tmp_path):
    first = {"name": "a", "stages": ["data", "lm", "cpt1", "sft"]}

    def refused(second: dict, match: str, common: dict | None = None):
        spec = {"output_dir": str(tmp_path / "run"), "common": common or {}, "phases": [first, second]}
        with pytest.raises(ValueError, match=match):
            load_schedule(_write(tmp_path, spec))

    refused({"name": "b", "stages": ["data", "rl"], "reuse": {"baseline": "a/baseline"}},
            r"phase 'b': reuse baseline -> 'a/baseline', but no earlier phase 'a' trains or reuses 'baseline'")
    refused({"name": "b", "reuse": {"sft": "c/sft"}}, r"no earlier phase 'c'.*earlier phases: \['a'\]")
    refused({"name": "b", "reuse": {"sft": "../a/sft"}}, r"reuse sft -> '\.\./a/sft'; write '<phase>/<stage>'")
    refused({"name": "b", "reuse": {"sft": "a/data"}}, r"a data folder cannot stand for sft")
    refused({"name": "b", "stages": ["baseline"], "start_from": {"baseline": "a/sft"}}, "a sft folder cannot stand for baseline")
    refused({"name": "b", "stages": ["rl"], "reuse": {"sft": "a/cpt1"}}, r"a cpt1 folder cannot stand for sft; reuse 'a/sft'")
    refused({"name": "b", "distractors": "other-kind"}, r"phase 'b': distractors must be one of \['any', 'other_kind'\], got 'other-kind'")
    refused({"name": "b", "sft_stepz": 3}, r"phase 'b': unknown fields \['sft_stepz'\]")
    refused({"name": "b", "sft_lr": 1e-4}, r"unknown fields \['sft_lr'\]")  # not taken as sft_lr_decay
    refused({"name": "b", "sft_steps": "many"}, r"phase 'b':.*sft_steps")
    refused({"name": "b", "stages": ["rl"], "start_from": {"sft": "a/sft"}}, "start_from names stages \\['sft'\\] that this run does not train")
    refused({"name": "b"}, "output_dir is the schedule's", common={"output_dir": "elsewhere"})
    for name in ("a", "..", "x/y", None):
        refused({"name": name}, "phase 2 needs a unique `name`")
    with pytest.raises(ValueError, match="a schedule has `output_dir`, `phases`"):
        load_schedule(_write(tmp_path, {"phases": []}))


def test_reused_and_started_stages_are_checked_before_anything_trains():
    with pytest.raises(ValueError, match=r"start_from names stages \['rl'\]"):
        SyntheticRunConfig(start_from={"rl": "elsewhere/sft"})
    with pytest.raises(ValueError, match=r"start_from names stages \['sft'\] that this run does not train"):
        SyntheticRunConfig(stages=["rl"], start_from={"sft": "elsewhere/sft"})
    with pytest.raises(ValueError, match="both reused and trained from a start"):
        SyntheticRunConfig(reuse={"sft": "a"}, start_from={"sft": "b"})
    assert "sft" not in SyntheticRunConfig(reuse={"sft": "a"}).stages  # default stages: all but the reused


def test_a_refused_run_leaves_its_folder_as_it_was(tmp_path):
    from benchmarks.synthetic.data import make_data
    from benchmarks.synthetic.pipeline import run_pipeline

    small = dict(train_episodes=30, heldout_episodes=40, multidoc_texts=20)
    make_data(SyntheticRunConfig(output_dir=str(tmp_path / "a"), **small))
    run = tmp_path / "b"
    with pytest.raises(ValueError, match=r"train_episodes=60 \(the data has 30\)"):  # the reused data is another corpus
        run_pipeline(SyntheticRunConfig(output_dir=str(run), reuse={"data": str(tmp_path / "a" / "data")},
                                        stages=["lm"], **{**small, "train_episodes": 60}))
    with pytest.raises(FileNotFoundError, match="holds no finished model"):
        run_pipeline(SyntheticRunConfig(output_dir=str(run), reuse={"data": str(tmp_path / "a" / "data")},
                                        stages=["sft"], start_from={"sft": str(tmp_path / "a" / "sft")}, **small))
    assert not run.exists()  # no link, no run_config.json


def test_a_reused_stage_is_linked_in_and_a_folder_in_its_place_is_refused_untouched(tmp_path):
    from safetensors.torch import save_file

    source = tmp_path / "a" / "sft"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    config = SyntheticRunConfig(output_dir=str(tmp_path / "b"), stages=["rl"], reuse={"sft": str(source)})
    with pytest.raises(FileNotFoundError, match="holds no finished sft"):  # killed during its final save: no weights
        check_reused_stages(config)
    (source / "model.safetensors").write_bytes(b"torn")
    with pytest.raises(FileNotFoundError, match="holds no finished sft"):
        check_reused_stages(config)
    save_file({"w": torch.zeros(1)}, str(source / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="holds no finished sft"):  # killed before the tokenizer, saved last
        check_reused_stages(config)
    for name in STAGE_TOKENIZER_FILES:
        (source / name).write_text("{}")
    check_reused_stages(config)
    link_reused_stages(config)
    check_reused_stages(config)  # again (a resumed run): the same link is kept
    link_reused_stages(config)
    assert (tmp_path / "b" / "sft").is_symlink() and (tmp_path / "b" / "sft" / "config.json").is_file()
    (tmp_path / "b" / "sft").unlink()
    (tmp_path / "b" / "sft").mkdir()
    (tmp_path / "b" / "sft" / "model.safetensors").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a link to"):
        check_reused_stages(config)
    assert (tmp_path / "b" / "sft" / "model.safetensors").read_text() == "mine"
    with pytest.raises(FileNotFoundError, match="holds no finished baseline"):
        check_reused_stages(SyntheticRunConfig(output_dir=str(tmp_path / "c"), reuse={"baseline": str(tmp_path / "a")}))


def test_a_start_from_folder_without_a_finished_model_is_refused_before_training(tmp_path):
    config = SyntheticRunConfig(output_dir=str(tmp_path / "run"), start_from={"sft": str(tmp_path / "other")})
    with pytest.raises(FileNotFoundError, match=r"start_from: sft <- .*other, which holds no finished model"):
        check_start_folders(config, ["sft"])
    check_start_folders(config, ["rl"])  # only the stages about to train are checked


def _state(folder: Path) -> dict:
    from modeling_memcomp import MemCompForCausalLM

    model = MemCompForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return {k: v.clone() for k, v in model.language_model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], atol=1e-8) for k in a)


@pytest.mark.slow
def test_a_toy_schedule_goes_on_from_earlier_phases_and_resumes_as_one_command(tmp_path):
    root = tmp_path / "run"
    spec = {
        "output_dir": str(root),
        "common": {**TOY_RUN, "parallel": False},
        "phases": [
            {"name": "a", "stages": ["data", "lm", "cpt1", "cpt2", "sft", "baseline"]},
            # A learning rate too small to move a weight: b's SFT and baseline must equal the models they start from.
            {"name": "b", "distractors": "other_kind", "stages": ["data", "sft", "rl", "baseline"],
             "reuse": {"cpt1": "a/cpt1"}, "start_from": {"sft": "a/sft", "baseline": "a/baseline"},
             "sft_learning_rate": 1e-12},
        ],
    }
    argv = ["--schedule", str(_write(tmp_path, spec)), "--report_dir", str(tmp_path / "report"), "--checkpoint_dir", "",
            *TOY_REPORT]
    report = main(argv)

    assert (root / "b" / "cpt1").is_symlink() and (root / "b" / "cpt1").resolve() == (root / "a" / "cpt1").resolve()
    assert _same(_state(root / "b" / "sft"), _state(root / "a" / "sft"))
    assert not _same(_state(root / "a" / "sft"), _state(root / "a" / "cpt2"))  # SFT moved a's weights: a real check
    assert _same(_state(root / "b" / "baseline"), _state(root / "a" / "baseline"))
    assert json.loads((root / "b" / "run_config.json").read_text())["start_from"]["sft"] == str(root / "a" / "sft")
    assert set(report["aggregates"]["qa_em_by_k"]["all"]) >= {"sft", "rl", "full"}
    assert "C4" in report["aggregates"]["reconstruction_content_accuracy"]["all"]  # a's CPT-1, linked in, evaluated
    hours = json.loads((root / "schedule_hours.json").read_text())
    assert set(hours) == {"a", "b"} and all(h > 0 for h in hours.values())
    phases = report["phases"]  # the report records every phase, and its wall time is theirs in turn
    assert [p["output_dir"] for p in phases] == [str(root / "a"), str(root / "b")]
    assert phases[0]["config"]["stages"] == spec["phases"][0]["stages"] and phases[1]["config"]["start_from"]
    assert report["wall_time_s"]["total"] == pytest.approx(sum(p["wall_time_s"] for p in phases))
    assert report["wall_time_s"]["total"] == pytest.approx(3600 * sum(hours.values()))
    assert "| 2 | `" + str(root / "b") in (tmp_path / "report" / "report.md").read_text()

    timings = {p: json.loads((root / p / "timings.json").read_text()) for p in ("a", "b")}
    main(argv)  # the same command again: every phase is finished, nothing retrains
    for phase in ("a", "b"):
        again = json.loads((root / phase / "timings.json").read_text())
        assert {s: t for s, t in again.items() if s != "eval"} == {s: t for s, t in timings[phase].items() if s != "eval"}


@pytest.mark.parametrize("command", ["run", "schedule"])
def test_help_lists_every_field(command, capsys):
    from benchmarks.synthetic import run, schedule

    with pytest.raises(SystemExit) as exit_:
        {"run": run.main, "schedule": schedule.main}[command](["--help"])
    assert exit_.value.code == 0
    names = [f.name for f in fields(SyntheticRunConfig)] if command == "run" else ["schedule"]
    out = capsys.readouterr().out
    missing = [name for name in [*names, *REPORT_FIELDS] if f"--{name} " not in out]
    assert not missing


def test_the_readme_table_of_the_session_sized_chain_is_its_committed_report():
    """README.md's EM table of the session-sized chain is the probe's report.json, row by row, to one decimal."""
    lines = (Path(__file__).parents[1] / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| documents in the context (k), `other_kind` world, session-sized chain"))
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in lines[start + 2:start + 6]}
    report = json.loads((PROBES / "session_schedule_cpt1_18000_sft_10000" / "report.json").read_text())
    aggregates = report["aggregates"]
    systems = {"compressed, RL on 5-16 documents": "rl", "compressed, SFT (1-4 documents)": "sft",
               "full context, same size (1-4 documents)": "full"}
    for label, system in systems.items():
        expected = [aggregates["qa_em_by_k"][k][system]["mean"] for k in ("1", "2", "4", "8", "16", "32")]
        expected.append(aggregates["single_em_by_type"]["all"][system]["mean"])
        assert rows[label] == [f"{100 * value:.1f}" for value in expected], label
    for cell, k in zip(rows["RL - SFT, 95% paired bootstrap interval"], ("1", "2", "4", "8", "16", "32")):
        assert cell.startswith(f"{100 * report['rl_minus_sft'][k]['mean']:+.1f}"), (k, cell)
