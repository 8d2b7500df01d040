"""`memcomp` console script: compress / ask round trips, delegation of bench and push, and clear errors."""

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from modeling_memcomp import MemoryEmbeddings
from modeling_memcomp.cli import main

TEXT = "The harbour master of Port Ellen kept a ledger of every ship that arrived between 1901 and 1912. " * 2


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tiny-memcomp"
    model.save_pretrained(path)
    return path


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "doc.txt"
    path.write_text(TEXT)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_then_ask_matches_the_python_api(model, checkpoint, text_file, tmp_path, capsys):
    memory_path = tmp_path / "doc.memory.safetensors"
    code, out, _ = run(capsys, "compress", text_file, "-o", memory_path, "--model", checkpoint)
    assert code == 0 and "memory embeddings" in out
    memory = MemoryEmbeddings.load(memory_path)
    torch.testing.assert_close(memory.embeds, model.compress(TEXT).embeds)

    expected = model.generate(memory=memory, question="Who kept the ledger?", do_sample=False, max_new_tokens=6)
    code, out, _ = run(capsys, "ask", "--model", checkpoint, "--memory", memory_path, "-q", "Who kept the ledger?",
                       "--greedy", "--max-new-tokens", 6)
    assert code == 0 and out == expected + "\n"
    code, out, _ = run(capsys, "ask", "--model", checkpoint, "--context", text_file, "-q", "Who kept the ledger?",
                       "-q", "When?", "--greedy", "--max-new-tokens", 6)
    assert code == 0 and out.startswith(f"Q: Who kept the ledger?\nA: {expected}\nQ: When?\nA: ")


def test_compress_through_a_store_reuses_the_memory(checkpoint, text_file, tmp_path, capsys):
    for name in ("a", "b"):
        code, _, _ = run(capsys, "compress", text_file, "-o", tmp_path / f"{name}.safetensors", "--model", checkpoint,
                         "--store", tmp_path / "store")
        assert code == 0
    assert len(list((tmp_path / "store").rglob("*.safetensors"))) == 1
    a, b = (MemoryEmbeddings.load(tmp_path / f"{n}.safetensors") for n in "ab")
    assert torch.equal(a.embeds, b.embeds)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "missing.txt", "-o", "m.safetensors", "--model", "{ckpt}"], "does not exist"),
        (["compress", "{text}", "-o", "m.safetensors"], "the following arguments are required: --model"),
        (["compress", "{text}", "-o", "m.pt", "--model", "{ckpt}"], "must end with .safetensors"),
        (["compress", "{text}", "-o", "m.safetensors", "--model", "{tmp}"], "could not be loaded"),
        (["ask", "--model", "{ckpt}", "-q", "Who?"], "one of the arguments --memory --context is required"),
        (["ask", "--model", "{ckpt}", "--memory", "{text}", "--context", "{text}", "-q", "Who?"], "not allowed with"),
        (["ask", "--model", "{ckpt}", "--memory", "{text}", "-q", "Who?"], "--memory:"),
        (["ask", "--model", "{ckpt}", "--context", "{text}"], "required: --question"),
        (["ask", "--model", "{ckpt}", "--context", "{text}", "-q", " "], "--question is empty"),
        ([], "required: {compress,ask,bench,push}"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(argv, message, checkpoint, text_file, tmp_path, capsys):
    fill = {"{ckpt}": str(checkpoint), "{text}": str(text_file), "{tmp}": str(tmp_path)}
    code, _, err = run(capsys, *[fill.get(a, a) for a in argv])
    assert code == 2
    assert message in err


@pytest.mark.parametrize("command", ["compress", "ask"])
def test_help(command, capsys):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "--model" in out


@pytest.mark.parametrize("command, module", [("bench", "benchmarks.latency"), ("push", "hub_cards.push")])
def test_bench_and_push_delegate_their_arguments(command, module, monkeypatch, capsys):
    seen = []
    monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(main=lambda argv: seen.append(argv) or 3))
    code, _, _ = run(capsys, command, "--flag", "value", "--help")
    assert code == 3 and seen == [["--flag", "value", "--help"]]


def test_missing_delegate_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hub_cards.push", None)  # import fails
    code, _, err = run(capsys, "push", "repo")
    assert code == 2 and "hub_cards.push is not available" in err


@pytest.mark.slow
def test_console_script_is_installed():
    script = Path(sys.executable).with_name("memcomp")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    for command in ("compress", "ask", "bench", "push"):
        assert command in result.stdout
