"""The README's Python API snippets run as written (offline, tiny random model), so the front page cannot drift."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def python_blocks(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"## {section}")
    end = readme.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", readme[start:end], re.DOTALL)


def test_python_api_snippets_run(tmp_path):
    blocks = python_blocks("Python API")
    assert "from_base(\"Qwen/Qwen2.5-7B\"" in blocks[0]  # the one snippet that needs a download is not run
    (tmp_path / "examples" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "data" / "document.txt", tmp_path / "examples" / "data")
    script = "\n".join(blocks[1:])
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "my-memcomp" / "pipeline_memcomp.py").is_file() and (tmp_path / "memory.safetensors").is_file()
