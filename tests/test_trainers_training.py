"""MemCompTrainer on tiny models: each stage learns, per-task losses are logged, runs resume exactly."""

from pathlib import Path

import pytest
import torch
import yaml

from modeling_memcomp import MemCompForCausalLM
from trainers import MemCompTrainer
from trainers.config import parse_stage_args
from trainers.run import build_datasets, build_model
from trainers.stages import TASKS

CONFIGS = Path(__file__).parent.parent / "examples" / "configs"
ROOT = Path(__file__).parent.parent


def stage_from_yaml(path, tmp_path, **fields):
    """Parse a stage YAML as the scripts do, with `fields` (None allowed) replacing or adding keys."""
    config = {**yaml.safe_load(Path(path).read_text()), **fields}
    merged = tmp_path / f"{Path(path).stem}.merged.yaml"
    merged.parent.mkdir(parents=True, exist_ok=True)
    merged.write_text(yaml.safe_dump(config))
    return parse_stage_args(["--config", str(merged)])


def tiny_stage(name, tmp_path, **fields):
    return stage_from_yaml(
        CONFIGS / f"{name}_tiny.yaml", tmp_path, output_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"),
        report_to=[], disable_tqdm=True, **fields,
    )


@pytest.fixture(autouse=True)
def repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the tiny configs name fixture files relative to the repository



def fixed_batch_loss(trainer, batch):
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
    model.train()
    return loss.item()


@pytest.mark.parametrize("stage", ["cpt1", pytest.param("cpt2", marks=pytest.mark.slow), pytest.param("sft", marks=pytest.mark.slow)])
def test_each_stage_learns_on_a_fixed_batch(stage, tmp_path):
    config = tiny_stage(
        stage, tmp_path, num_samples=8, eval_samples=0, eval_strategy="no", save_strategy="no", max_steps=12,
        global_batch_size=4, per_device_train_batch_size=4, early_stopping_patience=None, learning_rate=1e-2,
        lora_learning_rate=1e-2, warmup_steps=0,
    )
    model = build_model(config)
    train, _ = build_datasets(config, model)
    trainer = MemCompTrainer(model=model, args=config.training, train_dataset=train)
    batch = trainer.data_collator([train[i] for i in range(8)])
    before = fixed_batch_loss(trainer, batch)
    trainer.train()
    after = fixed_batch_loss(trainer, batch)
    assert after < 0.75 * before, (before, after)
    tasks = {e["task"] for e in train}
    logged = {key for log in trainer.state.log_history for key in log}
    assert {f"loss_{task}" for task in tasks} <= logged


def test_bf16_weights_train_with_float32_masters_under_bf16_autocast(tmp_path):
    config = tiny_stage("sft", tmp_path, eval_samples=0, max_steps=1, learning_rate=1e-5, warmup_steps=0, bf16=True)
    model = build_model(config).to(torch.bfloat16)  # as a base loaded with `dtype: bfloat16` (the paper's configs)
    before = {name: p.detach().float().clone() for name, p in model.named_parameters()}
    train, _ = build_datasets(config, model)
    trainer = MemCompTrainer(model=model, args=config.training, train_dataset=train)
    trainer.train()
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    unchanged = [name for name, p in trained.items() if torch.equal(p.detach(), before[name])]
    assert len(unchanged) < 0.05 * len(trained), unchanged  # in bf16 most LR 1e-5 steps would round away
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # the frozen projection stays as loaded
    trainer.save_model(str(tmp_path / "final"))  # saved as loaded (bf16), trained on in float32
    reloaded = MemCompForCausalLM.from_pretrained(tmp_path / "final", dtype="auto")
    assert {p.dtype for p in reloaded.parameters()} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trained.values())


def test_a_chained_stage_refuses_a_chunk_size_its_base_checkpoint_would_ignore(tmp_path, model):
    model.save_pretrained(tmp_path / "cpt1")  # a memcomp checkpoint, chunk size 16
    with pytest.raises(ValueError, match=r"chunk_size=8 is given, but the base .* memcomp checkpoint with chunk_size=16"):
        build_model(tiny_stage("cpt2", tmp_path, tiny=False, base=str(tmp_path / "cpt1"), chunk_size=8))
    with pytest.raises(ValueError, match="base '.*nope' could not be read .* give a model folder or a Hub id"):
        build_model(tiny_stage("cpt2", tmp_path, tiny=False, base=str(tmp_path / "nope")))


def test_per_task_losses_in_training_and_evaluation(tmp_path):
    config = tiny_stage(
        "cpt1", tmp_path, num_samples=8, eval_samples=8, max_steps=2, global_batch_size=4, save_strategy="no",
        eval_strategy="no", early_stopping_patience=None, logging_steps=1,
    )
    model = build_model(config)
    train, evaluation = build_datasets(config, model)
    trainer = MemCompTrainer(model=model, args=config.training, train_dataset=train, eval_dataset=evaluation)
    trainer.train()
    metrics = trainer.evaluate()
    eval_tasks = {e["task"] for e in evaluation}
    assert {"reconstruction", "continuation", "language_modeling"} == eval_tasks
    assert {f"eval_loss_{t}" for t in eval_tasks} <= set(metrics)
    # The per-task losses are token-weighted parts of the overall loss.
    counts = {t: 0 for t in TASKS}
    batch = trainer.data_collator([evaluation[i] for i in range(len(evaluation))])
    for task_id, labels in zip(batch["task_ids"], batch["labels"]):
        counts[TASKS[task_id]] += int((labels[1:] != -100).sum())
    mixed = sum(metrics[f"eval_loss_{t}"] * counts[t] for t in eval_tasks) / sum(counts.values())
    assert mixed == pytest.approx(fixed_batch_loss(trainer, batch), rel=1e-3)
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert all("loss_reconstruction" in log or "loss_continuation" in log for log in train_logs)


def test_emphasized_tokens_weigh_emphasis_weight_in_the_loss(tmp_path):
    fields = dict(num_samples=8, max_steps=1, global_batch_size=4, save_strategy="no", eval_strategy="no",
                  early_stopping_patience=None, task_weights={"reconstruction": 1.0}, emphasis_pattern=r"\b\w{5}\b")
    config = tiny_stage("cpt1", tmp_path, emphasis_weight=5.0, **fields)
    model = build_model(config)
    train, _ = build_datasets(config, model)
    assert any(train["emphasis"])
    weighted = MemCompTrainer(model=model, args=config.training, train_dataset=train)
    batch = weighted.data_collator([train[i] for i in range(8)])
    plain = MemCompTrainer(model=model, args=tiny_stage("cpt1", tmp_path, **fields).training, train_dataset=train)
    with torch.no_grad():
        outputs = model(**{k: v for k, v in batch.items() if k not in ("labels", "task_ids", "example_ids", "emphasis_mask")})
    logits, targets = outputs.logits[:, :-1].float(), batch["labels"][:, 1:]
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    weights = 1 + 4 * batch["emphasis_mask"][:, 1:].float()
    expected = (token_loss * weights).sum() / (targets != -100).sum()
    assert fixed_batch_loss(weighted, batch) == pytest.approx(expected.item(), rel=1e-4)
    assert fixed_batch_loss(plain, batch) == pytest.approx(token_loss.sum().item() / (targets != -100).sum().item(), rel=1e-4)
    early = MemCompTrainer(model=model, args=tiny_stage("cpt1", tmp_path, emphasis_weight=5.0, emphasis_steps=3, **fields).training,
                           train_dataset=train)
    early.state.global_step = 2  # within the first 3 steps: weighted
    assert fixed_batch_loss(early, batch) == pytest.approx(expected.item(), rel=1e-4)
    early.state.global_step = 3  # after: every token weighs 1
    assert fixed_batch_loss(early, batch) == pytest.approx(token_loss.sum().item() / (targets != -100).sum().item(), rel=1e-4)
    with pytest.raises(ValueError, match="no emphasis_pattern is given"):
        tiny_stage("cpt1", tmp_path, emphasis_weight=5.0)
    with pytest.raises(ValueError, match="emphasis_weight must be > 0"):
        tiny_stage("cpt1", tmp_path, emphasis_weight=0.0, emphasis_pattern="x")
    with pytest.raises(ValueError, match="emphasis_steps must be >= 0"):
        tiny_stage("cpt1", tmp_path, emphasis_weight=2.0, emphasis_steps=-1, emphasis_pattern="x")


def test_early_stopping_is_wired_to_eval_loss(tmp_path):
    config = tiny_stage("cpt1", tmp_path, num_samples=4, eval_samples=4)
    args = config.training
    assert args.load_best_model_at_end and args.metric_for_best_model == "loss" and not args.greater_is_better
    model = build_model(config)
    train, evaluation = build_datasets(config, model)
    trainer = MemCompTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation)
    assert any(type(cb).__name__ == "EarlyStoppingCallback" for cb in trainer.callback_handler.callbacks)


class StopAt:
    """Stops training right after a checkpoint, as a killed job would have left it."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == step:
                    control.should_training_stop = True

        return _Stop()


RESUME_RUN = dict(num_samples=24, eval_samples=0, eval_strategy="no", max_steps=6, save_steps=3, logging_steps=1,
                  global_batch_size=4, early_stopping_patience=None)


def resume_run(out, resume=None, stop=None, **fields):
    """A 6-step FQLoRA CPT-1 run saving every 3 steps (`fields` override); returns its trainer and logged loss per step."""
    config = tiny_stage("cpt1", out, **{**RESUME_RUN, **fields})
    model = build_model(config)
    train, _ = build_datasets(config, model)
    trainer = MemCompTrainer(model=model, args=config.training, train_dataset=train,
                             callbacks=[StopAt(stop)] if stop else None)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, {log["step"]: log["loss"] for log in trainer.state.log_history if "loss" in log}


def test_resume_last_starts_a_new_run_and_a_fresh_start_warns_of_earlier_checkpoints(tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    from trainers.checkpoints import resume_point

    args = lambda value: SimpleNamespace(resume_from_checkpoint=value, output_dir=str(tmp_path))  # noqa: E731
    with caplog.at_level(logging.INFO, logger="trainers.checkpoints"):
        assert resume_point(args("last")) is None and "no checkpoint in" in caplog.text  # one command starts...
        assert resume_point(args(None)) is None and "earlier run" not in caplog.text
        (tmp_path / "checkpoint-50").mkdir()  # killed during its first save: nothing to resume
        assert resume_point(args("last")) is None and "no complete checkpoint in" in caplog.text
        for name in ("trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt"):
            (tmp_path / "checkpoint-50" / name).write_text("{}")
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(1)}, str(tmp_path / "checkpoint-50" / "model.safetensors"))
        assert resume_point(args("last")) is True  # ...and resumes
        assert resume_point(args(None)) is None
        assert "holds checkpoint-50 from an earlier run: this run starts afresh, replacing only" in caplog.text
        assert "--resume_from_checkpoint last would resume the earlier run. Use another output_dir" in caplog.text
    assert resume_point(args(str(tmp_path / "checkpoint-50"))) == str(tmp_path / "checkpoint-50")


DEEPSPEED = {"deepspeed_plugin": object()}
NO_DEEPSPEED_STATE = "no DeepSpeed state (global_step*/ with its *model_states.pt)"


@pytest.mark.parametrize("flags, global_step, weights, missing", [
    ({}, None, True, "no optimizer state (optimizer.pt)"),  # an ordinary run saves optimizer and scheduler state
    ({"save_only_model": True}, None, True, None),
    (DEEPSPEED, "states", True, None),  # ZeRO keeps them under global_step*/, which the trainer loads
    (DEEPSPEED, "states", False, None),  # ZeRO-3 without 16-bit gathering (DeepSpeed's default): weights there too
    (DEEPSPEED, "empty", True, NO_DEEPSPEED_STATE),  # killed before DeepSpeed wrote its states
    (DEEPSPEED, None, True, NO_DEEPSPEED_STATE),
])
def test_resume_last_takes_the_trainers_rule_for_a_complete_checkpoint(tmp_path, caplog, flags, global_step, weights, missing):
    """`last` must not start afresh (and overwrite) a run whose checkpoints the trainer would resume from, nor take
    one it could not resume from."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from trainers.checkpoints import resume_point

    folder = tmp_path / "checkpoint-50"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    if weights:
        save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    if global_step:
        (folder / "global_step50").mkdir()
    if global_step == "states":
        (folder / "global_step50" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"")
    args = SimpleNamespace(resume_from_checkpoint="last", output_dir=str(tmp_path), **flags)
    assert resume_point(args) is (None if missing else True)
    assert missing is None or missing in caplog.text


@pytest.mark.slow
def test_resumed_run_logs_the_same_next_loss(tmp_path):
    def run(out, resume=None, stop=None):
        return resume_run(out, resume, stop)[1]

    full = run(tmp_path / "full")
    interrupted = run(tmp_path / "cut", stop=3)
    assert max(interrupted) == 3
    resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-3"))
    assert resumed[4] == full[4] and resumed[6] == full[6]


def test_configs_mirror_table_9(tmp_path):
    expected = {"cpt1": (5e-5, 3e-4, 0.04, 0.10, 2048), "cpt2": (5e-5, 2e-4, 0.03, 0.02, 2048), "sft": (2e-5, None, 0.03, 0.10, 4096)}
    for stage, (lr, proj, warmup, min_lr, seq) in expected.items():
        config = parse_stage_args(["--config", str(CONFIGS / f"{stage}.yaml"), "--bf16", "false", "--report_to", "none"])
        args = config.training
        assert args.learning_rate == lr and args.lora_learning_rate == 1e-4 and args.warmup_steps == warmup
        assert args.freeze_projection == (proj is None) and (proj is None or args.projection_learning_rate == proj)
        assert args.lr_scheduler_kwargs == {"min_lr_rate": min_lr} and args.max_grad_norm == 1.0
        assert args.weight_decay == 0.1 and args.lora_weight_decay == 0.0
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps == args.global_batch_size
        assert config.model.fqlora and config.fqlora.lora_r == 64 and config.fqlora.lora_alpha == 16
        assert config.data.max_length is None  # sequence length comes from the stage: {seq}


def test_command_line_fields_override_the_yaml_and_the_stage_defaults():
    config = parse_stage_args([
        "--config", str(CONFIGS / "cpt1_tiny.yaml"), "--learning_rate", "3e-4", "--warmup_steps", "0.1",
        "--sources", '{"path": "other.jsonl", "kind": "document"}', "--tiny_layers", "3",
    ])
    assert config.training.learning_rate == 3e-4 and config.training.warmup_steps == 0.1  # CLI over YAML / Table 9
    assert config.training.projection_learning_rate == 3e-3  # YAML over Table 9
    assert config.training.lr_scheduler_kwargs == {"min_lr_rate": 0.10}  # Table 9 where neither says otherwise
    assert config.data.sources == [{"path": "other.jsonl", "kind": "document"}] and config.model.tiny_layers == 3


def test_the_stage_mixture_can_be_overridden_and_bad_overrides_are_clear(capsys):
    from trainers.stages import STAGES

    base = ["--config", str(CONFIGS / "cpt1_tiny.yaml")]
    config = parse_stage_args([*base, "--task_weights", '{"reconstruction": 1.0}', "--compression_ratio", "0.9"])
    stage = config.data.mixture(STAGES["cpt1"])
    assert stage.task_weights == {"reconstruction": 1.0} and stage.compression_ratio == 0.9
    assert stage.template == "plain" and stage.bridge_chunks == STAGES["cpt1"].bridge_chunks  # the rest is the stage's
    assert parse_stage_args(base).data.mixture(STAGES["cpt1"]) == STAGES["cpt1"]  # no override: Table 1's mixture
    with pytest.raises(ValueError, match="task_weights must give non-negative shares.*'recon'"):
        parse_stage_args([*base, "--task_weights", '{"recon": 1.0}'])
    with pytest.raises(ValueError, match="task_weights must give non-negative shares.*'high'"):
        parse_stage_args([*base, "--task_weights", '{"reconstruction": "high"}'])
    with pytest.raises(SystemExit):
        parse_stage_args([*base, "--task_weights", "reconstruction"])
    assert "argument --task_weights/--task-weights: invalid TaskWeights value: 'reconstruction'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"compression_ratio must be in \[0, 1\], got 1.5"):
        parse_stage_args([*base, "--compression_ratio", "1.5"])


def test_help_lists_every_field_and_bad_arguments_are_clear(capsys):
    with pytest.raises(SystemExit):
        parse_stage_args(["--help"])
    help_text = capsys.readouterr().out
    for name in ("--base", "--lora_r", "--sources", "--mixture_seed", "--projection_learning_rate", "--learning_rate"):
        assert name in help_text
    assert "Tokens per memory embedding" in help_text and "FQLoRA: LoRA rank" in help_text
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--bse'"):
        parse_stage_args(["--config", str(CONFIGS / "cpt1_tiny.yaml"), "--bse", "x"])
    with pytest.raises(ValueError, match="stage is required"):
        parse_stage_args(["--output_dir", "x"])
    with pytest.raises(ValueError, match="this script trains"):
        parse_stage_args(["--config", str(CONFIGS / "cpt1.yaml")], expected_stages=("sft",))


# ---------------------------------------------------------------------------------------------- issue 16, item 6
import logging  # noqa: E402
import shutil  # noqa: E402

from trainers.checkpoints import FULL_FT_WEIGHTS, checkpoint_problems, last_complete_checkpoint  # noqa: E402



def test_killed_while_saving_resumes_from_the_previous_complete_checkpoint(tmp_path, caplog):
    full_trainer, full = resume_run(tmp_path / "full")
    resume_run(tmp_path / "cut", stop=3)
    (tmp_path / "cut" / "checkpoint-6").mkdir()  # killed right after creating the next checkpoint folder
    torn = tmp_path / "cut" / "checkpoint-5"
    shutil.copytree(tmp_path / "cut" / "checkpoint-3", torn)
    (torn / "adapter_model.safetensors").write_bytes((torn / "adapter_model.safetensors").read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoints"):
        trainer, resumed = resume_run(tmp_path / "cut", resume=True)
    seen, everything = trainer.example_ids_seen, full_trainer.example_ids_seen
    assert seen == everything[len(everything) // 2 :], "trained steps 4-6 only: resumed after step 3"
    assert resumed == full  # steps 1-3 from checkpoint-3's state, 4-6 recomputed: the same losses
    tokens = [{log["step"]: log["useful_tokens"] for log in t.state.log_history if "loss" in log} for t in (full_trainer, trainer)]
    assert tokens[0] == tokens[1] and tokens[0][6] > tokens[0][3] > 0  # the count goes on from the checkpoint's
    logged = caplog.text
    assert "skipping incomplete checkpoint" in logged and "checkpoint-6 (no trainer_state.json" in logged
    assert "checkpoint-5 (adapter_model.safetensors is unreadable" in logged
    assert f"resuming from {tmp_path / 'cut' / 'checkpoint-3'}" in logged


@pytest.fixture(scope="module")
def one_checkpoint(tmp_path_factory):
    """A FQLoRA run stopped at its first checkpoint (checkpoint-3), and the trainer that wrote it."""
    out = tmp_path_factory.mktemp("fqlora-run")
    trainer, _ = resume_run(out, stop=3)
    return out, trainer


def test_missing_full_ft_weights_raise_instead_of_reinitialising(one_checkpoint, tmp_path):
    out, trainer = one_checkpoint
    folder = tmp_path / "checkpoint-3"
    shutil.copytree(out / "checkpoint-3", folder)
    assert checkpoint_problems(folder, full_ft=True) == []
    (folder / FULL_FT_WEIGHTS).unlink()
    assert checkpoint_problems(folder, full_ft=True) == [f"no {FULL_FT_WEIGHTS} (the fully fine-tuned FQLoRA layers)"]
    assert checkpoint_problems(folder, full_ft=False) == []  # a plain LoRA or full model needs no such file
    with pytest.raises(ValueError, match=f"cannot resume from .*checkpoint-3.*no {FULL_FT_WEIGHTS}"):
        resume_run(tmp_path, resume=str(folder))
    with pytest.raises(ValueError, match=f"no complete checkpoint in .* no {FULL_FT_WEIGHTS}"):
        resume_run(tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="would silently restart from their initial weights"):
        trainer._load_full_ft(str(folder))  # e.g. loading the best model at the end


def test_deepspeed_checkpoints_fqlora_layers_in_its_own_state(one_checkpoint, tmp_path, monkeypatch):
    """DeepSpeed saves every trainable parameter and restores them itself: the full-FT file is neither written (it would
    hold ZeRO-3's empty partitions) nor required. FSDP's sharded save keeps only a peft model's adapters: required there."""
    _, trainer = one_checkpoint
    assert trainer._checkpoint_requirements()["full_ft"]
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    assert trainer._checkpoint_requirements()["full_ft"]
    monkeypatch.setattr(trainer, "is_fsdp_enabled", False)
    monkeypatch.setattr(trainer, "is_deepspeed_enabled", True)
    assert not trainer._checkpoint_requirements()["full_ft"]
    trainer._save(str(tmp_path))
    assert not (tmp_path / FULL_FT_WEIGHTS).exists()


def test_checkpoint_completeness_rules(one_checkpoint, tmp_path):
    out, _ = one_checkpoint
    assert last_complete_checkpoint(tmp_path) is None  # no checkpoint folder at all
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json"):
        folder = tmp_path / name / "checkpoint-3"
        shutil.copytree(out / "checkpoint-3", folder)
        (folder / name).unlink()
        assert len(checkpoint_problems(folder, full_ft=True)) == 1 and name in checkpoint_problems(folder)[0]
    assert checkpoint_problems(tmp_path / "optimizer.pt" / "checkpoint-3", optimizer=False) == []
    (tmp_path / "trainer_state.json" / "checkpoint-3" / "trainer_state.json").write_text("{")
    assert "trainer_state.json is unreadable" in checkpoint_problems(tmp_path / "trainer_state.json" / "checkpoint-3")[0]
    with pytest.raises(ValueError, match="no checkpoint-\\* folder"):
        resume_run(tmp_path / "empty", resume=True)


# ------------------------------------------------------------------ a resume past the first epoch, length-grouped
from trainers.sampling import ResumableLengthGroupedSampler  # noqa: E402


def test_length_grouped_order_is_redrawn_after_a_resume_in_a_later_epoch(tmp_path):
    lengths = [(7 * i) % 23 for i in range(40)]
    torch.manual_seed(0)
    sampler, orders = ResumableLengthGroupedSampler(4, lengths=lengths), []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        if epoch == 1:
            sampler.save(tmp_path)  # a checkpoint inside epoch 1
        torch.rand(100)  # training steps use the global RNG too
    assert orders[0] != orders[1] != orders[2]

    def resumed(epoch, record=True):
        torch.manual_seed(0)  # a new process: set_seed's state, not the one after the earlier epochs
        sampler = ResumableLengthGroupedSampler(4, lengths=lengths)
        assert sampler.load(tmp_path) if record else not sampler.load(tmp_path / "none")
        sampler.set_epoch(epoch)
        return list(sampler)

    assert resumed(1) == orders[1]
    assert resumed(1, record=False) == orders[0] != orders[1]  # the parent's draw: the order it skips into is another
    assert resumed(2) == orders[0]  # a record of an earlier epoch is not used (Trainer restores the RNG state there)


def test_length_grouped_order_survives_a_resume_behind_data_parallel_wrappers(tmp_path):
    """accelerate's batch-skipping wrapper around a `BatchSamplerShard` does not pass `set_epoch` on: `load` sets it."""
    from accelerate.data_loader import prepare_data_loader, skip_first_batches
    from torch.utils.data import DataLoader

    lengths = [(7 * i) % 23 for i in range(40)]

    def rank0_loader(sampler):  # what Trainer iterates on rank 0 of 2
        return prepare_data_loader(DataLoader(range(40), batch_size=4, sampler=sampler), num_processes=2,
                                   process_index=0, put_on_device=False)

    torch.manual_seed(0)
    sampler = ResumableLengthGroupedSampler(4, lengths=lengths)
    loader, epochs = rank0_loader(sampler), []
    for epoch in range(2):
        loader.set_epoch(epoch)
        epochs.append([batch.tolist() for batch in loader])
        torch.rand(100)
    sampler.save(tmp_path)  # epoch 1's record, as a checkpoint inside it holds
    torch.manual_seed(0)
    resumed = ResumableLengthGroupedSampler(4, lengths=lengths)
    assert resumed.load(tmp_path, epoch=1)
    skipped = skip_first_batches(rank0_loader(resumed), 2)
    skipped.set_epoch(1)  # Trainer's call: it does not reach the sampler through these wrappers
    assert [batch.tolist() for batch in skipped] == epochs[1][2:] != epochs[0][2:]


def test_length_grouped_sampler_reads_a_dataset_column_once_and_draws_the_same_order():
    from datasets import Dataset

    lengths = [(7 * i) % 23 for i in range(400)]
    column = Dataset.from_dict({"length": lengths})["length"]  # what Trainer passes: a lazy Column, not a list
    assert not isinstance(column, list)
    orders = []
    for given in (lengths, column):
        torch.manual_seed(0)
        sampler = ResumableLengthGroupedSampler(8, lengths=given)
        assert type(sampler.lengths) is list and sampler.lengths == lengths  # no Arrow lookup per item while sorting
        orders.append(list(sampler))
    assert orders[0] == orders[1] and sorted(orders[0]) == list(range(400))


def test_length_grouped_run_resumed_in_its_second_epoch_equals_the_uninterrupted_run(tmp_path, caplog):
    def run(out, resume=None, stop=None):
        return resume_run(out, resume, stop, max_steps=12, train_sampling_strategy="group_by_length")

    full_trainer, full = run(tmp_path / "full")  # 24 examples, 4 a step: epoch 1 is steps 7-12
    run(tmp_path / "cut", stop=9)
    trainer, resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-9"))
    assert trainer.example_ids_seen == full_trainer.example_ids_seen[-len(trainer.example_ids_seen):]
    assert len(trainer.example_ids_seen) == len(full_trainer.example_ids_seen) // 4  # steps 10-12 of 12
    assert [resumed[step] for step in (10, 11, 12)] == [full[step] for step in (10, 11, 12)]
    for (name, a), b in zip(full_trainer.model.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(a, b), name

    # Under DDP, accelerate's batch-skipping wrapper never passes set_epoch on: the epoch comes from the trainer state
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ResumableLengthGroupedSampler, "set_epoch", lambda self, epoch: None)
        trainer, resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-9"))
    assert trainer.example_ids_seen == full_trainer.example_ids_seen[-len(trainer.example_ids_seen):]

    shutil.rmtree(tmp_path / "cut")  # a checkpoint without the order's record: resumed, with a warning
    run(tmp_path / "cut", stop=9)
    (tmp_path / "cut" / "checkpoint-9" / ResumableLengthGroupedSampler.STATE_FILE.format(rank=0)).unlink()
    with caplog.at_level(logging.WARNING, logger="trainers.trainer"):
        run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-9"))
    assert "holds no length-grouped order record" in caplog.text


# ---------------------------------------------------------------------------------------------- review findings
def test_an_explicit_gradient_accumulation_that_disagrees_with_global_batch_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2 and global_batch_size=256 disagree: .* takes 64"):
        parse_stage_args(["--config", str(CONFIGS / "cpt1.yaml"), "--bf16", "false", "--gradient_accumulation_steps", "2"])
    agreeing = parse_stage_args(["--config", str(CONFIGS / "cpt1.yaml"), "--bf16", "false", "--gradient_accumulation_steps", "64"])
    assert agreeing.training.gradient_accumulation_steps == 64
    # Without a global batch in the config, the accumulation given wins over the stage's default (CLI, YAML, Python).
    fields = yaml.safe_load((CONFIGS / "cpt1_tiny.yaml").read_text())
    del fields["global_batch_size"]
    (tmp_path / "no_global.yaml").write_text(yaml.safe_dump(fields))
    (tmp_path / "accumulation.yaml").write_text(yaml.safe_dump({**fields, "gradient_accumulation_steps": 5}))
    config = parse_stage_args(["--config", str(tmp_path / "no_global.yaml")])
    assert config.training.gradient_accumulation_steps == 256 // 4  # Table 9's global batch
    given = parse_stage_args(["--config", str(tmp_path / "no_global.yaml"), "--gradient_accumulation_steps", "3"])
    assert given.training.gradient_accumulation_steps == 3 and given.training.global_batch_size is None
    assert parse_stage_args(["--config", str(tmp_path / "accumulation.yaml")]).training.gradient_accumulation_steps == 5
    from trainers import MemCompTrainingArguments

    args = MemCompTrainingArguments.for_stage("cpt1", output_dir=str(tmp_path), use_cpu=True, gradient_accumulation_steps=2)
    assert args.gradient_accumulation_steps == 2 and args.global_batch_size is None
    with pytest.raises(ValueError, match="disagree"):
        MemCompTrainingArguments.for_stage("cpt1", output_dir=str(tmp_path), use_cpu=True, gradient_accumulation_steps=2,
                                           global_batch_size=256)


def test_shipped_configs_validate_on_records_training_never_sees():
    for stage in ("cpt1", "cpt2", "sft"):
        data = parse_stage_args(["--config", str(CONFIGS / f"{stage}.yaml"), "--bf16", "false"]).data
        trained = {(s["path"], s.get("name"), s.get("split", "train")) for s in data.sources}
        held = {(s["path"], s.get("name"), s.get("split", "train")) for s in data.eval_sources or []}
        assert not trained & held, stage  # without eval_sources: the held-out tenth of the training sources
        assert data.disjoint_lm_documents == (stage != "sft")
        cci2 = [s for s in data.sources if s["path"] == "BAAI/CCI2-Data"]
        assert all(s["split"] == "cci2" and s["columns"] == {"text": "content"} for s in cci2)  # the Hub's layout


def test_the_trainer_records_the_stage_prompt_template_and_run_stage_the_configs_own(tmp_path, make_model):
    from modeling_memcomp import MemCompConfig
    from trainers import MemCompTrainingArguments
    from trainers.fqlora import FQLoRAConfig, apply_fqlora
    from trainers.run import run_stage

    model = apply_fqlora(make_model(), FQLoRAConfig(quantize=False, lora_r=4, compute_dtype="float32"))
    assert model.get_base_model().config.prompt_template == "chat"  # a new model's default
    args = MemCompTrainingArguments.for_stage("cpt1", output_dir=str(tmp_path / "py"), use_cpu=True, report_to=[],
                                              per_device_train_batch_size=1, global_batch_size=1)
    MemCompTrainer(model=model, args=args)  # as the docs' "In Python" recipe: no trainers.run
    assert model.get_base_model().config.prompt_template == "plain"
    chat = make_model()
    chat.config.system_prompt = "Answer briefly."  # a chat checkpoint trained further with SFT keeps its system prompt
    sft = MemCompTrainingArguments.for_stage("sft", output_dir=str(tmp_path / "sft"), use_cpu=True, report_to=[],
                                             per_device_train_batch_size=1, global_batch_size=1)
    MemCompTrainer(model=chat, args=sft)
    assert (chat.config.prompt_template, chat.config.system_prompt) == ("chat", "Answer briefly.")

    config = tiny_stage("cpt1", tmp_path / "run", template="chat", num_samples=8, eval_samples=0, max_steps=1,
                        global_batch_size=4, save_strategy="no", eval_strategy="no", early_stopping_patience=None)
    run_stage(config)
    assert MemCompConfig.from_pretrained(tmp_path / "run").prompt_template == "chat"  # the config's template wins


def test_a_4bit_base_gets_no_device_map_under_zero3(tmp_path, monkeypatch):
    """ZeRO-3 refuses a device_map (transformers raises); bitsandbytes then loads onto the rank's current GPU."""
    from transformers import Qwen2Config

    from trainers import run
    from trainers.config import stage_config

    Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4).save_pretrained(tmp_path)
    config = stage_config("cpt1", model={"base": str(tmp_path), "fqlora": True}, output_dir=str(tmp_path), use_cpu=True)
    loaded = []
    monkeypatch.setattr(run, "load_fqlora_model", lambda base, fq, **kwargs: loaded.append(kwargs))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for zero3, device_map in ((False, True), (True, False)):
        monkeypatch.setattr(run, "is_deepspeed_zero3_enabled", lambda: zero3)
        run.build_model(config)
        assert ("device_map" in loaded[-1]) == device_map
