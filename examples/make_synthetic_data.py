"""Write the synthetic corpus (train and held-out JSONL files per kind) and its tokenizer to a folder.

    python examples/make_synthetic_data.py --output_dir data/synthetic
    python examples/make_synthetic_data.py --output_dir /tmp/toy --train_episodes 50 --heldout_episodes 10

Layout: {output_dir}/{train,heldout}/{document,standard,summary,qa}.jsonl and {output_dir}/tokenizer/, readable by
the stage configs as local sources (e.g. `{path: data/synthetic/train/qa.jsonl, kind: qa}`).
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from trainers.synthetic import SyntheticConfig, generate, iter_texts, train_synthetic_tokenizer, write_corpus


@dataclass
class OutputArguments:
    output_dir: str = field(metadata={"help": "folder to write the JSONL files and the tokenizer into"})
    vocab_size: int = field(default=1024, metadata={"help": "upper bound on the BPE vocabulary size"})


def main(argv: list[str] | None = None) -> None:
    data_args, out = HfArgumentParser((SyntheticConfig, OutputArguments)).parse_args_into_dataclasses(argv)
    corpus = generate(data_args)
    paths = write_corpus(corpus, out.output_dir)
    tokenizer = train_synthetic_tokenizer(iter_texts(corpus, "train"), vocab_size=out.vocab_size)
    tokenizer.save_pretrained(f"{out.output_dir}/tokenizer")
    for split, kinds in paths.items():
        print(split, {kind: len(corpus[split][kind]) for kind in kinds})
    print(f"tokenizer: {len(tokenizer)} tokens -> {out.output_dir}/tokenizer")


if __name__ == "__main__":
    main()
