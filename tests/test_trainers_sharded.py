"""Sharded engines with two ranks: DeepSpeed ZeRO-3 on CPU (gloo) trains exactly as one process does; FSDP,
which accelerate applies only on GPUs, is refused on CPU with a clear error and checked on GPUs."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _launch import logged_losses, run, stage_command
from trainers.checkpoints import checkpoint_problems
from trainers.distributed import check_launch

STAGES = {
    # save_steps = max_steps: the checkpoint's trainer_state.json holds the logged losses
    "sft": ("examples/configs/sft_tiny.yaml", {"training.save_strategy": "steps", "training.save_steps": 4}),
    # LoRA dropout masks depend on how the batch is split over ranks: off, so the runs can agree exactly. Hidden size
    # 224: the embeddings and MLP weights exceed DeepSpeed's stage3_param_persistence_threshold (1e5 elements), so
    # ZeRO-3 partitions them and rank 0's final FQLoRA save must gather them.
    "cpt": ("examples/configs/cpt1_tiny.yaml", {"model.fqlora.lora_dropout": 0.0, "model.tiny_hidden_size": 224}),
}
ZERO3_PERSISTENCE_THRESHOLD = 100_000  # DeepSpeed's default: smaller tensors stay whole on every rank
ZERO3_ON_CPU = {"training.use_cpu": False, "training.ddp_backend": "gloo"}  # see cpu_2proc_zero3.yaml
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="needs deepspeed (pip install deepspeed==0.19.8; its CPU accelerator JIT-builds one op with g++)",
)


def _overrides(stage: str, out: Path, **extra) -> dict:
    return {
        **STAGES[stage][1], "training.output_dir": out, "data.cache_dir": out.parent / "cache",
        "training.disable_tqdm": True, "training.rank_trace_dir": out / "trace", **extra,
    }


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The one-process run of each stage (computed once per stage): its output folder."""
    done = {}

    def reference(stage: str) -> Path:
        if stage not in done:
            out = tmp_path_factory.mktemp(f"single-{stage}") / "out"
            result = run(stage_command(stage, STAGES[stage][0], _overrides(stage, out)))
            assert result.returncode == 0, result.stderr[-3000:]
            done[stage] = out
        return done[stage]

    return reference


def _assert_same_training(sharded: Path, single: Path, engine: str) -> None:
    ranks = {r: [json.loads(line) for line in (sharded / "trace" / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert [step["engine"] for r in (0, 1) for step in ranks[r]] == [engine] * (2 * len(ranks[0]))
    for step0, step1 in zip(ranks[0], ranks[1]):
        assert step0["world_size"] == 2 and not set(step0["example_ids"]) & set(step1["example_ids"])
    assert logged_losses(sharded) == pytest.approx(logged_losses(single), rel=1e-5)
    ours, reference = load_file(sharded / "model.safetensors"), load_file(single / "model.safetensors")
    assert ours.keys() == reference.keys()  # rank 0 saved the whole model, gathered from the shards
    for name, tensor in reference.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("stage", ["sft", "cpt"])
def test_zero3_on_two_cpu_ranks_trains_as_one_process(stage, tmp_path, single_process):
    out = tmp_path / "zero3"
    command = stage_command(stage, STAGES[stage][0], _overrides(stage, out, **ZERO3_ON_CPU), "examples/accelerate/cpu_2proc_zero3.yaml")
    result = run(command, DS_ACCELERATOR="cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_training(out, single_process(stage), "DEEPSPEED")
    if stage == "cpt":  # the saved weights include tensors ZeRO-3 had partitioned over the two ranks
        assert max(t.numel() for t in load_file(out / "model.safetensors").values()) > ZERO3_PERSISTENCE_THRESHOLD
    step = sorted(out.glob("checkpoint-*/global_step*"))[-1]
    assert {p.name for p in step.glob("*optim_states.pt")} == {  # ZeRO-3: each rank holds its own shard
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }
    assert checkpoint_problems(step.parent, optimizer=False, deepspeed=True) == []  # `last` would resume from it


@pytest.mark.slow
def test_fsdp_on_cpu_ranks_is_refused_with_the_reason(tmp_path):
    """accelerate would silently run DDP instead: the trainer stops before training."""
    command = stage_command("sft", STAGES["sft"][0], _overrides("sft", tmp_path / "out"), "examples/accelerate/fsdp.yaml")
    command[command.index("--config_file") + 2 : command.index("--config_file") + 2] = ["--num_processes", "2", "--mixed_precision", "no"]
    result = run(command)
    assert result.returncode != 0
    assert "accelerate launch asked for FSDP (ACCELERATE_USE_FSDP=true) but accelerate set up MULTI_CPU" in result.stderr
    assert not (tmp_path / "out" / "trace").exists()  # no optimizer step was taken


@pytest.mark.gpu
@pytest.mark.parametrize("stage", ["sft"])  # FQLoRA (cpt) is refused under FSDP: test_fqlora_under_fsdp_is_refused...
def test_fsdp_on_two_gpus_trains_as_one_process(stage, tmp_path, single_process):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs: accelerate applies FSDP only on GPU-type devices (on CPU it would be DDP)")
    out = tmp_path / "fsdp"
    command = stage_command(stage, STAGES[stage][0], _overrides(stage, out, **{"training.use_cpu": False}), "examples/accelerate/fsdp.yaml")
    command[command.index("--config_file") + 2 : command.index("--config_file") + 2] = ["--num_processes", "2", "--mixed_precision", "no"]
    result = run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_training(out, single_process(stage), "FSDP")
    assert sorted(out.glob("checkpoint-*/pytorch_model_fsdp_0"))  # checkpoints stay sharded (fsdp.yaml) for resuming
    from modeling_memcomp import MemCompForCausalLM

    MemCompForCausalLM.from_pretrained(out)  # the final folder is a whole model the next stage loads


def test_a_final_save_under_sharded_fsdp_writes_the_full_model(tmp_path, make_model, monkeypatch):
    """Trainer writes no weights for SHARDED_STATE_DICT; MemCompTrainer saves the final model with FULL_STATE_DICT."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from types import SimpleNamespace

    from modeling_memcomp import MemCompForCausalLM
    from trainers import MemCompTrainer, MemCompTrainingArguments

    args = MemCompTrainingArguments.for_stage("sft", output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                              per_device_train_batch_size=1, global_batch_size=1)
    trainer = MemCompTrainer(model=make_model(), args=args)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
    types = []

    def state_dict(model):
        types.append(str(plugin.state_dict_type))
        return model.state_dict()

    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)  # FSDP as accelerate sets it up on GPUs
    monkeypatch.setattr(trainer.accelerator, "state", SimpleNamespace(fsdp_plugin=plugin))
    monkeypatch.setattr(trainer.accelerator, "get_state_dict", state_dict)
    trainer.save_model(str(tmp_path / "checkpoint"), _internal_call=True)  # a checkpoint: sharded, no model file here
    assert not (tmp_path / "checkpoint" / "model.safetensors").exists() and not types
    trainer.save_model()
    assert types == ["StateDictType.FULL_STATE_DICT"] and "SHARDED" in str(plugin.state_dict_type)  # restored after
    MemCompForCausalLM.from_pretrained(tmp_path)


def test_fqlora_under_fsdp_is_refused_before_loading(monkeypatch):
    from trainers.config import stage_config
    from trainers.run import check_engine

    config = stage_config("cpt1", model={"tiny": True, "tiny_corpus": "tests/fixtures/corpus.txt", "fqlora": True},
                          output_dir="unused", use_cpu=True)
    check_engine(config)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FQLoRA does not run under FSDP.*deepspeed_zero3.yaml"):
        check_engine(config)
    config.model.fqlora = False
    check_engine(config)  # full fine-tuning is what fsdp.yaml is for


@pytest.mark.parametrize(
    ("environ", "engine", "message"),
    [
        ({"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2"}, "MULTI_CPU", "applies FSDP only on GPU-type devices"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2"}, "MULTI_CPU", "turns DeepSpeed off when the training config sets use_cpu: true"),
        ({"WORLD_SIZE": "2"}, "NO", "each rank would train alone"),
    ],
)
def test_launch_check_names_the_dropped_engine(environ, engine, message):
    with pytest.raises(ValueError, match=message):
        check_launch(engine, environ)


@pytest.mark.parametrize(
    ("environ", "engine"),
    [({}, "NO"), ({"WORLD_SIZE": "2"}, "MULTI_CPU"), ({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2"}, "DEEPSPEED"),
     ({"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "4"}, "FSDP"), ({"ACCELERATE_USE_FSDP": "false"}, "NO")],
)
def test_launch_check_accepts_what_was_asked_for(environ, engine):
    check_launch(engine, environ)
