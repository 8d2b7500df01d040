"""Model and dataset cards: Hub metadata round-trips through huggingface_hub's parser, rates come from the config."""

import json
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hub_cards import DatasetContents, compression_rates, dataset_card, load_evaluation, model_card
from modeling_memcomp import MemCompConfig
from modeling_memcomp.tiny import tiny_qwen2_config

EVALUATION = Path(__file__).parent / "fixtures" / "hub" / "evaluation.json"


def make_config(chunk_size=16, wrap="each", **kwargs):
    return MemCompConfig(
        text_config=tiny_qwen2_config(vocab_size=100), chunk_size=chunk_size, wrap=wrap,
        mem_start_token_id=97, mem_end_token_id=98, mem_token_id=99, **kwargs,
    )


def render(tmp_path, card) -> Path:
    path = tmp_path / "README.md"
    card.save(path)
    return path


@pytest.mark.parametrize(
    "chunk_size, wrap, effective",
    [(16, "each", 16 / 3), (16, "block", 4096 / 258), (4, "each", 4 / 3), (64, "block", 4096 / 66)],
)
def test_compression_rates_count_the_decoder_positions_of_the_prompt(chunk_size, wrap, effective):
    rates = compression_rates(make_config(chunk_size, wrap))
    assert rates.nominal == chunk_size
    assert rates.effective == pytest.approx(effective)


def test_model_card_metadata_round_trips_with_the_evaluation_numbers(tmp_path):
    card = model_card(
        make_config(), "someone/memcomp-tiny-rl", "rl", base_model="Qwen/Qwen2.5-7B",
        datasets=["hotpotqa/hotpot_qa"], tags=["qwen2"], evaluation=EVALUATION, num_parameters=7_615_616_512,
    )
    path = render(tmp_path, card)
    loaded = ModelCard.load(path)
    data = loaded.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["base_model"] == "Qwen/Qwen2.5-7B"
    assert data["datasets"] == ["hotpotqa/hotpot_qa"]
    assert data["license"] == "apache-2.0"
    assert {"memcomp", "custom_code", "rl", "qwen2"} <= set(data["tags"])

    expected = json.loads(EVALUATION.read_text())
    model_name, results = model_index_to_eval_results(metadata_load(path)["model-index"])
    assert model_name == expected["model_name"]
    got = [(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split, r.metric_type, r.metric_value) for r in results]
    want = [
        (e["task"], e["dataset"], e["dataset_name"], e.get("split"), e["metric"], e["value"]) for e in expected["results"]
    ]
    assert got == want
    assert results[0].dataset_config == "distractor" and results[0].metric_name == "LLM-judge accuracy"
    assert "| HotpotQA | validation | LLM-judge accuracy | 71.25 |" in loaded.text


def test_model_card_body_has_usage_stage_rates_and_limitations(tmp_path):
    text = model_card(make_config(16, "each", prompt_template="rl", separate_encoder=True), "someone/m", "rl").text
    assert 'AutoModel.from_pretrained("someone/m", trust_remote_code=True' in text
    assert 'pipeline("memcomp-qa", model="someone/m", trust_remote_code=True)' in text
    assert 'model.generate(context=document, question="What is the main finding of the document?")' in text
    assert "trained with the `rl` prompt template" in text and "runs the SFT encoder" in text
    assert "**Recipe stage: rl.**" in text and "DAPO" in text
    assert "16 tokens per memory embedding (16x)" in text and "| 5.33x" in text
    assert "**Encoder cost**" in text and "**Effective rate**" in text
    assert "Untrained" not in text
    assert "Training data: [hotpotqa/hotpot_qa](https://huggingface.co/datasets/hotpotqa/hotpot_qa)." in model_card(
        make_config(), "someone/m", "sft", datasets=["hotpotqa/hotpot_qa"]
    ).text

    block = model_card(make_config(16, "block"), "someone/m", "sft").text
    assert "| 15.88x" in block and "trained with the `chat` prompt template" in block and "SFT encoder" not in block
    assert "boxed" not in block and "Answers end in `\\boxed{}`" in text  # the answer format follows the template


def test_an_rl_card_without_a_separate_encoder_says_what_compress_runs():
    text = model_card(make_config(prompt_template="chat"), "someone/m", "rl").text
    assert "stores no separate encoder" in text and "runs the SFT encoder" not in text and "boxed" not in text


def test_untrained_and_pretraining_cards_say_so(tmp_path):
    untrained = ModelCard.load(render(tmp_path, model_card(make_config(), "someone/m", "untrained")))
    assert "untrained" in untrained.data.tags
    assert "**Untrained.**" in untrained.text and "**Untrained weights**" in untrained.text
    assert "model-index" not in untrained.data.to_dict()
    cpt1 = model_card(make_config(prompt_template="plain"), "someone/m", "cpt1").text
    assert "trained with the `plain` prompt template" in cpt1 and "**Pretraining checkpoint**" in cpt1


def test_stage_summaries_state_the_recipe_defaults():
    cpt2 = model_card(make_config(), "someone/m", "cpt2").text
    assert (
        "continuation 40%, qa 27.5%, summarization 17.5%, reconstruction 15%; mixed 60:40 with plain language "
        "modelling; 0-4 bridge chunks; `plain` template; projection trained." in cpt2
    )
    assert "reconstruction 50%, continuation 50%; mixed 70:30" in model_card(make_config(), "someone/m", "cpt1").text
    assert "qa 100%; `chat` template; projection frozen." in model_card(make_config(), "someone/m", "sft").text


def test_bad_stage_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"stage must be one of \('untrained', 'cpt1', 'cpt2', 'sft', 'rl'\)"):
        model_card(make_config(), "someone/m", "dpo")


@pytest.mark.parametrize(
    "evaluation, error, message",
    [
        ([{"task": "qa"}], ValueError, 'object with a "results" list'),
        ({"results": [{"task": "qa", "dataset": "d", "metric": "m"}]}, ValueError, r"results\[0\] lacks 'value'"),
        ({"results": [{"task": "qa", "dataset": "d", "metric": "m", "value": 1, "metrics": "x"}]}, ValueError,
         r"unknown key\(s\) \['metrics'\]"),
        ({"results": [{"task": "qa", "dataset": "d", "metric": "m", "value": "71%"}]}, TypeError, "must be a number"),
        ({"results": [{"task": "", "dataset": "d", "metric": "m", "value": 1}]}, TypeError, '"task" must be a non-empty'),
        ({"model_name": 3, "results": []}, TypeError, '"model_name" must be a string'),
    ],
)
def test_bad_evaluation_json_names_the_entry_and_key(evaluation, error, message):
    with pytest.raises(error, match=message):
        load_evaluation(evaluation)


def test_invalid_evaluation_file_is_a_value_error(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_evaluation(path)


def test_dataset_card_metadata_round_trips(tmp_path):
    contents = DatasetContents("splits", {"train": 1200, "validation": 30}, {"memory_embeds": "List(Value('float32'))"})
    card = dataset_card(
        "someone/memories", contents, memory_model="someone/memcomp-sft", source_datasets=["hotpotqa/hotpot_qa"]
    )
    loaded = DatasetCard.load(render(tmp_path, card))
    data = loaded.data.to_dict()
    assert data["size_categories"] == "1K<n<10K"
    assert data["source_datasets"] == ["hotpotqa/hotpot_qa"]
    assert "memory-embeddings" in data["tags"]
    assert data["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*"}, {"split": "validation", "path": "data/validation-*"}
    ]
    assert 'load_dataset("someone/memories", split="train")' in loaded.text
    assert "`someone/memcomp-sft`" in loaded.text


def test_memory_file_dataset_card_shows_download_usage():
    contents = DatasetContents("files", {"docs/a.safetensors": 4}, chunk_size=16, hidden_size=64)
    text = dataset_card("someone/memories", contents).text
    assert 'hf_hub_download("someone/memories", "docs/a.safetensors", repo_type="dataset")' in text
    assert "hidden size 64 and chunk size 16" in text
    with pytest.raises(ValueError, match="no rows"):
        dataset_card("someone/memories", DatasetContents("files", {}))
