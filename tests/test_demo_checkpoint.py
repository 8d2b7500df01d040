"""The shipped demo checkpoint: its card's usage snippet runs as written (without memcomp), its config records its
template, and it answers a held-out question as `make demo` shows."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_remote_code import LOAD_WITHOUT_MEMCOMP

CHECKPOINT = Path(__file__).parent.parent / "checkpoints" / "memcomp-synthetic-tiny"
PROBES = CHECKPOINT.parents[1] / "benchmarks" / "results" / "synthetic" / "probes"
BLOCK_IMPORTS = LOAD_WITHOUT_MEMCOMP.split("import torch")[0]  # the import blocker that plays a user without memcomp


def card_snippet() -> str:
    card = (CHECKPOINT / "README.md").read_text()
    usage = card.split("## Usage", 1)[1]
    return re.search(r"```python\n(.*?)```", usage, re.DOTALL).group(1)


def test_card_usage_snippet_runs_against_the_checkpoint_without_memcomp(tmp_path):
    from trainers.synthetic import make_episode, split_names

    episode = make_episode(random.Random(0), split_names()[1])
    (tmp_path / "document.txt").write_text(episode.people_doc)
    snippet = card_snippet()
    hub_id = re.search(r'from_pretrained\("([^"]+)"', snippet).group(1)
    script = BLOCK_IMPORTS + snippet.replace(f'"{hub_id}"', repr(str(CHECKPOINT))) + "\nprint('ANSWER', answer)\n"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ANSWER" in result.stdout
    assert (tmp_path / "document.memory.safetensors").is_file()


def test_the_checkpoint_records_how_it_is_prompted_and_the_card_says_so():
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["prompt_template"] in ("plain", "chat", "rl")
    card = (CHECKPOINT / "README.md").read_text()
    assert f"trained with the `{config['prompt_template']}` prompt template" in card
    assert ("runs the SFT encoder" in card) == bool(config.get("separate_encoder"))


@pytest.mark.slow
def test_make_demo_answers_from_several_documents(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/demo.py"], cwd=CHECKPOINT.parent.parent, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "document 1" in out and "held the answer" in out and "answer:" in out


@pytest.mark.parametrize(
    "row, report",
    [
        ("| compressed, RL on 2-16 documents: **shipped** |",
         PROBES / "rl_2_16_over_shipped_sft" / "other_kind_60_set" / "report.json"),
        ("| compressed, RL (SFT encoder + RL decoder): **shipped** |",
         PROBES / "rl_2_16_over_shipped_sft" / "default_world_set" / "report.json"),
    ],
)
def test_the_readme_tables_the_shipped_checkpoint_from_its_committed_reports(row, report):
    readme = (CHECKPOINT.parents[1] / "README.md").read_text()
    (line,) = [line for line in readme.splitlines() if line.startswith(row)]
    by_k = json.loads(report.read_text())["aggregates"]["qa_em_by_k"]
    figures = [cell.strip() for cell in line[len(row):].split("|") if cell.strip()]
    assert figures[:6] == [f"{100 * by_k[k]['rl']['mean']:.1f}" for k in ("1", "2", "4", "8", "16", "32")]


def test_the_shipped_remote_code_is_the_packages():
    """The checkpoint's `*.py` files are what an export of it would write now: a fix to the package ships with it."""
    package = CHECKPOINT.parent.parent / "modeling_memcomp"
    stale = [p.name for p in sorted(CHECKPOINT.glob("*.py")) if p.read_text() != (package / p.name).read_text()]
    assert not stale, f"re-export the checkpoint or copy {stale} from modeling_memcomp/"
