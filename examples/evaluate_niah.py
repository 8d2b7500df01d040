"""Needle in a haystack: 1-10 score per context length x depth, and heatmaps (paper Table 8, Figure 3).

    python examples/evaluate_niah.py --model CHECKPOINT --haystack paul_graham_essays/ --output_dir eval_results/niah
"""

from trl import TrlParser

from benchmarks.eval import EvalArguments, NIAHArguments, niah
from benchmarks.eval.judging import judges_from_args
from benchmarks.eval.loaders import read_texts
from benchmarks.eval.runtime import load_model


def main() -> None:
    args, data = TrlParser((EvalArguments, NIAHArguments)).parse_args_and_config()
    haystack = "\n\n".join(read_texts(data.haystack))
    model = load_model(args, tiny_corpus=[haystack])
    results = niah.evaluate(model, args, data, haystack, judge=judges_from_args(args)[1])
    print(open(f"{results['output_dir']}/table.md").read())


if __name__ == "__main__":
    main()
