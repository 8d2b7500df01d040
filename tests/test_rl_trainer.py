"""RL stage on a tiny model: precomputed memories, memory-aware rollouts and log-probs, dynamic sampling, training."""

import json
import sys
from pathlib import Path

import pytest
import torch

from modeling_memcomp.prompting import build_prompt
from trainers import MemCompGRPOConfig, MemCompGRPOTrainer
from trainers.grpo import derive_batches
from trainers.judges import MatchJudge
from trainers.precompute import load_rows, precompute_memory
from trainers.rewards import JudgeReward, OverlongPenalty

QA = Path(__file__).parent / "fixtures" / "rl" / "qa.jsonl"
TINY = dict(
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=8,
    overlong_buffer=4,
    rollout_batch_prompts=2,  # one rollout batch of 8 completions = one optimizer step
    mini_batch_prompts=2,
    lr_warmup_rollouts=0,
    learning_rate=1e-3,
    gradient_checkpointing=False,
    use_cpu=True,
    bf16=False,
    report_to=[],
    save_strategy="no",
    logging_steps=1,
    seed=0,
)


@pytest.fixture(scope="module")
def rl_model(tokenizer):
    from modeling_memcomp.tiny import build_tiny_memcomp

    return build_tiny_memcomp(tokenizer, chunk_size=16)


@pytest.fixture(scope="module")
def rl_data(rl_model):
    return precompute_memory(rl_model, load_rows(str(QA)))


def _trainer(model, data, tmp_path, **overrides):
    args = MemCompGRPOConfig(output_dir=str(tmp_path), **{**TINY, **overrides})
    return MemCompGRPOTrainer(model, args=args, train_dataset=data, judge=MatchJudge())


# ------------------------------------------------------------------ config
def test_config_defaults_are_table_10(tmp_path):
    args = MemCompGRPOConfig(output_dir=str(tmp_path), use_cpu=True)  # the defaults, nothing else
    assert (args.learning_rate, args.loss_type) == (1e-6, "dapo")
    assert (args.epsilon, args.epsilon_high, args.beta) == (0.2, 0.28, 0.0)
    assert (args.temperature, args.num_generations, args.max_completion_length, args.max_prompt_length) == (1.0, 16, 600, 1024)
    assert (args.overlong_buffer, args.overlong_penalty_factor) == (100, 0.5)
    # 128 prompts per rollout batch, 64 per optimizer step: two optimizer steps per rollout batch
    assert args.generation_batch_size == 128 * 16
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size == 64 * 16
    assert args.optimizer_steps_per_rollout == 2
    # warm-ups count rollout batches as VERL does: LR over 10 of them, dynamic sampling after 25
    assert (args.lr_warmup_rollouts, args.warmup_steps) == (10, 20)
    assert (args.dynamic_sampling, args.dynamic_sampling_warmup_rollouts) == (True, 25)
    assert (args.template, args.system_prompt) == ("rl", None)


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_prompts_per_step_do_not_depend_on_the_world_size(world_size):
    accumulation, generation = derive_batches(8, 16, 128, 64, world_size)
    assert 8 * world_size * accumulation == 64 * 16 and generation == 128 * 16
    with pytest.raises(ValueError, match="not a multiple of per_device_train_batch_size x world size"):
        derive_batches(48, 16, 128, 64, world_size)
    with pytest.raises(ValueError, match="multiple of mini_batch_prompts"):
        derive_batches(8, 16, 100, 64, world_size)


def test_config_from_yaml_with_cli_override(tmp_path):
    from trl import TrlParser

    config = tmp_path / "rl.yaml"
    config.write_text(f"output_dir: {tmp_path}\nnum_generations: 8\nper_device_train_batch_size: 8\nuse_cpu: true\nbf16: false\n")
    (args,) = TrlParser((MemCompGRPOConfig,)).parse_args_and_config(["--config", str(config), "--epsilon_high", "0.3"])
    assert args.num_generations == 8 and args.epsilon_high == 0.3 and args.learning_rate == 1e-6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(use_vllm=True), "rollout_backend='vllm'"),
        (dict(rollout_backend="sglang"), "rollout_backend must be"),
        # values the Table 10 batch settings would otherwise replace without a word
        (dict(gradient_accumulation_steps=4), r"gradient_accumulation_steps=4 conflicts with mini_batch_prompts=64 \(64 at"),
        (dict(warmup_steps=50), r"warmup_steps=50 conflicts with lr_warmup_rollouts=10 \(20 optimizer steps\)"),
        # a checkpoint must not cut a rollout batch: its buffered rollouts are not saved
        (dict(save_steps=25), r"save_steps=25 would save checkpoints inside a rollout batch \(2 optimizer steps each\)"),
        (dict(max_steps=25), r"max_steps=25 would end training, and write its last checkpoint, inside a rollout batch"),
        (dict(save_steps=0.5), r"save_steps=0.5 \(a fraction of max_steps\) is not supported here"),
        (dict(generation_batch_size=1024), r"generation_batch_size=1024 conflicts with rollout_batch_prompts=128 \(2048 at"),
        # settings that would otherwise crash later or silently do something else
        (dict(beta=0.04), r"beta=0.04: a KL term is not supported here .* Set beta=0"),
        (dict(overlong_penalty_factor=-0.5), r"overlong_penalty_factor must be >= 0 \(0 disables the penalty\), got -0.5"),
        (dict(epsilon=0.3), r"epsilon_high=0.28 is below epsilon=0.3: DAPO's clip-higher needs epsilon_high >= epsilon"),
    ],
)
def test_config_rejects_token_id_vllm_and_unknown_backends(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MemCompGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, use_cpu=True, bf16=False, **kwargs)


def test_config_survives_dataclasses_replace(tmp_path):
    import dataclasses

    args = MemCompGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, use_cpu=True, bf16=False)
    changed = dataclasses.replace(args, learning_rate=2e-6)
    assert changed.learning_rate == 2e-6
    for name in ("generation_batch_size", "steps_per_generation", "gradient_accumulation_steps", "warmup_steps"):
        assert getattr(changed, name) == getattr(args, name), name
    raw = MemCompGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, use_cpu=True, bf16=False,
                            rollout_batch_prompts=None, generation_batch_size=4096)
    assert dataclasses.replace(raw, learning_rate=2e-6).generation_batch_size == 4096


def test_config_needs_whole_prompt_groups_per_process_for_dynamic_sampling(tmp_path, monkeypatch):
    monkeypatch.setattr(MemCompGRPOConfig, "world_size", property(lambda self: 2))  # two ranks, as TRL sees them
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=6, num_generations=4, generation_batch_size=12,
                    rollout_batch_prompts=None, mini_batch_prompts=None, use_cpu=True, bf16=False)  # 6 rows per rank
    with pytest.raises(ValueError, match=r"per-process generation batch .* = 6\) must be a multiple of num_generations \(4\)"):
        MemCompGRPOConfig(**settings)
    assert MemCompGRPOConfig(**settings, dynamic_sampling=False).generation_batch_size == 12


def test_config_allows_a_mid_rollout_end_when_nothing_is_saved(tmp_path):
    args = MemCompGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, use_cpu=True, bf16=False,
                             max_steps=25, save_strategy="no")
    assert args.optimizer_steps_per_rollout == 2 and args.max_steps == 25


# ------------------------------------------------------------------ precompute
def test_precompute_stores_exactly_what_compress_gives(rl_model, rl_data):
    rows = load_rows(str(QA))
    assert len(rl_data) == len(rows)
    for i in (0, 5):
        memory = rl_model.compress(rows[i]["context"])
        stored = torch.tensor(rl_data[i]["memory"])
        assert torch.equal(stored, memory.embeds.float())
        assert rl_data[i]["num_memory"] == len(memory) and rl_data[i]["prompt"] == rows[i]["question"]
        prompt = build_prompt(rl_model.tokenizer, rl_model.config, len(memory), rows[i]["question"], template="rl")
        assert rl_data[i]["prompt_length"] == len(prompt.input_ids)


def test_precompute_drops_overlong_prompts_and_names_missing_columns(rl_model):
    rows = load_rows(str(QA))
    shortest = min(precompute_memory(rl_model, rows.select([0, 1]))["prompt_length"])
    kept = precompute_memory(rl_model, rows.select([0, 1]), max_prompt_length=shortest)
    assert 1 <= len(kept) <= 2 and all(n <= shortest for n in kept["prompt_length"])
    with pytest.raises(ValueError, match="context_column="):
        precompute_memory(rl_model, rows.rename_column("context", "passage"))


# ------------------------------------------------------------------ trainer plumbing
def test_precomputed_rows_follow_the_columns_read_even_from_the_datasets_cache(rl_model, tmp_path):
    from datasets import load_dataset

    rows = load_rows(str(QA)).select([0, 1])
    rows = rows.add_column("query", [f"ALT {q}" for q in rows["question"]])
    rows.to_json(tmp_path / "qa.jsonl")
    cached = load_dataset("json", data_files=str(tmp_path / "qa.jsonl"), cache_dir=str(tmp_path / "cache"))["train"]
    assert precompute_memory(rl_model, cached)["question"] == rows["question"]
    assert precompute_memory(rl_model, cached, question_column="query")["question"] == rows["query"]  # not the cached rows


def test_precompute_refuses_a_memory_float16_cannot_hold(tokenizer):
    from modeling_memcomp.tiny import build_tiny_memcomp

    model = build_tiny_memcomp(tokenizer, chunk_size=16)
    with torch.no_grad():
        model.memory_projection.weight.mul_(1e7)  # memories beyond float16's range (65504)
    rows = load_rows(str(QA)).select([0])
    assert torch.isfinite(torch.tensor(precompute_memory(model, rows)["memory"][0])).all()  # float32 holds them
    with pytest.raises(ValueError, match=r"row 0: its memory is not finite in float16 .* store float32 \(--dtype float32\)"):
        precompute_memory(model, rows, dtype="float16")
    with pytest.raises(ValueError, match=r"row 5: its memory"):  # a rank's shard names the row in the whole dataset
        precompute_memory(model, rows, dtype="float16", first_row=5)


def test_shard_start_is_where_datasets_puts_each_contiguous_shard():
    from datasets import Dataset

    from trainers.precompute import shard_start

    for num_rows in (5, 7, 8, 13):  # datasets cannot cut fewer rows than shards
        rows = Dataset.from_dict({"i": list(range(num_rows))})
        for num_shards in (1, 2, 3, 5):
            starts = [shard_start(num_rows, num_shards, k) for k in range(num_shards)]
            assert [rows.shard(num_shards, k, contiguous=True)["i"][0] for k in range(num_shards)] == starts


def test_rl_refuses_memories_another_encoder_made(rl_model, tokenizer, tmp_path, caplog):
    import logging
    from types import SimpleNamespace

    from modeling_memcomp.tiny import build_tiny_memcomp
    from trainers.precompute import check_memory_source, write_metadata

    write_metadata(tmp_path, rl_model, SimpleNamespace(model="sft-a", template="rl"), 3)
    check_memory_source(tmp_path, rl_model, "sft-a", num_rows=3)  # its own memories
    with pytest.raises(ValueError, match=r"holds 2 rows but its memcomp_memory.json records 3: a precompute run into it was cut short"):
        check_memory_source(tmp_path, rl_model, "sft-a", num_rows=2)
    with pytest.raises(ValueError, match=r"compressed by sft-a \(fingerprint \w+\), not by sft-b .* Re-run examples/precompute_memory.py --model sft-b"):
        check_memory_source(tmp_path, build_tiny_memcomp(tokenizer, chunk_size=16, seed=1), "sft-b")
    with pytest.raises(ValueError, match=r"memories of \{'chunk_size': 16, 'hidden_size': 64\} from sft-a, sft-c makes \{'chunk_size': 8"):
        check_memory_source(tmp_path, build_tiny_memcomp(tokenizer, chunk_size=8), "sft-c")
    with caplog.at_level(logging.WARNING, logger="trainers.precompute"):
        check_memory_source(tmp_path, build_tiny_memcomp(tokenizer, chunk_size=16, seed=1).to(torch.bfloat16), "sft-a")
        assert "loaded in float32, and sft-a is loaded in bfloat16: their fingerprints cannot be compared" in caplog.text
        check_memory_source(tmp_path / "elsewhere", rl_model, "sft-a")
        assert "nothing records which model compressed it" in caplog.text
        meta = json.loads((tmp_path / "memcomp_memory.json").read_text())
        (tmp_path / "memcomp_memory.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "model_dtype"}))
        check_memory_source(tmp_path, build_tiny_memcomp(tokenizer, chunk_size=16, seed=1), "sft-b")  # an older record
        assert "loaded in a dtype it did not record" in caplog.text


def test_trainer_rejects_bad_inputs(rl_model, rl_data, tmp_path):
    with pytest.raises(ValueError, match="precompute_memory"):
        _trainer(rl_model, rl_data.remove_columns("memory"), tmp_path)
    with pytest.raises(TypeError, match="MemCompForCausalLM"):
        MemCompGRPOTrainer(torch.nn.Linear(2, 2), args=MemCompGRPOConfig(output_dir=str(tmp_path), **TINY))
    with pytest.raises(ValueError, match="not both"):
        MemCompGRPOTrainer(rl_model, reward_funcs=[OverlongPenalty()], judge=MatchJudge(),
                           args=MemCompGRPOConfig(output_dir=str(tmp_path), **TINY), train_dataset=rl_data)
    with pytest.raises(ValueError, match="the RL dataset has no rows: .* drops rows whose prompt exceeds"):
        _trainer(rl_model, rl_data.select([]), tmp_path)


def test_a_misspelt_dynamic_sampling_metric_fails_at_construction(rl_model, rl_data, tmp_path):
    with pytest.raises(ValueError, match=r"dynamic_sampling_metric='acuracy' is not a reward function; choose one of \['judge'"):
        _trainer(rl_model, rl_data, tmp_path, dynamic_sampling_metric="acuracy")


def test_rollouts_run_in_bf16_when_training_in_bf16(tokenizer, rl_data, tmp_path, monkeypatch):
    import modeling_memcomp.vllm_backend as backend
    from safetensors import safe_open

    from modeling_memcomp.tiny import build_tiny_memcomp

    started = []
    monkeypatch.setattr(backend, "require_vllm", lambda: None)
    monkeypatch.setattr(backend, "VLLMDecoder", lambda folder, **settings: started.append((folder, settings)) or "engine")
    def without_launcher_env():  # _start_vllm sets them, and a config built with them set starts a process group
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.setenv(key, "")  # records the value before the test (delenv of an unset one records nothing)
            monkeypatch.delenv(key)

    without_launcher_env()

    def exported_dtypes(folder):
        with safe_open(str(Path(folder) / "model.safetensors"), framework="pt") as saved:
            return {saved.get_slice(k).get_dtype() for k in saved.keys()}, json.loads((Path(folder) / "config.json").read_text())["dtype"]

    model = build_tiny_memcomp(tokenizer, chunk_size=16).to(torch.bfloat16)  # as train_rl.py loads it with --bf16
    trainer = _trainer(model, rl_data, tmp_path, bf16=True, rollout_backend="vllm")
    folder, settings = started[-1]
    assert exported_dtypes(folder) == ({"BF16"}, "bfloat16") and "dtype" not in settings  # not the float32 masters
    assert all(p.dtype == torch.float32 for p in model.language_model.parameters())  # the masters are untouched
    # HF rollouts: generate under the trainer's bf16 autocast
    seen = []
    model.language_model.register_forward_pre_hook(lambda *unused: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    trainer._vllm = None
    memory, lengths = trainer._batch_memory([rl_data[0]])
    with trainer._using_memory(memory, lengths):
        prompt_ids, _, _ = trainer._tokenize_prompts([rl_data[0]["prompt"]])
        trainer._generate_single_turn(prompt_ids, None, {}, 1)
    assert seen and set(seen) == {torch.bfloat16}
    # a dtype given for the vLLM engine wins
    without_launcher_env()
    _trainer(build_tiny_memcomp(tokenizer, chunk_size=16), rl_data, tmp_path, bf16=True, rollout_backend="vllm",
             vllm_decoder_kwargs={"dtype": "float32"})
    folder, settings = started[-1]
    assert exported_dtypes(folder) == ({"F32"}, "float32") and settings["dtype"] == "float32"


def test_a_failed_judgement_keeps_its_prompt_group_out_of_training(rl_model, rl_data, tmp_path):
    from trainers.judges import LLMJudge

    class Backend:  # the first judgement of question 0 times out; question 1's answers are half right
        def __init__(self):
            self.calls = {0: 0, 1: 0}

        def complete(self, prompt):
            q = 0 if rl_data[0]["question"] in prompt else 1
            self.calls[q] += 1
            if q == 0 and self.calls[q] == 1:
                raise TimeoutError("judge timed out")
            return "Verdict: CORRECT" if q == 0 or self.calls[q] % 2 else "Verdict: INCORRECT"

    args = MemCompGRPOConfig(output_dir=str(tmp_path), **TINY)
    trainer = MemCompGRPOTrainer(rl_model, args=args, train_dataset=rl_data, judge=LLMJudge(Backend(), retries=0))
    trainer.model.train()
    output = trainer._score([rl_data[0]] * 4 + [rl_data[1]] * 4)
    rewards = trainer._last_rewards_per_func
    assert torch.isnan(rewards[:4]).all() and not torch.isnan(rewards[4:]).any()  # judge and overlong penalty alike
    assert rewards[4:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert output["advantages"][:4].tolist() == [0.0] * 4  # its three right answers get no negative advantage
    assert output["advantages"][4:].abs().min() > 0
    assert trainer._metrics["train"]["judge/failed_groups"][-1] == 1


def test_deepspeed_runs_warn_that_empty_steps_still_step(greedy_trainer, monkeypatch, caplog):
    import logging

    from trainers.grpo import SkipEmptySteps

    trainer = greedy_trainer
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, SkipEmptySteps))
    with caplog.at_level(logging.WARNING, logger="trainers.grpo"):
        callback.on_train_begin(trainer.args, trainer.state, trainer.control)
        assert "DeepSpeed" not in caplog.text
        monkeypatch.setattr(trainer, "is_deepspeed_enabled", True)
        callback.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert "still runs AdamW" in caplog.text


def test_precompute_refuses_to_save_an_empty_rl_dataset(rl_model, tmp_path):
    from trainers.precompute import PrecomputeArguments, run

    rl_model.save_pretrained(tmp_path / "sft")
    args = PrecomputeArguments(model=str(tmp_path / "sft"), dataset=str(QA), output_dir=str(tmp_path / "memory"),
                               max_prompt_length=1, device="cpu")
    with pytest.raises(ValueError, match="no row of .* is left to save: every prompt exceeds --max_prompt_length 1"):
        run(args)
    assert not (tmp_path / "memory").exists()


def test_a_precompute_run_cut_short_leaves_no_record_of_the_run_before(rl_model, tmp_path, monkeypatch):
    from datasets import Dataset

    from trainers.precompute import PrecomputeArguments, check_memory_source, read_metadata, run

    rl_model.save_pretrained(tmp_path / "sft")
    args = PrecomputeArguments(model=str(tmp_path / "sft"), dataset=str(QA), output_dir=str(tmp_path / "memory"), device="cpu")
    run(args)
    assert read_metadata(tmp_path / "memory")["num_rows"] > 0

    def killed(self, *unused, **also_unused):
        raise KeyboardInterrupt  # the process dies while the rows are being rewritten

    monkeypatch.setattr(Dataset, "save_to_disk", killed)
    with pytest.raises(KeyboardInterrupt):
        run(args)
    assert read_metadata(tmp_path / "memory") == {"in_progress": True}
    with pytest.raises(ValueError, match="was being written by examples/precompute_memory.py, which did not finish"):
        check_memory_source(tmp_path / "memory", rl_model, str(tmp_path / "sft"))


def test_rollout_backend_auto_falls_back_to_hf_and_vllm_explains(tokenizer, rl_data, tmp_path, monkeypatch):
    from modeling_memcomp.tiny import build_tiny_memcomp

    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM absent, whatever this environment has
    trainer = _trainer(build_tiny_memcomp(tokenizer), rl_data, tmp_path, rollout_backend="auto")
    assert trainer._vllm is None
    with pytest.raises(ImportError, match="rollout_backend='vllm' needs vLLM.*make_vllm_env.sh"):
        _trainer(build_tiny_memcomp(tokenizer), rl_data, tmp_path, rollout_backend="vllm")


@pytest.fixture(scope="module")
def greedy_trainer(tokenizer, rl_data, tmp_path_factory):
    from modeling_memcomp.tiny import build_tiny_memcomp

    model = build_tiny_memcomp(tokenizer, chunk_size=16)
    return _trainer(model, rl_data, tmp_path_factory.mktemp("rl"), generation_kwargs={"do_sample": False})


def test_reward_functions_are_judge_then_overlong_penalty(greedy_trainer):
    assert greedy_trainer.reward_func_names == ["judge", "overlong_penalty"]
    assert isinstance(greedy_trainer.reward_funcs[0], JudgeReward)


def test_hf_rollouts_equal_model_generate_greedy(greedy_trainer, rl_data):
    trainer, model = greedy_trainer, greedy_trainer.model
    rows = [rl_data[i] for i in (0, 3)]
    memory, lengths = trainer._batch_memory(rows)
    with trainer._using_memory(memory, lengths):
        prompt_ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
        completions, _ = trainer._generate_single_turn(prompt_ids, None, {}, 1)
    from modeling_memcomp.memory import MemoryEmbeddings

    for row, ids, completion in zip(rows, prompt_ids, completions):
        expected_ids = build_prompt(model.tokenizer, model.config, row["num_memory"], row["prompt"], template="rl").input_ids
        assert ids == expected_ids
        mem = MemoryEmbeddings(torch.tensor(row["memory"]), 16, 16 * row["num_memory"], "0" * 64,
                               model_fingerprint=model.fingerprint)
        text = model.generate(memory=mem, question=row["prompt"], template="rl", do_sample=False,
                              max_new_tokens=8, repetition_penalty=1.0)
        assert model.tokenizer.decode(completion, skip_special_tokens=True).strip() == text


def test_policy_logps_use_the_memory(greedy_trainer, rl_data):
    trainer, model = greedy_trainer, greedy_trainer.model
    rows = [rl_data[i] for i in (1, 2)]
    memory, lengths = trainer._batch_memory(rows)
    with trainer._using_memory(memory, lengths):
        prompt_ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    width = max(map(len, prompt_ids))
    completion = torch.tensor([[5, 6, 7], [8, 9, 10]])
    input_ids = torch.stack([torch.tensor([model.tokenizer.pad_token_id] * (width - len(p)) + p) for p in prompt_ids])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompt_ids])[:, None]).long()
    input_ids, mask = torch.cat([input_ids, completion], 1), torch.cat([mask, torch.ones_like(completion)], 1)
    with torch.no_grad(), trainer._using_memory(memory):
        logps, entropy, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, mask, 3, compute_entropy=True)
        logits = model.language_model(inputs_embeds=model.embed_inputs(input_ids, memory), attention_mask=mask).logits
    expected = torch.log_softmax(logits[:, -4:-1].float(), -1).gather(-1, completion[..., None])[..., 0]
    torch.testing.assert_close(logps, expected, atol=1e-5, rtol=1e-5)
    assert entropy.shape == (2, 3)
    with torch.no_grad(), trainer._using_memory(torch.zeros_like(memory)):
        blind, _, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, mask, 3)
    assert not torch.allclose(blind, logps)  # the memory, not just the ids, decides the log-probs


def _fake_rounds(trainer, tables):
    """Replace the rollout-and-score round by one that returns rows numbered by round and the given judge rewards,
    with an overlong-penalty column that always varies (so only the accuracy decides what is kept)."""
    calls = []
    tables = iter(tables)

    def fake_score(batch):
        rewards = torch.tensor(next(tables), dtype=torch.float)
        trainer._last_rewards_per_func = torch.stack([rewards, -torch.arange(8, dtype=torch.float) / 8], dim=1)
        calls.append(batch)
        return {
            "prompt_ids": torch.zeros(8, 3 + len(calls), dtype=torch.long),
            "prompt_mask": torch.ones(8, 3 + len(calls), dtype=torch.long),
            "completion_ids": torch.zeros(8, 2, dtype=torch.long),
            "completion_mask": torch.ones(8, 2, dtype=torch.long),
            "advantages": torch.arange(8, dtype=torch.float) + 100 * (len(calls) - 1) + 1,
            "memory_embeds": torch.zeros(8, 1, 4),
            "num_items_in_batch": torch.tensor(16),
        }

    return fake_score, calls


def test_dynamic_sampling_keeps_varied_accuracy_groups_and_refills(greedy_trainer, rl_data, monkeypatch):
    trainer, group = greedy_trainer, greedy_trainer.num_generations  # 4 -> 2 groups per batch of 8
    fake, calls = _fake_rounds(trainer, [[0, 0, 0, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0]])
    monkeypatch.setattr(trainer, "_score", fake)
    merged = trainer._dynamic_sampling([rl_data[i // group] for i in range(8)])
    # round 1 keeps group 1 (rows 5-8), round 2 nothing, round 3 group 0 (rows 201-204): a full batch, no fillers
    assert merged["advantages"].tolist() == [5, 6, 7, 8, 201, 202, 203, 204]
    assert len(calls) == 3 and all(len(b) == 8 for b in calls[1:])
    assert int(merged["num_items_in_batch"]) == 16 and merged["completion_mask"].all()
    assert merged["prompt_ids"].shape == (8, 6)
    metrics = trainer._metrics["train"]
    assert metrics["dynamic_sampling/filtered_ratio"][-1] == pytest.approx(4 / 6)
    assert (metrics["dynamic_sampling/kept_groups"][-1], metrics["dynamic_sampling/dropped_groups"][-1]) == (2, 4)
    assert (metrics["dynamic_sampling/rounds"][-1], metrics["dynamic_sampling/filler_groups"][-1]) == (3, 0)


def test_when_the_round_limit_is_hit_only_varied_groups_train(greedy_trainer, rl_data, monkeypatch):
    trainer = greedy_trainer
    monkeypatch.setattr(trainer.args, "dynamic_sampling_max_tries", 1)
    fake, calls = _fake_rounds(trainer, [[0, 1, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0]])
    monkeypatch.setattr(trainer, "_score", fake)
    merged = trainer._dynamic_sampling([rl_data[0]] * 8)
    assert len(calls) == 2
    assert merged["advantages"].tolist() == [1, 2, 3, 4, 0, 0, 0, 0]  # group 0 kept; group 1 (all right) never trains
    assert merged["completion_mask"][:4].all() and not merged["completion_mask"][4:].any()
    assert int(merged["num_items_in_batch"]) == 8  # the fillers' tokens are not counted
    metrics = trainer._metrics["train"]
    assert (metrics["dynamic_sampling/filler_groups"][-1], metrics["dynamic_sampling/limit_hit"][-1]) == (1, 1)
    assert metrics["dynamic_sampling/nothing_to_train"][-1] == 0


def test_dynamic_sampling_drops_groups_whose_judgement_failed(greedy_trainer, rl_data, monkeypatch):
    trainer, nan = greedy_trainer, float("nan")  # a group with a failed judgement has NaN rewards throughout
    fake, calls = _fake_rounds(trainer, [[nan] * 4 + [1, 0, 1, 0], [0, 1, 0, 0] + [nan] * 4])
    monkeypatch.setattr(trainer, "_score", fake)
    merged = trainer._dynamic_sampling([rl_data[0]] * 8)
    assert merged["advantages"].tolist() == [5, 6, 7, 8, 101, 102, 103, 104]
    assert trainer._metrics["train"]["dynamic_sampling/dropped_groups"][-1] == 2


def test_warmups_count_rollout_batches(greedy_trainer, rl_data, monkeypatch):
    trainer = greedy_trainer
    monkeypatch.setattr(trainer.args, "dynamic_sampling_warmup_rollouts", 3)
    monkeypatch.setattr(type(trainer.args), "optimizer_steps_per_rollout", property(lambda self: 2))
    monkeypatch.setattr(trainer, "_score", lambda batch: "unfiltered")
    monkeypatch.setattr(trainer, "_dynamic_sampling", lambda batch: "filtered")
    trainer.model.train()
    seen = []
    for step in (0, 5, 6, 7):  # rollout batches done: 0, 2, 3, 3
        trainer.state.global_step = step
        seen.append(trainer._generate_and_score_completions([rl_data[0]] * 8))
    trainer.state.global_step = 0
    assert seen == ["unfiltered", "unfiltered", "filtered", "filtered"]


@pytest.mark.slow
def test_groups_constant_in_accuracy_never_train_whatever_their_other_rewards(tokenizer, rl_data, tmp_path):
    """Every answer is wrong (accuracy constant) while a second reward varies within each group, as the overlong
    penalty does when lengths vary: dynamic sampling must leave nothing to train on, so the gradient is zero, the step
    is skipped and the weights (AdamW with weight decay) do not move."""
    from modeling_memcomp.tiny import build_tiny_memcomp

    def shape_reward(completion_ids, **unused):
        return [float(sum(ids) % 5) for ids in completion_ids]

    model = build_tiny_memcomp(tokenizer, chunk_size=16).train()
    impossible = rl_data.map(lambda row: {"answer": "no completion can ever be this answer"})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = MemCompGRPOConfig(
        output_dir=str(tmp_path), **{**TINY, "max_steps": 1, "dynamic_sampling_warmup_rollouts": 0,
                                      "dynamic_sampling_max_tries": 1, "weight_decay": 0.1},
    )
    trainer = MemCompGRPOTrainer(model, reward_funcs=[JudgeReward(MatchJudge()), shape_reward], args=args, train_dataset=impossible)
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["rewards/judge/mean"] == 0 and log["rewards/shape_reward/std"] > 0  # the total reward did vary
    assert log["dynamic_sampling/nothing_to_train"] == 1 and log["dynamic_sampling/skipped_steps"] == 1
    assert log["grad_norm"] == 0
    after = dict(model.named_parameters())
    assert all(torch.equal(p, after[name]) for name, p in before.items())
    assert not trainer.optimizer.state, "the skipped step advanced AdamW's moments and step count"


# ------------------------------------------------------------------ end to end
def shape_reward(completion_ids, **unused):
    """A reward that varies within groups (an untrained tiny model never answers right, so accuracy cannot)."""
    return [float(sum(ids) % 5) for ids in completion_ids]


def test_a_bf16_policy_learns_at_table_10s_lr_with_float32_master_weights(tokenizer, rl_data, tmp_path):
    from modeling_memcomp.tiny import build_tiny_memcomp

    model = build_tiny_memcomp(tokenizer, chunk_size=16).to(torch.bfloat16)  # as train_rl.py loads it with --bf16
    before = {name: p.detach().float().clone() for name, p in model.named_parameters()}
    settings = {**TINY, "max_steps": 1, "learning_rate": 1e-6, "bf16": True, "dynamic_sampling_warmup_rollouts": 1}
    trainer = MemCompGRPOTrainer(model, reward_funcs=[shape_reward], args=MemCompGRPOConfig(output_dir=str(tmp_path), **settings),
                                 train_dataset=rl_data)
    trainer.train()
    decoder = {name: p for name, p in model.named_parameters() if name.startswith("language_model.model.layers.")}
    assert all(p.dtype == torch.float32 for p in decoder.values())  # the trained weights, held in float32
    changed = [name for name, p in decoder.items() if not torch.equal(p.detach(), before[name])]
    assert len(changed) == len(decoder), "in bf16 an LR 1e-6 step rounds away on most weights"
    assert all(p.dtype == torch.bfloat16 for p in model.memory_encoder.parameters())  # frozen: as loaded, unchanged
    assert all(torch.equal(p.float(), before[f"language_model.model.{n}"]) for n, p in model.memory_encoder.named_parameters())
    trainer.save_model(str(tmp_path / "rl"))  # the final model: as large as the one loaded, the masters kept
    from safetensors import safe_open

    with safe_open(str(tmp_path / "rl" / "model.safetensors"), framework="pt") as saved:
        assert {saved.get_slice(k).get_dtype() for k in saved.keys()} == {"BF16"}
    assert all(p.dtype == torch.float32 for p in decoder.values())
    with pytest.raises(ValueError, match="are torch.bfloat16 and bf16/fp16 autocast is off, so .* pass --bf16 true"):
        _trainer(build_tiny_memcomp(tokenizer, chunk_size=16).to(torch.bfloat16), rl_data, tmp_path)


@pytest.mark.slow
def test_tiny_rl_run_trains_decoder_only_and_saves_the_rl_checkpoint(tokenizer, rl_data, tmp_path, corpus):
    from modeling_memcomp import MemCompForCausalLM
    from modeling_memcomp.tiny import build_tiny_memcomp

    model = build_tiny_memcomp(tokenizer, chunk_size=16).train()
    sft_memory = model.compress(corpus[0])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = MemCompGRPOConfig(
        output_dir=str(tmp_path), **{**TINY, "max_steps": 2, "dynamic_sampling_warmup_rollouts": 1, "dynamic_sampling_max_tries": 1}
    )
    trainer = MemCompGRPOTrainer(model, reward_funcs=[shape_reward, JudgeReward(MatchJudge())], args=args, train_dataset=rl_data)
    trainer.train()
    after = dict(model.named_parameters())
    changed = {name for name, p in before.items() if not torch.equal(p, after[name])}
    assert "memory_projection.weight" not in changed
    assert any(name.startswith("language_model.model.layers.") for name in changed)
    assert not any(p.requires_grad for p in model.memory_encoder.parameters())
    logs = {key for entry in trainer.state.log_history for key in entry}
    assert {"rewards/judge/mean", "rewards/overlong_penalty/mean", "dynamic_sampling/filtered_ratio"} <= logs
    assert trainer.state.log_history[0]["dynamic_sampling/active"] == 0.0
    # The saved RL checkpoint: SFT encoder (same memories, bit for bit), RL decoder, its template recorded.
    trainer.save_model(str(tmp_path / "rl"))
    reloaded = MemCompForCausalLM.from_pretrained(tmp_path / "rl").eval()
    assert reloaded.config.separate_encoder and reloaded.config.prompt_template == "rl"
    assert torch.equal(reloaded.compress(corpus[0]).embeds, sft_memory.embeds)
    assert reloaded.fingerprint == sft_memory.model_fingerprint
    assert not torch.equal(reloaded.language_model.model.layers[0].mlp.up_proj.weight, before["language_model.model.layers.0.mlp.up_proj.weight"])


def test_a_resumed_run_draws_the_refills_the_uninterrupted_run_draws(rl_model, rl_data, tmp_path):
    import copy

    impossible = rl_data.map(lambda row: {"answer": "no completion can ever be this answer"})  # every group refilled
    settings = {**TINY, "save_strategy": "steps", "save_steps": 1, "dynamic_sampling_warmup_rollouts": 0,
                "dynamic_sampling_max_tries": 1, "max_steps": 4}

    def refills(output_dir, resume=None, max_steps=4):
        args = MemCompGRPOConfig(output_dir=str(output_dir), **{**settings, "max_steps": max_steps})
        trainer = MemCompGRPOTrainer(copy.deepcopy(rl_model), args=args, train_dataset=impossible, judge=MatchJudge())
        drawn, draw = [], trainer._next_refill_batch

        def recorded(size):
            batch = draw(size)
            drawn.append((trainer.state.global_step, [row["question"] for row in batch]))
            return batch

        trainer._next_refill_batch = recorded
        trainer.train(resume_from_checkpoint=resume)
        return drawn

    straight = refills(tmp_path / "straight")
    refills(tmp_path / "killed", max_steps=2)
    resumed = refills(tmp_path / "killed", resume=True)
    assert [step for step, _ in resumed] == [2, 3] and resumed == [d for d in straight if d[0] >= 2]


def test_resume_skips_a_checkpoint_torn_by_a_kill(rl_model, rl_data, tmp_path, caplog):
    import copy
    import logging

    from transformers import TrainerCallback

    settings = {**TINY, "save_strategy": "steps", "save_steps": 1, "dynamic_sampling_warmup_rollouts": 1,
                "dynamic_sampling_max_tries": 1}
    _trainer(copy.deepcopy(rl_model), rl_data, tmp_path, **{**settings, "max_steps": 2}).train()
    (tmp_path / "checkpoint-3").mkdir()  # killed right after creating the next checkpoint folder
    trainer = _trainer(copy.deepcopy(rl_model), rl_data, tmp_path, **{**settings, "max_steps": 3})
    steps = []
    trainer.add_callback(type("Steps", (TrainerCallback,), {"on_step_end": lambda self, args, state, *_, **__: steps.append(state.global_step)}))
    with caplog.at_level(logging.WARNING, logger="trainers.checkpoints"):
        trainer.train(resume_from_checkpoint=True)
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-3 (no trainer_state.json" in caplog.text
    assert f"resuming from {tmp_path / 'checkpoint-2'}" in caplog.text
    assert steps == [3], "trained step 3 only: resumed after step 2"
