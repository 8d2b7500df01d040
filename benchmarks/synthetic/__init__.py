"""The synthetic proof: the whole curriculum, end to end, on the synthetic corpus with distractor documents.

    data       corpus (`trainers.synthetic`, QA contexts of 1..max_passages documents) + tokenizer   {output_dir}/data
    lm         plain LM pretraining of a tiny Qwen2 on episodes and QA rows as text (the recipe assumes a pretrained base)
    cpt1       CPT-1 through `trainers.run.run_stage` (flat template)                       {output_dir}/cpt1
    cpt2       CPT-2 (flat template)                                                         {output_dir}/cpt2
    sft        SFT on QA with distractors (chat template, projection frozen)                 {output_dir}/sft
    rl         DAPO (`MemCompGRPOTrainer`), exact-match judge, memories from the SFT encoder: the paper's system,
               saved as one folder (SFT encoder + RL decoder)                                 {output_dir}/rl
    baseline   the same base fine-tuned on the same QA rows with the context as text        {output_dir}/baseline
    cpt1_c8, cpt1_c16   CPT-1 at chunk sizes 8 and 16 (the paper's rates), for the reconstruction curve

A second process trains the baseline and the reconstruction-curve stages while the main one runs the memcomp
stages, each with `threads` torch threads (two one-thread processes do more work on a 2-core CPU than one two-thread
process); a process left alone uses `threads_alone`. Each stage writes its folder and `log_history.json`; a finished
stage (its `config.json` and readable weights exist) is skipped and an interrupted one resumes from its last complete checkpoint. Stage
wall times and non-padding tokens go to `{output_dir}/timings.json`. Evaluation: `benchmarks/eval/synthetic.py`;
report: `benchmarks/eval/synthetic_report.py`; this package sits above both and above `trainers`.

    config     SyntheticRunConfig: every setting, with its help
    folders    finished, reused and start-from stage folders and the corpus seed they trained on; files and
               folders written whole or not at all
    clock      stage wall times and tokens (timings.json), across interruptions and both processes; each
               stage's log_history.json
    data       the corpus, its settings record, the tokenizer, CPT-1's name lists
    stages     one function per training stage
    pipeline   the stages in order, in one process or two
    run        one run from the command line: train, evaluate, report, export (`examples/train_synthetic.py`)
    schedule   runs chained as one resumable command (`examples/train_synthetic_schedule.py`)
"""
