"""Reconstruction ROUGE-1 / ROUGE-L F1 by context length (paper Table 4, Figure 6).

    python examples/evaluate_reconstruction.py --model CHECKPOINT --documents docs.jsonl --output_dir eval_results/reconstruction
"""

from trl import TrlParser

from benchmarks.eval import EvalArguments, ReconstructionArguments, reconstruction
from benchmarks.eval.loaders import read_texts
from benchmarks.eval.runtime import load_model


def main() -> None:
    args, data = TrlParser((EvalArguments, ReconstructionArguments)).parse_args_and_config()
    documents = read_texts(data.documents, data.text_field, data.split)
    model = load_model(args, tiny_corpus=documents)
    results = reconstruction.evaluate(model, args, data, documents)
    print(open(f"{results['output_dir']}/table.md").read())


if __name__ == "__main__":
    main()
