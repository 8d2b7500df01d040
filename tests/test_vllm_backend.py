"""vLLM backend, the parts that need no vLLM: the exported decoder, prompt embeddings and sampling mapping.

The exported checkpoint loaded as a plain HF LM and fed `build_prompt_embeds` must produce the tokens
memcomp's own `generate` produces: that is exactly the input vLLM gets, so it pins the vLLM path's inputs.
"""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import GREEDY
from modeling_memcomp.vllm_backend import (
    SUPPRESS_BIAS,
    VLLMDecoder,
    build_prompt_embeds,
    checkpoint_dtype,
    export_decoder,
    require_vllm,
    sampling_kwargs,
)

QUESTIONS = ["What did the engineer build?", "Who watched?", "Where was the map?"]


def has_vllm() -> bool:
    try:
        require_vllm()
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def memories(model, corpus):
    """Three memories of different lengths, so HF left-pads the batch."""
    return [model.compress(corpus[0]), model.compress(" ".join(corpus[1:4])), model.compress(corpus[5])]


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_decoder(model, tmp_path_factory.mktemp("decoder"))


def test_exported_decoder_is_the_wrapped_lm(model, exported):
    decoder = AutoModelForCausalLM.from_pretrained(exported)
    assert type(decoder) is type(model.language_model)
    expected = model.language_model.state_dict()
    loaded = decoder.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)
    assert checkpoint_dtype(exported) == "float32"


def test_exported_tokenizer_and_generation_config_keep_memory_tokens(model, exported):
    tokenizer = AutoTokenizer.from_pretrained(exported)
    start, end, mem = model.config.memory_token_ids
    vocab = tokenizer.get_vocab()
    assert (vocab["<MEM_START>"], vocab["<MEM_END>"], vocab["<MEM>"]) == (start, end, mem)
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0]
    decoder = AutoModelForCausalLM.from_pretrained(exported)
    assert decoder.generation_config.suppress_tokens == [start, end, mem]
    assert decoder.generation_config.eos_token_id == model.generation_config.eos_token_id


@pytest.mark.parametrize("template", ["chat", "rl"])
def test_prompt_embeds_equal_what_hf_generate_feeds(model, memories, template):
    embeds = build_prompt_embeds(model, memories, QUESTIONS, template=template)
    batch = model.prepare_prompts(memories, QUESTIONS, template=template)
    hf_inputs = model.embed_inputs(batch["input_ids"], batch["memory_embeds"])
    for row, prompt in enumerate(embeds):
        length = int(batch["attention_mask"][row].sum())
        assert prompt.shape == (length, model.config.text_config.hidden_size)
        assert torch.equal(prompt, hf_inputs[row, -length:])


def test_plain_decoder_on_prompt_embeds_generates_memcomp_tokens(model, memories, exported):
    """What vLLM runs (the exported LM on prompt embeddings) decodes exactly what memcomp decodes."""
    decoder = AutoModelForCausalLM.from_pretrained(exported).eval()
    embeds = build_prompt_embeds(model, memories, QUESTIONS)
    for memory, question, prompt in zip(memories, QUESTIONS, embeds):
        batch = model.prepare_prompts([memory], [question])
        expected = model.generate(**batch, **GREEDY)[0, batch["input_ids"].shape[1] :]
        got = decoder.generate(inputs_embeds=prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **GREEDY)[0]
        assert torch.equal(got, expected)


def test_one_memory_serves_many_questions(model, memories):
    shared = build_prompt_embeds(model, memories[0], QUESTIONS[:2])
    single = [build_prompt_embeds(model, memories[0], q)[0] for q in QUESTIONS[:2]]
    assert all(torch.equal(a, b) for a, b in zip(shared, single))


def test_prompt_embeds_errors_name_the_argument(model, memories):
    with pytest.raises(ValueError, match="one per question"):
        build_prompt_embeds(model, memories[:2], QUESTIONS)
    with pytest.raises(TypeError, match="MemoryEmbeddings"):
        build_prompt_embeds(model, [torch.zeros(2, 64)], QUESTIONS[:1])
    with pytest.raises(ValueError, match="template"):
        build_prompt_embeds(model, memories[0], QUESTIONS[0], template="alpaca")


def test_greedy_sampling_maps_to_vllm(model):
    kwargs = sampling_kwargs(model.generation_config, **GREEDY)
    start, end, mem = model.config.memory_token_ids
    assert kwargs["temperature"] == 0.0 and kwargs["max_tokens"] == GREEDY["max_new_tokens"]
    assert kwargs["repetition_penalty"] == 1.0 and "top_k" not in kwargs and "top_p" not in kwargs
    assert kwargs["stop_token_ids"] == model.generation_config.eos_token_id
    assert kwargs["logit_bias"] == {start: SUPPRESS_BIAS, end: SUPPRESS_BIAS, mem: SUPPRESS_BIAS}


def test_sampling_defaults_are_the_papers(model):
    kwargs = sampling_kwargs(model.generation_config)
    assert (kwargs["temperature"], kwargs["top_k"], kwargs["top_p"], kwargs["repetition_penalty"]) == (0.7, 20, 0.8, 1.05)
    assert kwargs["max_tokens"] == model.generation_config.max_new_tokens
    assert sampling_kwargs(model.generation_config, max_tokens=5, stop_token_ids=[7])["max_tokens"] == 5
    assert sampling_kwargs(eos_token_id=3)["stop_token_ids"] == [3]


def test_unknown_sampling_option_is_named():
    with pytest.raises(ValueError, match="num_beams"):
        sampling_kwargs(num_beams=4)


def test_decoder_rejects_a_folder_without_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="export_decoder"):
        VLLMDecoder(tmp_path)


@pytest.mark.skipif(has_vllm(), reason="checks the message shown when vLLM is missing")
def test_missing_vllm_says_how_to_get_it(model):
    with pytest.raises(ImportError, match="make_vllm_env.sh"):
        require_vllm()
    with pytest.raises(ImportError, match="make_vllm_env.sh"):
        VLLMDecoder(model)


def test_answer_groups_several_samples_per_question(model, memories):
    """`answer(..., num_return_sequences=n)` returns n answers per question, as `model.generate` does (engine faked)."""
    from types import SimpleNamespace

    class FakeLLM:
        def generate(self, prompts, params, use_tqdm=False):
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=model.tokenizer.encode(f"q{i} s{j}"))
                                             for j in range(params.n)]) for i in range(len(prompts))]

    decoder = VLLMDecoder.__new__(VLLMDecoder)
    decoder.llm, decoder.generation_config = FakeLLM(), model.generation_config
    decoder._sampling_params_class = lambda **kwargs: SimpleNamespace(**{"n": 1, **kwargs})
    grouped = decoder.answer(model, memories[:2], QUESTIONS[:2], num_return_sequences=3)
    assert [[text.replace(" ", "") for text in row] for row in grouped] == [["q0s0", "q0s1", "q0s2"], ["q1s0", "q1s1", "q1s2"]]
    assert len(decoder.answer(model, memories[:2], QUESTIONS[:2])) == 2


def test_a_checkpoints_num_return_sequences_never_sets_vllm_n(model):
    config = copy.deepcopy(model.generation_config)
    config.num_return_sequences = 4  # e.g. saved after sampling groups: GRPO rollouts pass their own n
    assert "n" not in sampling_kwargs(config) and sampling_kwargs(config, num_return_sequences=2)["n"] == 2
