"""Instruction pools (Appendix G.1, Figure 10): 5-8 variants per task and length, sampled per example.

The first variant of every pool is the paper's Figure 10 example. QA has no pool: the question is the
instruction.
"""

from __future__ import annotations

import random

LENGTHS = ("short", "medium", "long")

INSTRUCTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "reconstruction": {
        "short": (
            "Reconstruct the text from compressed memory.",
            "Restore the original text.",
            "Repeat the compressed text verbatim.",
            "Decompress the memory into text.",
            "Write out the memorised text.",
        ),
        "medium": (
            "Reconstruct the original text from the compressed memory provided above.",
            "Using the compressed memory above, write out the original passage word for word.",
            "Recover the exact text that was compressed into the memory above.",
            "Expand the compressed memory above back into its original wording.",
            "Reproduce the passage stored in the compressed memory, without changes.",
        ),
        "long": (
            "The compressed memory above contains the full text in compressed form. Please reconstruct and "
            "output the complete original text exactly as it was before compression.",
            "Above is a compressed representation of a passage. Decode it and write the entire passage back out, "
            "keeping every word, number and punctuation mark as in the original.",
            "The memory above encodes a document. Your task is to restore that document in full, in its original "
            "order, without summarising, paraphrasing or adding anything.",
            "Read the compressed memory provided above, which stores a complete text, and output that text "
            "verbatim from its first word to its last.",
            "Treat the compressed memory above as a faithful copy of a passage and reproduce the passage exactly, "
            "sentence by sentence, as it appeared before it was compressed.",
        ),
    },
    "continuation": {
        "short": (
            "Continue writing:",
            "Continue the text.",
            "Keep writing from here.",
            "Write what comes next.",
            "Carry on the passage.",
        ),
        "medium": (
            "Continue the text based on the compressed memory context provided above.",
            "Using the compressed memory above as context, write the next part of the text.",
            "Pick up where the compressed passage above leaves off and continue it.",
            "Write the continuation of the passage stored in the compressed memory.",
            "Extend the text from the compressed memory above in the same style.",
        ),
        "long": (
            "The compressed memory above contains context information. Use it as your foundation to continue "
            "writing naturally from where the text left off.",
            "Above is a compressed passage. Read it as the beginning of a document and write the text that "
            "follows, keeping its topic, tone and style consistent.",
            "The memory above stores the first part of a text in compressed form. Continue the text from the "
            "point where it stops, as its original author would have.",
            "Using the compressed context above as the opening of a document, produce the natural continuation "
            "of the document, without repeating what has already been said.",
            "Consider the compressed memory above to be the start of a longer passage. Write the rest of the "
            "passage so that it follows on smoothly from the last sentence.",
        ),
    },
    "summarization": {
        "short": (
            "Summarize the text briefly.",
            "Give a short summary.",
            "Summarise the passage.",
            "State the main point.",
            "Write a brief summary.",
        ),
        "medium": (
            "Summarize the above passage, focusing on its key point or main idea.",
            "Write a concise summary of the passage stored in the compressed memory.",
            "In a few sentences, summarise what the compressed text above is about.",
            "Condense the passage above into a short summary of its main ideas.",
            "Give an overview of the compressed passage, keeping only its key information.",
        ),
        "long": (
            "Read the above passage carefully and summarize it in your own words, focusing on the key message or "
            "main idea conveyed by the text.",
            "The compressed memory above contains a passage. Write a summary of it that captures the most "
            "important facts and ideas, leaving out minor details.",
            "Using the compressed memory above, produce a short, accurate summary of the passage that a reader "
            "could rely on without seeing the original text.",
            "Consider the passage stored in the compressed memory above and explain its main points briefly and "
            "clearly, in your own words.",
            "Above is a compressed document. Summarise its content faithfully, highlighting its central claim and "
            "the most relevant supporting details.",
        ),
    },
}

PAPER_EXAMPLES = {task: {length: pool[length][0] for length in LENGTHS} for task, pool in INSTRUCTIONS.items()}
"""The paper's Figure 10 instruction for each task and length (also used by evaluation: reconstruction/medium)."""


def sample_instruction(task: str, rng: random.Random) -> str:
    """A random instruction for `task`: a length category, then a variant, both uniform."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"task must be one of {sorted(INSTRUCTIONS)} (QA uses its question), got {task!r}.")
    return rng.choice(INSTRUCTIONS[task][rng.choice(LENGTHS)])
