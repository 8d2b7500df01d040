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
    with pytest.raises(ValueError, match=r"give row b the memory its prompt was built for"):  # rows swapped
        model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], memory_embeds=memories[::-1])
    one = model.prepare_prompts(memories[:1], [QUESTION])
    as_3d = model.generate(**{**one, "memory_embeds": [one["memory_embeds"]]}, **GREEDY)  # [(1, k, d)]: still one row
    assert torch.equal(as_3d, model.generate(**one, **GREEDY))


@pytest.mark.parametrize("expand", [dict(num_beams=2), dict(num_return_sequences=2, do_sample=True, top_k=1)])
def test_tensor_path_gives_every_expanded_row_its_memory(model, corpus, expand):
    memories = [model.compress(corpus[0]), model.compress(" ".join(corpus[1:3]))]
    batch = model.prepare_prompts(memories, [QUESTION, "Who?"])
    settings = dict(GREEDY, max_new_tokens=6, **expand)
    padded = model.generate(**batch, **settings)  # (batch, slots, d): expanded along dim 0 by transformers
    flat = torch.cat([m.embeds for m in memories])  # (total_slots, d) in row order
    for memory_embeds in (flat, memories):
        assert torch.equal(model.generate(**{**batch, "memory_embeds": memory_embeds}, **settings), padded)


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


QUESTIONS = [QUESTION, "Where was the map?", "Who watched the long procession of ships at dawn?"]


@pytest.mark.parametrize("wrap", ["each", "block"])
def test_prefilled_memory_prefix_gives_the_answers_of_the_full_prompt(make_model, corpus, wrap):
    model = make_model(wrap=wrap)
    memory = model.compress(" ".join(corpus[:3]))
    full = model.generate(memory=memory, question=QUESTIONS, reuse_prefix=False, **GREEDY)
    assert len(set(full)) == len(QUESTIONS) and all(full), "answers must be real and distinct to compare anything"
    assert model.generate(memory=memory, question=QUESTIONS, **GREEDY) == full  # batched, prefix prefilled once
    prefix = model.prefill_memory(memory)
    assert [model.generate(memory=memory, question=q, memory_cache=prefix, **GREEDY) for q in QUESTIONS] == full
    assert model.generate(memory=memory, question=QUESTIONS, memory_cache=prefix, batch_size=2, **GREEDY) == full
    beams = dict(GREEDY, num_beams=2)
    assert model.generate(memory=memory, question=QUESTIONS, **beams) == model.generate(
        memory=memory, question=QUESTIONS, reuse_prefix=False, **beams
    )


def test_prefilled_prefix_keeps_the_repetition_penalty_of_the_full_prompt(make_model, corpus):
    model = make_model()
    with torch.no_grad():  # a real pad/EOS embedding (the tiny model's is zero, so its logit would hide the penalty)
        model.get_input_embeddings().weight[model.tokenizer.pad_token_id].normal_(0, 0.5)
    memory = model.compress(" ".join(corpus[:3]))
    settings = dict(do_sample=False, max_new_tokens=3, repetition_penalty=1.3, return_dict_in_generate=True, output_scores=True)
    reused = model.generate(memory=memory, question=QUESTIONS, **settings)  # the shorter questions padded mid-row
    full = model.generate(memory=memory, question=QUESTIONS, reuse_prefix=False, **settings)  # left-padded
    assert reused.texts == full.texts
    assert full.scores[0][:, model.tokenizer.pad_token_id].abs().min() > 0.1  # the penalty would move this logit
    for step_reused, step_full in zip(reused.scores, full.scores):
        torch.testing.assert_close(step_reused, step_full, atol=1e-4, rtol=1e-4)


def test_prefix_is_prefilled_once_for_many_questions(model, corpus, monkeypatch):
    memory = model.compress(corpus[0])
    calls = []
    original = model.prefill_memory
    monkeypatch.setattr(model, "prefill_memory", lambda *a, **k: calls.append(1) or original(*a, **k))
    model.generate(memory=memory, question=QUESTIONS * 3, batch_size=4, **GREEDY)
    assert calls == [1]


def test_memory_cache_must_match_its_memory_and_template(model, corpus):
    prefix = model.prefill_memory(model.compress(corpus[0]))
    with pytest.raises(ValueError, match="memory_cache was prefilled for another memory"):
        model.generate(memory=model.compress(corpus[1]), question="Who?", memory_cache=prefix, **GREEDY)
    with pytest.raises(ValueError, match="memory_cache was prefilled for another memory, template"):
        model.generate(memory=model.compress(corpus[0]), question="Who?", memory_cache=prefix, template="rl", **GREEDY)


def test_memory_cache_of_another_models_embeddings_of_the_same_text_is_refused(model, make_model, corpus):
    prefix = model.prefill_memory(model.compress(corpus[0]))
    other = make_model(chunk_size=16, seed=1).compress(corpus[0])  # same text, same content hash, other embeddings
    assert other.content_hash == prefix.memory_hash
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="prefilled for other embeddings of the same text"):
        model.generate(memory=other, question="Who?", memory_cache=prefix, **GREEDY)


def test_memory_cache_of_another_decoder_is_refused(model, corpus):
    import copy

    rl = copy.deepcopy(model)  # an RL checkpoint: the same compressor, another decoder
    rl.split_encoder()
    with torch.no_grad():
        rl.language_model.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    memory = model.compress(corpus[0])
    assert rl.fingerprint == model.fingerprint and rl.decoder_fingerprint != model.decoder_fingerprint
    prefix = model.prefill_memory(memory)
    with pytest.raises(ValueError, match="prefilled by another model's decoder"):
        rl.generate(memory=memory, question="Who?", memory_cache=prefix, **GREEDY)
    assert rl.generate(memory=memory, question="Who?", memory_cache=rl.prefill_memory(memory), **GREEDY) == rl.generate(
        memory=memory, question="Who?", reuse_prefix=False, **GREEDY)


def test_prepare_prompts_checks_its_memories_as_generate_does(model, make_model, corpus):
    memory = model.compress(corpus[0])
    with pytest.raises(ValueError, match="got 1 memories for 2 questions"):
        model.prepare_prompts([memory], ["Who?", "When?"])
    with pytest.raises(ValueError, match="chunk_size=8"):
        model.prepare_prompts([make_model(chunk_size=8).compress(corpus[0])], ["Who?"])
    with pytest.warns(UserWarning, match="memory was made by model"):
        model.prepare_prompts([make_model(chunk_size=16, seed=1).compress(corpus[0])], ["Who?"])


def test_stop_strings_work_on_the_text_path(model, corpus):
    answer = model.generate(context=corpus[0], question="Who?", **GREEDY)
    stop = answer.split()[1] if len(answer.split()) > 1 else answer[:2]
    stopped = model.generate(context=corpus[0], question="Who?", stop_strings=[stop], **GREEDY)
    assert stopped.endswith(stop) and len(stopped) <= len(answer)


def test_micro_batches_equal_one_batch(model, corpus, monkeypatch):
    from transformers import GenerationMixin

    contexts = [corpus[i] for i in range(5)]
    questions = [QUESTION, "Who?", "Where?", "When?", "Why?"]
    one = model.generate(context=contexts, question=questions, **GREEDY)
    rows = []
    original = GenerationMixin.generate
    monkeypatch.setattr(GenerationMixin, "generate", lambda self, *a, **k: rows.append(len(k["input_ids"])) or original(self, *a, **k))
    assert model.generate(context=contexts, question=questions, batch_size=2, **GREEDY) == one
    assert rows == [2, 2, 1]  # long question lists run in bounded micro-batches
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        model.generate(context=contexts, question=questions, batch_size=0, **GREEDY)


def test_num_return_sequences_gives_a_list_per_question(model, corpus):
    memory = model.compress(corpus[0])
    torch.manual_seed(0)
    texts = model.generate(memory=memory, question=["Who?", "Where?"], num_return_sequences=3, max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, list) and len(t) == 3 for t in texts)
    one = model.generate(memory=memory, question="Who?", num_return_sequences=3, max_new_tokens=6)
    assert isinstance(one, list) and len(one) == 3 and all(isinstance(t, str) for t in one)


def test_return_dict_in_generate_returns_the_generate_output_with_texts(model, corpus):
    memory = model.compress(corpus[0])
    output = model.generate(memory=memory, question=["Who?", "Where?"], return_dict_in_generate=True, output_scores=True, **GREEDY)
    assert output.texts == model.generate(memory=memory, question=["Who?", "Where?"], **GREEDY)
    assert output.sequences.shape[0] == 2 and len(output.scores) == GREEDY["max_new_tokens"]
    with pytest.raises(ValueError, match="batch_size >= 3"):
        model.generate(memory=memory, question=QUESTIONS, return_dict_in_generate=True, batch_size=2, **GREEDY)


def test_generate_defaults_to_the_checkpoints_recorded_template(make_model, corpus):
    model = make_model()
    memory = model.compress(corpus[0])
    model.config.prompt_template, model.config.system_prompt = "rl", "Answer tersely."
    batch = model.prepare_prompts([memory], ["Who?"])
    expected = build_prompt(model.tokenizer, model.config, len(memory), "Who?", template="rl", system_prompt="Answer tersely.")
    assert batch["input_ids"][0].tolist() == expected.input_ids
    assert model.generate(memory=memory, question="Who?", **GREEDY) == model.generate(
        memory=memory, question="Who?", template="rl", system_prompt="Answer tersely.", **GREEDY
    )


# ---------------------------------------------------------------------------------------------- API review fixes
def test_text_path_encodes_the_context_without_an_autograd_graph(model, corpus, monkeypatch):
    assert any(p.requires_grad for p in model.parameters())  # a model as loaded or trained: gradients enabled
    seen = []
    original = model._prompt_batch
    monkeypatch.setattr(model, "_prompt_batch", lambda memories, *a: seen.extend(memories) or original(memories, *a))
    model.generate(context=corpus[0], question="Who?", reuse_prefix=False, **GREEDY)
    assert seen and not any(m.embeds.requires_grad or m.embeds.grad_fn is not None for m in seen)


@pytest.mark.parametrize("setting", [dict(use_cache=False), dict(cache_implementation="static"),
                                     dict(generation_config=GenerationConfig(use_cache=False, **GREEDY))])
def test_many_questions_without_the_default_cache_answer_as_without_prefix_reuse(model, corpus, setting):
    questions = [QUESTION, "Who?"]
    expected = model.generate(context=corpus[0], question=questions, reuse_prefix=False, **GREEDY)
    greedy = {} if "generation_config" in setting else GREEDY
    assert model.generate(context=corpus[0], question=questions, **setting, **greedy) == expected
    prefix = model.prefill_memory(model.compress(corpus[0]))
    with pytest.raises(ValueError, match="memory_cache= is a prefilled KV cache and needs the default one"):
        model.generate(memory=model.compress(corpus[0]), question="Who?", memory_cache=prefix, **setting, **greedy)


def test_stop_strings_in_a_generation_config_work_on_the_text_path(model, corpus):
    answer = model.generate(context=corpus[0], question="Who?", **GREEDY)
    stop = answer.split()[1] if len(answer.split()) > 1 else answer[:2]
    config = GenerationConfig(stop_strings=[stop], **GREEDY)
    stopped = model.generate(context=corpus[0], question="Who?", generation_config=config)
    assert stopped == model.generate(context=corpus[0], question="Who?", stop_strings=[stop], **GREEDY)
    assert stopped.endswith(stop) and len(stopped) < len(answer)


def test_a_callers_max_length_beats_the_default_max_new_tokens(model, corpus):
    memory = model.compress(corpus[0])
    batch = model.prepare_prompts([memory], ["Who?"])
    length = batch["input_ids"].shape[1]
    greedy = dict(do_sample=False, repetition_penalty=1.0)
    assert model.generate(**batch, max_length=length + 3, **greedy).shape[1] == length + 3  # tensor path
    for given in (dict(max_length=length + 3, **greedy), dict(generation_config=GenerationConfig(max_length=length + 3, **greedy))):
        output = model.generate(memory=memory, question="Who?", return_dict_in_generate=True, **given)
        assert output.sequences.shape[1] == length + 3
    both = model.generate(memory=memory, question="Who?", return_dict_in_generate=True, max_length=length + 3,
                          max_new_tokens=5, **greedy)
    assert both.sequences.shape[1] == length + 5  # both given: transformers' rule, max_new_tokens wins


def test_text_given_as_tensor_arguments_is_refused_with_the_right_call(model, corpus):
    with pytest.raises(TypeError, match=r"got text as its first positional argument.*generate\(context=\.\.\., question=\.\.\.\)"):
        model.generate("Who founded it?")
    with pytest.raises(TypeError, match="got text as its first positional argument"):
        model.generate(["Who?", "When?"])
    batch = model.prepare_prompts([model.compress(corpus[0])], ["Who?"])
    for name in ("input_ids", "attention_mask", "memory_embeds"):
        with pytest.raises(TypeError, match=f"builds the prompt itself and takes no {name}: pass either text"):
            model.generate(context=corpus[0], question="Who?", **{name: batch[name]}, **GREEDY)
    with pytest.raises(TypeError, match="takes no inputs_embeds"):
        model.generate(memory=model.compress(corpus[0]), question="Who?", inputs_embeds=torch.zeros(1, 2, 8), **GREEDY)
