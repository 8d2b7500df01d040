"""Average response length per system from finished evaluations (paper Table 6, Appendix D).

    python examples/evaluate_response_length.py --results eval_results/qa eval_results/longbench
"""

from trl import TrlParser

from benchmarks.eval import response_length
from benchmarks.eval.config import ResponseLengthArguments


def main() -> None:
    (args,) = TrlParser(ResponseLengthArguments).parse_args_and_config()
    print(response_length.evaluate(args.results, args.output_dir)["table"])


if __name__ == "__main__":
    main()
