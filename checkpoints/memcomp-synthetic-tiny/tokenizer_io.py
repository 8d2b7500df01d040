"""Load a checkpoint's tokenizer exactly as its `tokenizer.json` defines it.

transformers v5 may build the tokenizer class named by the model type (e.g. `Qwen2Tokenizer` next to a
Qwen2 config) and rebuild its pre-tokenizer from that class's defaults, silently changing how a custom
tokenizer (such as the demo's, which splits names into syllables) cuts text. `load_tokenizer` notices
the difference and then loads the file's own pipeline instead.
"""

from __future__ import annotations

import json

from transformers import AutoTokenizer, TokenizersBackend
from transformers.utils import cached_file

HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")
"""`from_pretrained` arguments that also apply to the tokenizer (and the other files of a checkpoint)."""


def _pre_tokenizer(tokenizer) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return None if backend is None else json.loads(backend.to_str()).get("pre_tokenizer")


def load_tokenizer(name_or_path: str, **kwargs):
    """`AutoTokenizer.from_pretrained`, falling back to the saved `tokenizer.json` pipeline when the two disagree."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    try:
        hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        path = cached_file(name_or_path, "tokenizer.json", _raise_exceptions_for_missing_entries=False, **hub)
    except OSError:
        path = None
    if path is None or type(tokenizer) is TokenizersBackend:  # already the file's own pipeline
        return tokenizer
    with open(path, encoding="utf-8") as f:
        saved = json.load(f).get("pre_tokenizer")
    if _pre_tokenizer(tokenizer) == saved:
        return tokenizer
    kwargs.pop("trust_remote_code", None)
    return TokenizersBackend.from_pretrained(name_or_path, **kwargs)
