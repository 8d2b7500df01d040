"""The RL trainer with two data-parallel CPU ranks (gloo), launched as users launch it: every rank takes the same
dynamic-sampling decision for every prompt group, and the run trains and saves the RL checkpoint."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RUN_RL = """
import sys
from datasets import load_from_disk
from modeling_memcomp import MemCompForCausalLM
from trainers import MemCompGRPOConfig, MemCompGRPOTrainer
from trainers.distributed import process_group_teardown
from trainers.judges import MatchJudge
from trainers.rewards import JudgeReward


def varied(completion_ids, **unused):  # an untrained model never answers right: this stands in for accuracy
    return [float(sum(ids) % 7 == 0) for ids in completion_ids]  # often constant within a group, sometimes not


sft, memory, out, trace = sys.argv[1:5]
args = MemCompGRPOConfig(
    output_dir=out, rank_trace_dir=trace, num_generations=4, per_device_train_batch_size=8, rollout_batch_prompts=4,
    mini_batch_prompts=4, max_completion_length=8, overlong_buffer=4, max_steps=3, lr_warmup_rollouts=0,
    learning_rate=1e-3, dynamic_sampling_warmup_rollouts=0, dynamic_sampling_max_tries=2, use_cpu=True, bf16=False,
    gradient_checkpointing=False, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
)
with process_group_teardown():  # as examples/train_rl.py: without it a rank can abort at exit
    trainer = MemCompGRPOTrainer(MemCompForCausalLM.from_pretrained(sft), reward_funcs=[varied, JudgeReward(MatchJudge())],
                                 args=args, train_dataset=load_from_disk(memory))
    trainer.train()
    trainer.save_model(out)
"""


@pytest.mark.slow
def test_two_rank_rl_keeps_the_same_groups_on_every_rank(model, tmp_path):
    from trainers.precompute import load_rows, precompute_memory

    model.save_pretrained(tmp_path / "sft")
    precompute_memory(model, load_rows(str(ROOT / "tests" / "fixtures" / "rl" / "qa.jsonl"))).save_to_disk(tmp_path / "memory")
    (tmp_path / "run_rl.py").write_text(RUN_RL)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    trace = tmp_path / "trace"
    command = [
        accelerate, "launch", "--config_file", "examples/accelerate/cpu_2proc.yaml", "--main_process_port", str(free_port()),
        str(tmp_path / "run_rl.py"), str(tmp_path / "sft"), str(tmp_path / "memory"), str(tmp_path / "rl"), str(trace),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "destroy_process_group() was not called" not in result.stderr
    ranks = [[json.loads(line) for line in (trace / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(ranks[0]) >= 3 and len(ranks[0]) == len(ranks[1])
    for a, b in zip(*ranks):
        assert a == b and a["world_size"] == 2 and a["groups"] == 4  # two ranks x two groups: one shared decision
    assert any(0 < len(r["kept"]) < r["groups"] for r in ranks[0]), "no round kept some groups and dropped others"
    assert (tmp_path / "rl" / "config.json").is_file()


def _embed_after_an_fsdp2_step(rank: int, port: int, folder: str, results) -> None:
    """One rank of `test_vllm_prompt_embeddings_are_built_from_the_whole_table_under_fsdp2`."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from modeling_memcomp import MemCompForCausalLM
    from trainers.distributed import fsdp2_unsharded

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = MemCompForCausalLM.from_pretrained(folder)
        batch = model.prepare_prompts([model.compress("The observatory was founded in 1901 by a harbour master.")], ["Who?"])
        with torch.no_grad():
            expected = model.embed_inputs(batch["input_ids"], batch["memory_embeds"])
        mesh = init_device_mesh("cpu", (2,))
        for layer in model.language_model.model.layers:  # as examples/accelerate/rl_fsdp.yaml: the decoder layers
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the root unit: embed_tokens among its parameters
        model(**batch).logits.sum().backward()  # a training step leaves the root's parameters sharded
        embedding = model.get_input_embeddings()
        try:
            with torch.no_grad():
                model.embed_inputs(batch["input_ids"], batch["memory_embeds"])
            direct = "worked"
        except RuntimeError as error:
            direct = "mixed DTensor" if "DTensor" in str(error) else str(error)
        with torch.no_grad(), fsdp2_unsharded(model, embedding):
            whole = model.embed_inputs(batch["input_ids"], batch["memory_embeds"])
        results[rank] = (direct, torch.equal(whole, expected), type(embedding.weight).__name__)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_vllm_prompt_embeddings_are_built_from_the_whole_table_under_fsdp2(model, tmp_path):
    """The vLLM rollout path embeds prompts outside any forward, where FSDP2 leaves the root unit's weights sharded."""
    import torch.multiprocessing as mp

    model.save_pretrained(tmp_path / "sft")
    results = mp.Manager().dict()
    mp.spawn(_embed_after_an_fsdp2_step, args=(free_port(), str(tmp_path / "sft"), results), nprocs=2)
    assert dict(results) == {rank: ("mixed DTensor", True, "DTensor") for rank in (0, 1)}  # resharded after the block
