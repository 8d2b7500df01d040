"""Evaluation data: loader layouts and errors, resumable record store, NIAH / multi-hop / LongBench example builders."""

import json
from pathlib import Path

import pytest
import torch

from benchmarks.eval import protocol
from benchmarks.eval.config import EvalArguments, LongBenchArguments
from benchmarks.eval.loaders import load_qa, read_rows, read_texts, to_qa_item
from benchmarks.eval.longbench import bucket_of
from benchmarks.eval.longbench import build_examples as longbench_examples
from benchmarks.eval.multihop import build_examples as multihop_examples
from benchmarks.eval.niah import build_examples as niah_examples
from benchmarks.eval.records import RecordStore, config_hash
from benchmarks.eval.runtime import load_model

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def test_qa_layouts_normalise_to_passages_answers_and_gold():
    hotpot = to_qa_item(
        {"id": "a", "question": "Q?", "answer": "yes",
         "context": {"title": ["T1", "T2"], "sentences": [["S1 ", "S2"], ["S3"]]},
         "supporting_facts": {"title": ["T2"], "sent_id": [0]}}, 0)
    assert hotpot.passages == ["T1\nS1 S2", "T2\nS3"] and hotpot.supporting == [1] and hotpot.answers == ["yes"]
    musique = to_qa_item(
        {"id": "m", "question": "Q?", "answer": "x", "answer_aliases": ["X", "x"],
         "paragraphs": [{"title": "A", "paragraph_text": "p", "is_supporting": False},
                        {"title": "B", "paragraph_text": "q", "is_supporting": True}]}, 0)
    assert musique.passages == ["A\np", "B\nq"] and musique.supporting == [1] and musique.answers == ["x", "X"]
    wiki = to_qa_item({"_id": "w", "question": "Q?", "answer": "z", "context": [["A", ["s1", "s2"]], ["B", ["s3"]]],
                       "supporting_facts": [["A", 0]]}, 0)
    assert (wiki.id, wiki.passages, wiki.supporting) == ("w", ["A\ns1 s2", "B\ns3"], [0])
    marco = to_qa_item({"query_id": 7, "query": "Q?", "answers": ["No Answer Present.", "ok"],
                        "passages": {"passage_text": ["p1", "p2"], "is_selected": [0, 1]}}, 0)
    assert (marco.id, marco.answers, marco.supporting) == ("7", ["ok"], [1])
    squad = to_qa_item({"id": "s", "question": "Q?", "answers": {"text": ["a", "a"]}, "context": "ctx"}, 0)
    assert (squad.passages, squad.answers) == (["ctx"], ["a"])


def test_local_files_load_through_datasets_in_every_format(tmp_path):
    """The official 2WikiMultihopQA `dev.json` (one JSON list, [title, sentences] pairs) and a Parquet copy of a
    .jsonl fixture load as the same items the documented schema gives."""
    wiki = [{"_id": "w", "question": "Q?", "answer": "z", "context": [["A", ["s1", "s2"]], ["B", ["s3"]]],
             "supporting_facts": [["A", 0]]}]
    (tmp_path / "dev.json").write_text(json.dumps(wiki))
    name, items = load_qa(f"2wiki={tmp_path / 'dev.json'}")
    assert name == "2wiki" and [(i.id, i.passages, i.supporting) for i in items] == [("w", ["A\ns1 s2", "B\ns3"], [0])]
    from datasets import Dataset

    Dataset.from_list(read_rows(FIXTURES / "hotpotqa.jsonl")).to_parquet(tmp_path / "hotpotqa.parquet")
    assert load_qa(str(tmp_path / "hotpotqa.parquet"))[1] == load_qa(str(FIXTURES / "hotpotqa.jsonl"))[1]


def test_qa_loader_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="no 'question'"):
        to_qa_item({"answers": ["a"], "context": "c"}, 3)
    with pytest.raises(ValueError, match="no answers"):
        to_qa_item({"question": "Q?", "context": "c"}, 0)
    with pytest.raises(ValueError, match="known layout"):
        to_qa_item({"question": "Q?", "answers": ["a"], "context": 5}, 0)
    with pytest.raises(ValueError, match="unknown QA source 'hotpot'"):
        load_qa("hotpot")
    with pytest.raises(ValueError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "context": "c"}) + "\n")
    with pytest.raises(ValueError, match="no answers"):
        load_qa(str(bad))  # a local file's bad rows are reported, not skipped
    with pytest.raises(ValueError, match="text_field"):
        read_texts(FIXTURES / "squad.jsonl")


def test_qa_sampling_is_seeded_and_named():
    name, items = load_qa(f"multi={FIXTURES / 'hotpotqa.jsonl'}", samples=2, seed=1)
    again = load_qa(f"multi={FIXTURES / 'hotpotqa.jsonl'}", samples=2, seed=1)[1]
    assert name == "multi" and [i.id for i in items] == [i.id for i in again] and len(items) == 2
    assert load_qa(str(FIXTURES / "squad.jsonl"))[0] == "squad"


def test_record_store_resumes_by_config_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "records.jsonl"
    store = RecordStore(path, config_hash({"t": 0.7}))
    store.append({"id": "a", "system": "memcomp", "score": 1})
    store.append({"id": "a", "system": "full", "score": 0})
    with path.open("a") as handle:
        handle.write('{"id": "b", "system": "memc')  # crash mid-write
    resumed = RecordStore(path, config_hash({"t": 0.7}))
    assert resumed.done("a", "memcomp") and resumed.done("a", "full") and not resumed.done("b", "memcomp")
    resumed.append({"id": "b", "system": "memcomp", "score": 1})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "a", "b"]
    assert len(RecordStore(path, config_hash({"t": 0.1}))) == 0  # another config reuses nothing
    with pytest.raises(ValueError, match="'id' and 'system'"):
        resumed.append({"id": "c"})


def test_an_example_whose_data_changed_under_the_same_id_is_run_again(tmp_path):
    from benchmarks.eval.harness import Example, run
    from benchmarks.eval.systems import Generation

    class Echo:
        name, calls = "echo", []

        def generate(self, contexts, instructions, **kwargs):
            self.calls.extend(contexts)
            return [Generation(text="Answer: Oslo", num_tokens=2, context_tokens=3) for _ in contexts]

    score = lambda example, generation: {"em": float(example.reference == "Oslo")}  # noqa: E731
    store = lambda: RecordStore(tmp_path / "records.jsonl", config_hash({"t": 0}))  # noqa: E731
    wrong = [Example("0", "Oslo is in Norway.", "Where?", "Rome"), Example("1", "Paris.", "Where?", "Paris")]
    assert [r["em"] for r in run(wrong, [Echo()], score, store(), {})] == [0.0, 0.0]
    fixed = [Example("0", "Oslo is in Norway.", "Where?", "Oslo"), wrong[1]]  # the reference corrected in the file
    Echo.calls.clear()
    records = run(fixed, [Echo()], score, store(), {})
    assert Echo.calls == ["Oslo is in Norway."]  # only the changed example ran again
    assert sorted((r["id"], r["em"]) for r in records) == [("0", 1.0), ("1", 0.0)]
    old = {"id": "9", "system": "echo", "em": 1.0}  # a record written before records carried digests
    with (tmp_path / "records.jsonl").open("a") as handle:
        handle.write(json.dumps({**old, "config_hash": config_hash({"t": 0})}) + "\n")
    assert sorted(r["id"] for r in run(fixed, [Echo()], score, store(), {})) == ["0", "1"]  # not asked for: left out


def test_per_example_generation_kwargs_batch_each_set_together_and_record_every_example(tmp_path):
    from benchmarks.eval.harness import Example, run
    from benchmarks.eval.systems import Generation

    class Recording:
        name, calls = "rec", []

        def generate(self, contexts, instructions, **kwargs):
            self.calls.append((contexts, kwargs["max_new_tokens"]))
            return [Generation(text=c, num_tokens=1, context_tokens=1) for c in contexts]

    examples = [Example(str(i), f"c{i}", "Rebuild.", f"c{i}", meta={"cap": cap}) for i, cap in enumerate((8, 16, 8, 8))]
    store = RecordStore(tmp_path / "records.jsonl", config_hash({}))
    records = run(examples, [Recording()], lambda e, g: {"em": float(g.text == e.reference)}, store,
                  lambda e: {"max_new_tokens": e.meta["cap"]}, batch_size=2)
    assert Recording.calls == [(["c0", "c2"], 8), (["c3"], 8), (["c1"], 16)]  # one cap per batch, never mixed
    assert sorted(r["id"] for r in records) == ["0", "1", "2", "3"] and all(r["em"] == 1.0 for r in records)
    Recording.calls.clear()
    run(examples, [Recording()], lambda e, g: {"em": 1.0}, store, lambda e: {"max_new_tokens": e.meta["cap"]}, batch_size=2)
    assert Recording.calls == []  # the same kwargs: every record reused
    run(examples, [Recording()], lambda e, g: {"em": 1.0}, store, {"max_new_tokens": 8}, batch_size=4)
    assert Recording.calls == [(["c1"], 8)]  # example 1 had another cap: its record is not reused


def test_generation_kwargs_json_cannot_name_still_group_and_key_records():
    from benchmarks.eval.harness import Example, example_hash, kwargs_key

    bias = {"max_new_tokens": 4, "sequence_bias": {(5,): -10.0}}  # tuple keys: not JSON
    assert kwargs_key(bias) == kwargs_key({"sequence_bias": {(5,): -10.0}, "max_new_tokens": 4})
    a, b = torch.zeros(2000), torch.zeros(2000)
    b[1000] = 1.0  # equal in a shortened printout
    assert kwargs_key({"bad_words": a}) != kwargs_key({"bad_words": b})
    example = Example("0", "c", "q", "r")
    assert example_hash(example, {"max_new_tokens": 4}) != example_hash(example, {"max_new_tokens": 5})


def test_niah_needle_sits_at_its_depth_on_a_sentence_boundary(tokenizer):
    haystack = (FIXTURES / "haystack.txt").read_text()
    examples = niah_examples(tokenizer, haystack, [200], [0, 50, 100])
    needle = protocol.NIAH_NEEDLE
    starts = [e.context.index(needle) for e in examples]
    assert starts[0] == 0 and examples[2].context.endswith(needle)
    middle = examples[1].context
    assert 0.3 < starts[1] / len(middle) < 0.6 and middle[: starts[1]].rstrip().endswith(".")
    for e in examples:
        assert abs(len(tokenizer(e.context)["input_ids"]) - 200) <= 5
        assert (e.instruction, e.reference) == (protocol.NIAH_QUESTION, protocol.NIAH_ANSWER)
    with pytest.raises(ValueError, match="percentages"):
        niah_examples(tokenizer, haystack, [200], [150])


def test_multihop_hides_gold_paragraphs_among_other_questions_distractors(tokenizer):
    datasets = {"hotpotqa": load_qa(str(FIXTURES / "hotpotqa.jsonl"))[1]}
    examples = multihop_examples(tokenizer, datasets, [100, 200], template="chat", seed=0)
    assert [e.id for e in multihop_examples(tokenizer, datasets, [60], samples_per_set=1, seed=3)] == [
        e.id for e in multihop_examples(tokenizer, datasets, [60], samples_per_set=1, seed=3)
    ] and len(multihop_examples(tokenizer, datasets, [60], samples_per_set=2)) == 2
    assert [e.id for e in examples] == ["hotpotqa/h1@100", "hotpotqa/h1@200", "hotpotqa/h2@100", "hotpotqa/h2@200", "hotpotqa/h3@100", "hotpotqa/h3@200"]
    item = datasets["hotpotqa"][0]
    long_one = examples[1]
    texts = [d.split("\n", 1)[1] for d in long_one.context]
    assert all(item.passages[i] in texts for i in item.supporting)
    assert item.passages[2] not in texts  # the question's own non-gold paragraph is not a distractor
    assert len(texts) > len(item.supporting)  # distractors were added
    short_texts = [d.split("\n", 1)[1] for d in examples[0].context]
    assert set(short_texts) <= set(texts)  # the longer context extends the shorter one
    # the length counts what the model reads: the documents with their headers and the blank lines between them
    assert len(tokenizer("\n\n".join(long_one.context), add_special_tokens=False)["input_ids"]) <= 200
    assert long_one.instruction.endswith(f"Question: {item.question}\nAnswer:")
    rl = multihop_examples(tokenizer, datasets, [100], template="rl")[0]
    assert rl.instruction == item.question  # the RL model asks for \boxed{} itself...
    assert rl.instruction_for("full") == long_one.instruction  # ...the baseline keeps the RULER instruction
    assert [e.context for e in examples] == [e.context for e in multihop_examples(tokenizer, datasets, [100, 200], seed=0)]


def test_longbench_filters_by_length_and_buckets(tokenizer):
    rows = read_rows(FIXTURES / "longbench.jsonl")
    examples = longbench_examples(tokenizer, rows, LongBenchArguments(max_tokens=400, buckets=[0, 200]))
    lengths = [len(tokenizer(r["context"])["input_ids"]) for r in rows]
    assert [e.id for e in examples] == [r["_id"] for r, n in zip(rows, lengths) if n < 400]
    assert all(e.meta["bucket"] in ("0-200", "200-400") for e in examples)
    assert "(B) The bridge" in examples[0].instruction and examples[0].reference == "A"
    assert bucket_of(8_000, [0, 8_000, 16_000]) == (8_000, "8K-16K")
    with pytest.raises(ValueError, match="outside the bucket edges"):
        bucket_of(20_000, [0, 8_000, 16_000])
    with pytest.raises(ValueError, match="official schema"):
        longbench_examples(tokenizer, [{"question": "Q"}], LongBenchArguments())


def test_eval_arguments_reject_bad_values():
    with pytest.raises(ValueError, match="systems"):
        EvalArguments(systems=["pisco"])
    with pytest.raises(ValueError, match="template"):
        EvalArguments(template="alpaca")
    with pytest.raises(ValueError, match="limit"):
        EvalArguments(limit=0)
    with pytest.raises(ValueError, match="temperature"):
        EvalArguments(temperature=-1)
    with pytest.raises(ValueError, match="--model tiny"):
        load_model(EvalArguments())
    with pytest.raises(ValueError, match="yarn"):
        EvalArguments(full_context_yarn_factor=0.5)
    assert EvalArguments(temperature=0.5).run_settings("qa") != EvalArguments().run_settings("qa")
    assert EvalArguments(limit=3, batch_size=4).run_settings("qa") == EvalArguments().run_settings("qa")
    from benchmarks.eval.runtime import output_dir

    assert output_dir(EvalArguments(), "niah") == Path("eval_results/niah")  # benchmarks never share a folder by default
    assert output_dir(EvalArguments(output_dir="x"), "niah") == Path("x")


def test_default_datasets_all_load_and_unknown_sources_fail_before_any_download(tmp_path):
    from benchmarks.eval.config import MultiHopArguments, QAArguments
    from benchmarks.eval.loaders import MULTIHOP_PRESETS, QA_PRESETS

    assert QAArguments().datasets and set(QAArguments().datasets) <= set(QA_PRESETS)
    assert MultiHopArguments().datasets and set(MultiHopArguments().datasets) <= set(MULTIHOP_PRESETS)
    for arguments in (QAArguments, MultiHopArguments):
        with pytest.raises(ValueError, match=r"--datasets 2wiki: no preset of that name .* 2wiki=/data/2wiki/dev.json"):
            arguments(datasets=["hotpotqa", "2wiki"])
        with pytest.raises(ValueError, match="no such file"):
            arguments(datasets=[f"2wiki={tmp_path / 'dev.json'}"])
    (tmp_path / "dev.json").write_text("[]")
    assert QAArguments(datasets=[f"2wiki={tmp_path / 'dev.json'}", "org/set", "squad"]).datasets[-1] == "squad"


def test_generation_settings_follow_the_paper_per_benchmark():
    from benchmarks.eval.runtime import generate_kwargs

    assert generate_kwargs(EvalArguments(), "niah") == {"do_sample": False, "repetition_penalty": 1.05, "max_new_tokens": 64}
    qa_kwargs = generate_kwargs(EvalArguments(), "qa")
    assert qa_kwargs == {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05, "max_new_tokens": 600}
    assert generate_kwargs(EvalArguments(), "reconstruction", 336)["temperature"] == 0.1
    overridden = generate_kwargs(EvalArguments(temperature=0, max_new_tokens=9), "qa")
    assert overridden["do_sample"] is False and overridden["max_new_tokens"] == 9
