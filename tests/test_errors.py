"""Bad input raises a clear error that names the argument and the fix."""

import pytest
import torch

from conftest import GREEDY
from modeling_memcomp import MemCompConfig
from modeling_memcomp.tiny import train_tokenizer


@pytest.mark.parametrize("context", ["", "   \n\t "])
def test_empty_or_whitespace_context(model, context):
    with pytest.raises(ValueError, match="context is empty or whitespace only"):
        model.generate(context=context, question="Who?")
    with pytest.raises(ValueError, match="context is empty or whitespace only"):
        model.compress(context)


def test_empty_passage_list(model):
    with pytest.raises(ValueError, match="empty list"):
        model.compress([])


def test_missing_question(model, corpus):
    with pytest.raises(ValueError, match="question is required"):
        model.generate(context=corpus[0])


def test_empty_question(model, corpus):
    with pytest.raises(ValueError, match="question is empty"):
        model.generate(context=corpus[0], question=" ")


@pytest.mark.parametrize("context", [42, 3.5, {"text": "x"}, b"bytes"])
def test_non_string_context(model, context):
    with pytest.raises(TypeError, match="context must be a string"):
        model.compress(context)


def test_non_string_passage(model):
    with pytest.raises(TypeError, match="passages must be strings"):
        model.compress(["fine", None])


def test_non_string_question(model, corpus):
    with pytest.raises(TypeError, match="question must be a string"):
        model.generate(context=corpus[0], question=7)
    with pytest.raises(TypeError, match="got an item of type int"):
        model.generate(context=[corpus[0], corpus[1]], question=["ok", 3])


def test_context_and_memory_together(model, corpus):
    with pytest.raises(ValueError, match="exactly one of context= .* or memory="):
        model.generate(context=corpus[0], memory=model.compress(corpus[0]), question="Who?")


def test_wrong_memory_type(model):
    with pytest.raises(TypeError, match="memory must be MemoryEmbeddings"):
        model.generate(memory=torch.zeros(3, 64), question="Who?")


def test_mismatched_batch(model, corpus, monkeypatch):
    monkeypatch.setattr(type(model), "_compress_passages", lambda *a: pytest.fail("encoded before the count check"))
    with pytest.raises(ValueError, match="got 2 contexts for 3 questions"):
        model.generate(context=[corpus[0], corpus[1]], question=["a", "b", "c"])
    with pytest.raises(ValueError, match="got 3 contexts for 2 questions"):
        model.generate(context=[corpus[0], corpus[1], corpus[2]], question=["a", "b"])
    monkeypatch.undo()
    memory = model.compress(corpus[0])
    with pytest.raises(ValueError, match="2 contexts/memories for 3 questions"):
        model.generate(memory=[memory, memory], question=["a", "b", "c"])


def test_memory_count_must_match_placeholders(model, corpus):
    batch = model.prepare_prompts([model.compress(corpus[0])], ["Who?"])
    with pytest.raises(ValueError, match="memory embeddings for .* <MEM> placeholders"):
        model.generate(input_ids=batch["input_ids"], memory_embeds=batch["memory_embeds"][0, :1], **GREEDY)
    with pytest.raises(ValueError, match="no memory was given"):
        model(input_ids=batch["input_ids"])


def test_tokenizer_without_special_tokens(model, corpus):
    plain = train_tokenizer(corpus[:50], vocab_size=300)
    with pytest.raises(ValueError, match=r"no <MEM_START>, <MEM_END>, <MEM> token\(s\)"):
        model.tokenizer = plain


def test_tokenizer_with_other_ids(model, corpus):
    other = train_tokenizer(corpus[:50], vocab_size=300)
    other.add_special_tokens({"additional_special_tokens": ["<MEM>", "<MEM_START>", "<MEM_END>"]})
    with pytest.raises(ValueError, match="does not match the model"):
        model.tokenizer = other


@pytest.mark.parametrize("chunk_size", [0, -4, "16", 2.5])
def test_unknown_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        MemCompConfig(chunk_size=chunk_size)


def test_chunk_larger_than_the_encoder_can_hold(make_model):
    with pytest.raises(ValueError, match="the encoder could never hold one chunk"):
        make_model(chunk_size=64, config_overrides={"max_position_embeddings": 32})


def test_context_too_long_for_the_decoder(make_model):
    model = make_model(chunk_size=4, config_overrides={"max_position_embeddings": 128})
    memory = model.compress(list(range(20, 220)))  # 50 chunks -> 150 decoder positions with wrap="each"
    with pytest.raises(ValueError, match="needs .* positions .* but the base model has 128.*wrap='block'"):
        model.generate(memory=memory, question="Who?", **GREEDY)


@pytest.mark.parametrize("field, value", [("pooling", "max"), ("wrap", "both")])
def test_unknown_pooling_or_wrap(field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        MemCompConfig(**{field: value})


def test_unknown_template(model, corpus):
    with pytest.raises(ValueError, match="template must be one of"):
        model.generate(context=corpus[0], question="Who?", template="alpaca")


def test_too_long_context_is_rejected_before_any_encoding(make_model, monkeypatch):
    model = make_model(chunk_size=4, config_overrides={"max_position_embeddings": 128})
    monkeypatch.setattr(model, "encode_chunks", lambda *a: pytest.fail("the context was encoded before the length check"))
    with pytest.raises(ValueError, match="context is too long for this model"):
        model.generate(context=[20 + i % 400 for i in range(2000)], question="Who?", **GREEDY)


def test_too_long_question_is_named_and_block_wrap_is_not_suggested_twice(make_model):
    model = make_model(chunk_size=4, wrap="block", config_overrides={"max_position_embeddings": 128})
    memory = model.compress(list(range(20, 40)))
    with pytest.raises(ValueError, match="the question alone needs .* shorten the question"):
        model.generate(memory=memory, question="why " * 200, **GREEDY)
    with pytest.raises(ValueError, match="context is too long") as error:
        model.generate(memory=model.compress(list(range(20, 500)) * 2), question="Who?", **GREEDY)
    assert "wrap='block'" not in str(error.value).split("this model.")[-1]


@pytest.mark.parametrize("ids", [[5, 10_000], [-1, 5], [5, True]])
def test_token_ids_outside_the_vocabulary(model, ids):
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        model.compress(ids)


def test_lone_surrogates_are_value_errors_naming_the_input(model):
    with pytest.raises(ValueError, match="context contains a character that is not valid Unicode"):
        model.compress("a lone \ud800 surrogate")
    with pytest.raises(ValueError, match="question 1 contains a character"):
        model.generate(context="A text.", question=["Fine?", "bad \udfff?"], **GREEDY)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_compress_batch_size_must_be_positive(model, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive number of chunks"):
        model.compress("Some text to compress.", batch_size=batch_size)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_memory_embeds_are_refused_on_the_tensor_path(model, bad):
    batch = model.prepare_prompts([model.compress("Some text to compress.")], ["Who?"])
    batch["memory_embeds"][0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.generate(**batch, **GREEDY)
    with pytest.raises(ValueError, match="floating point"):
        model.generate(**{**batch, "memory_embeds": batch["memory_embeds"].long()}, **GREEDY)


def test_a_plain_language_model_is_not_taken_for_a_memcomp_checkpoint(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from benchmarks.eval.config import EvalArguments
    from benchmarks.eval.runtime import load_model
    from modeling_memcomp import MemCompForCausalLM

    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=100)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"a qwen2 language model's .* not a memcomp checkpoint's: wrap the base model with MemCompForCausalLM.from_base"):
        MemCompForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a Qwen2ForCausalLM, not a memcomp checkpoint: .* --full_context_model"):
        load_model(EvalArguments(model=str(tmp_path)))
