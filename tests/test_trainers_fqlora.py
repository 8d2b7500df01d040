"""FQLoRA: exact layer selection, the real 4-bit path (bitsandbytes quantizes on CPU), groups, save/reload."""

import pytest
import torch
from transformers import Qwen2ForCausalLM

from modeling_memcomp.tiny import build_tiny_memcomp, tiny_qwen2_config
from trainers import MemCompTrainer, MemCompTrainingArguments
from trainers import fqlora
from trainers.collator import MemCompCollator
from trainers.fqlora import FQLoRAConfig, apply_fqlora, full_ft_layer_indices, load_fqlora, load_fqlora_model, save_fqlora, trainable_layers
from trainers.tasks import TaskBuilder

bnb = pytest.importorskip("bitsandbytes")



def test_layer_selection_reproduces_the_paper():
    assert full_ft_layer_indices(28) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    layers = full_ft_layer_indices(64)
    assert len(layers) == 23 and layers[0] == 0 and layers[-1] == 63
    assert {b - a for a, b in zip(layers, layers[1:])} <= {2, 3}
    with pytest.raises(ValueError, match="out of range"):
        FQLoRAConfig(full_ft_layers=[0, 12]).layers(12)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    """A 12-layer tiny Qwen2 saved like a Hub checkpoint (layers 10 and 11 exist to catch `layers.1` prefixes)."""
    torch.manual_seed(0)
    config = tiny_qwen2_config(len(tokenizer), num_layers=12, tie_word_embeddings=False)
    config.pad_token_id = tokenizer.pad_token_id
    path = tmp_path_factory.mktemp("base12")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def quantized(base_dir):
    return load_fqlora_model(str(base_dir), FQLoRAConfig(full_ft_layers=[1, 11], lora_r=4, compute_dtype="float32"))


def test_selection_is_exact_and_full_layers_are_not_quantized(quantized):
    assert trainable_layers(quantized) == {"full": [1, 11], "lora": [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]}
    layers = quantized.get_base_model().language_model.model.layers
    for index, layer in enumerate(layers):
        q_proj = layer.self_attn.q_proj
        if index in (1, 11):
            assert type(q_proj) is torch.nn.Linear and q_proj.weight.requires_grad
        else:
            assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit) and q_proj.base_layer.weight.dtype == torch.uint8
    inner = quantized.get_base_model()
    assert type(inner.memory_projection) is torch.nn.Linear and inner.memory_projection.weight.requires_grad
    assert inner.get_input_embeddings().weight.requires_grad and inner.get_output_embeddings().weight.requires_grad


def test_without_bitsandbytes_it_warns_once_and_uses_plain_lora(monkeypatch):
    monkeypatch.setattr(fqlora, "_bitsandbytes_available", lambda: False)
    with pytest.warns(UserWarning, match="falls back to plain LoRA") as record:
        assert fqlora.quantization_config(28, FQLoRAConfig()) is None
    assert len(record) == 1


def test_trainable_parameter_report_matches_groups_and_lrs(tokenizer, tmp_path):
    model = apply_fqlora(build_tiny_memcomp(tokenizer, num_layers=4), FQLoRAConfig(full_ft_layers=[0, 3], lora_r=4))
    args = MemCompTrainingArguments.for_stage("cpt1", output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = MemCompTrainer(model=model, args=args)
    groups = {g["name"]: g for g in trainer.create_optimizer().param_groups}
    assert {n: (g["lr"], g["weight_decay"]) for n, g in groups.items()} == {
        "full": (5e-5, 0.1), "full_no_decay": (5e-5, 0.0), "lora": (1e-4, 0.0), "projection": (3e-4, 0.1)
    }
    by_id = {id(p): name for name, g in groups.items() for p in g["params"]}
    for name, parameter in model.named_parameters():
        expected = None
        if parameter.requires_grad:
            expected = "lora" if "lora_" in name else "projection" if "memory_projection" in name else by_id[id(parameter)]
            if ".layers.1." in name or ".layers.2." in name:
                assert expected == "lora", name  # only layers 0 and 3 train in full
        assert by_id.get(id(parameter)) == expected, name
    lora_count = sum(p.numel() for p in groups["lora"]["params"])
    assert f"{lora_count:,}" in trainer.parameter_report and "3.0e-04" in trainer.parameter_report


def test_sft_projection_is_frozen_and_out_of_the_optimizer(tokenizer, tmp_path):
    model = build_tiny_memcomp(tokenizer)
    args = MemCompTrainingArguments.for_stage("sft", output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = MemCompTrainer(model=model, args=args)
    names = [g["name"] for g in trainer.create_optimizer().param_groups]
    assert "projection" not in names and not model.memory_projection.weight.requires_grad
    assert args.learning_rate == 2e-5


@pytest.mark.slow
@pytest.mark.parametrize("merge", [True, False])
def test_trained_model_saves_and_reloads_through_from_pretrained(base_dir, tmp_path, merge, corpus):
    model = load_fqlora_model(str(base_dir), FQLoRAConfig(full_ft_layers=[0, 6, 11], lora_r=4, compute_dtype="float32"))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # as if trained: adapters change the function
            torch.nn.init.normal_(parameter, std=0.05)
    inner = model.get_base_model()
    builder = TaskBuilder(inner.tokenizer, inner.config, max_length=256)
    batch = MemCompCollator.for_model(inner)([builder.reconstruction(corpus[0]), builder.language_modeling(corpus[1])])
    batch.pop("task_ids")
    model.eval()
    with torch.no_grad():
        before = model(**batch).loss
    save_fqlora(model, tmp_path, merge=merge)
    assert (tmp_path / "adapter").is_dir() != merge
    reloaded = load_fqlora(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).loss, before)


@pytest.mark.slow
def test_next_stage_loads_a_memcomp_checkpoint_4bit_with_the_same_selection(base_dir, tmp_path, corpus):
    save_fqlora(load_fqlora_model(str(base_dir), FQLoRAConfig(lora_r=4, quantize=False)), tmp_path, merge=True)
    model = load_fqlora_model(str(tmp_path), FQLoRAConfig(full_ft_layers=[1, 11], lora_r=4, compute_dtype="float32"))
    inner = model.get_base_model()
    assert trainable_layers(model) == {"full": [1, 11], "lora": [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]}
    layers = inner.language_model.model.layers
    assert type(layers[1].self_attn.q_proj) is torch.nn.Linear and type(layers[11].mlp.down_proj) is torch.nn.Linear
    assert isinstance(layers[10].mlp.down_proj.base_layer, bnb.nn.Linear4bit)
    assert type(inner.memory_projection) is torch.nn.Linear  # the projection is never quantized
