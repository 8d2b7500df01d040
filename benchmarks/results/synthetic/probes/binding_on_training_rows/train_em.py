"""EM of the committed run's baseline and SFT on 400 *training* QA rows with closed-set answers (k = 2 and 4), next to
the type-guess control: do they bind facts they were trained on, or is binding not learnt at all? Run from the repo
root on the committed run's folder (out/synthetic); about 2 minutes on one CPU thread. `--full` / `--sft` name other
checkpoints ('' skips one), e.g. `--full out/bll/baseline --sft ''` for the baseline_30000_steps_held_lr probe."""
import argparse
import collections
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, '.')
torch.set_num_threads(1)
from benchmarks.eval.synthetic import _load, type_guess_records
from benchmarks.eval.systems import FullContextSystem, MemCompSystem
from benchmarks.eval.scoring import answer_scores
from trainers.synthetic import read_jsonl, answer_set
parser = argparse.ArgumentParser()
parser.add_argument('--full', default='out/synthetic/baseline', help="full-context baseline checkpoint ('': skip)")
parser.add_argument('--sft', default='out/synthetic/sft', help="compressed SFT checkpoint ('': skip)")
args = parser.parse_args()
rows = read_jsonl('out/synthetic/data/train/qa.jsonl')
rng = random.Random(0)
picked = [r for r in rng.sample(rows, 4000) if r['k'] in (2, 4) and answer_set(r['type'])][:400]
systems = {}
if args.full:
    systems['full'] = FullContextSystem(_load(Path(args.full)), name='full')
if args.sft:
    systems['sft'] = MemCompSystem(_load(Path(args.sft)), name='sft')
out = collections.defaultdict(list)
for name, system in systems.items():
    for i in range(0, len(picked), 32):
        batch = picked[i:i + 32]
        gens = system.generate([r['context'] for r in batch], [r['question'] for r in batch], max_new_tokens=8, do_sample=False)
        for r, g in zip(batch, gens):
            out[(name, r['k'])].append(answer_scores(g.text, r['answer'], style=g.answer_style)['em'])
recs = [{'id': f'qa_k{i}', 'k': r['k'], 'depth': '', 'system': 'x'} for i, r in enumerate(picked)]
guess = collections.defaultdict(list)
for g in type_guess_records(recs, picked):
    guess[g['k']].append(g['em'])
for (name, k), v in sorted(out.items()):
    print(f'training rows, {name}, k={k}: EM {100*sum(v)/len(v):.1f} (n={len(v)}), type-guess {100*sum(guess[k])/len(guess[k]):.1f}')
