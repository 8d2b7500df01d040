"""memcomp: near-lossless context compression for Hugging Face causal LMs (mean-pooled chunk memories)."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_memcomp import MEM_END_TOKEN, MEM_START_TOKEN, MEM_TOKEN, MemCompConfig
from .memory import MemoryEmbeddings
from .modeling_memcomp import MemCompForCausalLM, MemCompPreTrainedModel
from .prompting import TEMPLATES, PromptIds, build_prompt
from .special_tokens import add_memory_tokens, memory_token_ids

AutoConfig.register("memcomp", MemCompConfig, exist_ok=True)
AutoModelForCausalLM.register(MemCompConfig, MemCompForCausalLM, exist_ok=True)
AutoModel.register(MemCompConfig, MemCompForCausalLM, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "MEM_END_TOKEN",
    "MEM_START_TOKEN",
    "MEM_TOKEN",
    "TEMPLATES",
    "MemCompConfig",
    "MemCompForCausalLM",
    "MemCompPreTrainedModel",
    "MemoryEmbeddings",
    "PromptIds",
    "add_memory_tokens",
    "build_prompt",
    "memory_token_ids",
]
