"""RL rollouts through vLLM with prompt embeddings match HF, before and after a weight sync (vLLM environment).

    PYTHONPATH=<trl, accelerate, datasets> .venv-vllm/bin/python -m pytest -m vllm tests/test_rl_vllm.py
"""

import os

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm.sampling_params", reason="needs the vLLM environment (scripts/make_vllm_env.sh)")
pytest.importorskip("trl", reason="the RL trainer needs trl in the vLLM environment")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from conftest import in_process_vllm  # noqa: E402
from trainers import MemCompGRPOConfig, MemCompGRPOTrainer  # noqa: E402
from trainers.precompute import load_rows, precompute_memory  # noqa: E402

QA = Path(__file__).parents[1] / "fixtures" / "rl" / "qa.jsonl"
TINY = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=12, overlong_buffer=4,
            use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no")


@pytest.fixture
def in_process_engine():
    with in_process_vllm():  # the trainer starts its engine in this process
        yield


def test_vllm_rollouts_equal_hf_greedy_and_follow_weight_updates(tokenizer, tmp_path, in_process_engine):
    from modeling_memcomp.tiny import build_tiny_memcomp

    # head_dim 32: vLLM's CPU attention kernels do not take tiny head sizes
    model = build_tiny_memcomp(tokenizer, hidden_size=128, config_overrides={"num_attention_heads": 4, "num_key_value_heads": 2})
    data = precompute_memory(model, load_rows(str(QA)))
    args = MemCompGRPOConfig(
        output_dir=str(tmp_path), **TINY, rollout_backend="vllm",
        generation_kwargs={"do_sample": False}, vllm_decoder_kwargs={"max_model_len": 1024},
    )
    trainer = MemCompGRPOTrainer(model, args=args, train_dataset=data)
    assert trainer._vllm is not None
    rows = [data[i] for i in range(4)]

    def rollouts():
        memory, lengths = trainer._batch_memory(rows)
        with trainer._using_memory(memory, lengths):
            prompt_ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
            from_vllm, _ = trainer._generate_single_turn(prompt_ids, None, {}, 1)
            engine, trainer._vllm = trainer._vllm, None
            try:
                from_hf, _ = trainer._generate_single_turn(prompt_ids, None, {}, 1)
            finally:
                trainer._vllm = engine
        return from_vllm, from_hf

    before_vllm, before_hf = rollouts()
    assert before_vllm == before_hf
    with torch.no_grad():
        for parameter in model.language_model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    trainer.state.global_step += 1  # a new optimizer step: the next rollout pushes the weights to vLLM
    after_vllm, after_hf = rollouts()
    assert after_vllm == after_hf and after_hf != before_hf
