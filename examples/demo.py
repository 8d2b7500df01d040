"""Compress a document into memory embeddings and answer a question from them.

By default this builds a tiny, UNTRAINED memcomp model locally (random weights, tokenizer trained on the
document), so the answer is noise: the run shows the pipeline and the compression figures. Pass
`--model PATH_OR_HUB_ID` to use a trained checkpoint.
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from modeling_memcomp.prompting import memory_block_ids
from modeling_memcomp.tiny import build_tiny_memcomp, train_tokenizer

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="memcomp checkpoint (folder or Hub id); default: a tiny untrained model")
    parser.add_argument("--context", type=Path, default=HERE / "data" / "document.txt", help="text file to compress")
    parser.add_argument("--question", default="Who discovered the comet, and in which year?")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    logging.set_verbosity_error()

    context = args.context.read_text()
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True).eval()
        label = args.model
    else:
        model = build_tiny_memcomp(train_tokenizer([context], vocab_size=400), chunk_size=16)
        label = "tiny UNTRAINED random model (built locally; the answer is noise)"

    memory = model.compress(context)
    torch.manual_seed(0)
    answer = model.generate(memory=memory, question=args.question, max_new_tokens=args.max_new_tokens)
    slots = len(memory_block_ids(memory.num_embeddings, model.config))
    print(f"model:              {label}")
    print(f"context tokens:     {memory.num_source_tokens}")
    print(f"memory embeddings:  {memory.num_embeddings} (chunk size {memory.chunk_size})")
    print(f"decoder positions:  {slots} with wrap={model.config.wrap!r}")
    print(f"compression:        {memory.compression_rate:.1f}x nominal, {memory.num_source_tokens / slots:.1f}x effective")
    print(f"question:           {args.question}")
    print(f"answer:             {answer!r}")


if __name__ == "__main__":
    main()
