"""compress(): the memory is exactly mean-pool + projection of each chunk's final hidden states."""

import pytest
import torch

from modeling_memcomp import MemCompForCausalLM


def direct_memory(model: MemCompForCausalLM, ids: list[int]) -> torch.Tensor:
    """Reference: run every chunk alone (no padding), average its last hidden states, project."""
    size = model.config.chunk_size
    rows = []
    with torch.no_grad():
        for start in range(0, len(ids), size):
            chunk = torch.tensor([ids[start : start + size]])
            hidden = model.language_model.model(input_ids=chunk).last_hidden_state[0]
            rows.append(model.memory_projection(hidden.mean(dim=0)))
    return torch.stack(rows)


def context_ids(model, text):
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_memory_is_mean_pool_plus_projection(model, corpus):
    text = " ".join(corpus[:3])
    ids = context_ids(model, text)
    assert len(ids) % 16 != 0, "fixture should end on a short chunk"
    memory = model.compress(text)
    assert memory.num_embeddings == -(-len(ids) // 16)
    assert memory.num_source_tokens == len(ids)
    torch.testing.assert_close(memory.embeds, direct_memory(model, ids), rtol=1e-5, atol=1e-5)


def test_short_last_chunk_pools_only_real_tokens(model):
    ids = list(range(40, 61))  # 21 tokens: one full chunk and a 5-token chunk
    memory = model.compress(ids)
    with torch.no_grad():
        hidden = model.language_model.model(input_ids=torch.tensor([ids[16:]])).last_hidden_state[0]
        expected = model.memory_projection(hidden.mean(dim=0))
        padded_mean = model.memory_projection(
            model.language_model.model(input_ids=torch.tensor([ids[16:] + [0] * 11])).last_hidden_state[0].mean(dim=0)
        )
    torch.testing.assert_close(memory.embeds[1], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(memory.embeds[1], padded_mean, atol=1e-4)


def test_passages_are_chunked_separately_in_order(model, corpus):
    first, second = corpus[0], corpus[1]
    together = model.compress([first, second])
    expected = torch.cat([model.compress(first).embeds, model.compress(second).embeds])
    torch.testing.assert_close(together.embeds, expected, rtol=1e-5, atol=1e-5)
    assert together.chunks_per_passage == [len(model.compress(first)), len(model.compress(second))]


def test_text_ids_and_tensor_inputs_agree(model, corpus):
    ids = context_ids(model, corpus[4])
    from_text = model.compress(corpus[4])
    from_ids = model.compress(ids)
    from_tensor = model.compress(torch.tensor(ids))
    torch.testing.assert_close(from_text.embeds, from_ids.embeds)
    torch.testing.assert_close(from_text.embeds, from_tensor.embeds)
    assert from_text.content_hash == from_ids.content_hash


def test_micro_batch_size_does_not_change_the_memory(model, corpus):
    text = " ".join(corpus[:6])
    full = model.compress(text, batch_size=1024)
    tiny = model.compress(text, batch_size=3)
    torch.testing.assert_close(full.embeds, tiny.embeds, rtol=1e-5, atol=1e-5)


def test_special_token_text_in_context_cannot_forge_placeholders(model):
    memory = model.compress("plain words <MEM> and <MEM_START> inside")
    ids = model.tokenize_context("plain words <MEM> and <MEM_START> inside")[0]
    assert model.config.mem_token_id not in ids and model.config.mem_start_token_id not in ids
    assert memory.num_embeddings == -(-len(ids) // 16)


def test_120k_token_context_encodes_in_bounded_micro_batches(make_model):
    model = make_model(encoder_batch_size=64)
    seen_rows = []
    hook = model.language_model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    ids = torch.randint(10, 500, (120_000,)).tolist()
    memory = model.compress(ids, show_progress=False)
    hook.remove()
    assert memory.num_embeddings == 7500 and memory.num_source_tokens == 120_000
    assert max(seen_rows) == 64 and len(seen_rows) == -(-7500 // 64)
    assert torch.isfinite(memory.embeds).all()


def test_attention_pooling_starts_as_mean_and_ignores_padding(make_model):
    model = make_model(pooling="attention")
    ids = list(range(40, 61))
    memory = model.compress(ids)
    with torch.no_grad():
        hidden = model.language_model.model(input_ids=torch.tensor([ids[16:]])).last_hidden_state[0]
    torch.testing.assert_close(memory.embeds[1], model.memory_projection(hidden.mean(0)), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        model.pooling.query.normal_()
    after = model.compress(ids)
    assert not torch.allclose(after.embeds[0], memory.embeds[0])


def test_from_base_keeps_the_base_dtype(tokenizer):
    from transformers import Qwen2ForCausalLM

    from modeling_memcomp.tiny import tiny_qwen2_config

    base = Qwen2ForCausalLM(tiny_qwen2_config(len(tokenizer))).to(torch.bfloat16)
    model = MemCompForCausalLM.from_base(base, tokenizer=tokenizer)
    assert model.memory_projection.weight.dtype == torch.bfloat16
    assert model.compress("a short text to compress").embeds.dtype == torch.bfloat16


@pytest.mark.parametrize("tied, spare", [(True, 16), (False, 16), (True, 1)])  # 1: fewer spare rows than new tokens
def test_from_base_starts_new_tokens_at_the_mean_embedding_inside_padded_rows(tied, spare):
    """Qwen2.5 pads its embedding matrix past the vocabulary: the memory tokens get ids there, with no resize."""
    from transformers import Qwen2ForCausalLM

    from modeling_memcomp.tiny import tiny_qwen2_config, train_tokenizer

    tokenizer = train_tokenizer(["The observatory was founded in 1901 by a harbour master."] * 4, vocab_size=300)
    known = len(tokenizer)
    base = Qwen2ForCausalLM(tiny_qwen2_config(known + spare, tie_word_embeddings=tied))
    padding = base.get_input_embeddings().weight[known:].clone()
    model = MemCompForCausalLM.from_base(base, tokenizer=tokenizer)
    new = list(range(known, len(tokenizer)))
    assert len(new) >= 3 and model.get_input_embeddings().weight.shape[0] == max(known + spare, len(tokenizer))
    weights = [model.get_input_embeddings().weight] + ([] if tied else [model.get_output_embeddings().weight])
    for weight in weights:
        mean = weight[:known].mean(0)
        for row in new[:spare]:  # in the padding rows: exactly the mean
            torch.testing.assert_close(weight[row], mean)
        for row in new[spare:]:  # added by the resize: transformers' mean resizing, drawn close to it
            torch.testing.assert_close(weight[row], mean, atol=0.05, rtol=0)
    assert torch.equal(model.get_input_embeddings().weight[len(tokenizer):], padding[len(new):])  # the rest untouched


@pytest.mark.parametrize("split", [16, 21, 37, 5])  # on a chunk boundary, inside a chunk, several chunks in
def test_appending_token_ids_equals_compressing_them_at_once(model, corpus, split):
    """Bit for bit with one chunk per encoder pass (batching itself moves float results by ~1e-6, see above)."""
    ids = model.tokenizer(" ".join(corpus[:4]), add_special_tokens=False)["input_ids"]
    whole = model.compress(ids, batch_size=1)
    grown = model.compress(ids[split:], append_to=model.compress(ids[:split], batch_size=1), batch_size=1)
    assert torch.equal(grown.embeds, whole.embeds)
    batched = model.compress(ids[split:], append_to=model.compress(ids[:split]))
    torch.testing.assert_close(batched.embeds, whole.embeds, rtol=1e-5, atol=1e-5)
    for name in ("content_hash", "num_source_tokens", "chunks_per_passage", "tail_token_ids", "tail_state"):
        assert getattr(grown, name) == getattr(whole, name), name


def test_appending_passages_and_text_equals_compressing_them_at_once(model, corpus):
    memory = model.compress([corpus[0]], batch_size=1)
    grown = model.compress([corpus[1], corpus[2]], append_to=memory, batch_size=1)
    whole = model.compress([corpus[0], corpus[1], corpus[2]], batch_size=1)
    assert torch.equal(grown.embeds, whole.embeds) and grown.content_hash == whole.content_hash
    assert grown.chunks_per_passage == whole.chunks_per_passage
    log = model.compress(corpus[3], batch_size=1)  # a string continues the last passage at the token level
    log = model.compress(corpus[4], append_to=log, batch_size=1)
    tokens = model.tokenize_context(corpus[3])[0] + model.tokenize_context(corpus[4])[0]
    once = model.compress(tokens, batch_size=1)
    assert torch.equal(log.embeds, once.embeds) and log.content_hash == once.content_hash


def test_appending_to_another_models_memory_is_refused(model, make_model, corpus):
    foreign = make_model(chunk_size=16, seed=1).compress(corpus[0])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="one memory cannot hold two encoders' embeddings"):
        model.compress(corpus[1], append_to=foreign)


def test_an_empty_passage_is_named(model):
    with pytest.raises(ValueError, match="context passage 1 is empty or whitespace only"):
        model.compress(["abc", " ", "def"])


def test_appending_encodes_only_the_new_chunks(make_model, corpus):
    model = make_model()
    ids = model.tokenizer(" ".join(corpus[:6]), add_special_tokens=False)["input_ids"]
    memory = model.compress(ids[:40])  # 2 full chunks + a partial one of 8 tokens
    encoded = []
    original = model.encode_chunks
    model.encode_chunks = lambda chunk_ids, mask: encoded.append(len(chunk_ids)) or original(chunk_ids, mask)
    model.compress(ids[40:72], append_to=memory)  # the partial chunk again, then 40 new tokens: 3 chunks
    assert encoded == [3]


def test_a_grown_memory_survives_a_file_round_trip_and_grows_again(model, corpus, tmp_path):
    ids = model.tokenizer(" ".join(corpus[:3]), add_special_tokens=False)["input_ids"]
    model.save_memory(model.compress(ids[:30], batch_size=1), tmp_path / "m.safetensors")
    grown = model.compress(ids[30:], append_to=model.load_memory(tmp_path / "m.safetensors"), batch_size=1)
    assert torch.equal(grown.embeds, model.compress(ids, batch_size=1).embeds)


def test_an_old_memory_without_tail_tokens_cannot_grow(model, corpus):
    memory = model.compress(corpus[0])
    memory.tail_token_ids = None
    with pytest.raises(ValueError, match="does not record its last partial chunk"):
        model.compress(corpus[1], append_to=memory)
