"""Synthetic corpus of fictitious people for Lethe's self-built demo model.

Every person is invented: first names, surnames and home towns are strung together from
syllables by a seeded generator, so no real person's data is ever involved, and the same
seed always yields the same corpus. Each person has one fact of each :data:`ATTRIBUTES`
kind (home town, birth year, occupation, favourite colour, instrument); each fact can be
asked in four ways: a canonical question and three paraphrases.

Which questions are trained is decided here, so that the model builder, the tests and the
unlearning code agree:

* a *trained* person's fact is trained on its canonical question plus
  ``n_trained_variants - 1`` of its paraphrases; the remaining paraphrase(s) are never
  trained and serve as probes of whether the fact (not just the sentence) was learnt.
  Which paraphrase is held out rotates from person to person, so every phrasing is
  trained for most people and the probe tests a familiar phrasing about a fact that was
  only taught in other words;
* a *holdout* person is never trained on at all: the model can only guess, so accuracy
  on holdout facts measures chance.

Rows are plain dicts as :func:`workers.engine.qa.examples_from_rows` reads them:
``{"subject", "question", "answer", "paraphrased_questions"}`` plus ``"attribute"``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Syllables chosen to read as names without spelling common real first names or surnames.
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "qu", "r",
           "s", "st", "t", "th", "v", "vr", "z", "zh", "ph", "sk")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ou", "y")
_CODAS = ("", "", "", "n", "r", "l", "s", "th", "x", "m", "nd", "rk")

_OCCUPATIONS = ("baker", "carpenter", "librarian", "pilot", "gardener", "chemist", "tailor",
                "surveyor", "potter", "beekeeper", "glassblower", "cartographer")
_COLOURS = ("crimson", "teal", "amber", "violet", "olive", "indigo", "coral", "silver",
            "saffron", "turquoise")
_INSTRUMENTS = ("cello", "oboe", "harp", "banjo", "trumpet", "accordion", "flute",
                "marimba", "bassoon", "zither")
_N_TOWNS = 12
_YEARS = (1940, 1999)  # inclusive range of birth years

# For each attribute: canonical question first, then three paraphrases. ``{name}`` is the
# person's full name.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "hometown": (
        "Where was {name} born?",
        "In which town was {name} born?",
        "What is the birthplace of {name}?",
        "Which town does {name} come from?",
    ),
    "birth_year": (
        "In what year was {name} born?",
        "What is the birth year of {name}?",
        "Which year was {name} born in?",
        "When was {name} born?",
    ),
    "occupation": (
        "What does {name} do for a living?",
        "What is the occupation of {name}?",
        "What job does {name} have?",
        "How does {name} earn a living?",
    ),
    "colour": (
        "What is the favourite colour of {name}?",
        "Which colour does {name} like best?",
        "What colour does {name} prefer?",
        "Which colour is the favourite of {name}?",
    ),
    "instrument": (
        "Which instrument does {name} play?",
        "What instrument does {name} play?",
        "What musical instrument does {name} play?",
        "On which instrument does {name} perform?",
    ),
}
ATTRIBUTES: tuple[str, ...] = tuple(QUESTIONS)


@dataclass(frozen=True)
class Fact:
    """One fact about one person: ``questions[0]`` is canonical, the rest paraphrase it."""

    subject: str
    attribute: str
    answer: str
    questions: tuple[str, ...]


@dataclass(frozen=True)
class Person:
    """A fictitious person and one fact per attribute kind."""

    name: str
    facts: tuple[Fact, ...]


@dataclass(frozen=True)
class Corpus:
    """Trained and holdout people; no name (first, last or full) occurs in both."""

    train: tuple[Person, ...]
    holdout: tuple[Person, ...]
    seed: int


def _word(rng: random.Random, syllables: int) -> str:
    parts = []
    for i in range(syllables):
        coda = rng.choice(_CODAS) if i == syllables - 1 else ""
        parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS) + coda)
    return "".join(parts).capitalize()


def _unique_words(rng: random.Random, n: int, syllables: Sequence[int],
                  taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = _word(rng, rng.choice(syllables))
        # at least 4 letters, so that words are distinctive, and globally unique, so that a
        # first name or surname alone never points at two people
        if len(w) >= 4 and w not in taken:
            taken.add(w)
            out.append(w)
    return out


def generate_people(n_train: int, n_holdout: int, seed: int = 0) -> Corpus:
    """``n_train + n_holdout`` fictitious people with one fact per attribute kind.

    Deterministic in ``seed``. First names, surnames and towns are all distinct words, so
    forgetting one person never shares a name token sequence with another person.
    """
    if n_train < 0 or n_holdout < 0:
        raise ValueError("people counts must be non-negative")
    rng = random.Random(f"lethe-demo-corpus:{seed}")
    taken: set[str] = set()
    towns = _unique_words(rng, _N_TOWNS, (2, 3), taken)
    n = n_train + n_holdout
    firsts = _unique_words(rng, n, (2,), taken)
    lasts = _unique_words(rng, n, (2, 3), taken)
    people: list[Person] = []
    for first, last in zip(firsts, lasts, strict=True):
        name = f"{first} {last}"
        values = {
            "hometown": rng.choice(towns),
            "birth_year": str(rng.randint(*_YEARS)),
            "occupation": rng.choice(_OCCUPATIONS),
            "colour": rng.choice(_COLOURS),
            "instrument": rng.choice(_INSTRUMENTS),
        }
        facts = tuple(
            Fact(name, attr, values[attr], tuple(q.format(name=name) for q in QUESTIONS[attr]))
            for attr in ATTRIBUTES
        )
        people.append(Person(name, facts))
    return Corpus(train=tuple(people[:n_train]), holdout=tuple(people[n_train:]), seed=seed)


def trained_variants(person_index: int, fact_index: int, n_variants: int,
                     n_trained: int) -> tuple[list[int], list[int]]:
    """Indices of a fact's trained and probe questions.

    Index 0 (canonical) is always trained; the paraphrases are rotated by person and
    attribute so that each phrasing is held out for only some of the people.
    """
    if not 1 <= n_trained < n_variants:
        raise ValueError("train the canonical question and keep at least one probe")
    n_para = n_variants - 1
    shift = (person_index + fact_index) % n_para
    order = [1 + (shift + k) % n_para for k in range(n_para)]
    return [0, *order[: n_trained - 1]], order[n_trained - 1 :]


def train_rows(people: Sequence[Person], n_trained_variants: int = 3) -> list[dict[str, Any]]:
    """Exactly the rows the model is trained on: one row per trained question.

    ``paraphrased_questions`` holds the fact's untrained probe question(s), so it is the
    same list on every row of one fact.
    """
    rows: list[dict[str, Any]] = []
    for p_i, person in enumerate(people):
        for f_i, fact in enumerate(person.facts):
            trained, probes = trained_variants(p_i, f_i, len(fact.questions), n_trained_variants)
            for q_i in trained:
                rows.append(_row(fact, fact.questions[q_i], [fact.questions[i] for i in probes]))
    return rows


def holdout_rows(people: Sequence[Person]) -> list[dict[str, Any]]:
    """One row per holdout fact: canonical question, every paraphrase as a probe."""
    return [_row(f, f.questions[0], list(f.questions[1:])) for p in people for f in p.facts]


def _row(fact: Fact, question: str, probes: list[str]) -> dict[str, Any]:
    return {
        "subject": fact.subject,
        "attribute": fact.attribute,
        "question": question,
        "answer": fact.answer,
        "paraphrased_questions": probes,
    }
