"""memcomp evaluation suite: the paper's benchmarks, run for the compressed model and the full-context baseline alike.

One module per benchmark (`reconstruction`, `qa`, `niah`, `multihop`, `longbench`, `response_length`), each
with `build_examples` and `evaluate(model, args, ...)`; all share the harness (resumable records, progress
bars), the scorers and the report writer (`results.json`, `table.md`, plots). Entry points:
`examples/evaluate_*.py`.
"""

from .config import (
    EvalArguments,
    LongBenchArguments,
    MultiHopArguments,
    NIAHArguments,
    QAArguments,
    ReconstructionArguments,
)
from .harness import Example, run
from .records import RecordStore, config_hash
from .systems import FullContextSystem, Generation, MemCompSystem

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
