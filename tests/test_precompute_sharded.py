"""`precompute_memory.py` under `accelerate launch` with two ranks: shards compressed apart, merged in order."""

import json

import pytest
from datasets import load_from_disk

from _launch import precompute_command, run
from modeling_memcomp.memory import MEMORY_DATASET_RECORD
from modeling_memcomp.tiny import build_tiny_memcomp
from trainers.precompute import SHARDS_DIR

QA = "tests/fixtures/rl/qa.jsonl"


@pytest.mark.slow
def test_two_ranks_write_exactly_the_one_process_dataset(tokenizer, tmp_path):
    build_tiny_memcomp(tokenizer).save_pretrained(tmp_path / "sft")
    arguments = {"model": tmp_path / "sft", "dataset": QA, "device": "cpu"}
    single = run(precompute_command({**arguments, "output_dir": tmp_path / "single"}))
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = run(precompute_command({**arguments, "output_dir": tmp_path / "sharded"}, "examples/accelerate/cpu_2proc.yaml"))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "destroy_process_group() was not called" not in sharded.stderr

    one, two = load_from_disk(tmp_path / "single"), load_from_disk(tmp_path / "sharded")
    assert len(one) == len(two) == 8 and one.features == two.features
    assert one.to_dict() == two.to_dict()  # same rows, same order, bit-identical memories
    assert json.loads((tmp_path / "sharded" / MEMORY_DATASET_RECORD).read_text()) == {
        **json.loads((tmp_path / "single" / MEMORY_DATASET_RECORD).read_text()), "num_rows": 8,
    }
    assert not (tmp_path / "sharded" / SHARDS_DIR).exists()
    assert sharded.stdout.count("8 rows with memories written") == 1  # rank 0 reports, once
