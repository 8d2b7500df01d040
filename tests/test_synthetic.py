"""The synthetic corpus: seeded, held-out names unseen in training, answerable questions, loadable rows."""

import json
import random
import re
from pathlib import Path

import pytest
import yaml
import torch

from modeling_memcomp.prompting import IGNORE_INDEX
from modeling_memcomp.tiny import build_tiny_memcomp
from modeling_memcomp.tiny import tiny_qwen2_config
from trainers import MemCompTrainer
from trainers.config import parse_stage_args
from trainers.data import SCHEMAS, SourceConfig, load_source, stage_streams
from trainers.synthetic import (
    ORG_FACTS,
    PERSON_FACTS,
    TWO_HOP,
    SyntheticConfig,
    VALUE_SETS,
    generate,
    iter_texts,
    lexicon_texts,
    name_list_texts,
    name_pool,
    split_names,
    train_synthetic_tokenizer,
    vocabulary,
    with_distractors,
    write_corpus,
)
from trainers.run import build_datasets, build_model
from trainers.tasks import TaskBuilder

CONFIGS = Path(__file__).parent.parent / "examples" / "configs"

CONFIG = SyntheticConfig(seed=3, train_episodes=60, heldout_episodes=15, eval_passages=[1, 2, 4, 8])
NAMES = set(name_pool())


@pytest.fixture(scope="module")
def corpus():
    return generate(CONFIG)


@pytest.fixture(scope="module")
def synthetic_tokenizer(corpus):
    return train_synthetic_tokenizer(iter_texts(corpus, "train"))


def names_in(text):
    return {w for w in re.findall(r"[A-Za-z]+", text) if w in NAMES}


def split_texts(corpus, split):
    rows = corpus[split]
    texts = [r["text"] for r in rows["document"] + rows["standard"]] + [r["summary"] for r in rows["summary"]]
    return texts + [" ".join([*r["context"], r["question"], r["answer"]]) for r in rows["qa"]]


def test_same_seed_same_corpus_and_another_seed_differs(corpus):
    assert generate(CONFIG) == corpus
    assert generate(SyntheticConfig(seed=4, train_episodes=60, heldout_episodes=15, eval_passages=[1, 2, 4, 8])) != corpus
    assert len(corpus["train"]["document"]) == 2 * 60 and len(corpus["heldout"]["summary"]) == 2 * 15
    # 5 person (one person, all five facts) + 3 organisation questions + 1 two-hop question per episode
    assert len(corpus["train"]["qa"]) == 9 * 60
    two_people = generate(SyntheticConfig(seed=4, train_episodes=6, heldout_episodes=3, people_per_episode=2, eval_passages=[1, 2]))
    assert len(two_people["train"]["qa"]) == 9 * 6  # five of the ten person facts
    assert " and " in two_people["train"]["summary"][0]["summary"]


def test_lexicon_texts_list_each_value_set_in_its_fixed_order_with_document_tokens(corpus, synthetic_tokenizer):
    texts = lexicon_texts(400, seed=1)
    assert texts == lexicon_texts(400, seed=1) and texts != lexicon_texts(400, seed=2)
    seen = set()
    for text in texts:
        items = text.rstrip(".").split(", ")
        values = next(v for v in VALUE_SETS.values() if items[0] in v)
        start = values.index(items[0])
        assert items == [values[(start + i) % len(values)] for i in range(len(items))] and len(items) >= 6
        seen.update(items)
    assert seen == {v for values in VALUE_SETS.values() for v in values}  # every value gets a context of its own
    document = corpus["train"]["document"][0]["text"]
    value = next(w for w in re.findall(r"[A-Za-z0-9]+", document) if any(w in v for v in VALUE_SETS.values()))
    lexicon = next(t for t in texts if f" {value}," in t)
    (token,) = synthetic_tokenizer(f" {value}", add_special_tokens=False)["input_ids"]  # one token, as in documents
    assert token in synthetic_tokenizer(document)["input_ids"] and token in synthetic_tokenizer(lexicon)["input_ids"]


def test_heldout_names_never_occur_in_training_rows(corpus):
    train_pool, heldout_pool = map(set, split_names(CONFIG.seed, CONFIG.heldout_fraction))
    assert not train_pool & heldout_pool and train_pool | heldout_pool == NAMES
    train_names = set().union(*map(names_in, split_texts(corpus, "train")))
    heldout_names = set().union(*map(names_in, split_texts(corpus, "heldout")))
    assert train_names <= train_pool and heldout_names <= heldout_pool
    assert len(heldout_names) >= 3 * 15 - 5  # three names per episode (person, organisation, founder), rare repeats
    assert not train_names & heldout_names


def test_name_lists_list_distinct_names_of_the_pool_they_are_given_only():
    train_pool, heldout_pool = split_names(CONFIG.seed, CONFIG.heldout_fraction)
    texts = name_list_texts(train_pool, 300, seed=1)
    assert texts == name_list_texts(train_pool, 300, seed=1) and texts != name_list_texts(train_pool, 300, seed=2)
    lists = [t.removesuffix(".").split(", ") for t in texts]
    assert {len(names) for names in lists} == set(range(6, 17))
    assert all(len(set(names)) == len(names) for names in lists)
    assert set().union(*lists) <= set(train_pool) and not set().union(*lists) & set(heldout_pool)
    with pytest.raises(ValueError, match=r"min_items \(3\) <= max_items \(2\)"):
        name_list_texts(train_pool, 1, min_items=3, max_items=2)
    with pytest.raises(ValueError, match=r"max_items \(16\) <= len\(names\) \(5\)"):
        name_list_texts(train_pool[:5], 1, min_items=2)


def test_every_syllable_of_a_heldout_name_occurs_in_training_names_at_default_size():
    config = SyntheticConfig()
    train_names = set().union(*(names_in(r["text"]) for r in generate(config)["train"]["document"]))
    _, heldout_pool = split_names(config.seed, config.heldout_fraction)
    assert {n[:2] for n in heldout_pool} <= {n[:2] for n in train_names}
    assert {n[2:] for n in heldout_pool} <= {n[2:] for n in train_names}


def test_documents_vary_so_they_must_be_read(corpus):
    docs = [r["text"] for r in corpus["train"]["document"]]
    assert len(set(docs)) == len(docs)
    first_sentences = {d.split(". ")[0].replace(d.split()[0], "X") for d in docs}
    assert len(first_sentences) > 5  # fact order is shuffled, not a fixed template


def test_single_hop_answers_are_stated_once_in_their_document(corpus):
    questions = {q: (attr, facts) for facts in (PERSON_FACTS, ORG_FACTS) for attr, (_, q) in facts.items()}
    rows = corpus["heldout"]["qa"] + corpus["heldout"]["qa_passages"] + corpus["train"]["qa"]
    single = [r for r in rows if not r["type"].startswith("two_hop")]
    assert {r["type"] for r in single} == {f"person_{a}" for a in PERSON_FACTS} | {f"org_{a}" for a in ORG_FACTS}
    assert all(len(r["context"]) == 1 for r in single if "k" not in r)  # held-out `qa`: the needed document alone
    for row in single:
        (name,) = names_in(row["question"])
        (doc,) = [d for d in row["context"] if name in names_in(d)]  # distractors never mention the name
        (attr, facts), = [v for q, v in questions.items() if q.format(name=name) == row["question"]]
        sentence = facts[attr][0].format(name=name, value=row["answer"])
        assert doc.count(sentence) == 1, (sentence, doc)
        pattern = re.escape(facts[attr][0].format(name=name, value="@")).replace("@", r"(\w+)")
        assert re.findall(pattern, doc) == [row["answer"]]  # no other value for the same fact


def test_two_hop_answers_follow_from_both_documents(corpus):
    rows = corpus["heldout"]["qa"] + corpus["heldout"]["qa_passages"] + corpus["train"]["qa"]
    two_hop = [r for r in rows if r["type"].startswith("two_hop")]
    assert {r["type"] for r in two_hop} == {f"two_hop_{a}" for a in TWO_HOP}
    for row in two_hop:
        attr = row["type"].removeprefix("two_hop_")
        (person,) = names_in(row["question"])
        assert row["question"] == TWO_HOP[attr].format(name=person)
        (people_doc,) = [d for d in row["context"] if person in names_in(d)]
        (org,) = re.findall(rf"{person} works for (\w+)\.", people_doc)
        (org_doc,) = [d for d in row["context"] if org in names_in(d) and d != people_doc]
        assert ORG_FACTS[attr][0].format(name=org, value=row["answer"]) in org_doc
        assert org not in names_in(row["question"])  # the bridge entity is never named in the question


def test_rows_load_through_the_stage_sources(corpus, tmp_path):
    paths = write_corpus(corpus, tmp_path)
    source_kind = {"multidoc": "document", "qa_passages": "qa"}  # files whose rows have a stage source's schema
    for split in ("train", "heldout"):
        for name, rows in corpus[split].items():
            kind = source_kind.get(name, name)
            if not rows:  # held-out multidoc: no CPT texts are made for evaluation
                with pytest.raises(ValueError, match="is empty"):
                    load_source(SourceConfig(str(paths[split][name]), kind=kind))
                continue
            loaded = list(load_source(SourceConfig(str(paths[split][name]), kind=kind)))
            assert loaded == [{key: row[key] for key in SCHEMAS[kind]} for row in rows]
    streams = stage_streams([{"path": str(p), "kind": k} for k, p in paths["heldout"].items() if k in SCHEMAS and corpus["heldout"][k]])
    assert next(streams["qa"])["context"] == corpus["heldout"]["qa"][0]["context"]
    lm = {next(streams["standard"])["text"] for _ in range(3 * 15)}  # documents and episode texts feed the LM mix
    documents, episodes = ({r["text"] for r in corpus["heldout"][kind]} for kind in ("document", "standard"))
    assert lm & documents and lm & episodes and lm <= documents | episodes


def test_tokenizer_names_are_two_trained_syllables_and_other_words_one_token(corpus, synthetic_tokenizer, tmp_path):
    tok = synthetic_tokenizer
    _, heldout_pool = split_names(CONFIG.seed, CONFIG.heldout_fraction)
    for name in heldout_pool[:300]:
        first, second = name[:2], name[2:]
        assert tok(" " + name)["input_ids"] == tok.convert_tokens_to_ids(["Ġ" + first, second]), name
        assert tok(name)["input_ids"] == tok.convert_tokens_to_ids([first, second]), name
    for word in set(vocabulary()) - NAMES:
        assert len(tok(word)["input_ids"]) == 1 and len(tok(" " + word)["input_ids"]) == 1, word
    text = corpus["heldout"]["document"][0]["text"]
    assert tok.decode(tok(text)["input_ids"]) == text
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == tok(text)["input_ids"]


def test_qa_rows_become_examples_whose_labels_are_the_answer(corpus, synthetic_tokenizer):
    model = build_tiny_memcomp(synthetic_tokenizer, chunk_size=16)
    builder = TaskBuilder(model.tokenizer, model.config, template="plain", max_length=512)
    for row in corpus["heldout"]["qa"][:14]:
        example = builder.qa(row["context"], row["question"], row["answer"])
        target = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
        assert model.tokenizer.decode(target[:-1]) == row["answer"]
        assert target[-1] == model.tokenizer.eos_token_id
        context_ids = [t for passage in row["context"] for t in builder.tokenize(passage)]
        assert [t for chunk in example["chunks"] for t in chunk] == context_ids
    summary = corpus["heldout"]["summary"][0]
    assert builder.summarization(summary["text"], summary["summary"]) is not None


def documents_stating_the_asked_fact(row):
    """How many of a QA row's documents state the asked attribute (of anyone): 1 means no binding is needed."""
    attr = row["type"].split("_", 1)[1].removeprefix("hop_")
    facts = PERSON_FACTS if row["type"].startswith("person") else ORG_FACTS
    pattern = re.escape(facts[attr][0].format(name="@", value="@")).replace("@", r"\w+")
    return sum(bool(re.search(pattern, doc)) for doc in row["context"])


def test_other_kind_distractors_never_state_the_asked_attribute(corpus):
    config = SyntheticConfig(**{**vars(CONFIG), "distractors": "other_kind"})
    easy = generate(config)
    for split, kind in (("train", "qa"), ("heldout", "qa_passages")):
        assert {documents_stating_the_asked_fact(r) for r in easy[split][kind]} == {1}
        assert max(map(documents_stating_the_asked_fact, corpus[split][kind])) > 1  # the default needs binding
    for kind in ("document", "standard", "summary", "multidoc"):  # only the QA contexts change
        assert easy["train"][kind] == corpus["train"][kind]
    assert easy["heldout"]["qa"] == corpus["heldout"]["qa"]
    with pytest.raises(ValueError, match="distractors must be one of"):
        SyntheticConfig(distractors="none")
    with pytest.raises(ValueError, match="distractors='other_kind'.*raise heldout_episodes"):
        SyntheticConfig(heldout_episodes=15, eval_passages=[1, 17], distractors="other_kind")


def test_bad_config_names_the_argument():
    with pytest.raises(ValueError, match="train_episodes must be >= 1"):
        SyntheticConfig(train_episodes=0)
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_names(0, heldout_fraction=1.5)
    with pytest.raises(ValueError, match="split must be one of"):
        next(iter_texts({"train": {}}, "test"))


def test_contexts_larger_than_the_corpus_can_fill_are_refused_not_looped_on():
    with pytest.raises(ValueError, match="raise heldout_episodes or lower eval_passages"):
        SyntheticConfig(heldout_episodes=15, eval_passages=[1, 32])
    # Enough documents in total, but each shares a name with the needed ones: a clear error, not an endless draw.
    needed = ["Bako met Dilu."]
    with pytest.raises(ValueError, match="Cannot fill a context of 3 documents"):
        with_distractors(needed, ["Bako left.", "Dilu stayed.", "Kumo ran."], 3, random.Random(0))


def synthetic_stage(stage, corpus, tokenizer, tmp_path, kinds, *fields):
    """A tiny stage config over a base LM saved with the synthetic tokenizer and the corpus's JSONL files."""
    from transformers import Qwen2ForCausalLM

    base = tmp_path / "base"
    config = tiny_qwen2_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    paths = write_corpus(corpus, tmp_path / "data")["train"]
    sources = [json.dumps({"path": str(paths[kind]), "kind": kind}) for kind in kinds]
    yaml_config = {k: v for k, v in yaml.safe_load((CONFIGS / f"{stage}_tiny.yaml").read_text()).items() if k != "early_stopping_patience"}
    merged = tmp_path / "stage.yaml"
    merged.write_text(yaml.safe_dump(yaml_config))
    return parse_stage_args([
        "--config", str(merged), "--base", str(base), "--tiny", "false", "--fqlora", "false", "--sources", *sources,
        "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--report_to", "none",
        "--disable_tqdm", "true", "--eval_samples", "0", "--eval_strategy", "no", "--save_strategy", "no", *fields,
    ])


def test_sft_stage_builds_qa_examples_from_the_synthetic_files(corpus, synthetic_tokenizer, tmp_path):
    config = synthetic_stage("sft", corpus, synthetic_tokenizer, tmp_path, ["qa"], "--num_samples", "16")
    model = build_model(config)
    train, _ = build_datasets(config, model)
    answers = {r["answer"] for r in corpus["train"]["qa"]}
    for example in train:
        target = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
        assert example["task"] == "qa" and model.tokenizer.decode(target[:-1]) in answers


def test_a_stage_mixture_override_reaches_the_built_examples(corpus, synthetic_tokenizer, tmp_path):
    config = synthetic_stage(
        "cpt1", corpus, synthetic_tokenizer, tmp_path, ["document", "standard"], "--num_samples", "40",
        "--task_weights", '{"reconstruction": 1.0}', "--compression_ratio", "0.75",
    )
    train, _ = build_datasets(config, build_model(config))
    tasks = [example["task"] for example in train]
    assert set(tasks) == {"reconstruction", "language_modeling"} and tasks.count("reconstruction") == 30


def test_cpt1_stage_learns_on_the_synthetic_files(corpus, synthetic_tokenizer, tmp_path):
    config = synthetic_stage(
        "cpt1", corpus, synthetic_tokenizer, tmp_path, ["document", "standard"], "--num_samples", "8",
        "--max_steps", "12", "--global_batch_size", "4", "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--warmup_steps", "0",
    )
    model = build_model(config)
    train, _ = build_datasets(config, model)
    assert {e["task"] for e in train} <= {"reconstruction", "continuation", "language_modeling"}
    trainer = MemCompTrainer(model=model, args=config.training, train_dataset=train)
    batch = trainer.data_collator([train[i] for i in range(8)])

    def loss():
        with torch.no_grad():
            return trainer.compute_loss(trainer.model.eval(), dict(batch)).item()

    before = loss()
    trainer.model.train()
    trainer.train()
    assert loss() < 0.75 * before


def test_a_base_saved_with_this_tokenizer_keeps_its_tokenization_through_from_base(synthetic_tokenizer, tmp_path):
    # transformers v5 would rebuild it as a Qwen2Tokenizer (digits split, names re-cut) next to a Qwen2 config
    from modeling_memcomp import MemCompForCausalLM
    from modeling_memcomp.tiny import build_tiny_memcomp

    text = "Tera was born in 2016. Tera works for Lebo."
    expected = synthetic_tokenizer(text, add_special_tokens=False)["input_ids"]
    model = build_tiny_memcomp(synthetic_tokenizer, chunk_size=4)
    model.language_model.save_pretrained(tmp_path / "base")
    synthetic_tokenizer.save_pretrained(tmp_path / "base")
    wrapped = MemCompForCausalLM.from_base(str(tmp_path / "base"), chunk_size=4)
    assert wrapped.tokenizer(text, add_special_tokens=False)["input_ids"] == expected
    wrapped.save_pretrained(tmp_path / "memcomp")
    reloaded = MemCompForCausalLM.from_pretrained(tmp_path / "memcomp")
    assert reloaded.tokenizer(text, add_special_tokens=False)["input_ids"] == expected


def test_unseen_example_states_its_answer_in_the_document_it_names_and_uses_held_out_names_only():
    from trainers.synthetic import names_in, unseen_example

    train_names, _ = split_names()
    for seed in range(20):
        passages, question, answer, holder = unseen_example(seed, documents=4)
        assert len(passages) == 4 and question.endswith("?") and answer in passages[holder]
        assert not set().union(*map(names_in, passages)) & set(train_names)
    assert unseen_example(3, 4) == unseen_example(3, 4)  # a seed is one example
