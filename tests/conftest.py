"""Shared fixtures: a tokenizer trained here from a local corpus, and tiny random memcomp models."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


VARIED = {"initializer_range": 0.2}
"""Random weights wide enough that greedy answers vary with the context (at 0.02 a tiny model echoes its last token),
so the equivalence tests compare real, distinct answers."""


def build_test_model(tokenizer, config_overrides: dict | None = None, **kwargs):
    return build_tiny_memcomp(tokenizer, config_overrides={**VARIED, **(config_overrides or {})}, **kwargs)


@pytest.fixture(scope="session")
def model(tokenizer):
    """Shared read-only tiny model (C=16, wrap='each'); tests that change it build their own."""
    return build_test_model(tokenizer, chunk_size=16)


@pytest.fixture
def make_model(tokenizer):
    def make(**kwargs):
        return build_test_model(tokenizer, **kwargs)

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
