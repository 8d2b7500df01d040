import json, statistics, torch
torch.set_num_threads(1)
from benchmarks.eval.synthetic import MemCompSystem, ZeroMemorySystem, _load, evaluate_systems, reconstruction_examples, document_max_new_tokens
from trainers.synthetic import read_jsonl
model = _load("out/proof/other_kind/cpt1")
out = {}
for split in ("train", "heldout"):
    docs = [r["text"] for r in read_jsonl(f"out/proof/other_kind/data/{split}/document.jsonl")[:60]]
    ex = reconstruction_examples(model.tokenizer, docs)
    recs = evaluate_systems("reconstruction", ex, [MemCompSystem(model, template="plain", name="C4"), ZeroMemorySystem(model, template="plain", name="C4_zero")],
                            f"/tmp/cpt1check/{split}", document_max_new_tokens, 32, {"run": "proof_cpt1"})
    for sysname in ("C4", "C4_zero"):
        rs = [r for r in recs if r["system"] == sysname]
        out[(split, sysname)] = {k: round(statistics.mean(r[k] for r in rs if r.get(k) is not None), 3) for k in ("content_accuracy", "content_accuracy/subject", "content_accuracy/other name", "content_accuracy/value", "rougeL")}
    ex0 = [r for r in recs if r["system"] == "C4"][:2]
    for r in ex0: print(split, "REF:", r["reference"], "\nOUT:", r["response"])
for k, v in out.items(): print(k, v)
