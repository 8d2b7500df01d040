"""memcomp evaluation suite: the paper's benchmarks, run for the compressed model and the full-context baseline alike.

One module per benchmark (`reconstruction`, `qa`, `niah`, `multihop`, `longbench`, `response_length`), each
with `build_examples` and `evaluate(model, args, ...)`; all share the harness (resumable records, progress
bars), the scorers and the report writer (`results.json`, `table.md`, plots). Entry points:
`examples/evaluate_*.py`.
"""

from modeling_memcomp.extras import require_extra

require_extra("eval", "evaluation (benchmarks.eval, examples/evaluate_*.py)")  # before the imports below need it

from .config import (  # noqa: E402
    EvalArguments,
    LongBenchArguments,
    MultiHopArguments,
    NIAHArguments,
    QAArguments,
    ReconstructionArguments,
)
from .harness import Example, run  # noqa: E402
from .records import RecordStore, config_hash  # noqa: E402
from .systems import FullContextSystem, Generation, MemCompSystem  # noqa: E402

__all__ = [
    "EvalArguments",
    "Example",
    "FullContextSystem",
    "Generation",
    "LongBenchArguments",
    "MemCompSystem",
    "MultiHopArguments",
    "NIAHArguments",
    "QAArguments",
    "RecordStore",
    "ReconstructionArguments",
    "config_hash",
    "run",
]
