"""QA accuracy in- and out-of-distribution, compressed vs full context, with response lengths (paper Tables 3, 6).

    python examples/evaluate_qa.py --model CHECKPOINT --template rl --judge_model Qwen/Qwen2.5-72B-Instruct \
        --judge_url http://localhost:8000/v1 --output_dir eval_results/qa
"""

from trl import TrlParser

from benchmarks.eval import EvalArguments, QAArguments, qa
from benchmarks.eval.judging import judges_from_args
from benchmarks.eval.loaders import load_qa
from benchmarks.eval.runtime import load_model


def main() -> None:
    args, data = TrlParser((EvalArguments, QAArguments)).parse_args_and_config()
    datasets = dict(load_qa(spec, data.samples_per_set, args.seed) for spec in data.datasets)
    corpus = [p for items in datasets.values() for item in items for p in item.passages]
    model = load_model(args, tiny_corpus=corpus)
    results = qa.evaluate(model, args, datasets, judge=judges_from_args(args)[0])
    print(open(f"{results['output_dir']}/table.md").read())


if __name__ == "__main__":
    main()
