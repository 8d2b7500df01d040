"""generate(): text path, memory reuse, batching, KV cache and the standard tensor path agree exactly."""

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from conftest import GREEDY
from modeling_memcomp import build_prompt

QUESTION = "What did the engineer build?"


def test_context_and_cached_memory_give_the_same_answer(model, corpus):
    context = " ".join(corpus[:2])
    direct = model.generate(context=context, question=QUESTION, **GREEDY)
    cached = model.generate(memory=model.compress(context), question=QUESTION, **GREEDY)
    assert isinstance(direct, str) and direct == cached


def test_batched_equals_one_by_one(model, corpus):
    contexts = [corpus[0], " ".join(corpus[1:4]), corpus[5]]  # different lengths -> left padding
    questions = [QUESTION, "Where was the map?", "Who watched?"]
    batched = model.generate(context=contexts, question=questions, **GREEDY)
    single = [model.generate(context=c, question=q, **GREEDY) for c, q in zip(contexts, questions)]
    assert batched == single


def test_one_memory_serves_many_questions(model, corpus):
    memory = model.compress(corpus[3])
    answers = model.generate(memory=memory, question=[QUESTION, "Who?"], **GREEDY)
    assert answers == [model.generate(memory=memory, question=q, **GREEDY) for q in [QUESTION, "Who?"]]


def tensor_batch(model, corpus):
    memories = [model.compress(corpus[0]), model.compress(" ".join(corpus[1:3]))]
    return model.prepare_prompts(memories, [QUESTION, "Who?"])


@pytest.mark.parametrize("wrap", ["each", "block"])
def test_kv_cache_equals_no_cache(make_model, corpus, wrap):
    model = make_model(wrap=wrap)
    batch = tensor_batch(model, corpus)
    cached = model.generate(**batch, use_cache=True, **GREEDY)
    uncached = model.generate(**batch, use_cache=False, **GREEDY)
    assert torch.equal(cached, uncached)
    assert cached.shape[1] == batch["input_ids"].shape[1] + GREEDY["max_new_tokens"]


def test_tensor_path_matches_text_path_and_accepts_memory_lists(model, corpus):
    memories = [model.compress(corpus[0]), model.compress(" ".join(corpus[1:3]))]
    batch = model.prepare_prompts(memories, [QUESTION, "Who?"])
    padded = model.generate(**batch, **GREEDY)
    as_list = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], memory_embeds=memories, **GREEDY)
    assert torch.equal(padded, as_list)
    texts = model.tokenizer.batch_decode(padded[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [t.strip() for t in texts] == model.generate(memory=memories, question=[QUESTION, "Who?"], **GREEDY)


def test_generation_config_and_streamer(model, corpus):
    class Collect(BaseStreamer):
        def __init__(self):
            self.tokens = []

        def put(self, value):
            self.tokens.append(value.flatten().tolist())

        def end(self):
            self.ended = True

    streamer = Collect()
    batch = model.prepare_prompts([model.compress(corpus[0])], [QUESTION])
    config = GenerationConfig(do_sample=False, max_new_tokens=5, repetition_penalty=1.0)
    output = model.generate(**batch, generation_config=config, streamer=streamer)
    streamed = [t for step in streamer.tokens[1:] for t in step]
    assert streamed == output[0, batch["input_ids"].shape[1] :].tolist() and streamer.ended


def test_sampling_is_seeded_and_uses_paper_defaults(model, corpus):
    defaults = model.generation_config
    assert (defaults.top_k, defaults.top_p, defaults.repetition_penalty) == (20, 0.8, 1.05)
    memory = model.compress(corpus[0])
    torch.manual_seed(3)
    first = model.generate(memory=memory, question=QUESTION, max_new_tokens=8)
    torch.manual_seed(3)
    assert model.generate(memory=memory, question=QUESTION, max_new_tokens=8) == first


def test_memory_tokens_are_never_generated(model, corpus):
    batch = model.prepare_prompts([model.compress(corpus[0])], [QUESTION])
    output = model.generate(**batch, do_sample=True, top_k=0, top_p=1.0, temperature=5.0, max_new_tokens=40)
    generated = output[0, batch["input_ids"].shape[1] :]
    assert not set(generated.tolist()) & set(model.config.memory_token_ids)


@pytest.mark.parametrize("wrap, expected", [("each", 3 * 4), ("block", 4 + 2)])
def test_wrap_layouts(make_model, wrap, expected):
    model = make_model(wrap=wrap)
    start, end, mem = model.config.memory_token_ids
    ids = build_prompt(model.tokenizer, model.config, 4, "Q?", template="plain").input_ids
    block = ids[:expected]
    assert block.count(mem) == 4 and block.count(start) == (4 if wrap == "each" else 1)
    if wrap == "each":
        assert block[:3] == [start, mem, end]
    else:
        assert block[0] == start and block[-1] == end and block[1:-1] == [mem] * 4


def test_targets_are_the_only_labels(model):
    prompt = build_prompt(model.tokenizer, model.config, 2, "Recall.", template="chat", target="the answer", bridge_ids=[7, 8])
    labelled = [i for i, label in zip(prompt.input_ids, prompt.labels) if label != -100]
    target = model.tokenizer("the answer", add_special_tokens=False)["input_ids"]
    im_end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert labelled == target + [im_end]
    assert prompt.input_ids[-len(labelled) - 2 : -len(labelled)] == [7, 8]


def test_beam_search_expands_each_rows_memory(model, corpus):
    memories = [model.compress(corpus[0]), model.compress(" ".join(corpus[1:3]))]
    questions = [QUESTION, "Who?"]
    beams = dict(GREEDY, num_beams=2, max_new_tokens=6)
    batched = model.generate(memory=memories, question=questions, **beams)
    assert batched == [model.generate(memory=m, question=q, **beams) for m, q in zip(memories, questions)]
