"""Compress several documents into memory embeddings and answer a question about one of them from the memory alone.

By default this loads the demo checkpoint shipped in the repo (`checkpoints/memcomp-synthetic-tiny`, a tiny
Qwen2 trained from scratch on the synthetic corpus by `examples/train_synthetic.py`), writes fresh documents about
people and companies it has never seen (held-out names), puts the one a question needs among distractors, and
answers from the compressed memory, saying which document held the answer. `--context FILE --question TEXT` asks
your own question; `--model PATH_OR_HUB_ID` uses another checkpoint.
"""

from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser
from transformers.utils import logging

from modeling_memcomp.loading import load_memcomp
from modeling_memcomp.prompting import memory_block_ids
from trainers.synthetic import unseen_example

CHECKPOINT = "checkpoints/memcomp-synthetic-tiny"


@dataclass
class DemoArguments:
    model: str = field(default=CHECKPOINT, metadata={"help": "memcomp checkpoint (folder or Hub id)."})
    context: str | None = field(default=None, metadata={"help": "Text file to compress (default: fresh synthetic documents)."})
    question: str | None = field(default=None, metadata={"help": "Question about the context (required with --context)."})
    documents: int = field(default=4, metadata={"help": "Synthetic documents in the context: the needed one(s) among distractors."})
    seed: int = field(default=0, metadata={"help": "Which fresh synthetic documents and question to draw."})
    max_new_tokens: int = field(default=16, metadata={"help": "Answer length limit in tokens."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run Python code saved with the checkpoint."})


def main() -> None:
    (args,) = HfArgumentParser(DemoArguments, description=__doc__).parse_args_into_dataclasses()
    if (args.context is None) != (args.question is None):
        raise SystemExit("demo.py: error: --context and --question go together.")
    logging.set_verbosity_error()
    if args.context is None:
        context, question, reference, holder = unseen_example(args.seed, args.documents)
    else:
        context, question, reference, holder = open(args.context, encoding="utf-8").read(), args.question, None, None
    model = load_memcomp(args.model, trust_remote_code=args.trust_remote_code).eval()

    memory = model.compress(context)  # a list of documents: each chunked separately, in order
    torch.manual_seed(0)
    answer = model.generate(memory=memory, question=question, max_new_tokens=args.max_new_tokens, do_sample=False)
    slots = len(memory_block_ids(memory.num_embeddings, model.config))
    print(f"model:              {args.model} (prompt template {model.config.prompt_template!r})")
    passages = [context] if isinstance(context, str) else context
    for i, passage in enumerate(passages):
        mark = "   <- held the answer" if i == holder else ""
        print(f"document {i + 1}:{' ' * (9 - len(str(i + 1)))}{passage[:300]}{mark}")
    print(f"context tokens:     {memory.num_source_tokens} in {len(passages)} document(s)")
    print(f"memory embeddings:  {memory.num_embeddings} (chunk size {memory.chunk_size}, wrap={model.config.wrap!r})")
    print(f"effective rate:     {memory.num_source_tokens / slots:.1f}x ({memory.num_source_tokens} tokens -> {slots} decoder positions)")
    print(f"question:           {question}")
    print(f"answer:             {answer}")
    if reference is not None:
        print(f"true answer:        {reference}  ({'right' if answer.strip() == reference else 'wrong'})")


if __name__ == "__main__":
    main()
