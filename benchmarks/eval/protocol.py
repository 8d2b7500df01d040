"""The paper's evaluation protocol (Section 4.3, Appendices D, F, G.2, H) as constants: the one place for defaults.

Where the paper states no value, the constant is this repository's choice and its comment says so ("ours")."""

from __future__ import annotations

# Generation (Appendix H.1): Qwen2.5 defaults; temperature per benchmark.
QWEN_SAMPLING = dict(top_k=20, top_p=0.8, repetition_penalty=1.05)
TEMPERATURE = {
    "reconstruction": 0.1,
    "qa": 0.7,
    "niah": 0.0,
    "multihop": 0.7,
    "longbench": 0.7,
}
# Answer length caps (ours; the paper states none for evaluation): the RL stage's response budget (Table 10) leaves
# room for the expanded reasoning; a needle answer is one sentence (an RL checkpoint, which reasons before its
# \boxed{} answer, wants --max_new_tokens 600); a reconstruction gets 1.25 x its context length.
MAX_NEW_TOKENS = {"qa": 600, "multihop": 600, "longbench": 600, "niah": 64}
RECONSTRUCTION_LENGTH_FACTOR = 1.25

# Reconstruction (Appendix A, G.2): plain (Stage 1) template, ROUGE F1 at these lengths (tokens).
RECONSTRUCTION_INSTRUCTION = "Reconstruct the original text from the compressed memory provided above."
RECONSTRUCTION_LENGTHS = (256, 512, 1024, 2048, 4096)

# QA (Section 4.3): 1,000 samples per set, in- and out-of-distribution.
QA_IN_DISTRIBUTION = ("hotpotqa", "nq", "triviaqa")
QA_OUT_OF_DISTRIBUTION = ("2wiki", "bioasq", "squad", "musique", "msmarco")
QA_SAMPLES_PER_SET = 1000

# NIAH (Appendix F, G.2), after Kamradt (2023). The paper states "1K-120K tokens" only: the length and depth grids
# are ours (its text implies 10K and 20K points for the baselines' limits: add them with --lengths).
NIAH_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
NIAH_QUESTION = "What is the best thing to do in San Francisco?"
NIAH_ANSWER = "Eat a sandwich and sit in Dolores Park on a sunny day."
NIAH_LENGTHS = (1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 120_000)
NIAH_DEPTHS = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)

# Long-context multi-hop QA, RULER-style (Section 4.3, Appendix H.2): 100 questions per set, sub-span EM.
MULTIHOP_SETS = ("hotpotqa", "2wiki", "musique")
MULTIHOP_SAMPLES_PER_SET = 100
MULTIHOP_LENGTHS = (4_000, 8_000, 16_000, 32_000, 64_000, 120_000)
MULTIHOP_INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other "
    "words.\n\nQuestion: {question}\nAnswer:"
)

# LongBench v2 (Section 4.3): multiple choice, contexts under 100K tokens (254 samples in the paper).
LONGBENCH_MAX_TOKENS = 100_000
LONGBENCH_BUCKETS = (0, 8_000, 16_000, 32_000, 64_000, 100_000)
LONGBENCH_INSTRUCTION = (
    "What is the correct answer to this question: {question}\nChoices:\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
    'Format your response as follows: "The correct answer is (insert answer here)".'
)

# Full-context baseline: the same template with the context as text and a system prompt without "memory".
FULL_CONTEXT_SYSTEM_PROMPT = "You are a helpful assistant."


def sampling_kwargs(temperature: float) -> dict:
    """`generate` kwargs for a temperature: greedy at 0 (NIAH), else Qwen2.5 sampling defaults."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if temperature == 0:
        return dict(do_sample=False, repetition_penalty=QWEN_SAMPLING["repetition_penalty"])
    return dict(do_sample=True, temperature=temperature, **QWEN_SAMPLING)
