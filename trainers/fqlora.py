"""FQLoRA (Appendix I.1): full fine-tuning of uniformly spaced layers, embeddings and LM head; QLoRA elsewhere.

    model = load_fqlora_model("Qwen/Qwen2.5-7B", FQLoRAConfig())   # 4-bit base, full layers 0,3,...,27
    ...train with MemCompTrainer...
    save_fqlora(model, "out/cpt1", merge=True)                      # a plain MemCompForCausalLM folder

Layers are selected by index, never by name prefix, so layer 1 never drags in layers 10-19; fully
fine-tuned layers are excluded from 4-bit quantization by exact module names.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .stages import FULL_FT_FRACTION, LORA_DEFAULTS


DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_DIR = "adapter"


@dataclass
class FQLoRAConfig:
    """Which layers are fully fine-tuned, how the others are adapted, and whether they are 4-bit."""

    full_ft_layers: list[int] | None = field(
        default=None, metadata={"help": "FQLoRA: explicit fully fine-tuned layer indices; None: uniform selection by full_ft_fraction."}
    )
    full_ft_fraction: float = field(
        default=FULL_FT_FRACTION, metadata={"help": "FQLoRA: share of layers fully fine-tuned (10/28: 28 layers -> 0,3,...,27)."}
    )
    quantize: bool = field(default=True, metadata={"help": "FQLoRA: 4-bit NF4 base for the LoRA layers (QLoRA); needs bitsandbytes."})
    lora_r: int = field(default=LORA_DEFAULTS["r"], metadata={"help": "FQLoRA: LoRA rank (Table 9: 64)."})
    lora_alpha: int = field(default=LORA_DEFAULTS["lora_alpha"], metadata={"help": "FQLoRA: LoRA alpha (Table 9: 16)."})
    lora_dropout: float = field(default=LORA_DEFAULTS["lora_dropout"], metadata={"help": "FQLoRA: LoRA dropout (Table 9: 0.05)."})
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES), metadata={"help": "FQLoRA: linear modules that get adapters."}
    )
    layers_prefix: str = field(
        default="model.layers", metadata={"help": "FQLoRA: module path of the decoder layers inside the base causal LM."}
    )
    compute_dtype: str = field(default="bfloat16", metadata={"help": "FQLoRA: dtype of the 4-bit matmuls."})

    @property
    def layers_name(self) -> str:
        """The decoder layers' module name (`layers` in `model.layers`, `h` in `transformer.h`): peft's `layers_pattern`."""
        return self.layers_prefix.rsplit(".", 1)[-1]

    def layer_index(self, parameter_name: str) -> int | None:
        """The decoder layer a parameter belongs to, or None (embeddings, head, memory projection)."""
        match = re.search(rf"\.{re.escape(self.layers_name)}\.(\d+)\.", parameter_name)
        return int(match.group(1)) if match else None

    def layers(self, num_layers: int) -> list[int]:
        """The fully fine-tuned layer indices for a model with `num_layers` layers."""
        if self.full_ft_layers is None:
            return full_ft_layer_indices(num_layers, self.full_ft_fraction)
        bad = [i for i in self.full_ft_layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"full_ft_layers {bad} are out of range for a model with {num_layers} layers.")
        return sorted(set(self.full_ft_layers))


def full_ft_layer_indices(num_layers: int, fraction: float = FULL_FT_FRACTION) -> list[int]:
    """`round(fraction * num_layers)` indices spread evenly from the first layer to the last."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    count = min(num_layers, max(1, math.floor(fraction * num_layers + 0.5)))
    if count == 1:
        return [0]
    return sorted({math.floor(i * (num_layers - 1) / (count - 1) + 0.5) for i in range(count)})


def _bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def quantization_config(num_layers: int, config: FQLoRAConfig, module_prefix: str = "", quant_storage: torch.dtype | None = None):
    """A 4-bit `BitsAndBytesConfig` that skips the full-FT layers, embeddings, LM head and projection.

    `module_prefix` is the base LM's path in the model being loaded ("" for a base LM,
    "language_model." for a memcomp checkpoint). `quant_storage`: the dtype the packed 4-bit weights are stored in
    (None: bitsandbytes' uint8); ZeRO-3 and FSDP need the other weights' dtype to shard them. Returns None when not
    quantizing; without bitsandbytes it warns and returns None, so the LoRA layers stay in full precision.
    """
    if not config.quantize:
        return None
    if not _bitsandbytes_available():
        warnings.warn("bitsandbytes is not installed: FQLoRA falls back to plain LoRA (no 4-bit base).", stacklevel=2)
        return None
    from transformers import BitsAndBytesConfig

    full = config.layers(num_layers)
    names = ["lm_head", "model.embed_tokens"] + [f"{config.layers_prefix}.{i}" for i in full]
    skip = ["memory_projection"] + [re.escape(module_prefix + name) for name in names]
    storage = {} if quant_storage is None else {"bnb_4bit_quant_storage": quant_storage}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, config.compute_dtype),
        llm_int8_skip_modules=skip,
        **storage,
    )


def is_deepspeed_zero3_enabled() -> bool:
    """Whether this process trains under DeepSpeed ZeRO-3 (registered by the training arguments)."""
    from transformers.integrations import is_deepspeed_zero3_enabled as zero3

    return zero3()


def load_fqlora_model(base: str, config: FQLoRAConfig | None = None, chunk_size: int = 16, wrap: str = "each", **kwargs):
    """Load `base` 4-bit outside the full-FT layers and apply FQLoRA.

    `base` is a base LM (Hub id or folder; wrapped with `from_base`, CPT-1) or a memcomp checkpoint from
    the previous stage (loaded with `from_pretrained`, CPT-2 and SFT). `kwargs` go to the loader. Under ZeRO-3 the
    4-bit weights are stored in the load dtype (`bnb_4bit_quant_storage`), so ZeRO can partition them like the rest.
    """
    from transformers import AutoConfig

    from modeling_memcomp import MemCompConfig, MemCompForCausalLM

    config = config or FQLoRAConfig()
    loaded = AutoConfig.from_pretrained(base)
    is_memcomp = isinstance(loaded, MemCompConfig)
    num_layers = (loaded.text_config if is_memcomp else loaded).num_hidden_layers
    storage = None
    if is_deepspeed_zero3_enabled():
        dtype = kwargs.get("dtype")
        storage = dtype if isinstance(dtype, torch.dtype) else getattr(torch, config.compute_dtype)
    quant = quantization_config(num_layers, config, module_prefix="language_model." if is_memcomp else "", quant_storage=storage)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if is_memcomp:
        model = MemCompForCausalLM.from_pretrained(base, **kwargs)
    else:
        model = MemCompForCausalLM.from_base(base, chunk_size=chunk_size, wrap=wrap, **kwargs)
    return apply_fqlora(model, config)


def apply_fqlora(model, config: FQLoRAConfig | None = None):
    """Wrap a `MemCompForCausalLM` with LoRA on the non-selected layers and unfreeze the full-FT parameters.

    Trainable afterwards: LoRA adapters, the selected layers, embeddings, LM head, memory projection and
    pooling. 4-bit layers keep computing in `compute_dtype` on every CPU (`keep_4bit_cpu_path_exact`).
    Returns a `peft.PeftModel` (or the model itself when every layer is fully fine-tuned).
    """
    from peft import LoraConfig, get_peft_model

    config = config or FQLoRAConfig()
    keep_4bit_cpu_path_exact(model)
    num_layers = model.config.text_config.num_hidden_layers
    full = set(config.layers(num_layers))
    lora_layers = [i for i in range(num_layers) if i not in full]
    if lora_layers:
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.target_modules),
                layers_to_transform=lora_layers,
                layers_pattern=config.layers_name,
                bias="none",
            ),
        )
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            continue
        layer = config.layer_index(name)
        trainable = layer in full if layer is not None else parameter.is_floating_point()
        parameter.requires_grad_(trainable and parameter.is_floating_point())
    return model


def trainable_layers(model, config: FQLoRAConfig | None = None) -> dict[str, list[int]]:
    """Layer indices with trainable full weights (`full`) and with LoRA adapters (`lora`); `config` names the layers."""
    config = config or FQLoRAConfig()
    full, lora = set(), set()
    for name, parameter in model.named_parameters():
        layer = config.layer_index(name)
        if layer is not None and parameter.requires_grad:
            (lora if "lora_" in name else full).add(layer)
    return {"full": sorted(full), "lora": sorted(lora)}


def _linear4bit_modules(model: nn.Module) -> list[nn.Module]:
    """The bitsandbytes 4-bit linears of `model` (none without bitsandbytes)."""
    if not _bitsandbytes_available():
        return []
    import bitsandbytes as bnb

    return [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]


def keep_4bit_cpu_path_exact(model: nn.Module) -> None:
    """Switch off bitsandbytes' in-place CPU repack on every 4-bit linear, and undo it where it already ran.

    On a CPU with AVX512-BF16, bitsandbytes >= 0.49 re-lays out a `Linear4bit` weight the first time the layer
    runs in eval() on an input that needs no gradient; from then on it computes in bf16 whatever
    `compute_dtype` says, has no gradient for its input, and dequantizing it gives scrambled weights.
    With the repack off, every CPU runs the same dequantize-then-matmul in `compute_dtype`.
    """
    for module in _linear4bit_modules(model):
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):  # bitsandbytes' own inverse (what its state_dict() runs)
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(module.weight.data, state)


def _dequantize_4bit(model: nn.Module) -> None:
    """Replace the 4-bit linears by `nn.Linear` with their dequantized weights and drop the quantization config.

    Goes through transformers' `PreTrainedModel.dequantize()` on whichever (sub)model holds the quantizer:
    the base LM for a model wrapped with `from_base`, the memcomp model for one loaded with `from_pretrained`.
    """
    from transformers import PreTrainedModel

    keep_4bit_cpu_path_exact(model)
    for sub in list(model.modules()):
        quantizer = getattr(sub, "hf_quantizer", None) if isinstance(sub, PreTrainedModel) else None
        if quantizer is None:
            continue
        if _linear4bit_modules(sub):
            sub.dequantize()
        else:  # nothing was quantized (every layer skipped): only the config goes
            quantizer.remove_quantization_config(sub)


def save_fqlora(model, path: str | Path, merge: bool = True) -> Path:
    """Save a trained FQLoRA model so that `MemCompForCausalLM.from_pretrained(path)` loads it.

    `merge=True` folds the adapters into the weights (one plain folder, no peft needed to load);
    `merge=False` saves the adapters under `path/adapter` and the rest unmerged (`load_fqlora` restores
    both). 4-bit layers are saved dequantized, i.e. as the weights the adapters were trained against, and
    merged adapters add their exact delta to them (peft would re-quantize a merge into a 4-bit layer).
    The model is unwrapped in place: call this once training is over.
    """
    from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    path = Path(path)
    adapter = None
    if isinstance(model, PeftModel):
        if merge:
            name = model.active_adapter
            adapter = name, copy.deepcopy(model.peft_config[name]), get_peft_model_state_dict(model, adapter_name=name)
        else:
            model.save_pretrained(path / ADAPTER_DIR)
        model = model.unload()
    _dequantize_4bit(model)
    if adapter is not None:  # the same adapters on the full-precision weights, then peft's exact merge
        name, lora_config, state = adapter
        model = get_peft_model(model, lora_config, adapter_name=name)
        loaded = set_peft_model_state_dict(model, state, adapter_name=name)
        if loaded.unexpected_keys:
            raise RuntimeError(f"save_fqlora: adapter weights without a place to merge into: {loaded.unexpected_keys[:5]}")
        model = model.merge_and_unload()
    model.save_pretrained(path)
    return path


def load_fqlora(path: str | Path, **from_pretrained_kwargs):
    """Load what `save_fqlora` wrote: the model, with its LoRA adapters attached when they were not merged."""
    from modeling_memcomp import MemCompForCausalLM

    path = Path(path)
    model = MemCompForCausalLM.from_pretrained(path, **from_pretrained_kwargs)
    if (path / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path / ADAPTER_DIR)
    return model
