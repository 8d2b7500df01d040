"""Configuration of a memcomp model: a base causal LM plus the compression settings of the paper."""

from transformers import AutoConfig, PretrainedConfig

MEM_START_TOKEN = "<MEM_START>"
MEM_END_TOKEN = "<MEM_END>"
MEM_TOKEN = "<MEM>"
"""Placeholder token: each occurrence in decoder ids is replaced by one memory embedding."""

POOLING_CHOICES = ("mean", "attention")
WRAP_CHOICES = ("each", "block")
TEMPLATE_CHOICES = ("plain", "chat", "rl")


class MemCompConfig(PretrainedConfig):
    """Composite config: `text_config` is the base LM's config, the other fields set the compression.

    Args:
        text_config: config (or dict) of the wrapped `AutoModelForCausalLM`; Qwen2 is the reference.
        chunk_size: tokens per chunk, i.e. the nominal compression rate C (paper: 16).
        pooling: `"mean"` (paper, Eq. 1) or `"attention"` (one learned query, Appendix B).
        wrap: `"each"` wraps every memory embedding in `<MEM_START> m <MEM_END>` (paper);
            `"block"` wraps the whole memory once (effective rate close to C).
        mem_start_token_id: id of `<MEM_START>` in the tokenizer.
        mem_end_token_id: id of `<MEM_END>` in the tokenizer.
        mem_token_id: id of the `<MEM>` placeholder replaced by memory embeddings in the decoder.
        encoder_batch_size: chunks encoded per forward pass in `compress`; bounds encoder memory
            whatever the context length.
        projection_init: `"normal"` (random, as in the paper) or `"identity"` for a new projection.
        prompt_template: how the checkpoint was trained to be prompted (`"plain"` after CPT, `"chat"` after SFT,
            `"rl"` after RL); the default template of `generate`, the CLI, evaluation, vLLM and the model card.
        system_prompt: the system prompt the checkpoint was trained with (None: the template's default).
        separate_encoder: the encoder has its own weights (`MemCompForCausalLM.encoder`) instead of sharing the
            decoder's: an RL checkpoint, whose `compress()` is the SFT encoder and `generate()` the RL decoder.
    """

    model_type = "memcomp"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        chunk_size: int = 16,
        pooling: str = "mean",
        wrap: str = "each",
        mem_start_token_id: int | None = None,
        mem_end_token_id: int | None = None,
        mem_token_id: int | None = None,
        encoder_batch_size: int = 256,
        projection_init: str = "normal",
        prompt_template: str = "chat",
        system_prompt: str | None = None,
        separate_encoder: bool = False,
        **kwargs,
    ):
        if text_config is None and "hidden_size" in kwargs:  # a base LM's own config.json, read as a memcomp one
            raise ValueError(
                f"this config is a {kwargs.get('model_type') or 'plain'} language model's (hidden_size at the top "
                "level), not a memcomp checkpoint's: wrap the base model with MemCompForCausalLM.from_base(path, "
                "chunk_size=...) and train it, or load a memcomp checkpoint."
            )
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            model_type = text_config.pop("model_type", "qwen2")
            text_config = AutoConfig.for_model(model_type, **text_config)
        elif text_config is None:
            text_config = AutoConfig.for_model("qwen2")
        self.text_config = text_config
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer (the paper uses 16), got {chunk_size!r}.")
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got {pooling!r}.")
        if wrap not in WRAP_CHOICES:
            raise ValueError(f"wrap must be one of {WRAP_CHOICES}, got {wrap!r}.")
        if not isinstance(encoder_batch_size, int) or encoder_batch_size < 1:
            raise ValueError(f"encoder_batch_size must be a positive integer, got {encoder_batch_size!r}.")
        if projection_init not in ("normal", "identity"):
            raise ValueError(f"projection_init must be 'normal' or 'identity', got {projection_init!r}.")
        if prompt_template not in TEMPLATE_CHOICES:
            raise ValueError(f"prompt_template must be one of {TEMPLATE_CHOICES}, got {prompt_template!r}.")
        self.chunk_size = chunk_size
        self.pooling = pooling
        self.wrap = wrap
        self.mem_start_token_id = mem_start_token_id
        self.mem_end_token_id = mem_end_token_id
        self.mem_token_id = mem_token_id
        self.encoder_batch_size = encoder_batch_size
        self.projection_init = projection_init
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.separate_encoder = bool(separate_encoder)
        kwargs.setdefault("tie_word_embeddings", getattr(text_config, "tie_word_embeddings", False))
        # The parent sets the attention implementation on sub-configs too: keep the base model's choice.
        kwargs.setdefault("attn_implementation", getattr(text_config, "_attn_implementation", None))
        super().__init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def memory_token_ids(self) -> tuple[int | None, int | None, int | None]:
        """`(mem_start, mem_end, mem)` ids, the three tokens the decoder prompt is built from."""
        return self.mem_start_token_id, self.mem_end_token_id, self.mem_token_id
