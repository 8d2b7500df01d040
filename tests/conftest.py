"""Shared fixtures: a tokenizer trained here from a local corpus, and tiny random memcomp models."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Remote code a test loads is copied here, not into the user's ~/.cache/huggingface/modules.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="memcomp-test-modules-"))

from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
torch.set_num_threads(1)  # tiny models: one thread is far faster than two on a shared 2-core machine

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return (FIXTURES / "corpus.txt").read_text().splitlines()


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return train_tokenizer(corpus, vocab_size=512)


@pytest.fixture(scope="session")
def model(tokenizer):
    """Shared read-only tiny model (C=16, wrap='each'); tests that change it build their own."""
    return build_tiny_memcomp(tokenizer, chunk_size=16)


@pytest.fixture
def make_model(tokenizer):
    def make(**kwargs):
        return build_tiny_memcomp(tokenizer, **kwargs)

    return make


GREEDY = dict(do_sample=False, max_new_tokens=12, repetition_penalty=1.0)


class ScriptedBackend:
    """A judge backend that replies from a script (an exception in the script is raised) and records prompts."""

    def __init__(self, *replies):
        self.replies, self.prompts = list(replies), []

    def complete(self, prompt):
        self.prompts.append(prompt)
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply
