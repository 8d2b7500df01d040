"""save_pretrained writes remote code that loads with trust_remote_code where memcomp cannot be imported."""

import json
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from conftest import GREEDY

QUESTION = "What did the engineer build?"

LOAD_WITHOUT_MEMCOMP = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"modeling_memcomp", "trainers", "memcomp"}:
                raise ImportError(f"{name} is blocked: this process plays a Hub user without memcomp")
    sys.meta_path.insert(0, Block())
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    folder, context, out = sys.argv[1], sys.argv[2], sys.argv[3]
    from transformers import AutoModel, pipeline
    greedy = dict(do_sample=False, max_new_tokens=12, repetition_penalty=1.0)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    answer = model.generate(context=context, question=QUESTION, **greedy)
    # AutoModel, the shipped pipeline and memory files give the same answer, still without memcomp.
    assert AutoModel.from_pretrained(folder, trust_remote_code=True).eval().generate(context=context, question=QUESTION, **greedy) == answer
    pipe = pipeline("memcomp-qa", model=folder, trust_remote_code=True, device="cpu")
    assert pipe(context=context, question=QUESTION, **greedy) == {"answer": answer}
    assert pipe(context=context, question=[QUESTION, QUESTION], **greedy) == [{"answer": answer}] * 2
    try:  # both sources: refused, never one of them silently dropped
        pipe(context=context, memory=model.compress(context), question=QUESTION, **greedy)
        raise SystemExit("context= and memory= together were accepted")
    except ValueError as error:
        assert "exactly one of 'context' (text) or 'memory'" in str(error), error
    model.save_memory(model.compress(context), out + ".memory.safetensors")
    assert model.generate(memory=model.load_memory(out + ".memory.safetensors"), question=QUESTION, **greedy) == answer
    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, out + ".safetensors")
    json.dump({"answer": answer, "module": type(model).__module__}, open(out + ".json", "w"))
    """
).replace("QUESTION", repr(QUESTION))


def test_saved_folder_has_remote_code_auto_map_and_tokenizer(model, tmp_path):
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= files
    assert {"configuration_memcomp.py", "modeling_memcomp.py", "memory.py", "pooling.py", "prompting.py"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_memcomp.MemCompConfig",
        "AutoModel": "modeling_memcomp.MemCompForCausalLM",
        "AutoModelForCausalLM": "modeling_memcomp.MemCompForCausalLM",
    }
    assert config["custom_pipelines"]["memcomp-qa"]["impl"] == "pipeline_memcomp.MemCompQAPipeline"
    assert "pipeline_memcomp.py" in files
    assert "tiny" not in files and "tiny.py" not in files, "test helpers must not ship as remote code"


def test_reloaded_model_saved_elsewhere_keeps_its_tokenizer(model, tmp_path):
    from modeling_memcomp import MemCompForCausalLM

    model.save_pretrained(tmp_path / "a")
    reloaded = MemCompForCausalLM.from_pretrained(tmp_path / "a")  # tokenizer not loaded yet (lazy)
    reloaded.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "tokenizer.json").is_file()
    assert reloaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()


def load_without_memcomp(folder, context: str, tmp_path) -> tuple[str, dict]:
    """Load `folder` with trust_remote_code in a process that cannot import memcomp; its greedy answer and weights."""
    out = tmp_path / "result"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_MEMCOMP, str(folder), context, str(out)],
        check=True, cwd=tmp_path, env=env, timeout=300,
    )
    return json.loads((tmp_path / "result.json").read_text())["answer"], load_file(str(tmp_path / "result.safetensors"))


def assert_same_model(model, context: str, answer: str, remote: dict) -> None:
    """The remote load answered like `model` and holds exactly its parameters."""
    assert answer == model.generate(context=context, question=QUESTION, **GREEDY)
    local = model.state_dict()
    assert remote.keys() == local.keys()
    assert all(torch.equal(remote[k], local[k]) for k in local)


def test_remote_code_round_trip_in_a_process_without_memcomp(model, corpus, tmp_path):
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    context = " ".join(corpus[:2])
    assert_same_model(model, context, *load_without_memcomp(folder, context, tmp_path))


def test_a_package_memory_works_with_a_remote_code_model(model, corpus, tmp_path):
    from modeling_memcomp import MemoryEmbeddings

    model.save_pretrained(tmp_path)
    remote_class = get_class_from_dynamic_module("modeling_memcomp.MemCompForCausalLM", str(tmp_path))
    remote = remote_class.from_pretrained(tmp_path).eval()
    assert remote_class.__module__.startswith("transformers_modules.")  # with its own MemoryEmbeddings class
    memory = model.compress(corpus[0])
    memory.save(tmp_path / "m.safetensors")
    for given in (memory, MemoryEmbeddings.load(tmp_path / "m.safetensors")):
        assert remote.generate(memory=given, question=QUESTION, **GREEDY) == model.generate(memory=memory, question=QUESTION, **GREEDY)


def test_local_auto_class_round_trip(model, corpus, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "MemCompForCausalLM"
    assert loaded.generate(context=corpus[0], question=QUESTION, **GREEDY) == model.generate(
        context=corpus[0], question=QUESTION, **GREEDY
    )
    assert loaded.generation_config.top_k == 20


# ---------------------------------------------------------------------------------------------- issue 16, item 2
import pytest  # noqa: E402

from test_cli import hostile_copy  # noqa: E402


@pytest.mark.parametrize("auto", ["AutoModelForCausalLM", "AutoModel"])
@pytest.mark.parametrize("trust", [{}, {"trust_remote_code": False}, {"trust_remote_code": True}])
def test_installed_memcomp_never_imports_a_checkpoints_code(model, tmp_path, trust, auto):
    """With memcomp installed, its registered classes read memcomp checkpoints: the folder's .py never runs."""
    import transformers

    model.save_pretrained(tmp_path / "saved")
    marker = tmp_path / "ran"
    folder = hostile_copy(tmp_path / "saved", tmp_path / "hostile", marker)
    loaded = getattr(transformers, auto).from_pretrained(folder, **trust)
    assert type(loaded).__module__ == "modeling_memcomp.modeling_memcomp"
    assert not marker.exists()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_load_memcomp_refuses_tokenizer_code_unless_trusted(model, corpus, tmp_path):
    from modeling_memcomp.loading import RemoteCodeRequired, load_memcomp

    model.save_pretrained(tmp_path / "ckpt")
    marker = tmp_path / "ran"
    (tmp_path / "ckpt" / "evil_tokenizer.py").write_text(
        f"open({str(marker)!r}, 'a').write('tokenizer code ran')\n"
        "from transformers import TokenizersBackend\nclass EvilTokenizer(TokenizersBackend):\n    pass\n"
    )
    config = json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]})
    (tmp_path / "ckpt" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(RemoteCodeRequired, match=r"its tokenizer, model_type 'memcomp'.*trust_remote_code=True"):
        load_memcomp(tmp_path / "ckpt")
    assert not marker.exists()
    assert load_memcomp(tmp_path / "ckpt", trust_remote_code=True).tokenizer is not None
    assert marker.read_text() == "tokenizer code ran"


def test_load_memcomp_gives_the_tokenizer_without_remote_code(model, corpus, tmp_path):
    from modeling_memcomp.loading import load_memcomp

    model.save_pretrained(tmp_path)
    loaded = load_memcomp(tmp_path)
    assert loaded._tokenizer is not None and loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert loaded.generate(context=corpus[0], question=QUESTION, **GREEDY) == model.generate(
        context=corpus[0], question=QUESTION, **GREEDY
    )


def test_evaluation_runtime_runs_no_checkpoint_code_by_default(model, tmp_path):
    from benchmarks.eval.config import EvalArguments
    from benchmarks.eval.runtime import load_model
    from modeling_memcomp.loading import RemoteCodeRequired

    model.save_pretrained(tmp_path / "saved")
    marker = tmp_path / "ran"
    assert EvalArguments().trust_remote_code is False
    loaded = load_model(EvalArguments(model=str(hostile_copy(tmp_path / "saved", tmp_path / "hostile", marker))))
    assert type(loaded).__module__ == "modeling_memcomp.modeling_memcomp" and not marker.exists()
    custom = hostile_copy(tmp_path / "saved", tmp_path / "custom", marker, model_type="customnet", keep_code=True)
    with pytest.raises(RemoteCodeRequired, match="model_type 'customnet'.*--trust_remote_code"):
        load_model(EvalArguments(model=str(custom)))
    assert not marker.exists()
    assert hasattr(load_model(EvalArguments(model=str(custom), trust_remote_code=True)), "compress")
    assert marker.exists()
    assert "trust_remote_code" not in EvalArguments().run_settings("qa"), "records made before the flag stay valid"


def test_load_memcomp_names_what_a_folder_is_when_it_holds_no_model(model, tmp_path):
    from modeling_memcomp.loading import load_memcomp

    model.save_pretrained(tmp_path / "repo" / "sft")
    assert load_memcomp(tmp_path / "repo", subfolder="sft").fingerprint == model.fingerprint  # a model in a subfolder

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="is a training checkpoint with LoRA adapters, not a model: load the stage's output_dir"):
        load_memcomp(tmp_path / "checkpoint-4")
    with pytest.raises(ValueError, match="is a folder without config.json"):
        load_memcomp(tmp_path)
    with pytest.raises(ValueError, match="does not exist: give a checkpoint folder or a Hub id"):
        load_memcomp(str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------- API review fixes
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

SHIPPED = Path(__file__).parent.parent / "checkpoints" / "memcomp-synthetic-tiny"


class FakeHub:
    """Plays the Hub for `save_pretrained(push_to_hub=True)`: records the repo it creates and the files it commits."""

    def __init__(self):
        self.created, self.commits = [], []

    def create_repo(self, repo_id, exist_ok=False, **kwargs):
        self.created.append((repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        self.commits.append((repo_id, commit_message, sorted(op.path_in_repo for op in operations)))


def test_push_to_hub_from_save_pretrained_uploads_the_tokenizer_and_pipeline(model, tmp_path, monkeypatch):
    import transformers.modeling_utils
    import transformers.utils.hub

    hub = FakeHub()
    card = type("Card", (), {"save": lambda self, path: Path(path).write_text("card")})()
    for module in (transformers.modeling_utils, transformers.utils.hub):
        monkeypatch.setattr(module, "hf_api", lambda: hub)
    monkeypatch.setattr(transformers.modeling_utils, "create_and_tag_model_card", lambda *a, **k: card)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("the user's, not written by this save")
    model.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/tiny", commit_message="v1", private=True)
    assert hub.created == [("me/tiny", {"token": None, "private": True})]
    [(repo_id, message, uploaded)] = hub.commits
    assert (repo_id, message) == ("me/tiny", "v1")
    assert {"tokenizer.json", "tokenizer_config.json", "pipeline_memcomp.py", "model.safetensors", "config.json",
            "modeling_memcomp.py", "README.md"} <= set(uploaded)
    assert "notes.txt" not in uploaded  # as transformers: only what this save wrote


def test_a_model_whose_tokenizer_cannot_load_warns_on_save_and_is_not_pushed(model, tmp_path, monkeypatch):
    import copy

    import transformers.modeling_utils

    hub = FakeHub()
    monkeypatch.setattr(transformers.modeling_utils, "hf_api", lambda: hub)
    orphan = copy.deepcopy(model)
    orphan._tokenizer, orphan.name_or_path = None, str(tmp_path / "gone")  # its source folder was deleted
    with pytest.warns(UserWarning, match="saved without a tokenizer"):
        orphan.save_pretrained(tmp_path / "local")
    with pytest.raises(OSError, match="not pushed: the tokenizer"):
        orphan.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="me/tiny")
    assert hub.commits == []


def test_a_remote_code_model_saved_again_keeps_a_working_pipeline(corpus, tmp_path):
    from transformers import pipeline

    source = shutil.copytree(SHIPPED, tmp_path / "resave_source")
    remote = get_class_from_dynamic_module("modeling_memcomp.MemCompForCausalLM", str(source)).from_pretrained(source)
    assert type(remote).__module__.startswith("transformers_modules.")
    remote.eval().save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "resaved" / "pipeline_memcomp.py").read_text() == (SHIPPED / "pipeline_memcomp.py").read_text()
    pipe = pipeline("memcomp-qa", model=str(tmp_path / "resaved"), trust_remote_code=True, device="cpu")
    context = "Voza works for Bula. Voza lives in Tokyo."
    expected = remote.generate(context=context, question="Where does Voza live?", **GREEDY)
    assert pipe(context=context, question="Where does Voza live?", **GREEDY) == {"answer": expected}


def test_the_lazy_tokenizer_follows_from_pretrained_subfolder(tmp_path):
    from transformers import AutoTokenizer

    from modeling_memcomp import MemCompForCausalLM

    shutil.copytree(SHIPPED, tmp_path / "repo" / "rl")
    for auto in (MemCompForCausalLM, AutoModelForCausalLM):
        loaded = auto.from_pretrained(tmp_path / "repo", subfolder="rl")
        assert loaded._tokenizer is None  # loaded on first use, from the subfolder
        assert loaded.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(SHIPPED).get_vocab()
        assert loaded.generate(context="Voza works for Bula.", question="Who does Voza work for?", **GREEDY)
    loaded.save_pretrained(tmp_path / "copy")  # takes its tokenizer along
    assert (tmp_path / "copy" / "tokenizer.json").is_file()
