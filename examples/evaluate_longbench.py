"""LongBench v2 multiple-choice accuracy by context length, contexts under 100K tokens (paper Figure 5).

    python examples/evaluate_longbench.py --model CHECKPOINT --template rl --output_dir eval_results/longbench
"""

from trl import TrlParser

from benchmarks.eval import EvalArguments, LongBenchArguments, longbench
from benchmarks.eval.loaders import read_rows
from benchmarks.eval.runtime import load_model


def main() -> None:
    args, data = TrlParser((EvalArguments, LongBenchArguments)).parse_args_and_config()
    rows = read_rows(data.source, split="train")
    model = load_model(args, tiny_corpus=[r["context"] for r in rows])
    results = longbench.evaluate(model, args, data, rows)
    print(open(f"{results['output_dir']}/table.md").read())


if __name__ == "__main__":
    main()
