"""Shared fixtures: a tokenizer trained here from a local corpus, and tiny random memcomp models.

Every test runs under a network guard: a socket connection or name lookup for anything but this machine
(127.0.0.1, ::1, localhost) is refused with an OSError and fails the test, even if the code under test
swallows the error.
"""

import atexit
import contextlib
import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Remote code a test loads is copied here, not into the user's ~/.cache/huggingface/modules; one folder per
# pytest-xdist worker (they inherit the controller's environment), so no worker imports another's half-copied module.
if "HF_MODULES_CACHE" not in os.environ or os.environ.get("MEMCOMP_TEST_MODULES") == os.environ["HF_MODULES_CACHE"]:
    os.environ["HF_MODULES_CACHE"] = os.environ["MEMCOMP_TEST_MODULES"] = tempfile.mkdtemp(prefix="memcomp-test-modules-")
    atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)

from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
torch.set_num_threads(1)  # tiny models: one thread is far faster than two on a shared 2-core machine

FIXTURES = Path(__file__).parent / "fixtures"

_LOCAL_NAMES = {None, "", "localhost", "localhost.localdomain", socket.gethostname()}


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_launcher_env_before: dict[str, str | None] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    if item.nodeid.split("::")[0] != _launcher_env_before.get("module"):  # a test file's first test, before any fixture
        _launcher_env_before.clear()
        _launcher_env_before.update({key: os.environ.get(key) for key in LAUNCHER_ENV}, module=item.nodeid.split("::")[0])
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Fail a test file that leaves a torch.distributed process group or launcher variables behind, once its last
    test's fixtures (module-scoped ones included) are torn down; both are cleared first. Later tests in the process,
    and the processes they start, would otherwise join a group that holds a port."""
    result = yield
    if nextitem is not None and nextitem.nodeid.split("::")[0] == item.nodeid.split("::")[0]:
        return result
    before = {key: _launcher_env_before.get(key) for key in LAUNCHER_ENV}
    changed = sorted(key for key in LAUNCHER_ENV if os.environ.get(key) != before[key])
    for key in changed:
        if before[key] is None:
            del os.environ[key]
        else:
            os.environ[key] = before[key]
    left = torch.distributed.is_available() and torch.distributed.is_initialized()
    if left:
        torch.distributed.destroy_process_group()
    if left or changed:
        what = [*(["a torch.distributed process group"] if left else []), *([f"launcher variables {', '.join(changed)}"] if changed else [])]
        pytest.fail(f"a test of this file left {' and '.join(what)} behind; clean up (monkeypatch, in_process_vllm) or "
                    "run it in a subprocess")
    return result


@contextlib.contextmanager
def in_process_vllm():
    """Scope for a vLLM engine started in this process (external launcher): after it, its process groups are shut down
    and the launcher variables it set are restored."""
    saved = {key: os.environ.get(key) for key in LAUNCHER_ENV}
    try:
        yield
    finally:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def network_attempts(monkeypatch):
    """Refuse (OSError) and record every connection or lookup that leaves the machine; fail the test if any."""
    attempts: list[str] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            attempts.append(f"connect {address}")
            raise OSError(f"network access blocked by the test suite: {address}")

    def guarded_connect(sock, address):
        check(sock, address)
        return connect(sock, address)

    def guarded_connect_ex(sock, address):
        check(sock, address)
        return connect_ex(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            attempts.append(f"lookup {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup blocked by the test suite: {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    if attempts:
        pytest.fail(f"the test tried to reach the network (only 127.0.0.1 is allowed): {attempts}")


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
