"""Verifier v1: did a candidate version forget what it was asked to, and only that?

Two steps so a worker can measure the parent once and the candidate afterwards:

    before = measure(parent, tok, forget, retain, holdout, policy)
    ... unlearn ...
    after = measure(candidate, tok, forget, retain, holdout, policy)
    verdict = judge(before, after, policy)

Per set, two numbers (see :func:`evaluate_set`): greedy-answer accuracy and mean answer
probability. The bar for "forgotten" is the holdout set — people the model never saw —
measured on the candidate: after unlearning, the forget person must look like a stranger.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.engine.qa import (
    Example,
    answer_correct,
    encode,
    greedy_generate,
    sequence_logprob,
    to_device,
)

# Evaluation subsets are drawn with this seed so before/after see the same items.
SUBSET_SEED = 0


@dataclass
class SetMetrics:
    """Scores of one set of items. ``accuracy``: share of items whose greedy answer is
    ``answer_correct``; ``mean_probability``: mean over items of exp(−mean answer-token
    NLL), i.e. the per-token geometric-mean probability of the answer, in [0, 1]."""

    n: int
    accuracy: float
    mean_probability: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class VerificationPolicy:
    """Pass/fail rules (all on the candidate unless said otherwise).

    - forget accuracy ≤ holdout accuracy + ``forget_accuracy_margin``;
    - forget mean probability ≤ holdout mean probability + ``forget_probability_margin``;
    - the same two rules on the forget items' paraphrased questions when
      ``check_paraphrases`` (a fact forgotten under one wording only is not forgotten);
    - retain accuracy ≥ ``retain_accuracy_ratio`` × the parent's retain accuracy.

    The probability margin (0.05) is absolute: on the demo models strangers' answers get
    a per-token probability of about 0.2–0.3, mostly from generic tokens (a plausible
    city, a common job) that a model may keep knowing, while a remembered fact scores
    0.9+. 0.05 is about twice the spread of holdout means across demo builds and below a
    tenth of the gap a remembered person shows, so a half-forgotten person fails.

    ``max_*_items`` cap each set (seeded sample, same items before and after) for speed;
    ``None`` = all. ``batch_size`` is for scoring and generation.
    """

    forget_accuracy_margin: float = 0.10
    forget_probability_margin: float = 0.05
    retain_accuracy_ratio: float = 0.90
    check_paraphrases: bool = True
    max_forget_items: int | None = None
    max_retain_items: int | None = 200
    max_holdout_items: int | None = 200
    batch_size: int = 32
    max_length: int = 128

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Measurement:
    """One model's scores on the verification sets; ``forget_paraphrased`` is ``None``
    when the forget items carry no paraphrases. ``seconds``: wall-clock time taken."""

    forget: SetMetrics
    retain: SetMetrics
    holdout: SetMetrics
    forget_paraphrased: SetMetrics | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict`, for a parent measurement stored as JSON."""
        para = data.get("forget_paraphrased")
        return cls(
            forget=SetMetrics(**data["forget"]),
            retain=SetMetrics(**data["retain"]),
            holdout=SetMetrics(**data["holdout"]),
            forget_paraphrased=SetMetrics(**para) if para else None,
            seconds=float(data.get("seconds", 0.0)),
        )


@dataclass
class Verdict:
    """``passed`` iff ``reasons`` is empty. ``metrics[set] = {"before": ..., "after": ...}``
    (SetMetrics dicts), ``thresholds`` the numbers each rule compared against, ``reasons``
    one human-readable sentence per failed rule. All plain JSON-serialisable values."""

    passed: bool
    metrics: dict[str, dict[str, Any]]
    thresholds: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _subset(examples: Sequence[Example], max_items: int | None) -> list[Example]:
    if max_items is None or len(examples) <= max_items:
        return list(examples)
    # seeded, order-preserving sample: the same items for parent and candidate
    keep = sorted(random.Random(SUBSET_SEED).sample(range(len(examples)), max_items))
    return [examples[i] for i in keep]


@torch.no_grad()
def evaluate_set(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_items: int | None = None,
    batch_size: int = 32,
    max_length: int = 128,
) -> SetMetrics:
    """Accuracy of greedy answers and mean answer probability over ``examples`` (a seeded
    sample of ``max_items`` of them when capped); works on plain and peft models."""
    items = _subset(examples, max_items)
    if not items:
        return SetMetrics(n=0, accuracy=float("nan"), mean_probability=float("nan"))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs: list[float] = []
    for start in range(0, len(items), batch_size):
        batch = to_device(encode(tokenizer, items[start : start + batch_size], max_length), device)
        logp, count = sequence_logprob(model, batch)
        mean_nll = -logp.float() / count.clamp(min=1)
        probs.extend(torch.exp(-mean_nll).tolist())
    # generate only as far as the longest answer could need (+ slack to see it end)
    longest = max(len(tokenizer(ex.target, add_special_tokens=False)["input_ids"]) for ex in items)
    answers = greedy_generate(
        model, tokenizer, [ex.prompt for ex in items], max_new_tokens=longest + 4,
        batch_size=batch_size,
    )
    correct = sum(answer_correct(a, ex.target) for a, ex in zip(answers, items, strict=True))
    model.train(was_training)
    return SetMetrics(n=len(items), accuracy=correct / len(items),
                      mean_probability=sum(probs) / len(probs))


def paraphrased(examples: Sequence[Example]) -> list[Example]:
    """One item per distinct (paraphrased prompt, answer) of the examples; the corpora
    repeat a fact's paraphrases on each of its rows."""
    out: dict[tuple[str, str], Example] = {}
    for ex in examples:
        for p in ex.paraphrased_prompts:
            out.setdefault((p, ex.target), dataclasses.replace(ex, prompt=p,
                                                                paraphrased_prompts=()))
    return list(out.values())


def measure(
    model: Any,
    tokenizer: Any,
    forget: Sequence[Example],
    retain: Sequence[Example],
    holdout: Sequence[Example],
    policy: VerificationPolicy | None = None,
) -> Measurement:
    """Score ``model`` on the three sets (and the forget paraphrases) under ``policy``'s caps."""
    pol = policy or VerificationPolicy()
    started = time.perf_counter()

    def run(examples: Sequence[Example], cap: int | None) -> SetMetrics:
        return evaluate_set(model, tokenizer, examples, cap, pol.batch_size, pol.max_length)

    para = paraphrased(forget) if pol.check_paraphrases else []
    return Measurement(
        forget=run(forget, pol.max_forget_items),
        retain=run(retain, pol.max_retain_items),
        holdout=run(holdout, pol.max_holdout_items),
        forget_paraphrased=run(para, pol.max_forget_items) if para else None,
        seconds=time.perf_counter() - started,
    )


def judge(
    before: Measurement, after: Measurement, policy: VerificationPolicy | None = None
) -> Verdict:
    """Apply ``policy`` to the parent's (``before``) and the candidate's (``after``) scores."""
    pol = policy or VerificationPolicy()
    reasons: list[str] = []
    thresholds: dict[str, float] = {}
    hold = after.holdout

    def bad(x: float) -> bool:
        return x is None or math.isnan(x)

    if before.forget.n == 0 or after.forget.n == 0:
        reasons.append("the forget set is empty: nothing was verified")
    if bad(hold.accuracy) or bad(hold.mean_probability):
        reasons.append("the holdout set is empty: there is no never-seen baseline to compare to")

    forget_sets = [("forget", after.forget)]
    if pol.check_paraphrases and after.forget_paraphrased is not None:
        forget_sets.append(("forget_paraphrased", after.forget_paraphrased))
    for name, got in forget_sets:
        acc_max = hold.accuracy + pol.forget_accuracy_margin
        prob_max = hold.mean_probability + pol.forget_probability_margin
        thresholds[f"{name}_accuracy_max"] = acc_max
        thresholds[f"{name}_mean_probability_max"] = prob_max
        if got.accuracy > acc_max:
            reasons.append(
                f"{name} accuracy {got.accuracy:.3f} is above the holdout accuracy "
                f"{hold.accuracy:.3f} + {pol.forget_accuracy_margin:.2f} = {acc_max:.3f}: "
                "the model still answers the erased person's questions"
            )
        if got.mean_probability > prob_max:
            reasons.append(
                f"{name} mean probability {got.mean_probability:.3f} is above the holdout "
                f"mean probability {hold.mean_probability:.3f} + "
                f"{pol.forget_probability_margin:.2f} = {prob_max:.3f}: the answers are still "
                "more likely than for a never-seen person"
            )

    retain_min = pol.retain_accuracy_ratio * before.retain.accuracy
    thresholds["retain_accuracy_min"] = retain_min
    if bad(after.retain.accuracy) or after.retain.accuracy < retain_min:
        reasons.append(
            f"retain accuracy {after.retain.accuracy:.3f} is below "
            f"{pol.retain_accuracy_ratio:.2f} × the parent's {before.retain.accuracy:.3f} = "
            f"{retain_min:.3f}: unlearning damaged other knowledge"
        )

    metrics: dict[str, dict[str, Any]] = {
        name: {"before": getattr(before, name).to_dict(), "after": getattr(after, name).to_dict()}
        for name in ("forget", "retain", "holdout")
    }
    if before.forget_paraphrased is not None or after.forget_paraphrased is not None:
        metrics["forget_paraphrased"] = {
            "before": before.forget_paraphrased.to_dict() if before.forget_paraphrased else None,
            "after": after.forget_paraphrased.to_dict() if after.forget_paraphrased else None,
        }
    return Verdict(
        passed=not reasons,
        metrics=metrics,
        thresholds=thresholds,
        reasons=reasons,
        policy=pol.to_dict(),
    )


def verify(
    before: Measurement | Any,
    candidate: Any,
    tokenizer: Any,
    forget: Sequence[Example],
    retain: Sequence[Example],
    holdout: Sequence[Example],
    policy: VerificationPolicy | None = None,
) -> Verdict:
    """Measure ``candidate`` and judge it against ``before``: the parent's
    :class:`Measurement` or the parent model itself (then measured here first). The
    verdict's ``metrics`` carry both measurements; call :func:`measure` and :func:`judge`
    directly to keep the :class:`Measurement` objects."""
    pol = policy or VerificationPolicy()
    if not isinstance(before, Measurement):
        before = measure(before, tokenizer, forget, retain, holdout, pol)
    after = measure(candidate, tokenizer, forget, retain, holdout, pol)
    return judge(before, after, pol)
