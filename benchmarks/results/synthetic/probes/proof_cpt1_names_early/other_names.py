"""Which syllable of an employer's or founder's name the final reconstruction gets right, by whether a chunk boundary
splits the name. Reads the probe's evaluation records (out/, not committed); writes other_names_<run folder>.json beside itself."""
import json
import re
import sys
from collections import Counter
from pathlib import Path

from transformers import PreTrainedTokenizerFast

RUN = Path(sys.argv[1] if len(sys.argv) > 1 else "out/proof_cpt1_names_early")
CHUNK = json.loads((RUN / "run_config.json").read_text())["chunk_size"]
NAME = re.compile(r"(works for|founded by) (\w+)")
tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(RUN / "data" / "tokenizer" / "tokenizer.json"))

counts = Counter()
for line in open(RUN / "eval" / "reconstruction_records.jsonl"):
    record = json.loads(line)
    reference = NAME.search(record["reference"])
    if record["system"] != "C4" or not reference:
        continue
    answer = re.search(reference.group(1) + r" (\w+)", record["response"])
    encoded = tokenizer(record["reference"], return_offsets_mapping=True)
    span = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > reference.start(2) and a < reference.end(2)]
    wanted = tokenizer.convert_ids_to_tokens(encoded["input_ids"])[span[0]:span[-1] + 1]
    got = tokenizer.convert_ids_to_tokens(tokenizer(" " + answer.group(1))["input_ids"]) if answer else []
    counts[json.dumps({
        "split by a chunk boundary": span[0] // CHUNK != span[-1] // CHUNK,
        "first syllable right": bool(got) and got[0] == wanted[0],
        "last syllable right": bool(got) and got[-1] == wanted[-1],
    })] += 1
rows = [dict(json.loads(key), documents=n) for key, n in sorted(counts.items())]
(Path(__file__).parent / f"other_names_{RUN.name}.json").write_text(json.dumps(rows, indent=1) + "\n")
print(json.dumps(rows, indent=1))
