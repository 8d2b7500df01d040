"""The memcomp-qa pipeline: settings given to pipeline(...) apply to every call, and a loaded model works too."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, GenerationMixin, pipeline

import modeling_memcomp  # noqa: F401  (registers the memcomp-qa task)
from conftest import GREEDY

SHIPPED = Path(__file__).parent.parent / "checkpoints" / "memcomp-synthetic-tiny"
CONTEXT = "Voza works for Bula. Voza is a lawyer. Voza lives in Tokyo. Voza was born in 1983."
QUESTION = "Where does Voza live?"


@pytest.fixture(scope="module")
def shipped():
    return AutoModelForCausalLM.from_pretrained(SHIPPED).eval()


def test_generation_settings_given_to_pipeline_apply_to_every_call(shipped):
    pipe = pipeline("memcomp-qa", model=str(SHIPPED), trust_remote_code=True, device="cpu", max_new_tokens=1, do_sample=False)
    one_token = shipped.generate(context=CONTEXT, question=QUESTION, max_new_tokens=1, do_sample=False)
    assert len(shipped.tokenizer(one_token, add_special_tokens=False).input_ids) == 1
    assert pipe(context=CONTEXT, question=QUESTION) == {"answer": one_token}
    longer = shipped.generate(context=CONTEXT, question=QUESTION, **GREEDY)
    assert longer != one_token
    assert pipe(context=CONTEXT, question=QUESTION, **GREEDY) == {"answer": longer}  # the call's settings win


def test_batch_size_given_to_pipeline_bounds_each_generate_call(shipped, monkeypatch):
    pipe = pipeline("memcomp-qa", model=shipped, batch_size=2, **GREEDY)
    rows = []
    original = GenerationMixin.generate
    monkeypatch.setattr(GenerationMixin, "generate", lambda self, *a, **k: rows.append(len(k["input_ids"])) or original(self, *a, **k))
    items = [{"context": CONTEXT, "question": q} for q in (QUESTION, "Who does Voza work for?", "What is Voza's job?")]
    answers = pipe(items)
    assert rows == [2, 1]
    assert answers == [{"answer": shipped.generate(**item, **GREEDY)} for item in items]
    rows.clear()
    pipe(items, batch_size=3)
    assert rows == [3]


@pytest.mark.parametrize("trust", [{}, {"trust_remote_code": True}])
def test_pipeline_takes_a_loaded_model(shipped, trust):
    pipe = pipeline("memcomp-qa", model=shipped, **trust)
    assert pipe.model is shipped
    assert pipe(context=CONTEXT, question=QUESTION, **GREEDY) == {"answer": shipped.generate(context=CONTEXT, question=QUESTION, **GREEDY)}
