"""Repository-wide safety rules: nothing unpickles, and the suite itself never leaves 127.0.0.1."""

import re
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", ".pytest_cache", "node_modules"}
PICKLE_IMPORT = re.compile(r"^\s*(?:import|from)\s+(?:c?pickle|dill|cloudpickle|joblib|_pickle)\b", re.MULTILINE)
PICKLE_CALL = re.compile(r"\b(?:c?pickle|dill|cloudpickle|joblib)\.(?:loads?|Unpickler)\b|allow_pickle\s*=\s*True")
TORCH_LOAD = re.compile(r"\btorch\.load\s*\(")
PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz"}


def _candidate_paths():
    """Files git would commit (tracked, or untracked and not ignored); every file outside SKIP_DIRS without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode().split("\0")
        return sorted(ROOT / name for name in listed if name)
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
        return sorted(ROOT.rglob("*"))


def repository_files(suffixes: set[str] | None = None):
    for path in _candidate_paths():
        relative = path.relative_to(ROOT)
        skipped = any(p in SKIP_DIRS or p.startswith(".venv") or p.endswith(".egg-info") for p in relative.parts)
        if skipped or not path.is_file():
            continue
        if suffixes is None or path.suffix in suffixes:
            yield relative, path


def call_arguments(text: str, start: int) -> str:
    """The text between the parenthesis opening at `start - 1` and its match."""
    depth, position = 1, start
    while depth and position < len(text):
        depth += {"(": 1, ")": -1}.get(text[position], 0)
        position += 1
    return text[start : position - 1]


def pickle_uses(text: str) -> list[str]:
    found = [m.group(0).strip() for m in PICKLE_IMPORT.finditer(text)]
    found += [m.group(0) for m in PICKLE_CALL.finditer(text)]
    for match in TORCH_LOAD.finditer(text):
        arguments = call_arguments(text, match.end())
        if not re.search(r"\bweights_only\s*=\s*True\b", arguments):
            found.append(f"torch.load({arguments})")
    return found


def test_the_scanner_sees_what_it_must_refuse():
    assert pickle_uses("import pickle\nx = pickle.loads(b)\n") == ["import pickle", "pickle.loads"]
    assert pickle_uses("state = torch.load(path, map_location='cpu')") == ["torch.load(path, map_location='cpu')"]
    assert pickle_uses("np.load(f, allow_pickle=True)") == ["allow_pickle=True"]
    assert pickle_uses("state = torch.load(os.path.join(a, b), weights_only=True)") == []
    assert pickle_uses("# safetensors, no pickle\n") == []


def test_no_pickle_and_no_unsafe_torch_load_anywhere():
    """Every Python file of the repository (library, tests, examples, scripts, shipped checkpoints)."""
    offenders = {}
    for relative, path in repository_files({".py"}):
        if relative == Path(__file__).relative_to(ROOT):
            continue
        uses = pickle_uses(path.read_text(encoding="utf-8", errors="replace"))
        if uses:
            offenders[str(relative)] = uses
    assert offenders == {}, "use safetensors / json, or torch.load(..., weights_only=True)"


def test_no_pickle_format_files_are_committed():
    assert [str(relative) for relative, _ in repository_files(PICKLE_SUFFIXES)] == []


def test_the_suite_refuses_to_leave_the_machine(network_attempts):
    with socket.socket() as sock, pytest.raises(OSError, match="blocked by the test suite"):
        sock.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
    with pytest.raises(OSError):
        urllib.request.urlopen("http://example.com/", timeout=1)
    assert network_attempts == ["connect ('192.0.2.1', 80)", "lookup 'example.com'"]
    network_attempts.clear()  # this test made them on purpose

    with socket.socket() as server:  # loopback stays allowed
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=1):
            pass
    assert network_attempts == []
