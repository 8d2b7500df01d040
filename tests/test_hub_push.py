"""Publishing: the dry-run repo folder loads as remote code without memcomp; pushes go through HfApi, never the network."""

import copy
import json
import re
import socket
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.errors import LocalTokenNotFoundError
from huggingface_hub.utils import filter_repo_objects

from hub_cards import push
from test_remote_code import LOAD_WITHOUT_MEMCOMP, assert_same_model, load_without_memcomp

EVALUATION = Path(__file__).parent / "fixtures" / "hub" / "evaluation.json"
SHIPPED_RL = Path(__file__).parent.parent / "checkpoints" / "memcomp-synthetic-tiny"
BLOCK_IMPORTS = LOAD_WITHOUT_MEMCOMP.split("import torch")[0]  # the import blocker that plays a user without memcomp
REPO_FILES = {
    "README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
    "tokenizer_config.json", "configuration_memcomp.py", "modeling_memcomp.py", "memory.py", "pooling.py",
    "prompting.py", "special_tokens.py", "tokenizer_io.py", "prefix_cache.py", "pipeline_memcomp.py",
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any socket connection fails the test: publishing tests must never reach the Hub."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rl_model(model):
    """The paper's RL system in one model: the SFT encoder stored beside the decoder (`separate_encoder`)."""
    rl = copy.deepcopy(model)
    rl.split_encoder()
    return rl


@pytest.fixture(scope="module")
def rl_checkpoint(rl_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rl_checkpoint")
    rl_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dry_run(rl_checkpoint, tmp_path_factory):
    """`push --dry-run` output folder and what it printed."""
    out = tmp_path_factory.mktemp("export") / "repo"
    argv = ["--source", str(rl_checkpoint), "--repo-id", "someone/memcomp-tiny", "--stage", "rl", "--dry-run",
            "--output-dir", str(out), "--base-model", "Qwen/Qwen2.5-7B", "--evaluation", str(EVALUATION)]
    return out, argv


class FakeHfApi:
    """Records the calls `upload` makes, with the files present at upload time; `remote` plays the repo's files, which
    `upload_folder` updates as the Hub does (`delete_patterns` matched as huggingface_hub matches them)."""

    calls: list = []
    remote: set = set()

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, folder_path, **kwargs):
        ignored = kwargs.get("ignore_patterns") or []
        files = sorted(name for p in Path(folder_path).rglob("*") if p.is_file()
                       and not any(fnmatch(name := p.relative_to(folder_path).as_posix(), pattern) for pattern in ignored))
        self.calls.append(("upload_folder", files, kwargs))
        deleted = set(filter_repo_objects(self.remote, allow_patterns=kwargs.get("delete_patterns"))) - {".gitattributes"}
        FakeHfApi.remote = (self.remote - deleted) | set(files)
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/0"})()


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.calls, FakeHfApi.remote = [], {".gitattributes"}
    monkeypatch.setattr(push, "HfApi", FakeHfApi)
    monkeypatch.setattr(push, "get_token", lambda: "hf_test_token")
    return FakeHfApi.calls


def test_dry_run_writes_the_repo_folder_and_lists_it(dry_run, capsys):
    out, argv = dry_run
    assert push.main(argv) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == REPO_FILES | {".memcomp-export.json"}  # the record: never uploaded
    assert all(f"  {name}\n" in printed for name in REPO_FILES) and "nothing uploaded" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_memcomp.MemCompForCausalLM"
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "Qwen/Qwen2.5-7B" and "rl" in card.data.tags
    assert [r.metric_value for r in card.data.eval_results] == [71.25, 0.6875, 0.98]

    assert push.main(argv) == 2, "a second dry run must not silently overwrite the folder"
    assert "--overwrite" in capsys.readouterr().err
    assert push.main(argv + ["--overwrite"]) == 0


@pytest.mark.slow
def test_dry_run_folder_loads_without_memcomp_and_generates_identically(rl_model, corpus, dry_run, tmp_path):
    out, argv = dry_run
    if not (out / "README.md").exists():
        assert push.main(argv) == 0
    context = " ".join(corpus[:2])
    assert_same_model(rl_model, context, *load_without_memcomp(out, context, tmp_path))


def test_push_creates_a_private_repo_and_uploads_the_folder(checkpoint, fake_hub, capsys):
    argv = ["--source", str(checkpoint), "--repo-id", "someone/memcomp-tiny", "--stage", "sft"]
    assert push.main(argv) == 0
    (_, token), (_, repo_id, create), (_, files, upload) = fake_hub
    assert token == "hf_test_token" and repo_id == "someone/memcomp-tiny"
    assert create == {"repo_type": "model", "private": True, "exist_ok": True}
    assert set(files) == REPO_FILES
    assert upload["repo_id"] == "someone/memcomp-tiny" and upload["repo_type"] == "model"
    assert "(private)" in capsys.readouterr().out

    fake_hub.clear()
    assert push.main(argv + ["--public"]) == 0
    assert fake_hub[1][2]["private"] is False


def test_a_second_push_leaves_no_file_of_the_first_behind(checkpoint, fake_hub):
    """An earlier push's files the new folder lacks are deleted in the same commit (a stale single-file
    model.safetensors beside new shards would be loaded first); `.gitattributes` stays, README.md is replaced."""
    stale = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
             "pytorch_model.bin", "docs/old.md"}
    FakeHfApi.remote |= stale | {"README.md"}
    assert push.main(["--source", str(checkpoint), "--repo-id", "someone/memcomp-tiny", "--stage", "sft"]) == 0
    assert fake_hub[2][2]["delete_patterns"] == ["*"]
    assert FakeHfApi.remote == REPO_FILES | {".gitattributes"}


def test_missing_token_is_a_clear_error_before_any_work(checkpoint, monkeypatch, capsys):
    built = []
    monkeypatch.setattr(push, "get_token", lambda: None)
    monkeypatch.setattr(push, "HfApi", lambda *a, **k: built.append(1))
    monkeypatch.setattr(push, "export", lambda *a, **k: built.append(2))
    argv = ["--source", str(checkpoint), "--repo-id", "someone/memcomp-tiny", "--stage", "sft"]
    assert push.main(argv) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token found" in err and "hf auth login" in err and "HF_TOKEN" in err and "--dry-run" in err
    assert built == []
    with pytest.raises(LocalTokenNotFoundError, match="hf auth login"):
        push.upload(checkpoint, "someone/memcomp-tiny")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repo-id", "someone/m", "--dry-run"], "--stage is required for a model"),
        (["--repo-id", "someone/m", "--stage", "dpo"], "stage must be one of ('untrained', 'cpt1'"),
        (["--repo-id", "not a repo id", "--stage", "rl"], "Repo id must"),
        (["--repo-id", "someone/m", "--stage", "rl", "--memory-model", "x/y"], "--memory-model and --source-datasets"),
        (["--repo-id", "someone/m", "--repo-type", "dataset", "--stage", "rl"], "a dataset takes --memory-model"),
    ],
)
def test_bad_arguments_exit_with_usage(checkpoint, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        push.main(["--source", str(checkpoint), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_non_memcomp_checkpoint_and_overlapping_output_are_reported(tmp_path, checkpoint, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    argv = ["--repo-id", "someone/m", "--dry-run", "--output-dir", str(tmp_path / "out")]
    assert push.main(["--source", str(tmp_path), "--stage", "rl", *argv]) == 2
    assert "is not a memcomp checkpoint (config.json model_type is 'qwen2')" in capsys.readouterr().err
    assert push.main(["--source", str(checkpoint), "--stage", "sft", "--repo-id", "someone/m", "--dry-run",
                      "--output-dir", str(checkpoint / "inside")]) == 2
    assert "overlaps the source" in capsys.readouterr().err
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert push.main(["--source", str(tmp_path / "adapter"), "--stage", "rl", *argv]) == 2
    assert "is a training checkpoint with LoRA adapters, not a model" in capsys.readouterr().err
    rl = tmp_path / "rl"
    rl.mkdir()
    (rl / "config.json").write_text(json.dumps({**json.loads((checkpoint / "config.json").read_text()), "separate_encoder": True}))
    assert push.main(["--source", str(rl), "--stage", "sft", *argv]) == 2
    assert "is an RL checkpoint (SFT encoder + RL decoder, separate_encoder): its card must say stage 'rl', not 'sft'" in capsys.readouterr().err


def test_an_sft_checkpoint_cannot_be_published_as_rl(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--repo-id", "someone/m", "--stage", "rl", "--dry-run", "--output-dir", str(out)]
    assert push.main(["--source", str(checkpoint), *argv]) == 2
    err = capsys.readouterr().err
    assert "is not an RL checkpoint: its config has no separate_encoder" in err
    assert "Push the RL run's output_dir with --stage rl, or this checkpoint with the stage it comes from" in err
    assert not out.exists()
    assert push.main(["--source", str(SHIPPED_RL), *argv]) == 0  # the shipped demo (SFT encoder + RL decoder) still goes
    assert "runs the SFT encoder" in (out / "README.md").read_text()


def test_overwrite_replaces_only_what_an_earlier_export_wrote(tmp_path, checkpoint, capsys):
    argv = ["--source", str(checkpoint), "--stage", "sft", "--repo-id", "someone/m", "--dry-run", "--overwrite"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "config.json").write_text(json.dumps({"model_type": "memcomp"}))  # a user's checkpoint is no export
    (mine / "README.md").write_text("---\ntags:\n- memcomp\n---\n")  # nor is a downloaded repo with our card
    assert push.main([*argv, "--output-dir", str(mine)]) == 2
    assert "holds files but no memcomp export record (.memcomp-export.json)" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["README.md", "config.json", "notes.txt"]
    (tmp_path / "file").write_text("")
    assert push.main([*argv, "--output-dir", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == ""

    export = tmp_path / "export"
    assert push.main([*argv, "--output-dir", str(export)]) == 0
    (export / "NOTES.md").write_text("mine")  # added by the user: not the export's
    (export / "old-00001-of-00002.safetensors").write_text("a file an earlier export wrote")
    (tmp_path / "outside.txt").write_text("never touched")
    record = json.loads((export / ".memcomp-export.json").read_text())
    assert set(record["files"]) == REPO_FILES
    record["files"] += ["old-00001-of-00002.safetensors", "../outside.txt"]
    (export / ".memcomp-export.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert push.main([*argv, "--output-dir", str(export)]) == 0
    assert {p.name for p in export.iterdir()} == REPO_FILES | {"NOTES.md", ".memcomp-export.json"}
    assert (export / "NOTES.md").read_text() == "mine" and (tmp_path / "outside.txt").read_text() == "never touched"
    assert ".memcomp-export.json" not in capsys.readouterr().out  # listed, and uploaded, without the record

    (export / "model.safetensors").unlink()  # an export cut short (killed while saving): its record says so
    (export / ".memcomp-export.json").write_text(json.dumps({"in_progress": True, "kept": ["NOTES.md"]}))
    assert push.main([*argv, "--output-dir", str(export)]) == 0  # replaceable, the user's file kept
    assert {p.name for p in export.iterdir()} == REPO_FILES | {"NOTES.md", ".memcomp-export.json"}


def test_save_to_disk_memory_dataset_becomes_parquet_splits(tmp_path, fake_hub):
    from datasets import Dataset, DatasetDict, load_dataset

    rows = {"question": ["Who?", "When?", "Where?"], "answer": ["A", "B", "C"],
            "memory_embeds": [[[0.5] * 4] * n for n in (1, 2, 3)]}
    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows).select([0])}).save_to_disk(
        tmp_path / "memories"
    )
    out = tmp_path / "repo"
    argv = ["--source", str(tmp_path / "memories"), "--repo-id", "someone/memories", "--repo-type", "dataset",
            "--memory-model", "someone/memcomp-sft", "--source-datasets", "hotpotqa/hotpot_qa", "--output-dir", str(out)]
    assert push.main([*argv, "--dry-run"]) == 0
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == {
        "README.md", "data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet", ".memcomp-export.json"
    }
    back = load_dataset("parquet", data_files=str(out / "data" / "train-*.parquet"), split="train",
                        cache_dir=str(tmp_path / "cache"))
    assert back.to_dict() == rows
    card = DatasetCard.load(out / "README.md")
    assert card.data.source_datasets == ["hotpotqa/hotpot_qa"] and card.data.size_categories == "n<1K"
    assert "| `train` | 3 |" in card.text and "| `test` | 1 |" in card.text

    assert push.main([*argv, "--overwrite"]) == 0
    assert fake_hub[1][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert set(fake_hub[2][1]) == {"README.md", "data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"}


def test_memory_files_are_copied_with_their_sizes(model, corpus, tmp_path, capsys):
    folder = tmp_path / "memories"
    (folder / "docs").mkdir(parents=True)
    model.compress(corpus[0]).save(folder / "docs" / "a.safetensors")
    model.compress(" ".join(corpus[:3])).save(folder / "b.safetensors")
    out = tmp_path / "repo"
    argv = ["--source", str(folder), "--repo-id", "someone/memories", "--repo-type", "dataset", "--dry-run"]
    assert push.main([*argv, "--output-dir", str(out)]) == 0
    assert (out / "docs" / "a.safetensors").read_bytes() == (folder / "docs" / "a.safetensors").read_bytes()
    text = (out / "README.md").read_text()
    assert f"| `docs/a.safetensors` | {len(model.compress(corpus[0]))} |" in text
    assert "hidden size 64 and chunk size 16" in text

    from safetensors.torch import save_file

    quarantined = folder / "quarantine" / "docs" / "a.safetensors"  # a store's bad entry, set aside: never published
    quarantined.parent.mkdir(parents=True)
    quarantined.write_bytes(b"garbage")
    assert push.main([*argv, "--output-dir", str(tmp_path / "repo1")]) == 0
    assert not (tmp_path / "repo1" / "quarantine").exists()

    b = (folder / "b.safetensors").read_bytes()
    for bad, why in ((b[:-8] + bytes(8), "fails its checksum"), (b[:5], "not a readable safetensors file"),
                     (None, "not a memcomp memory")):
        if bad is None:
            save_file({"embeds": torch.zeros(2, 64)}, str(folder / "stray.safetensors"))
        else:
            (folder / "stray.safetensors").write_bytes(bad)
        assert push.main([*argv, "--output-dir", str(tmp_path / "repo2")]) == 2
        err = capsys.readouterr().err
        assert "'stray.safetensors' in the dataset folder is not a sound memcomp memory" in err and why in err, err
        assert not (tmp_path / "repo2").exists()  # refused before anything was written
    (folder / "stray.safetensors").unlink()

    victim = tmp_path / "notes.md"
    victim.write_text("mine")
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(victim)  # a re-export must not write through it
    assert push.main([*argv, "--output-dir", str(out), "--overwrite"]) == 2
    assert "holds links (README.md)" in capsys.readouterr().err and victim.read_text() == "mine"


def test_rl_precompute_output_publishes_with_its_compressor_record(model, corpus, tmp_path, capsys):
    precompute = pytest.importorskip("trainers.precompute")
    from datasets import Dataset, load_dataset

    from modeling_memcomp.memory import MEMORY_DATASET_RECORD

    rows = Dataset.from_dict({"context": corpus[:3], "question": ["Who?", "What?", "Where?"], "answer": ["a", "b", "c"]})
    memories = precompute.precompute_memory(model, rows)
    source = tmp_path / "memories"
    memories.save_to_disk(source)
    args = precompute.PrecomputeArguments(model="someone/memcomp-sft", dataset="local.json", output_dir=str(source))
    precompute.write_metadata(source, model, args, len(memories))

    out = tmp_path / "repo"
    argv = ["--source", str(source), "--repo-id", "someone/memories", "--repo-type", "dataset", "--dry-run",
            "--output-dir", str(out)]
    assert push.main(argv) == 0
    assert (out / MEMORY_DATASET_RECORD).read_text() == (source / MEMORY_DATASET_RECORD).read_text()
    back = load_dataset("parquet", data_files=str(out / "data" / "train-*.parquet"), split="train",
                        cache_dir=str(tmp_path / "cache"))
    assert back.features == memories.features
    assert all(torch.equal(torch.tensor(b["memory"]), torch.tensor(m["memory"])) for b, m in zip(back, memories))
    text = (out / "README.md").read_text()
    assert f"fingerprint\n`{model.fingerprint}`" in text and "hidden size 64 and chunk size 16" in text


@pytest.mark.parametrize(
    "record, message",
    [
        ({"in_progress": True}, "was being written by examples/precompute_memory.py, which did not finish"),
        ({"model": "someone/sft", "fingerprint": "abc", "num_rows": 5},
         "holds 3 rows but its memcomp_memory.json records 5: a precompute run into it was cut short"),
        ({"model": "someone/sft", "num_rows": 3}, "lacks fingerprint: nothing says which model made the memories"),
        ({"fingerprint": "abc"}, "lacks model: nothing says which model made the memories"),
        ([1, 2], "must hold a JSON object, got list"),
    ],
)
def test_an_unfinished_or_mismatched_precompute_is_not_published(tmp_path, record, message, capsys):
    from datasets import Dataset

    source = tmp_path / "memories"
    Dataset.from_dict({"question": ["a", "b", "c"], "memory": [[[0.5] * 4]] * 3}).save_to_disk(source)
    (source / "memcomp_memory.json").write_text(json.dumps(record))
    out = tmp_path / "repo"
    argv = ["--source", str(source), "--repo-id", "someone/memories", "--repo-type", "dataset", "--dry-run",
            "--output-dir", str(out)]
    assert push.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "re-run examples/precompute_memory.py" in err, err
    assert not out.exists()  # refused before anything was written


def test_memory_file_dataset_card_snippet_runs_without_memcomp(model, corpus, checkpoint, tmp_path):
    """The dataset card's usage runs as written with the model's remote code only (the download stubbed: offline)."""
    folder = tmp_path / "memories"
    folder.mkdir()
    model.compress(" ".join(corpus[:2])).save(folder / "doc.safetensors")
    out = tmp_path / "repo"
    assert push.main(["--source", str(folder), "--repo-id", "someone/memories", "--repo-type", "dataset", "--dry-run",
                      "--memory-model", "someone/memcomp-tiny", "--output-dir", str(out)]) == 0
    usage = (out / "README.md").read_text().split("## Usage", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", usage, re.DOTALL).group(1)
    assert "modeling_memcomp" not in snippet and 'AutoModel.from_pretrained("someone/memcomp-tiny"' in snippet
    download = "from huggingface_hub import hf_hub_download\n"
    assert download in snippet
    stub = f"def hf_hub_download(repo_id, filename, repo_type):\n    return {str(out)!r} + '/' + filename\n"
    script = (BLOCK_IMPORTS + snippet.replace(download, stub).replace('"someone/memcomp-tiny"', repr(str(checkpoint)))
              + "\nprint('ANSWER', type(model).__module__, answer)\n")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ANSWER transformers_modules." in result.stdout
