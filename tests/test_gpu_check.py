"""scripts/gpu_check.sh at --smoke size on CPU: every part runs (CUDA-only steps say so) and the summary is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_runs_every_part_and_writes_the_summary(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "MEMCOMP_WHEELS": str(tmp_path / "no-wheels")}
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu_check.json", "gpu_check.md", "gpu_check_bf16.json", "gpu_check_fqlora.json", "gpu_check_latency.json",
        "gpu_check_reuse.json",
    ]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] is True
    latency = report["latency"]
    assert latency["status"] == "ok" and list(latency["runs"]) == ["sdpa"]
    rows = latency["runs"]["sdpa"]["report"]["results"]
    assert [r["context_tokens"] for r in rows] == [256, 512]
    assert latency["compress_at_longest"]["encode_tokens_per_s"] == pytest.approx(rows[-1]["encode_tokens_per_s"])
    assert "flash_attention_2 skipped" in " ".join(latency["notes"])
    fqlora = report["fqlora"]
    assert fqlora["status"].startswith("ran without 4-bit (no CUDA)") and fqlora["losses_finite"]
    assert len(fqlora["steps"]) == 2 and fqlora["layers"]["lora"] and fqlora["layers"]["full"] == [0]
    assert report["reuse"]["report"]["results"]
    bf16 = report["bf16"]
    assert bf16["status"] == "ok" and bf16["moved_tensors"] == bf16["trained_tensors"] > 0
    assert bf16["master_dtypes"] == ["torch.float32"] and bf16["saved_dtypes"] == ["BF16"]
    summary = (tmp_path / "gpu_check.md").read_text()
    assert summary.startswith("# GPU check on ") and "FQLoRA step (smoke" in summary and "bf16 RL step at LR 1e-6" in summary


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU answer of the GPU parts")
@pytest.mark.parametrize(("run", "reason"), [
    (gpu_check.run_latency, "needs a CUDA GPU (the Qwen2.5-7B shape in bf16)"),
    (gpu_check.run_fqlora, "needs a CUDA GPU and bitsandbytes (4-bit NF4 base)"),
    (gpu_check.run_reuse, "needs a CUDA GPU"),
    (gpu_check.run_bf16, "needs a CUDA GPU"),
])
def test_full_size_parts_say_skipped_without_cuda(run, reason):
    assert run(gpu_check.GpuCheckConfig()) == {"status": "skipped", "reason": reason}


def test_a_missing_part_is_reported_not_hidden(tmp_path):
    (tmp_path / "gpu_check_latency.json").write_text(json.dumps({"status": "skipped", "reason": "needs a CUDA GPU"}))
    assert gpu_check.main(["--part", "summary", "--output_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["fqlora"] == {"status": "missing", "reason": "part did not finish (see the log)"}
    assert "Latency: skipped (needs a CUDA GPU)" in (tmp_path / "gpu_check.md").read_text()


def test_a_latency_part_cut_short_keeps_the_lengths_it_finished(tmp_path, monkeypatch):
    """scripts/gpu_check.sh kills a part at its time limit: every finished length must already be on disk."""
    from benchmarks import latency

    class CutShort(Exception):
        pass

    real_run = latency.run

    def killed_after_the_first_length(bench, on_progress=None):
        def hook(report):
            on_progress(report)
            raise CutShort  # stands in for the SIGTERM of `timeout`
        return real_run(bench, on_progress=hook)

    monkeypatch.setattr(latency, "run", killed_after_the_first_length)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(CutShort):
            gpu_check.main(["--part", "latency", "--smoke", "--output_dir", str(tmp_path)])
        saved = json.loads((tmp_path / "gpu_check_latency.json").read_text())
        assert saved["status"].startswith("partial: 1 of 2 lengths with sdpa measured")
        assert [r["context_tokens"] for r in saved["runs"]["sdpa"]["report"]["results"]] == [256]
        assert saved["compress_at_longest"] is None and saved["config"]["part"] == "latency"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check_latency.json"]  # no temporary file left
        assert gpu_check.main(["--part", "summary", "--smoke", "--output_dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = (tmp_path / "gpu_check.md").read_text()
    assert "Latency: partial: 1 of 2 lengths" in summary and "| 256 |" in summary
    assert "Compress at the longest length: not measured." in summary
