"""A seeded synthetic corpus about fictional entities, for training and testing the whole curriculum offline.

Each *episode* is a small random world: one person by default (name, profession, city, birth year,
favourite colour) working for one organisation (founder, year, city). It yields two documents, a people
document and an organisation document, whose facts are fresh random combinations, so a model has to read
them:

    document   {"text"}                              both documents (reconstruction, continuation, plain LM)
    standard   {"text"}                              the whole episode as one text (LM pretraining, plain LM mix)
    summary    {"text", "summary"}                   one short summary per document
    qa         {"context", "question", "answer", "type"}   single-hop questions over one document, two-hop
                                                     questions whose bridge (the employer) spans both

Names are invented consonant-vowel-consonant-vowel words ("Kobe", "Lusu"); the pool is split once so that
held-out episodes use names that never occur in a training row. `train_synthetic_tokenizer` cuts every
name into exactly two syllable tokens, all seen in training: a single token per name would leave held-out
names with embeddings that never received a gradient, and the feasibility run found long multi-token
names hard, so two short, always-trained tokens is the compromise. Rows follow `trainers.data.SCHEMAS`
(the extra `type` column of QA rows names the question type for per-type evaluation; loaders drop it).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
CITIES = (
    "Oslo", "Tokyo", "Madrid", "Kyiv", "Cairo", "Quito", "Hanoi", "Perth", "Tunis", "Dakar",
    "Athens", "Lisbon", "Sofia", "Bern", "Doha", "Minsk", "Accra", "Seoul", "Paris", "Dublin",
)  # fmt: skip  (no city has a name's consonant-vowel-consonant-vowel shape)
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "pink")
PROFESSIONS = ("baker", "doctor", "pilot", "painter", "farmer", "teacher", "lawyer", "nurse", "singer", "sailor")
YEARS = tuple(str(y) for y in range(1950, 2020))

PERSON_FACTS = {
    "profession": ("{name} is a {value}.", "What is the profession of {name}?"),
    "city": ("{name} lives in {value}.", "Where does {name} live?"),
    "year": ("{name} was born in {value}.", "In which year was {name} born?"),
    "colour": ("The favourite colour of {name} is {value}.", "What is the favourite colour of {name}?"),
    "employer": ("{name} works for {value}.", "Who does {name} work for?"),
}
ORG_FACTS = {
    "founder": ("{name} was founded by {value}.", "Who founded {name}?"),
    "founded": ("{name} was founded in {value}.", "In which year was {name} founded?"),
    "base": ("{name} is based in {value}.", "Where is {name} based?"),
}
TWO_HOP = {
    "base": "Where is the company that {name} works for based?",
    "founder": "Who founded the company that {name} works for?",
    "founded": "In which year was the company that {name} works for founded?",
}
"""Two-hop questions: the person document names the employer, the organisation document holds the fact."""
PEOPLE_SUMMARY = "{people}; {verb} for {org}."  # people: "Kobe is a doctor and Nano is a nurse"
ORG_SUMMARY = "{org} is a company in {base} founded by {founder}."


def name_pool() -> list[str]:
    """Every invented name: consonant-vowel-consonant-vowel words such as "Kira" or "Bolo" (4,900 of them)."""
    return [
        (c1 + v1 + c2 + v2).capitalize() for c1 in CONSONANTS for v1 in VOWELS for c2 in CONSONANTS for v2 in VOWELS
    ]


def split_names(seed: int = 0, heldout_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """The name pool shuffled by `seed` and cut into disjoint (train, held-out) pools."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}.")
    names = name_pool()
    random.Random(seed).shuffle(names)
    cut = int(len(names) * heldout_fraction)
    return names[cut:], names[:cut]


@dataclass
class Episode:
    """One random world: people working for one organisation, and the two documents describing it."""

    people: dict[str, dict[str, str]]  # name -> {profession, city, year, colour, employer}
    org: str
    org_facts: dict[str, str]  # {founder, founded, base}
    people_doc: str
    org_doc: str

    def rows(self, rng: random.Random, questions_per_document: int = 3) -> dict[str, list[dict]]:
        """This episode's rows by kind, with `questions_per_document` single-hop questions per document."""
        names = list(self.people)
        people = " and ".join(f"{name} is a {self.people[name]['profession']}" for name in names)
        verb = "works" if len(names) == 1 else ("both work" if len(names) == 2 else "all work")
        summaries = [
            (self.people_doc, PEOPLE_SUMMARY.format(people=people, verb=verb, org=self.org)),
            (self.org_doc, ORG_SUMMARY.format(org=self.org, **self.org_facts)),
        ]
        person_facts = [(name, attr) for name in names for attr in PERSON_FACTS]
        qa = [
            _qa([self.people_doc], PERSON_FACTS[attr][1].format(name=name), self.people[name][attr], f"person_{attr}")
            for name, attr in rng.sample(person_facts, min(questions_per_document, len(person_facts)))
        ]
        qa += [
            _qa([self.org_doc], ORG_FACTS[attr][1].format(name=self.org), self.org_facts[attr], f"org_{attr}")
            for attr in rng.sample(list(ORG_FACTS), min(questions_per_document, len(ORG_FACTS)))
        ]
        attr = rng.choice(list(TWO_HOP))
        context = [self.people_doc, self.org_doc]
        rng.shuffle(context)
        qa.append(_qa(context, TWO_HOP[attr].format(name=rng.choice(names)), self.org_facts[attr], f"two_hop_{attr}"))
        return {
            "document": [{"text": self.people_doc}, {"text": self.org_doc}],
            "standard": [{"text": f"{self.people_doc} {self.org_doc}"}],
            "summary": [{"text": text, "summary": summary} for text, summary in summaries],
            "qa": qa,
        }


def _qa(context: list[str], question: str, answer: str, kind: str) -> dict:
    return {"context": context, "question": question, "answer": answer, "type": kind}


def _describe(name: str, facts: dict[str, str], templates: dict, rng: random.Random) -> list[str]:
    sentences = [templates[attr][0].format(name=name, value=value) for attr, value in facts.items()]
    rng.shuffle(sentences)  # fact order varies, so position alone never gives the answer
    return sentences


def make_episode(rng: random.Random, names: list[str], num_people: int = 1) -> Episode:
    """A random episode whose names (`num_people` people, an organisation, its founder) are drawn from `names`."""
    *persons, org, founder = rng.sample(names, num_people + 2)
    people = {
        name: {
            "profession": rng.choice(PROFESSIONS),
            "city": rng.choice(CITIES),
            "year": rng.choice(YEARS),
            "colour": rng.choice(COLOURS),
            "employer": org,
        }
        for name in persons
    }
    org_facts = {"founder": founder, "founded": rng.choice(YEARS), "base": rng.choice(CITIES)}
    people_doc = " ".join(s for name in persons for s in _describe(name, people[name], PERSON_FACTS, rng))
    org_doc = " ".join(_describe(org, org_facts, ORG_FACTS, rng))
    return Episode(people, org, org_facts, people_doc, org_doc)


DISTRACTORS = ("any", "other_kind")
"""Distractor policies of `SyntheticConfig.distractors`."""


@dataclass
class SyntheticConfig:
    """Sizes and seed of a synthetic corpus."""

    seed: int = field(default=0, metadata={"help": "One seed fixes the name split and every episode."})
    train_episodes: int = field(default=2000, metadata={"help": "Episodes (two documents each) in the training split."})
    heldout_episodes: int = field(default=200, metadata={"help": "Episodes over held-out names, for evaluation."})
    heldout_fraction: float = field(default=0.2, metadata={"help": "Share of the name pool reserved for held-out episodes."})
    questions_per_document: int = field(
        default=5, metadata={"help": "Single-hop questions per document (plus one two-hop question per episode)."}
    )
    people_per_episode: int = field(
        default=1, metadata={"help": "People in the people document; two need name binding (see docs/synthetic.md)."}
    )
    max_passages: int = field(
        default=4, metadata={"help": "K_train: training QA contexts hold 1..max_passages documents (needed ones among distractors)."}
    )
    multidoc_texts: int = field(
        default=2000, metadata={"help": "Training texts joining 2..max_passages documents, for CPT at longer lengths."}
    )
    eval_passages: list[int] = field(
        default_factory=lambda: list(EVAL_PASSAGES),
        metadata={"help": "Documents per held-out QA context (beyond max_passages: length generalization)."},
    )
    eval_questions: int = field(default=60, metadata={"help": "Held-out questions per (number of documents, depth)."})
    distractors: str = field(
        default="any",
        metadata={
            "help": "Which documents may be distractors: 'any' (documents of other episodes: answering needs binding "
            "the fact to the asked name) or 'other_kind' (a person question sits among organisation documents and "
            "vice versa, so no distractor states the asked attribute).",
            "choices": DISTRACTORS,
        },
    )

    def __post_init__(self):
        if self.distractors not in DISTRACTORS:
            raise ValueError(f"distractors must be one of {DISTRACTORS}, got {self.distractors!r}.")
        for name in ("train_episodes", "heldout_episodes", "questions_per_document", "people_per_episode", "max_passages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if any(k < 1 for k in self.eval_passages):
            raise ValueError(f"eval_passages must be positive numbers of documents, got {self.eval_passages}.")
        for split, k in (("train", self.max_passages), ("heldout", max(self.eval_passages, default=1))):
            episodes = getattr(self, f"{split}_episodes")
            documents = 2 * episodes if self.distractors == "any" else episodes + 1  # other_kind: one kind + the needed
            if k > documents:
                raise ValueError(
                    f"{split} contexts of up to {k} documents need at least {k} {split} documents to draw from, but "
                    f"{split}_episodes={episodes} gives {documents} (distractors={self.distractors!r}): raise "
                    f"{split}_episodes or lower {'max_passages' if split == 'train' else 'eval_passages'}."
                )


EVAL_PASSAGES = (1, 2, 4, 8, 16, 32)
DEPTHS = ("first", "middle", "last")
"""Where the answer's document sits in a held-out context (the paper's Figure 3 varies the needle depth)."""
NAME_PATTERN = rf"\b[{CONSONANTS.upper()}][{VOWELS}][{CONSONANTS}][{VOWELS}]\b"
"""An invented name as a regular expression (see `name_pool`)."""
_NAME_WORD = re.compile(NAME_PATTERN)


_DRAWS_PER_DISTRACTOR = 50


def names_in(text: str) -> frozenset[str]:
    """The invented names a text mentions (people, organisations, founders)."""
    return frozenset(_NAME_WORD.findall(text))


def with_distractors(
    needed: list[str], pool: list[str], k: int, rng: random.Random, answer_at: int | None = None
) -> list[str] | None:
    """`needed` documents among `k - len(needed)` distractors from `pool`, shuffled; None if `k` cannot hold them.

    A distractor never mentions a name of the needed documents, so every question keeps one answer. `answer_at`
    puts the last needed document (the one stating the answer) at that index; the others go anywhere.
    """
    if k < len(needed):
        return None
    banned = frozenset().union(*(names_in(d) for d in needed))
    distractors, draws = [], 0
    while len(distractors) < k - len(needed):
        doc = pool[rng.randrange(len(pool))]
        if not names_in(doc) & banned and doc not in distractors:
            distractors.append(doc)
        draws += 1
        if draws == _DRAWS_PER_DISTRACTOR * k:  # rejection sampling is slow to fill k: check that it can at all
            usable = len({d for d in pool if not names_in(d) & banned})
            if usable < k - len(needed):
                raise ValueError(
                    f"Cannot fill a context of {k} documents: only {usable} of the {len(set(pool))} documents share "
                    f"no name with the question's. Use more episodes (train_episodes / heldout_episodes) or fewer "
                    f"documents per context (max_passages / eval_passages)."
                )
    passages = list(distractors)
    *others, answer_doc = needed
    for doc in others:
        passages.insert(rng.randint(0, len(passages)), doc)
    index = rng.randint(0, len(passages)) if answer_at is None else min(answer_at, len(passages))
    passages.insert(index, answer_doc)
    return passages


def is_org_document(doc: str) -> bool:
    """Whether a document describes an organisation (else people): every organisation document states its founding."""
    return " was founded " in doc


def answer_doc_last(row: dict) -> list[str]:
    """The row's needed documents, the one stating the answer last (two-hop: the organisation document)."""
    return sorted(row["context"], key=is_org_document)


def unseen_example(seed: int, documents: int) -> tuple[list[str], str, str, int]:
    """A fresh question over held-out names (never in training), for demos: `documents` documents (the needed ones
    among distractors of other fresh episodes), the question, its answer and the index of the document stating it."""
    rng = random.Random(f"demo-{seed}")
    _, heldout_names = split_names()
    episodes = [make_episode(rng, heldout_names) for _ in range(documents)]
    row = rng.choice(episodes[0].rows(rng)["qa"])
    pool = [doc for episode in episodes[1:] for doc in (episode.people_doc, episode.org_doc)]
    needed = answer_doc_last(row)
    passages = with_distractors(needed, pool, max(documents, len(needed)), rng)
    return passages, row["question"], row["answer"], passages.index(needed[-1])


def distractor_pools(documents: list[str], distractors: str = "any"):
    """`pool(needed)`: the documents distractors for those needed ones are drawn from, under policy `distractors`."""
    if distractors == "any":
        return lambda needed: documents
    by_kind = {kind: [d for d in documents if is_org_document(d) == kind] for kind in (False, True)}
    return lambda needed: by_kind[not is_org_document(needed[-1])]  # the kind the answer's document is not


def distractor_rows(
    rows: list[dict], documents: list[str], max_passages: int, rng: random.Random, distractors: str = "any"
) -> list[dict]:
    """Each QA row with its context grown to 1..max_passages documents (uniform; at least its needed ones)."""
    pool, out = distractor_pools(documents, distractors), []
    for row in rows:
        needed = answer_doc_last(row)
        k = rng.randint(len(needed), max(len(needed), max_passages))
        out.append({**row, "context": with_distractors(needed, pool(needed), k, rng), "k": k})
    return out


def evaluation_rows(
    rows: list[dict], documents: list[str], passages: list[int], per_cell: int, rng: random.Random,
    distractors: str = "any",
) -> list[dict]:
    """Held-out QA at every number of documents `k` and answer depth: `per_cell` questions per (k, depth) cell.

    k = 1 has one depth ("first") and single-hop questions only (a two-hop question needs two documents); k = 2 has
    "first" and "last".
    """
    pool, out = distractor_pools(documents, distractors), []
    for k in passages:
        for depth in DEPTHS if k > 2 else ("first", "last") if k == 2 else ("first",):
            candidates = [r for r in rows if len(r["context"]) <= k]
            for row in rng.sample(candidates, min(per_cell, len(candidates))):
                at = {"first": 0, "middle": (k - 1) // 2, "last": k - 1}[depth]
                needed = answer_doc_last(row)
                context = with_distractors(needed, pool(needed), k, rng, answer_at=at)
                out.append({**row, "context": context, "k": k, "depth": depth})
    return out


def multidoc_rows(documents: list[str], count: int, max_passages: int, rng: random.Random) -> list[dict]:
    """`count` texts joining 2..max_passages random documents (blank-line separated): CPT at longer lengths."""
    if max_passages < 2:
        return []
    return [{"text": "\n\n".join(rng.sample(documents, rng.randint(2, max_passages)))} for _ in range(count)]


def generate(config: SyntheticConfig) -> dict[str, dict[str, list[dict]]]:
    """The corpus as {split: {kind: rows}} for splits "train" and "heldout"; same config, same rows.

    Kinds: `document`, `standard` and `summary` as described above; `qa` (train): every question with its needed
    documents among distractors (1..max_passages documents, column `k`); `qa` (held-out): the single-document set
    (each question with only its needed documents, issue 11's evaluation); `qa_passages` (held-out): questions at
    each `eval_passages` size and answer depth (columns `k`, `depth`); `multidoc`: texts of several documents (CPT).
    """
    train_names, heldout_names = split_names(config.seed, config.heldout_fraction)
    rng = random.Random(config.seed + 1)
    corpus = {}
    for split, names, count in (
        ("train", train_names, config.train_episodes),
        ("heldout", heldout_names, config.heldout_episodes),
    ):
        rows: dict[str, list[dict]] = {"document": [], "standard": [], "summary": [], "qa": []}
        for _ in range(count):
            episode = make_episode(rng, names, config.people_per_episode)
            for kind, new in episode.rows(rng, config.questions_per_document).items():
                rows[kind].extend(new)
        corpus[split] = rows
    # Distractors and evaluation sets draw from their own generator, so the episodes above stay those every earlier
    # corpus with this seed had (the held-out `qa` set is issue 11's single-document set).
    extra = random.Random(config.seed + 2)
    for split, rows in corpus.items():
        documents = [r["text"] for r in rows["document"]]
        count = config.multidoc_texts if split == "train" else 0
        rows["multidoc"] = multidoc_rows(documents, count, config.max_passages, extra)
        if split == "train":
            rows["qa"] = distractor_rows(rows["qa"], documents, config.max_passages, extra, config.distractors)
        else:
            rows["qa_passages"] = evaluation_rows(
                rows["qa"], documents, config.eval_passages, config.eval_questions, extra, config.distractors
            )
    return corpus


VALUE_SETS = {"cities": CITIES, "colours": COLOURS, "professions": PROFESSIONS, "years": YEARS}
"""The closed sets attribute values come from, each in the fixed order lexicon texts list it in."""
_ANSWER_SETS = {
    "city": CITIES, "base": CITIES, "colour": COLOURS, "profession": PROFESSIONS, "year": YEARS, "founded": YEARS,
}


def answer_set(question_type: str) -> tuple[str, ...] | None:
    """The closed set a question type's answer comes from ("two_hop_base": cities); None for names (an open set)."""
    return _ANSWER_SETS.get(question_type.rsplit("_", 1)[-1])


def lexicon_texts(count: int, seed: int = 0, min_items: int = 6, max_items: int = 16) -> list[str]:
    """`count` texts, each a run of one value set in its fixed order from a random start ("1961, 1962, 1963.").

    The corpus alone makes values interchangeable (any colour fits any favourite-colour sentence), so LM
    pretraining collapses their tied embeddings into one (mean pairwise cosine about 0.97) and no memory can carry
    which value a document had. Here the next item depends on the current one, so each value gets its own
    embedding, as every value word has in a real pretrained LM.
    """
    rng = random.Random(f"lexicon-{seed}")
    texts = []
    for _ in range(count):
        values = rng.choice(list(VALUE_SETS.values()))
        start, length = rng.randrange(len(values)), rng.randint(min_items, min(max_items, len(values)))
        texts.append(", ".join(values[(start + i) % len(values)] for i in range(length)) + ".")
    return texts


def name_list_texts(names: list[str], count: int, seed: int = 0, min_items: int = 6, max_items: int = 16) -> list[str]:
    """`count` texts, each a run of distinct random names from `names` ("Kobe, Lusu, Nano."), for reconstruction.

    A document's values each have a kind of their own (one city, one year), so a decoder finds them in memory by what
    they are; a name other than the subject shares its kind with the subject, which every sentence repeats, so only
    where it sits tells it apart, and CPT-1 on documents alone learns to read it late (from about 8,500 steps in the
    committed run, none by 14,000 in another draw). Reconstructing a list asks exactly that at every name. Pass
    training names only: held-out names must never reach a training row.
    """
    if not 1 <= min_items <= max_items <= len(names):
        raise ValueError(f"need 1 <= min_items ({min_items}) <= max_items ({max_items}) <= len(names) ({len(names)}).")
    rng = random.Random(f"names-{seed}")
    return [", ".join(rng.sample(names, rng.randint(min_items, max_items))) + "." for _ in range(count)]


def vocabulary() -> list[str]:
    """Every word a document, summary or question can contain, held-out names included."""
    templates = [t for facts in (PERSON_FACTS, ORG_FACTS) for pair in facts.values() for t in pair]
    templates += list(TWO_HOP.values()) + [PEOPLE_SUMMARY, ORG_SUMMARY, "is a and works both work all"]
    words = {w.strip(".,;?") for t in templates for w in re.sub(r"\{\w+\}", " ", t).split()}
    return sorted(words - {""}) + name_pool() + list(CITIES) + list(COLOURS) + list(PROFESSIONS) + list(YEARS)


NAME_SYLLABLES = (
    rf" ?\b[{CONSONANTS.upper()}][{VOWELS}](?=[{CONSONANTS}][{VOWELS}]\b)"
    rf"|(?<=\b[{CONSONANTS.upper()}][{VOWELS}])[{CONSONANTS}][{VOWELS}]\b"
)
"""Pre-tokenizer pattern isolating the two syllables of a name (the first with its leading space)."""


def train_synthetic_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE trained on `texts` plus every corpus word, names split into their two syllables.

    Built by `modeling_memcomp.tiny.train_tokenizer` (same special tokens). The vocabulary list, with and without a
    leading space, makes every corpus word but names a single token both inside a document and as an
    answer (targets start right after a newline, with no space), so held-out rows tokenize like training ones.
    """
    from modeling_memcomp.tiny import train_tokenizer

    words = vocabulary()
    spaced = [" " + " ".join(words), " " + " ".join(f"{w}." for w in words)]
    return train_tokenizer([*texts, *spaced, *words], vocab_size=vocab_size, split_pattern=NAME_SYLLABLES)


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """`rows` as one JSON object per line (the local format `trainers.data.SourceConfig` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a file written by `write_jsonl`."""
    with open(path) as f:
        return [json.loads(line) for line in f]


def write_corpus(corpus: dict[str, dict[str, list[dict]]], output_dir: str | Path) -> dict[str, dict[str, Path]]:
    """Write `{output_dir}/{split}/{kind}.jsonl` for every split and kind; returns the paths."""
    return {
        split: {kind: write_jsonl(rows, Path(output_dir) / split / f"{kind}.jsonl") for kind, rows in kinds.items()}
        for split, kinds in corpus.items()
    }


def iter_texts(corpus: dict[str, dict[str, list[dict]]], split: str = "train") -> Iterator[str]:
    """Every text of one split (documents, summaries, questions and answers), e.g. to train a tokenizer."""
    if split not in corpus:
        raise ValueError(f"split must be one of {sorted(corpus)}, got {split!r}.")
    rows = corpus[split]
    yield from (r["text"] for r in rows["document"])
    yield from (r["summary"] for r in rows["summary"])
    yield from (f"{r['question']} {r['answer']}" for r in rows["qa"])


__all__ = [
    "Episode",
    "SyntheticConfig",
    "generate",
    "iter_texts",
    "make_episode",
    "name_pool",
    "read_jsonl",
    "split_names",
    "train_synthetic_tokenizer",
    "vocabulary",
    "write_corpus",
    "write_jsonl",
]
