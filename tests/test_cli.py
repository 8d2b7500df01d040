"""`memcomp` console script: compress / ask round trips, delegation of bench and push, and clear errors."""

import re
import socket
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


def test_compress_replaces_a_memory_file_but_never_other_safetensors(checkpoint, text_file, tmp_path, capsys):
    memory_path = tmp_path / "doc.safetensors"
    for _ in range(2):  # a memory written before is replaced
        assert run(capsys, "compress", text_file, "-o", memory_path, "--model", checkpoint)[0] == 0
    weights = Path(checkpoint) / "model.safetensors"
    before = weights.read_bytes()
    code, _, err = run(capsys, "compress", text_file, "-o", weights, "--model", checkpoint)
    assert code == 2 and "exists and is not a memcomp memory (model weights, say): it is never replaced" in err
    assert weights.read_bytes() == before


def test_compress_through_a_store_reuses_the_memory(checkpoint, text_file, tmp_path, capsys, monkeypatch):
    from modeling_memcomp import MemCompForCausalLM

    seen = []
    compress = MemCompForCausalLM.compress
    monkeypatch.setattr(MemCompForCausalLM, "compress", lambda self, *a, **k: seen.append(k.get("batch_size")) or compress(self, *a, **k))
    for name in ("a", "b"):
        code, _, _ = run(capsys, "compress", text_file, "-o", tmp_path / f"{name}.safetensors", "--model", checkpoint,
                         "--store", tmp_path / "store", "--batch-size", "3")
        assert code == 0
    assert seen == [3]  # the store encodes once, with the batch size asked for
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


def test_a_truncated_checkpoint_exits_2_with_a_clear_message(checkpoint, text_file, tmp_path, capsys):
    torn = tmp_path / "torn"
    shutil.copytree(checkpoint, torn)
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy or download cut short
    code, _, err = run(capsys, "compress", text_file, "-o", tmp_path / "m.safetensors", "--model", torn)
    assert code == 2 and f"--model {str(torn)!r} could not be loaded" in err and "Traceback" not in err


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


# ---------------------------------------------------------------------------------------------- issue 16, items 2 and 7
import errno  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402


def one_line(err: str) -> str:
    """The only line of stderr, apart from progress bars (loading / writing weights)."""
    lines = [line for line in err.strip().splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
    assert len(lines) == 1, err
    return lines[0]


def hostile_copy(checkpoint: Path, folder: Path, marker: Path, model_type: str = "memcomp", keep_code: bool = False) -> Path:
    """A copy of `checkpoint` whose remote-code files write `marker` when imported: replaced by that and a raise,
    or (`keep_code`) the original code with the marker line appended."""
    shutil.copytree(checkpoint, folder)
    for name in ("modeling_memcomp.py", "configuration_memcomp.py"):
        payload = f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n"
        original = (folder / name).read_text()
        (folder / name).write_text(original + "\n" + payload if keep_code else payload + "raise RuntimeError('hostile code ran')\n")
    if model_type != "memcomp":
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = model_type
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_checkpoint_code_never_runs_unasked(model, checkpoint, text_file, tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = hostile_copy(checkpoint, tmp_path / "hostile", marker)
    code, out, _ = run(capsys, "compress", text_file, "-o", tmp_path / "m.safetensors", "--model", folder)
    assert code == 0 and not marker.exists()
    torch.testing.assert_close(MemoryEmbeddings.load(tmp_path / "m.safetensors").embeds, model.compress(TEXT).embeds)
    code, _, _ = run(capsys, "ask", "--model", folder, "--context", text_file, "-q", "Who?", "--greedy", "--max-new-tokens", 2)
    assert code == 0 and not marker.exists()


def test_another_model_type_needing_its_code_says_how_to_opt_in(checkpoint, text_file, tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = hostile_copy(checkpoint, tmp_path / "custom", marker, model_type="customnet")
    code, _, err = run(capsys, "compress", text_file, "-o", tmp_path / "m.safetensors", "--model", folder)
    line = one_line(err)
    assert code == 2 and "model_type 'customnet'" in line and "--trust-remote-code" in line
    assert not marker.exists()


def test_trust_remote_code_runs_the_folders_code_only_for_other_model_types(checkpoint, text_file, tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = hostile_copy(checkpoint, tmp_path / "memcomp", marker, keep_code=True)
    code, _, _ = run(capsys, "compress", text_file, "-o", tmp_path / "m.safetensors", "--model", folder, "--trust-remote-code")
    assert code == 0 and not marker.exists(), "an installed memcomp always reads memcomp checkpoints with its own classes"
    folder = hostile_copy(checkpoint, tmp_path / "custom", marker, model_type="customnet", keep_code=True)
    code, _, _ = run(capsys, "compress", text_file, "-o", tmp_path / "m.safetensors", "--model", folder, "--trust-remote-code")
    assert code == 0 and "modeling_memcomp.py" in marker.read_text()


def test_non_utf8_input_is_one_line(checkpoint, tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Caf\xe9 au lait, na\xefve r\xe9sum\xe9.".encode("latin-1"))
    for argv in (["compress", path, "-o", tmp_path / "m.safetensors"], ["ask", "--context", path, "-q", "Who?"]):
        code, _, err = run(capsys, *argv, "--model", checkpoint)
        assert code == 2 and "is not UTF-8 text (invalid continuation byte at byte 3)" in one_line(err)


def test_output_that_is_a_directory_or_under_a_file(checkpoint, text_file, tmp_path, capsys):
    (tmp_path / "dir.safetensors").mkdir()
    code, _, err = run(capsys, "compress", text_file, "-o", tmp_path / "dir.safetensors", "--model", checkpoint)
    assert code == 2 and "is a directory" in one_line(err)
    code, _, err = run(capsys, "compress", text_file, "-o", text_file / "m.safetensors", "--model", checkpoint)
    assert code == 2 and "is not a writable folder" in one_line(err)
    assert text_file.read_text() == TEXT


@pytest.mark.parametrize(
    "failure, message",
    [(OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
     (PermissionError(errno.EACCES, "Permission denied"), "Permission denied")],
)
def test_full_or_unwritable_output_leaves_no_partial_file(failure, message, checkpoint, text_file, tmp_path, monkeypatch, capsys):
    def full(self, path, extra_metadata=None):
        Path(path).write_bytes(b"partial")
        raise failure

    monkeypatch.setattr(MemoryEmbeddings, "save", full)
    output = tmp_path / "out" / "m.safetensors"
    code, _, err = run(capsys, "compress", text_file, "-o", output, "--model", checkpoint)
    assert code == 2 and f"could not be written ({message})" in one_line(err)
    assert list(output.parent.iterdir()) == []


def test_read_only_store_still_writes_the_output(checkpoint, text_file, tmp_path, monkeypatch, capsys):
    from modeling_memcomp.store import MemoryStore

    def read_only(self, memory):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(MemoryStore, "_write", read_only)
    output = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "compress", text_file, "-o", output, "--model", checkpoint, "--store", tmp_path / "store")
    assert code == 0 and "memory embeddings" in out
    assert one_line(err).startswith("memcomp compress: warning: could not store the memory")
    assert "Read-only file system" in err
    assert MemoryEmbeddings.load(output).num_source_tokens > 0


def test_store_under_a_file_only_warns(checkpoint, text_file, tmp_path, capsys):
    output = tmp_path / "m.safetensors"
    code, _, err = run(capsys, "compress", text_file, "-o", output, "--model", checkpoint, "--store", text_file / "store")
    assert code == 0 and "could not store the memory" in one_line(err) and output.is_file()


@pytest.mark.parametrize(
    "device, message", [("cuda", "CUDA is not available on this machine"), ("bogus", "'bogus' is not a device")]
)
def test_unusable_device_is_one_line(device, message, checkpoint, text_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["compress", text_file, "-o", tmp_path / "m.safetensors"], ["ask", "--context", text_file, "-q", "Who?"]):
        code, _, err = run(capsys, *argv, "--model", checkpoint, "--device", device)
        assert code == 2 and message in one_line(err)
    assert not (tmp_path / "m.safetensors").exists()


def closed_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_push_with_the_connection_refused_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    from hub_cards import push

    endpoint = f"http://127.0.0.1:{closed_port()}"

    def online_api(token):  # offline while the folder is exported, online (to a closed local port) for the upload
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # the Hub client's own side requests go there too
        return huggingface_hub.HfApi(token=token, endpoint=endpoint)

    monkeypatch.setattr(push, "HfApi", online_api)
    monkeypatch.setattr(push, "get_token", lambda: "hf_test_token")
    code, _, err = run(capsys, "push", "--source", checkpoint, "--repo-id", "someone/m", "--stage", "sft")
    line = one_line(err)
    assert code == 2 and line.startswith("memcomp push: error: the upload to someone/m failed (")
    assert "ConnectError" in line and "check the network connection" in line


def test_push_with_a_monkeypatched_connection_error(checkpoint, monkeypatch, capsys):
    from hub_cards import push

    errors = [e for e in push.network_errors() if e is not OSError]
    assert errors, "huggingface_hub's HTTP client error class was not found"

    class RefusingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, *args, **kwargs):
            raise errors[0]("[Errno 111] Connection refused")

    monkeypatch.setattr(push, "HfApi", RefusingApi)
    monkeypatch.setattr(push, "get_token", lambda: "hf_test_token")
    code, _, err = run(capsys, "push", "--source", checkpoint, "--repo-id", "someone/m", "--stage", "sft")
    assert code == 2 and "Connection refused" in one_line(err)


def test_ask_loads_in_the_given_dtype_streams_and_uses_the_recorded_template(model, checkpoint, tmp_path, capsys, monkeypatch):
    from modeling_memcomp import loading

    loaded = {}
    original = loading.load_memcomp
    monkeypatch.setattr(loading, "load_memcomp", lambda name, **kw: loaded.update(kw) or original(name, **kw))
    question = ["--question", "Who kept the ledger?", "--greedy", "--max-new-tokens", 6]
    code, out, _ = run(capsys, "ask", "--model", checkpoint, "--context", tmp_path / "none.txt", *question)
    assert code == 2  # missing file: nothing loaded
    (tmp_path / "doc.txt").write_text(TEXT)
    expected = model.generate(context=TEXT, question="Who kept the ledger?", do_sample=False, max_new_tokens=6)
    code, streamed, _ = run(capsys, "ask", "--model", checkpoint, "--context", tmp_path / "doc.txt", *question, "--stream",
                            "--dtype", "bfloat16")
    assert code == 0 and loaded["dtype"] == "bfloat16" and "device_map" not in loaded
    assert streamed.strip() != ""  # printed as it was generated (bfloat16 may pick other tokens than float32)
    code, out, _ = run(capsys, "ask", "--model", checkpoint, "--context", tmp_path / "doc.txt", *question)
    assert code == 0 and out == expected + "\n" and loaded["dtype"] == "auto"
    code, _, err = run(capsys, "ask", "--model", checkpoint, "--context", tmp_path / "doc.txt", "-q", "A?", "-q", "B?", "--stream")
    assert code == 2 and "one --question" in err
    # --template defaults to the checkpoint's recorded template
    rl = model.generate(context=TEXT, question="Who kept the ledger?", template="rl", do_sample=False, max_new_tokens=6)
    assert rl != expected
    model.config.prompt_template = "rl"
    try:
        model.save_pretrained(tmp_path / "rl-checkpoint")
    finally:
        model.config.prompt_template = "chat"
    code, out, _ = run(capsys, "ask", "--model", tmp_path / "rl-checkpoint", "--context", tmp_path / "doc.txt", *question)
    assert code == 0 and out == rl + "\n"
