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


NF4_ERROR = 0.12  # ||dequantize(quantize(W)) - W|| / ||W||: 0.089-0.095 on this model; a scrambled weight gives ~1.4


@pytest.fixture(params=[True, False], ids=["avx512bf16", "no-avx512bf16"])
def cpu_kernel(request, monkeypatch):
    """Force what bitsandbytes believes about the CPU, so that both of its CPU paths run on any processor.

    `Linear4bit.__init__` stores `has_avx512bf16()` in `support_avx512bf16_for_cpu`; True makes the first eval
    forward without grad repack the weight in place for the AVX512-BF16 kernel. On a CPU without those
    instructions the repacked layer then runs bitsandbytes' generic `gemv_4bit` op (the AVX512 kernel is
    registered at import, only on such CPUs), but the repack, and what it does to dequantized weights and to
    gradients, is the same. `test_a_repack_before_apply_fqlora_is_undone` shows the forcing reaches it.
    """
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: request.param)
    return request.param


def linears_4bit(model) -> dict[str, "bnb.nn.Linear4bit"]:
    """The 4-bit linears by their name in the base LM (`model.layers.2.self_attn.q_proj`)."""
    lm = (model.get_base_model() if hasattr(model, "get_base_model") else model).language_model
    return {name.removesuffix(".base_layer"): m for name, m in lm.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def is_repacked(module) -> bool:
    return bool(getattr(module.weight.quant_state, "packing_format_for_cpu", False))


def relative_error(weight, reference) -> float:
    return ((weight.float() - reference.float()).norm() / reference.float().norm()).item()


def train_like(model, seed=0):
    """Random LoRA B matrices (as if trained), so the adapters change the function and the merged weights."""
    torch.manual_seed(seed)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    return model


def fixed_batch(model, corpus):
    inner = model.get_base_model()
    builder = TaskBuilder(inner.tokenizer, inner.config, max_length=256)
    batch = MemCompCollator.for_model(inner)([builder.reconstruction(corpus[0]), builder.language_modeling(corpus[1])])
    batch.pop("task_ids")
    return batch


def test_a_repack_before_apply_fqlora_is_undone(base_dir, monkeypatch):
    """A 4-bit model evaluated before `apply_fqlora` (on an AVX512-BF16 CPU: forced here) gets its layout back."""
    from modeling_memcomp import MemCompForCausalLM
    from peft.utils.integrations import dequantize_bnb_weight

    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)
    config = FQLoRAConfig(full_ft_layers=[1, 11], lora_r=4, compute_dtype="float32")
    model = MemCompForCausalLM.from_base(str(base_dir), quantization_config=fqlora.quantization_config(12, config))
    layers = linears_4bit(model)
    before = {name: dequantize_bnb_weight(m.weight) for name, m in layers.items()}
    model.eval()
    with torch.no_grad():
        model.language_model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert all(is_repacked(m) and m.weight.quant_state.dtype == torch.bfloat16 for m in layers.values())
    apply_fqlora(model, config)
    for name, module in layers.items():
        assert not is_repacked(module) and not module.support_avx512bf16_for_cpu, name
        assert module.weight.quant_state.dtype == torch.float32
        # bitsandbytes' inverse re-quantizes the absmax it had cast to bf16: equal up to that rounding
        assert relative_error(dequantize_bnb_weight(module.weight), before[name]) < 1e-2, name


@pytest.mark.slow
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "adapter"])
def test_4bit_weights_survive_eval_save_and_reload(base_dir, tmp_path, merge, corpus, cpu_kernel):
    """Eval forward -> save -> reload keeps each 4-bit layer at its NF4 weights (merged: plus the exact LoRA delta)."""
    from peft.utils.integrations import dequantize_bnb_weight
    from safetensors.torch import load_file

    model = train_like(load_fqlora_model(str(base_dir), FQLoRAConfig(full_ft_layers=[0, 6, 11], lora_r=4, compute_dtype="float32")))
    layers = linears_4bit(model)
    assert len(layers) == 9 * 7
    lm = model.get_base_model().language_model
    nf4 = {name: dequantize_bnb_weight(m.weight).clone() for name, m in layers.items()}
    delta = {name: lm.get_submodule(name).get_delta_weight("default").detach().clone() for name in layers}
    batch = fixed_batch(model, corpus)
    model.eval()
    with torch.no_grad():
        before = model(**batch).loss
    for name, module in layers.items():  # still the float32 dequantize-matmul layout, whatever the CPU
        assert not is_repacked(module) and module.weight.quant_state.dtype == torch.float32, name
    save_fqlora(model, tmp_path, merge=merge)
    assert (tmp_path / "adapter").is_dir() != merge
    reloaded = load_fqlora(tmp_path).eval()
    assert not linears_4bit(reloaded)  # saved dequantized, without a quantization config
    original = load_file(base_dir / "model.safetensors")
    reloaded_lm = (reloaded.get_base_model() if not merge else reloaded).language_model
    for name in layers:
        saved = reloaded_lm.get_submodule(name if merge else f"{name}.base_layer").weight.detach()
        base = saved - delta[name] if merge else saved
        assert relative_error(base, original[f"{name}.weight"]) < NF4_ERROR, name
        torch.testing.assert_close(saved, nf4[name] + delta[name] if merge else nf4[name])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).loss, before)


@pytest.mark.slow
def test_save_undoes_a_repack_that_ran_after_apply_fqlora(base_dir, tmp_path, corpus):
    """A layer repacked behind FQLoRA's back (the CPU repack switched on again) is saved as its NF4 weights."""
    from safetensors.torch import load_file

    model = load_fqlora_model(str(base_dir), FQLoRAConfig(full_ft_layers=[0, 6, 11], lora_r=4, compute_dtype="float32"))
    layers = linears_4bit(model)
    for module in layers.values():
        module.support_avx512bf16_for_cpu = True
    model.eval()
    with torch.no_grad():
        model(**fixed_batch(model, corpus))
    assert all(is_repacked(m) for m in layers.values())
    save_fqlora(model, tmp_path, merge=False)
    original = load_file(base_dir / "model.safetensors")
    saved = load_file(tmp_path / "model.safetensors")
    for name in layers:
        assert relative_error(saved[f"language_model.{name}.weight"], original[f"{name}.weight"]) < NF4_ERROR, name


@pytest.mark.slow
def test_eval_forward_then_a_training_step_equals_one_without_eval(base_dir, corpus, cpu_kernel):
    """Evaluating mid-training changes nothing: the next step's loss, gradients and updated weights are the same."""

    def loaded():
        torch.manual_seed(0)
        config = FQLoRAConfig(full_ft_layers=[0, 6, 11], lora_r=4, lora_dropout=0.0, compute_dtype="float32")
        return train_like(load_fqlora_model(str(base_dir), config))

    evaluated, fresh = loaded(), loaded()
    batch = fixed_batch(fresh, corpus)
    evaluated.eval()
    with torch.no_grad():
        evaluated(**batch)
    results = []
    for model in (evaluated, fresh):
        model.train()
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainable.items()}
        optimizer.step()
        results.append((loss.detach(), grads, {n: p.detach().clone() for n, p in trainable.items()}))
    (loss_e, grads_e, after_e), (loss_f, grads_f, after_f) = results
    assert any("lora_A" in n for n in grads_f) and all(g.abs().sum() > 0 for n, g in grads_f.items() if "lora_A" in n)
    torch.testing.assert_close(loss_e, loss_f, rtol=0, atol=0)
    torch.testing.assert_close(grads_e, grads_f, rtol=0, atol=0)
    torch.testing.assert_close(after_e, after_f, rtol=0, atol=0)


@pytest.mark.slow
def test_next_stage_loads_a_memcomp_checkpoint_4bit_with_the_same_selection(base_dir, tmp_path, corpus):
    from safetensors.torch import load_file

    save_fqlora(load_fqlora_model(str(base_dir), FQLoRAConfig(lora_r=4, quantize=False)), tmp_path / "cpt1", merge=True)
    model = load_fqlora_model(str(tmp_path / "cpt1"), FQLoRAConfig(full_ft_layers=[1, 11], lora_r=4, compute_dtype="float32"))
    inner = model.get_base_model()
    assert trainable_layers(model) == {"full": [1, 11], "lora": [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]}
    layers = inner.language_model.model.layers
    assert type(layers[1].self_attn.q_proj) is torch.nn.Linear and type(layers[11].mlp.down_proj) is torch.nn.Linear
    assert isinstance(layers[10].mlp.down_proj.base_layer, bnb.nn.Linear4bit)
    assert type(inner.memory_projection) is torch.nn.Linear  # the projection is never quantized
    # the checkpoint is quantized as a whole here (peft wraps its layers in its bnb LoRA class): merging still works
    train_like(model)
    delta = {name: inner.language_model.get_submodule(name).get_delta_weight("default").detach().clone() for name in linears_4bit(model)}
    save_fqlora(model, tmp_path / "cpt2", merge=True)
    start, saved = load_file(tmp_path / "cpt1" / "model.safetensors"), load_file(tmp_path / "cpt2" / "model.safetensors")
    for name, d in delta.items():
        key = f"language_model.{name}.weight"
        assert relative_error(saved[key] - d, start[key]) < NF4_ERROR, name


def test_fqlora_follows_layers_prefix_on_an_architecture_named_otherwise(tokenizer):
    """GPT-2 keeps its blocks in `transformer.h`: adapters, full-FT layers and the report follow `layers_prefix`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from modeling_memcomp import MemCompForCausalLM

    base = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=256, vocab_size=len(tokenizer)))
    model = MemCompForCausalLM.from_base(base, chunk_size=8, tokenizer=tokenizer)
    config = FQLoRAConfig(layers_prefix="transformer.h", full_ft_layers=[0, 3], quantize=False,
                          target_modules=["c_attn", "c_proj", "c_fc"])
    model = apply_fqlora(model, config)
    assert trainable_layers(model, config) == {"full": [0, 3], "lora": [1, 2]}
    assert not any("lora_" in name for name, _ in model.named_parameters() if ".h.0." in name or ".h.3." in name)


def test_under_zero3_the_4bit_weights_are_stored_in_the_load_dtype(base_dir, monkeypatch):
    """ZeRO-3 (and FSDP) shard only tensors of one dtype: the packed 4-bit weights take the other weights' dtype."""
    config = FQLoRAConfig(full_ft_layers=[1, 11], lora_r=4, compute_dtype="float32")
    assert fqlora.quantization_config(12, config).bnb_4bit_quant_storage == torch.uint8  # bitsandbytes' default
    monkeypatch.setattr(fqlora, "is_deepspeed_zero3_enabled", lambda: True)
    model = load_fqlora_model(str(base_dir), config, dtype=torch.float32)
    inner = model.get_base_model()
    assert inner.language_model.config.quantization_config.bnb_4bit_quant_storage == torch.float32
    q_proj = inner.language_model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.dtype == torch.float32
