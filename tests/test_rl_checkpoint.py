"""The README's tiny chain SFT -> precompute -> RL yields the paper's system in one folder: SFT encoder + RL decoder.

The scripts run as users run them. The RL learning rate and weight decay are high so that the decoder's weights
move even though an untrained model earns no reward.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_memcomp import MemCompForCausalLM

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


def run_script(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, f"examples/{script}", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    run_script("train_sft.py", "--config", "examples/configs/sft_tiny.yaml", "--output_dir", str(out / "sft"),
               "--cache_dir", str(out / "cache"), "--report_to", "none", "--disable_tqdm", "true")
    run_script("precompute_memory.py", "--model", str(out / "sft"), "--dataset", str(FIXTURES / "rl" / "qa.jsonl"),
               "--output_dir", str(out / "rl_memory"))
    run_script("train_rl.py", "--config", "examples/configs/rl_tiny.yaml", "--model", str(out / "sft"),
               "--memory_dataset", str(out / "rl_memory"), "--output_dir", str(out / "rl"), "--learning_rate", "1e-2",
               "--weight_decay", "0.1", "--max_steps", "2", "--disable_tqdm", "true")
    return out


@pytest.mark.slow
def test_rl_folder_compresses_with_the_sft_encoder_and_answers_with_the_rl_decoder(chain, corpus, tmp_path):
    sft = MemCompForCausalLM.from_pretrained(chain / "sft").eval()
    rl = MemCompForCausalLM.from_pretrained(chain / "rl").eval()
    assert rl.config.separate_encoder and not sft.config.separate_encoder
    assert (sft.config.prompt_template, rl.config.prompt_template) == ("chat", "rl")
    text = " ".join(corpus[:3])
    assert torch.equal(rl.compress(text).embeds, sft.compress(text).embeds)  # bit for bit
    assert rl.fingerprint == sft.fingerprint  # stores and precomputed datasets key memories by the encoder
    decoder, reference = rl.language_model.state_dict(), sft.language_model.state_dict()
    assert any(not torch.equal(decoder[k], reference[k]) for k in reference), "RL did not change the decoder"
    assert rl.decoder_fingerprint != sft.decoder_fingerprint
    # save / reload round trip keeps both halves
    rl.save_pretrained(tmp_path / "again")
    again = MemCompForCausalLM.from_pretrained(tmp_path / "again").eval()
    assert again.state_dict().keys() == rl.state_dict().keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in rl.state_dict().items())


@pytest.mark.slow
def test_a_killed_rl_run_resumes_from_its_last_checkpoint(chain, tmp_path):
    argv = ["--config", "examples/configs/rl_tiny.yaml", "--model", str(chain / "sft"), "--memory_dataset",
            str(chain / "rl_memory"), "--output_dir", str(tmp_path / "rl"), "--save_strategy", "steps", "--save_steps", "2",
            "--disable_tqdm", "true"]  # a checkpoint per rollout batch (two optimizer steps each)
    run_script("train_rl.py", *argv, "--max_steps", "2")  # as if killed after its first rollout batch's checkpoint
    log = run_script("train_rl.py", *argv, "--max_steps", "4", "--resume_from_checkpoint", "last")
    assert f"resuming from {tmp_path / 'rl' / 'checkpoint-2'}" in log
    state = json.loads((tmp_path / "rl" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


@pytest.mark.slow
def test_evaluation_of_the_rl_folder_alone_equals_sft_encoder_plus_rl_decoder(chain, tmp_path):
    from benchmarks.eval import EvalArguments, qa
    from benchmarks.eval.loaders import load_qa

    datasets = dict([load_qa(f"hotpotqa={FIXTURES / 'eval' / 'hotpotqa.jsonl'}")])
    rl = MemCompForCausalLM.from_pretrained(chain / "rl").eval()
    common = dict(systems=["memcomp"], temperature=0.0, max_new_tokens=8, limit=3)
    alone = qa.evaluate(rl, EvalArguments(model=str(chain / "rl"), output_dir=str(tmp_path / "a"), **common), datasets)
    explicit = qa.evaluate(
        rl, EvalArguments(model=str(chain / "rl"), encoder_model=str(chain / "sft"), output_dir=str(tmp_path / "b"), **common),
        datasets,
    )
    responses = lambda result: [(r["id"], r["response"], r.get("accuracy")) for r in result["records"]]  # noqa: E731
    assert responses(alone) == responses(explicit) and len(responses(alone)) == 3
