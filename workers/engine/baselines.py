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
question. The verifier holds forget sets to this level (:mod:`workers.engine.verifier`)
and early stopping aims at it per item (:mod:`workers.engine.training`).
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
    out = []
    for ex, near in zip(forget, neighbours(forget, holdout, k), strict=True):
        out += [dataclasses.replace(holdout[i], target=ex.target) for i in near]
    return out


def counterfactual_probability(
    model: Any, tokenizer: Any, forget: Sequence[Example], holdout: Sequence[Example],
    k: int, max_length: int = 128,
) -> torch.Tensor:
    """Per forget item, the model's mean per-token probability of its answer to the ``k``
    most similar never-seen people's questions (shape ``[len(forget)]``)."""
    from workers.engine.unlearn import score_items

    items = counterfactuals(forget, holdout, k)
    if not items:
        return torch.full((len(forget),), float("nan"))
    probs = score_items(model, tokenizer, items, max_length).item_probability
    return probs.view(len(forget), -1).mean(-1)
