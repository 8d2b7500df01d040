"""A command whose extra is missing stops before doing any work, naming the extra (missing modules simulated)."""

import importlib
import re
import sys
from pathlib import Path

import pytest

from benchmarks import latency
from modeling_memcomp import extras
from modeling_memcomp.cli import main
from modeling_memcomp.extras import EXTRA_MODULES, MissingExtraError, require_extra

ROOT = Path(__file__).parent.parent
IMPORT_NAMES = {"pyyaml": "yaml", "rouge-score": "rouge_score"}
OPTIONAL = {"bitsandbytes"}  # FQLoRA falls back to plain LoRA without it


@pytest.fixture
def uninstall(monkeypatch):
    """Make `find_spec` report the given top-level modules as not installed."""

    def hide(*names):
        real = extras.find_spec
        monkeypatch.setattr(extras, "find_spec", lambda name: None if name in names else real(name))

    return hide


def test_message_names_the_missing_modules_and_the_pip_command(uninstall):
    require_extra("eval", "evaluation")  # everything is installed in the test environment
    uninstall("rouge_score", "matplotlib")
    with pytest.raises(MissingExtraError) as caught:
        require_extra("eval", "evaluation")
    assert str(caught.value) == 'evaluation needs rouge_score, matplotlib, which are not installed: pip install "memcomp[eval]"'
    assert isinstance(caught.value, ImportError) and caught.value.name == "rouge_score"
    require_extra("eval", "evaluation", modules=["datasets"])  # only the modules asked for are checked


def test_extra_modules_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    extras_table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def modules(extra):
        found = set()
        for requirement in extras_table[extra]:
            name = re.match(r"[A-Za-z0-9_.-]+(\[[^]]+\])?", requirement)
            if name.group(0).startswith("memcomp["):
                for inner in name.group(1)[1:-1].split(","):
                    found |= modules(inner.strip())
            elif name.group(0) not in OPTIONAL:
                found.add(IMPORT_NAMES.get(name.group(0), name.group(0)))
        return found

    for extra, names in EXTRA_MODULES.items():
        assert modules(extra) == set(names), extra


def test_bench_without_matplotlib_stops_before_measuring(uninstall, monkeypatch, tmp_path, capsys):
    runs = []
    monkeypatch.setattr(latency, "run", lambda *args, **kwargs: runs.append(args) or {})
    uninstall("matplotlib")
    out = tmp_path / "bench"
    assert main(["bench", "--smoke", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert 'memcomp bench: error: the speedup plot (--plot false skips it) needs matplotlib, which is not installed' in err
    assert 'pip install "memcomp[eval]"' in err and "Traceback" not in err
    assert runs == [] and not out.exists()  # nothing measured, nothing written


def test_bench_without_a_plot_does_not_need_matplotlib(uninstall, monkeypatch, tmp_path):
    class Reached(Exception):
        pass

    def run(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(latency, "run", run)
    uninstall("matplotlib")
    with pytest.raises(Reached):
        main(["bench", "--smoke", "--plot", "false", "--output_dir", str(tmp_path)])


def test_training_without_the_train_extra_stops_at_import(uninstall, monkeypatch):
    import trainers
    import trainers.run  # noqa: F401  (the real module, restored afterwards)

    uninstall("peft")
    monkeypatch.delitem(sys.modules, "trainers.run")
    monkeypatch.delattr(trainers, "run", raising=False)
    with pytest.raises(MissingExtraError, match=re.escape('needs peft, which is not installed: pip install "memcomp[train]"')):
        importlib.import_module("trainers.run")
