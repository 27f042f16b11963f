"""The counterfactual baseline: how the model answers the same question about strangers.

"Forgotten" means the model treats the erased person like someone it never saw. The
plain bar — the model's scores on never-seen people's *own* answers (the holdout set) —
misses a common case: when many people share an answer (a popular instrument, a common
job), a model that never heard of someone still gives that answer for them. An erased
person whose answer is "cello" will be "answered correctly" by any model that says
"cello" to strangers, and pushing that answer down for them alone makes them stand out
(and damages everyone else who plays the cello).

So for each forget item Lethe asks the same kind of question about never-seen people:
the ``k`` holdout items whose question is most like the forget item's (word overlap,
names aside since they never match), each paired with the *forget item's* answer. The
model's scores on those pairs are the chance level of that very answer for that kind of
question. The verifier holds forget sets to this level (:mod:`workers.engine.verifier`);
early stopping aims per item at :func:`stranger_level`, which trusts it only where the
model actually gives that answer about strangers (:mod:`workers.engine.training`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import torch

from workers.engine.qa import Example

_WORD = re.compile(r"[a-z0-9]+")


def _words(ex: Example) -> frozenset[str]:
    return frozenset(_WORD.findall((ex.question or ex.prompt).lower()))


def neighbours(forget: Sequence[Example], holdout: Sequence[Example], k: int) -> list[list[int]]:
    """For each forget item, the indices of the ``k`` holdout items with the most similar
    question (Jaccard overlap of lower-case words; ties: earlier items first)."""
    if k <= 0 or not holdout:
        return [[] for _ in forget]
    pool = [_words(h) for h in holdout]
    out = []
    for ex in forget:
        words = _words(ex)

        def similarity(i: int, words: frozenset[str] = words) -> float:
            union = len(words | pool[i])
            return len(words & pool[i]) / union if union else 0.0

        ranked = sorted(range(len(pool)), key=lambda i: (-similarity(i), i))
        out.append(ranked[:k])
    return out


def counterfactuals(forget: Sequence[Example], holdout: Sequence[Example], k: int
                    ) -> list[Example]:
    """``k`` examples per forget item (in forget order): a similar holdout item's prompt,
    question and paraphrases with the forget item's answer."""
    return _paired(forget, holdout, neighbours(forget, holdout, k))


def _paired(forget: Sequence[Example], holdout: Sequence[Example],
            near: Sequence[Sequence[int]]) -> list[Example]:
    """Each forget item's answer asked with its ``near`` holdout items' questions."""
    return [dataclasses.replace(holdout[i], target=ex.target)
            for ex, idx in zip(forget, near, strict=True) for i in idx]


_NAME = re.compile(r"(?<!^)(?<![.?!] )\b[A-Z][\w'-]+")


def _names(ex: Example) -> frozenset[str]:
    """The capitalised words of an item's question past its first word: its names."""
    return frozenset(_NAME.findall(ex.question or ex.prompt))


def alternatives(items: Sequence[Example], pool: Sequence[Example], k: int,
                 same_pool: bool = False) -> list[Example]:
    """``k`` examples per item (in item order): the item's question with the answers of
    the ``k`` ``pool`` items whose question is most like it — what other people answer to
    the same kind of question, TOFU's perturbed answers without an editor. With
    ``same_pool`` (``items`` is ``pool``), an item's own row and the rows whose
    questions name the same people are passed over (one author's other answers name
    that author, which the question makes likely)."""
    if k <= 0 or not pool:
        return []
    if not same_pool:
        return [dataclasses.replace(ex, target=pool[j].target)
                for ex, idx in zip(items, neighbours(items, pool, k), strict=True)
                for j in idx]
    names = [_names(ex) for ex in pool]
    ranked = neighbours(items, pool, len(pool))
    out: list[Example] = []
    for i, (ex, idx) in enumerate(zip(items, ranked, strict=True)):
        others = [j for j in idx if j != i and not names[j] & names[i]] or \
            [j for j in idx if j != i]
        out.extend(dataclasses.replace(ex, target=pool[j].target) for j in others[:k])
    return out


def held_answers(known: torch.Tensor, counterfactual_known: torch.Tensor) -> torch.Tensor:
    """Per forget item, whether its answer is *held*: ``known`` (the model reproduces it
    word for word: every answer token the teacher-forced argmax) about this person, but
    about none of the never-seen people asked the same question with the same answer
    (``counterfactual_known``: :func:`counterfactuals`' rows, the same number per item, in
    item order). A shared answer ("tailor", a common city) that the model also gives
    strangers is not held."""
    per_item = counterfactual_known.view(len(known), -1)
    return known & ~per_item.any(-1)


def stranger_level(
    model: Any, tokenizer: Any, forget: Sequence[Example], holdout: Sequence[Example],
    k: int, max_length: int = 128,
) -> torch.Tensor:
    """Per forget item, the answer probability (per token) that makes it a stranger's:
    the counterfactual level where the model *says* that answer about strangers, else
    the lower of the counterfactual level and the strangers' own answers' level.

    The counterfactual score is teacher-forced, and that leaks for answers the model
    learned word for word: once a memorised sentence's first tokens are given, the rest
    follows whoever the question was about (TOFU's forget answers score 0.45 per token
    after a stranger's question; a model retrained without them gives them 0.0003, and
    strangers' own answers score 0.0002). The leak shows in the argmax: the model never
    produces that sentence for a stranger. So the counterfactual level is trusted for an
    item only if greedy decoding gives its answer for at least one of the ``k``
    neighbouring strangers (a shared answer: "cello", a common city), and an answer the
    model says about nobody else must fall to where strangers' own answers are."""
    from workers.engine.unlearn import score_items

    if not holdout or not forget or k <= 0:
        return torch.full((len(forget),), float("nan"))
    near = neighbours(forget, holdout, k)  # once: the own-answer level reuses it
    cf = score_items(model, tokenizer, _paired(forget, holdout, near), max_length)
    cf_prob = cf.item_probability.view(len(forget), -1)
    said = cf.known.view(len(forget), -1).any(-1)
    used = sorted({i for idx in near for i in idx})
    own = score_items(model, tokenizer, [holdout[i] for i in used], max_length).item_probability
    own_of = dict(zip(used, own.tolist(), strict=True))
    own_level = torch.tensor([sum(own_of[i] for i in idx) / len(idx) for idx in near])
    level = cf_prob.mean(-1)
    return torch.where(said, level, torch.minimum(level, own_level))
