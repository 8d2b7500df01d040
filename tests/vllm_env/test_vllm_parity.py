"""vLLM on prompt embeddings decodes the same greedy tokens as HF `generate` (run in .venv-vllm).

    bash scripts/make_vllm_env.sh && .venv-vllm/bin/python -m pytest -m vllm tests/vllm_env

One engine serves both wraps: `wrap` changes only the prompt ids, so the `block` model is given the
`each` model's decoder weights (its encoder-side projection stays its own).
"""

import copy
import os

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default 4 is far more than a tiny model needs

from conftest import in_process_vllm  # noqa: E402
from modeling_memcomp.tiny import build_tiny_memcomp  # noqa: E402
from modeling_memcomp.vllm_backend import VLLMDecoder, build_prompt_embeds, require_vllm  # noqa: E402

pytestmark = pytest.mark.vllm
try:
    require_vllm()
except ImportError as error:
    pytest.skip(str(error), allow_module_level=True)

GREEDY = dict(do_sample=False, max_new_tokens=24, repetition_penalty=1.0)
QUESTIONS = ["What did the engineer build?", "Who watched?", "Where was the map?", "Summarise the story."]
# head_dim 32 (128 / 4): vLLM's CPU attention kernels do not take tiny head sizes.
TINY = dict(hidden_size=128, num_layers=2, config_overrides={"num_attention_heads": 4, "num_key_value_heads": 2})


@pytest.fixture(scope="module")
def models(tokenizer):
    each, block = (build_tiny_memcomp(tokenizer, wrap=wrap, **TINY) for wrap in ("each", "block"))
    block.language_model.load_state_dict(each.language_model.state_dict())
    return {"each": each, "block": block}


@pytest.fixture(scope="module")
def engine(models, tmp_path_factory):
    with in_process_vllm():
        yield VLLMDecoder(models["each"], export_dir=tmp_path_factory.mktemp("decoder"), max_model_len=1024, seed=0,
                          disable_log_stats=False)  # the prefix-cache counters


def hf_greedy_tokens(model, memories, questions) -> list[list[int]]:
    """HF greedy tokens per question, cut after the first stop token (where vLLM stops)."""
    batch = model.prepare_prompts(memories, questions)
    output = model.generate(**batch, **GREEDY)[:, batch["input_ids"].shape[1] :]
    stops = set(model.generation_config.eos_token_id)
    rows = []
    for row in output.tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        rows.append(row[:end])
    return rows


@pytest.mark.parametrize("wrap", ["each", "block"])
def test_vllm_greedy_tokens_equal_hf(models, engine, corpus, wrap):
    model = models[wrap]
    contexts = [corpus[0], " ".join(corpus[1:4]), corpus[5], " ".join(corpus[6:12])]
    memories = [model.compress(context) for context in contexts]
    embeds = build_prompt_embeds(model, memories, QUESTIONS)
    got = engine.generate(embeds, engine.sampling_params(**GREEDY))
    assert got == hf_greedy_tokens(model, memories, QUESTIONS)
    assert all(len(tokens) > 1 for tokens in got)


def test_answer_equals_hf_text(models, engine, corpus):
    model = models["each"]
    memory = model.compress(" ".join(corpus[2:5]))
    expected = model.generate(memory=memory, question=QUESTIONS[:2], **GREEDY)
    assert engine.answer(model, memory, QUESTIONS[:2], **GREEDY) == expected


def test_sync_weights_follows_a_decoder_update(models, engine, corpus):
    model = copy.deepcopy(models["each"])
    with torch.no_grad():
        for parameter in model.language_model.model.layers[-1].parameters():
            parameter.mul_(-2.0)
    memories = [model.compress(corpus[0]), model.compress(corpus[7])]
    expected = hf_greedy_tokens(model, memories, QUESTIONS[:2])
    assert expected != hf_greedy_tokens(models["each"], memories, QUESTIONS[:2])
    try:
        engine.sync_weights(model)
        assert engine.generate(build_prompt_embeds(model, memories, QUESTIONS[:2]), engine.sampling_params(**GREEDY)) == expected
    finally:
        engine.sync_weights(models["each"])


def test_throughput_benchmark_runs_identical_work(models, engine, corpus):
    from benchmarks.vllm_throughput import ThroughputConfig, markdown_table, measure

    config = ThroughputConfig(num_prompts=3, context_lines=2, max_new_tokens=8, hf_batch_size=2, repeats=1)
    result = measure(models["each"], engine, config, corpus)
    assert result["tokens_identical"] and result["generated_tokens"] == 24
    assert result["hf_tokens_per_s"] > 0 and result["vllm_tokens_per_s"] > 0
    assert f"Machine: {result['machine']['cpu']}" in markdown_table(result)


def test_prefix_cache_benchmark_serves_the_shared_memory_from_cache(models, engine):
    from benchmarks.vllm_prefix_cache import PrefixCacheConfig, markdown_table, measure

    config = PrefixCacheConfig(context_tokens=512, num_questions=3, repeats=1)
    result = measure(models["each"], engine, config)
    assert result["prefix_cache_hit_rate"] > 0.5 and result["shared_memory_s"] > 0 and result["separate_memories_s"] > 0
    assert result["config"]["hidden_size"] == TINY["hidden_size"] and "| one memory, 3 questions" in markdown_table(result)


def test_n_samples_per_prompt_come_grouped(models, engine, corpus):
    model = models["each"]
    embeds = build_prompt_embeds(model, [model.compress(corpus[0])], QUESTIONS[:2])
    greedy = engine.generate(embeds, engine.sampling_params(**GREEDY))
    top1 = dict(GREEDY, do_sample=True, temperature=1.0, top_k=1)  # sampling mode (n > 1 allowed), argmax result
    grouped = engine.generate(embeds, engine.sampling_params(**top1, n=3))
    assert grouped == [greedy[0]] * 3 + [greedy[1]] * 3
    answers = engine.answer(model, model.compress(corpus[0]), QUESTIONS[:2], **top1, num_return_sequences=3)
    assert [len(set(row)) for row in answers] == [1, 1] and [len(row) for row in answers] == [3, 3]
    assert [row[0] for row in answers] == engine.answer(model, model.compress(corpus[0]), QUESTIONS[:2], **GREEDY)


def test_output_ends_with_the_stop_token(models, engine, corpus):
    model = models["each"]
    embeds = build_prompt_embeds(model, [model.compress(corpus[3])], QUESTIONS[:1])
    (greedy,) = engine.generate(embeds, engine.sampling_params(**GREEDY))
    stop = greedy[2]
    (stopped,) = engine.generate(embeds, engine.sampling_params(**GREEDY, stop_token_ids=[stop]))
    assert stopped == greedy[: greedy.index(stop) + 1]
