"""Task builders, instruction pools, the collator and stage mixtures (no training)."""

import random
from collections import Counter
from itertools import cycle
from pathlib import Path

import pytest
import torch

from modeling_memcomp.prompting import IGNORE_INDEX
from trainers.collator import MemCompCollator
from trainers.data import SourceConfig, record_stream, stage_streams
from trainers.instructions import INSTRUCTIONS, LENGTHS, PAPER_EXAMPLES, sample_instruction
from trainers.mixture import StageMixture, compression_schedule
from trainers.stages import STAGES, TASKS
from trainers.tasks import TaskBuilder

FIXTURES = Path(__file__).parent / "fixtures" / "training"


@pytest.fixture(scope="module")
def builder(model):
    return TaskBuilder(model.tokenizer, model.config, template="plain", max_length=512)


def target_ids(example):
    return [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]


def test_instruction_pools_have_5_to_8_variants_and_the_paper_examples():
    for task, pools in INSTRUCTIONS.items():
        assert set(pools) == set(LENGTHS)
        for length, pool in pools.items():
            assert 5 <= len(pool) <= 8 and len(set(pool)) == len(pool), (task, length)
    assert PAPER_EXAMPLES["reconstruction"]["medium"] == (
        "Reconstruct the original text from the compressed memory provided above."
    )
    assert PAPER_EXAMPLES["continuation"]["short"] == "Continue writing:"
    rng = random.Random(0)
    drawn = {sample_instruction("summarization", rng) for _ in range(400)}
    assert len(drawn) == 15  # every variant of every length is reachable
    with pytest.raises(ValueError, match="QA uses its question"):
        sample_instruction("qa", rng)


def test_reconstruction_memory_is_the_document_and_labels_are_exactly_it(builder, corpus, model):
    ids = builder.tokenize(corpus[0])
    example = builder.reconstruction(corpus[0])
    assert [t for chunk in example["chunks"] for t in chunk] == ids
    assert all(len(c) == 16 for c in example["chunks"][:-1])
    assert target_ids(example) == ids + [model.tokenizer.eos_token_id]
    placeholders = example["input_ids"].count(model.config.mem_token_id)
    assert placeholders == len(example["chunks"])


@pytest.mark.parametrize("bridges", [0, 1, 4])
def test_continuation_bridges_are_uncompressed_and_outside_the_loss(builder, corpus, bridges):
    text = " ".join(corpus[:4])
    ids = builder.tokenize(text)
    assert len(ids) > 2 * (16 * 4 + 1)
    example = builder.continuation(text, num_bridges=bridges)
    half = len(ids) // 2
    cut = half + 16 * bridges
    assert [t for chunk in example["chunks"] for t in chunk] == ids[:half]
    assert target_ids(example)[:-1] == ids[cut:]
    # The bridge sits right before the target, as plain tokens, with label -100.
    start = len(example["input_ids"]) - len(ids[cut:]) - 1 - 16 * bridges
    assert example["input_ids"][start : start + 16 * bridges] == ids[half:cut]
    assert set(example["labels"][start : start + 16 * bridges]) <= {IGNORE_INDEX}


def test_summarization_and_qa_targets(builder, model):
    summary = builder.summarization("The old library painted an ancient map. It rained.", "A map was painted.")
    assert target_ids(summary)[:-1] == builder.tokenize("A map was painted.")
    qa = builder.qa(["First passage here.", "Second passage."], "What is second?", "Second passage")
    assert len(qa["chunks"]) == 2  # passages are chunked separately
    assert target_ids(qa)[:-1] == builder.tokenize("Second passage")
    assert "What is second?" in model.tokenizer.decode(qa["input_ids"])


def test_chat_template_and_plain_lm(model, corpus):
    chat = TaskBuilder(model.tokenizer, model.config, template="chat", max_length=512)
    example = chat.qa("A passage.", "Q?", "A")
    text = model.tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\n") and text.endswith("A<|im_end|>")
    lm = chat.language_modeling(corpus[2])
    assert lm["chunks"] == [] and lm["labels"] == lm["input_ids"]


def test_long_documents_are_truncated_to_max_length(model, corpus):
    short = TaskBuilder(model.tokenizer, model.config, max_length=128)
    text = " ".join(corpus[:10])
    for example in (short.reconstruction(text), short.continuation(text, 2), short.language_modeling(text)):
        assert 100 < len(example["input_ids"]) <= 128
    assert short.qa(" ".join(corpus[:60]), "Q?", "A") is None  # a QA context is never cut: the example is skipped


def test_a_text_cut_short_ends_without_an_end_token_but_a_whole_one_keeps_it(model, corpus):
    eos = model.tokenizer.eos_token_id
    short = TaskBuilder(model.tokenizer, model.config, max_length=128)
    text = " ".join(corpus[:10])  # far longer than 128 tokens
    for cut in (short.continuation(text, 1), short.language_modeling(text)):
        assert target_ids(cut)[-1] != eos  # it must not learn to stop mid-text
    assert target_ids(short.reconstruction(text))[-1] == eos  # the target ends where the memory ends
    whole = " ".join(corpus[0].split()[:12])
    assert len(short.tokenize(whole)) < 50
    for complete in (short.continuation(whole, 1), short.language_modeling(whole), short.reconstruction(whole)):
        assert target_ids(complete)[-1] == eos
    assert short.summarization(text, "A summary.") is None  # never cut: it would summarise what memory lacks
    assert short.qa("A passage.", "Q?", "  ") is None  # an empty answer would train the end token alone


def test_the_validation_split_of_the_training_sources_holds_no_training_record():
    sources = [SourceConfig(str(FIXTURES / "documents.jsonl"), kind="document")]
    total = sum(1 for _ in open(FIXTURES / "documents.jsonl"))

    def first_epoch(split):
        stream, seen = stage_streams(sources, seed=0, split=split)["document"], []
        while len(seen) < total and (record := next(stream))["text"] not in seen:
            seen.append(record["text"])
        return set(seen)

    train, held_out = first_epoch("train"), first_epoch("eval")
    assert held_out and train and not train & held_out and len(train | held_out) == total


def test_skipped_records_are_counted_and_the_cache_key_follows_the_data_and_templates(model, caplog):
    import logging

    stage = STAGES["sft"]
    builder = TaskBuilder(model.tokenizer, model.config, template="chat", max_length=160)
    long = {"context": ["word " * 400], "question": "Q?", "answer": "A"}
    streams = {"qa": cycle([long, {"context": ["The code is 7."], "question": "What is the code?", "answer": "7"}])}
    mixture = StageMixture(stage, builder, streams, num_samples=4, batch_size=2, seed=0)
    with caplog.at_level(logging.WARNING, logger="trainers.mixture"):
        assert len(list(mixture)) == 4
    assert mixture.skipped["qa"] == 4 and "records skipped, per task" in caplog.text
    key = mixture.fingerprint({"sources": "x"})
    template, model.tokenizer.chat_template = getattr(model.tokenizer, "chat_template", None), "{{ messages }}"
    try:
        assert mixture.fingerprint({"sources": "x"}) != key  # another chat template: examples built afresh
    finally:
        model.tokenizer.chat_template = template
    assert mixture.fingerprint({"sources": "x"}) == key


def test_collator_stacks_chunks_in_row_order_and_pads_labels(builder, corpus, model):
    examples = [
        builder.language_modeling(corpus[3]),
        builder.reconstruction(corpus[0]),
        builder.continuation(corpus[1], 1),
    ]
    batch = MemCompCollator.for_model(model)(examples)
    flat = [chunk for e in examples for chunk in e["chunks"]]
    assert batch["chunk_ids"].shape == (len(flat), 16)
    for row, chunk in enumerate(flat):
        assert batch["chunk_ids"][row, : len(chunk)].tolist() == chunk
        assert batch["chunk_attention_mask"][row].sum() == len(chunk)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        assert batch["labels"][row, :n].tolist() == example["labels"]
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all() and batch["attention_mask"][row].sum() == n
    assert [TASKS[i] for i in batch["task_ids"]] == ["language_modeling", "reconstruction", "continuation"]
    # The model consumes the batch as is: the chunk path equals the precomputed-memory path.
    inputs = {k: v for k, v in batch.items() if k != "task_ids"}
    with torch.no_grad():
        direct = model(**inputs).loss
        memory = model.encode_chunks(batch["chunk_ids"], batch["chunk_attention_mask"])
        cached = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"], memory_embeds=memory).loss
    torch.testing.assert_close(direct, cached)


def test_collator_rejects_mismatched_placeholders(builder, corpus, model):
    example = builder.reconstruction(corpus[0])
    example["chunks"] = example["chunks"][:-1]
    with pytest.raises(ValueError, match="placeholders"):
        MemCompCollator.for_model(model)([example])


def test_schedule_keeps_both_kinds_in_every_batch():
    schedule = compression_schedule(2000, 0.7, 8, random.Random(0))
    assert abs(sum(schedule) / 2000 - 0.7) < 0.005
    for start in range(0, 2000, 8):
        assert 0 < sum(schedule[start : start + 8]) < 8


@pytest.mark.parametrize("ratio", [0.7, 0.6])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_schedule_keeps_the_recipe_ratio_at_small_per_device_batches(ratio, batch_size):
    """Both kinds in every batch only where the batch can hold them at the ratio: 2 at 0.7 is not forced to 1:1."""
    schedule = compression_schedule(6000, ratio, batch_size, random.Random(0))
    assert abs(sum(schedule) / 6000 - ratio) < 0.005


@pytest.mark.parametrize("stage_name", ["cpt1", "cpt2"])
def test_mixture_proportions_over_2000_samples(model, stage_name):
    stage = STAGES[stage_name]
    builder = TaskBuilder(model.tokenizer, model.config, template=stage.template, max_length=512)
    # Records are irrelevant to the proportions: stub streams make this fast.
    streams = {
        "document": cycle([{"text": "The quiet village discovered a forgotten song under a pale moon, twice over."}]),
        "summary": cycle([{"text": "A short text about a bridge.", "summary": "A bridge."}]),
        "qa": cycle([{"context": ["The code is 7."], "question": "What is the code?", "answer": "7"}]),
    }
    mixture = StageMixture(stage, builder, streams, num_samples=2000, batch_size=8, seed=3)
    examples = list(mixture)
    counts = Counter(e["task"] for e in examples)
    compressed = 2000 - counts["language_modeling"]
    assert abs(compressed / 2000 - stage.compression_ratio) < 0.01
    for task, weight in stage.task_weights.items():
        assert abs(counts[task] / compressed - weight) < 0.04, (task, counts)
    for start in range(0, 2000, 8):
        kinds = {e["task"] == "language_modeling" for e in examples[start : start + 8]}
        assert kinds == {True, False}
    again = [e["task"] for e in StageMixture(stage, builder, streams, 2000, 8, seed=3)]
    assert again == [e["task"] for e in examples]  # deterministic for a seed


def test_mixture_needs_a_source_for_every_task(model):
    builder = TaskBuilder(model.tokenizer, model.config, template="chat", max_length=512)
    with pytest.raises(ValueError, match=r"needs sources of kind \['qa', 'summary'\]"):
        StageMixture(STAGES["cpt2"], builder, {"document": iter([])}, 10, 4)


def test_local_sources_are_normalised_and_cycled():
    summaries = SourceConfig(str(FIXTURES / "summaries.jsonl"), kind="summary", columns={"text": "document", "summary": "abstract"})
    stream = record_stream([summaries])
    records = [next(stream) for _ in range(61)]
    assert set(records[0]) == {"text", "summary"} and records[60] == records[0]
    qa = next(record_stream([SourceConfig(str(FIXTURES / "qa.jsonl"), kind="qa")]))
    assert isinstance(qa["context"], list) and qa["answer"].isdigit()
    with pytest.raises(ValueError, match="no column"):
        next(record_stream([SourceConfig(str(FIXTURES / "summaries.jsonl"), kind="summary")]))
    with pytest.raises(ValueError, match="source kind must be one of"):
        SourceConfig("x.jsonl", kind="dialogue")
    with pytest.raises(FileNotFoundError, match="source file 'missing.jsonl' does not exist"):
        SourceConfig("missing.jsonl", kind="qa")


@pytest.mark.parametrize(
    "preset, passages, answer",
    [
        ("hotpotqa", ["Amber vault\nThe amber vault holds code 417. It is old.", "Stone tower\nThe stone tower is tall."], "the amber vault"),
        ("trivia_qa", ["The cedar vault code is 233.", "Search: cedar 233."], "233"),
        ("ragbench", ["The northern city built the bridge.", "A cat slept."], "The northern city."),
    ],
)
def test_presets_flatten_hub_qa_schemas(preset, passages, answer):
    source = SourceConfig(str(FIXTURES / f"{preset}_sample.jsonl"), kind="qa", preset=preset)
    record = next(record_stream([source]))
    assert record["context"] == passages and record["answer"] == answer and record["question"].endswith("?")
    with pytest.raises(ValueError, match="set kind: qa"):
        SourceConfig("x", kind="document", preset=preset)


def test_lm_only_sources_feed_plain_lm_and_never_compression(model):
    builder = TaskBuilder(model.tokenizer, model.config, template="plain", max_length=512)
    streams = {"document": cycle([{"text": "A document about the stone tower."}]), "standard": cycle([{"text": "human: hi\ngpt: hello"}])}
    examples = list(StageMixture(STAGES["cpt1"], builder, streams, num_samples=64, batch_size=8))
    for example in examples:
        text = model.tokenizer.decode(example["input_ids"])
        assert ("gpt: hello" in text) == (example["task"] == "language_modeling")


def test_openhermes_preset_joins_the_plain_lm_stream():
    sources = [
        {"path": str(FIXTURES / "openhermes_sample.jsonl"), "kind": "standard", "preset": "openhermes"},
        {"path": str(FIXTURES / "documents.jsonl"), "kind": "document"},
    ]
    streams = stage_streams(sources)
    assert set(streams) == {"document", "standard"}
    texts = [next(streams["standard"])["text"] for _ in range(400)]
    assert "system: Be brief.\nhuman: Name a colour.\ngpt: Amber." in texts
    assert any(text.startswith("The ") for text in texts)  # documents are plain-LM material too


def test_emphasis_marks_exactly_the_target_tokens_of_matches(model):
    builder = TaskBuilder(model.tokenizer, model.config, max_length=512, emphasis=r"\bfox\b|\d+")
    text = "the quick brown fox jumps over 42 lazy dogs, and the fox sleeps."
    example = builder.reconstruction(text)
    marked = [model.tokenizer.decode([example["input_ids"][i]]) for i in example["emphasis"]]
    assert "".join(marked).replace(" ", "") == "fox42fox"
    assert all(example["labels"][i] != IGNORE_INDEX for i in example["emphasis"])  # targets only, never the prompt
    cut = TaskBuilder(model.tokenizer, model.config, max_length=64, emphasis=r"\bfox\b").reconstruction(text * 8)
    assert cut["emphasis"] and max(cut["emphasis"]) < len(cut["input_ids"]) - 1  # a cut target: never its last token
    plain = builder.language_modeling(text)
    assert plain["emphasis"] == []  # every example has the column; only reconstruction targets are marked
    assert "emphasis" not in TaskBuilder(model.tokenizer, model.config, max_length=512).reconstruction(text)
    with pytest.raises(ValueError, match="not a regular expression"):
        TaskBuilder(model.tokenizer, model.config, max_length=512, emphasis="(")


def test_collator_turns_emphasis_positions_into_a_mask(builder, corpus, model):
    examples = [builder.reconstruction(corpus[0]), builder.reconstruction(corpus[1])]
    examples[0] = {**examples[0], "emphasis": [3, 5]}
    examples[1] = {**examples[1], "emphasis": []}
    batch = MemCompCollator.for_model(model)(examples)
    assert batch["emphasis_mask"].shape == batch["input_ids"].shape
    assert batch["emphasis_mask"][0].nonzero().flatten().tolist() == [3, 5] and not batch["emphasis_mask"][1].any()
    assert "emphasis_mask" not in MemCompCollator.for_model(model)([examples[1]])


def test_hotpotqa_passages_are_formatted_alike_in_training_and_evaluation():
    import json

    from benchmarks.eval.loaders import to_qa_item

    row = json.loads((FIXTURES / "hotpotqa_sample.jsonl").read_text().splitlines()[0])
    trained = next(record_stream([SourceConfig(str(FIXTURES / "hotpotqa_sample.jsonl"), kind="qa", preset="hotpotqa")]))
    assert trained["context"] == to_qa_item(row, 0).passages
    assert not any("  " in passage for passage in trained["context"])  # the Hub's sentences start with a space


def test_disjoint_lm_documents_give_plain_lm_and_compression_different_records():
    import json

    from trainers.data import in_holdout, in_lm_half

    sources = [
        {"path": str(FIXTURES / "openhermes_sample.jsonl"), "kind": "standard", "preset": "openhermes"},
        {"path": str(FIXTURES / "documents.jsonl"), "kind": "document"},
    ]
    texts = [json.loads(line)["text"] for line in (FIXTURES / "documents.jsonl").read_text().splitlines()]
    lm_half = {t for t in texts if in_lm_half({"text": t})}
    assert 0 < len(lm_half) < len(texts)
    for split in (None, "train"):
        streams = stage_streams(sources, seed=0, split=split, disjoint_lm=True)
        compressed = {next(streams["document"])["text"] for _ in range(3 * len(texts))}
        plain = {next(streams["standard"])["text"] for _ in range(6 * len(texts))}
        plain_documents = plain & set(texts)
        assert not compressed & plain_documents  # no document is read whole, then compressed
        kept = {t for t in texts if split is None or not in_holdout({"text": t})}
        assert compressed == kept - lm_half and plain_documents == kept & lm_half
        assert "system: Be brief.\nhuman: Name a colour.\ngpt: Amber." in plain  # LM-only sources stay whole
    # Off (the default, and the synthetic pipeline's path): both streams read every document, as before.
    streams = stage_streams(sources, seed=0)
    assert {next(streams["document"])["text"] for _ in range(3 * len(texts))} == set(texts)
