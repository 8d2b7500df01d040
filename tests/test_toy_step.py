"""benchmarks/toy_step.py: the toy's training step timed per mode and thread count, with its outputs and errors."""

import json

import pytest
import torch

from benchmarks import toy_step


@pytest.mark.slow  # compiles the toy twice (torch.compile needs a C++ compiler)
def test_smoke_times_every_mode_at_every_thread_count(tmp_path):
    threads = torch.get_num_threads()
    assert toy_step.main(["--smoke", "--threads", "1", "2", "--output_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "toy_step_cpu.json").read_text())
    assert [(r["mode"], r["threads"]) for r in report["rows"]] == [(m, t) for t in (1, 2) for m in toy_step.MODES]
    for row in report["rows"]:
        assert row["mean_ms"] > 0 and row["n"] == 1
        assert row["tokens_per_step"] == 2 * (16 // 4 + 16) + 2 * 16  # decoder (memory + context) + encoder tokens
    for row in report["rows"]:  # each mode against fp32 eager at its own thread count
        eager = next(r for r in report["rows"] if r["mode"] == "fp32" and r["threads"] == row["threads"])
        assert row["speedup_vs_fp32"] == pytest.approx(eager["mean_ms"] / row["mean_ms"])
    assert torch.get_num_threads() == threads  # the caller's thread count is left as it was
    table = (tmp_path / "toy_step_cpu.md").read_text()
    assert "| fp32 eager (the run's) | 1 |" in table and "| torch.compile, fp32 | 2 |" in table


def test_bad_settings_are_refused_with_what_to_choose(tmp_path, capsys):
    assert toy_step.main(["--modes", "fp16", "--output_dir", str(tmp_path)]) == 2
    assert "unknown modes ['fp16']; choose from ['fp32', 'bf16_autocast', 'compile']" in capsys.readouterr().err
    assert toy_step.main(["--context_tokens", "30", "--output_dir", str(tmp_path)]) == 2
    assert "must be a multiple of chunk_size (4)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
