"""Compress a document into memory embeddings and answer a question from them.

By default this loads the demo checkpoint shipped in the repo (`checkpoints/memcomp-synthetic-tiny`, a tiny
Qwen2 trained from scratch on the synthetic corpus by `examples/train_synthetic.py`), writes a fresh document
about people it has never seen (held-out names), and answers a question about it from the compressed memory
alone. `--context FILE --question TEXT` asks your own question; `--model PATH_OR_HUB_ID` uses another checkpoint.
"""

import argparse
import random
from pathlib import Path

import torch
from transformers.utils import logging

from modeling_memcomp.loading import load_memcomp
from modeling_memcomp.prompting import memory_block_ids
from trainers.synthetic import make_episode, split_names

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "memcomp-synthetic-tiny"


def unseen_example(seed: int) -> tuple[list[str], str, str]:
    """A new episode over held-out names (never in training): its documents, a question and the true answer."""
    rng = random.Random(f"demo-{seed}")
    _, heldout_names = split_names()
    row = rng.choice(make_episode(rng, heldout_names).rows(rng)["qa"])
    return row["context"], row["question"], row["answer"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(CHECKPOINT), help="memcomp checkpoint (folder or Hub id)")
    parser.add_argument("--context", type=Path, help="text file to compress (default: a fresh synthetic document)")
    parser.add_argument("--question", help="question about the context (required with --context)")
    parser.add_argument("--seed", type=int, default=0, help="which fresh synthetic document and question to draw")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--trust-remote-code", action="store_true", help="run Python code saved with the checkpoint")
    args = parser.parse_args()
    if (args.context is None) != (args.question is None):
        parser.error("--context and --question go together.")
    logging.set_verbosity_error()

    if args.context is None:
        context, question, reference = unseen_example(args.seed)
    else:
        context, question, reference = args.context.read_text(), args.question, None
    model = load_memcomp(args.model, trust_remote_code=args.trust_remote_code).eval()

    memory = model.compress(context)
    torch.manual_seed(0)
    answer = model.generate(memory=memory, question=question, max_new_tokens=args.max_new_tokens, do_sample=False)
    slots = len(memory_block_ids(memory.num_embeddings, model.config))
    print(f"model:              {args.model}")
    for passage in [context] if isinstance(context, str) else context:
        print(f"context:            {passage[:300]}")
    print(f"context tokens:     {memory.num_source_tokens}")
    print(f"memory embeddings:  {memory.num_embeddings} (chunk size {memory.chunk_size}, wrap={model.config.wrap!r})")
    print(f"effective rate:     {memory.num_source_tokens / slots:.1f}x ({memory.num_source_tokens} tokens -> {slots} decoder positions)")
    print(f"question:           {question}")
    print(f"answer:             {answer}")
    if reference is not None:
        print(f"true answer:        {reference}  ({'right' if answer.strip() == reference else 'wrong'})")


if __name__ == "__main__":
    main()
