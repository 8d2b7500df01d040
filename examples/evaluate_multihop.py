"""Long-context multi-hop QA, RULER-style: sub-span EM from 4K to 120K tokens (paper Figure 4).

    python examples/evaluate_multihop.py --model CHECKPOINT --template rl --output_dir eval_results/multihop
"""

from trl import TrlParser

from benchmarks.eval import EvalArguments, MultiHopArguments, multihop
from benchmarks.eval.loaders import MULTIHOP_PRESETS, load_qa
from benchmarks.eval.runtime import load_model


def main() -> None:
    args, data = TrlParser((EvalArguments, MultiHopArguments)).parse_args_and_config()
    datasets = dict(load_qa(spec, presets=MULTIHOP_PRESETS) for spec in data.datasets)  # all items: the distractor pool
    corpus = [p for items in datasets.values() for item in items for p in item.passages]
    model = load_model(args, tiny_corpus=corpus)
    results = multihop.evaluate(model, args, data, datasets)
    print(open(f"{results['output_dir']}/table.md").read())


if __name__ == "__main__":
    main()
