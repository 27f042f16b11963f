"""Verifier v2: the full check a candidate must pass before a version is published with a
"forgotten" certificate (DESIGN.md, "Verification"). Strict by construction: every rule
must hold, missing evidence (an empty set, a NaN) is a failure, never a pass.

    before = measure_full(parent, tok, forget, retain, holdout, general, policy, parent=True)
    after = measure_full(candidate, tok, forget, retain, holdout, general, policy)
    attack = relearn_attack((before probs...), candidate, tok, forget, ...)
    verdict = judge_full(before, after, attack, policy)

or simply ``verify_candidate(parent, candidate, tok, forget, retain, holdout, policy)``.

Rules (all on the candidate; "holdout level" = the candidate's score on never-seen people,
measured with the same probes, so the bar is what the model would say about a stranger):

* forgetting — on the forget items, their paraphrased prompts, and probes the verifier
  derives itself (:func:`derived_probes`): accuracy, mean probability, ROUGE-L recall and
  extraction strength ≤ holdout level + margin; and, with counterfactuals, at most
  ``forget_held_max`` of the forget answers *held*: reproduced word for word (every
  answer token the teacher-forced argmax) about the erased person but about none of the
  never-seen people asked the same question with the same answer — a mean within its
  margin can still hide a few facts the model gives with certainty;
* over-unlearning — forget mean probability ≥ ``forget_probability_floor_ratio`` ×
  holdout probability (an erased person must not stand out as *less* likely than a
  stranger, which leaks that they were erased);
* privacy — MIA ROC AUC (LOSS, zlib, Min-K%, Min-K%++) of forget vs holdout within
  [``mia_auc_min``, ``mia_auc_max``];
* utility — retain (and general, when given) accuracy ≥ ratio × parent's, and utility
  (harmonic mean of probability and ROUGE-L) ≥ ratio × parent's;
* robustness — relearning recovery ≤ ``relearn_recovery_max``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.engine.attacks import RelearnConfig, RelearnResult, relearn_attack, split_by_fact
from workers.engine.baselines import counterfactuals, held_answers
from workers.engine.metrics import (
    MIA_SCORES,
    ItemScore,
    json_safe,
    mia_aucs,
    score_examples,
    set_metrics,
    truth_ratio_forget,
    truth_ratio_other,
    truth_ratios,
    utility,
)
from workers.engine.qa import Example, paraphrased

POLICY_VERSION = "2.1"
# Evaluation subsets are drawn with this seed so parent and candidate see the same items.
SUBSET_SEED = 0

# Forget-side sets and the holdout set that is their never-seen baseline; when the policy
# asks for counterfactuals, ``<set>_counterfactual`` (the same answers, asked about
# never-seen people: workers.engine.baselines) is the baseline instead.
PROBE_SETS: tuple[tuple[str, str], ...] = (
    ("forget", "holdout"),
    ("forget_paraphrased", "holdout_paraphrased"),
    ("forget_derived", "holdout_derived"),
)
COUNTERFACTUAL = "_counterfactual"
# what ``measure_full(..., parent=True)`` scores
PARENT_SETS = frozenset({"forget", "retain", "general"})
# sets whose items may carry truth-ratio evidence (paraphrased and perturbed answers)
TRUTH_RATIO_SETS = frozenset({"forget", "retain", "holdout", "general"})


@dataclass
class VerifierPolicy:
    """Thresholds of the full verifier; plain JSON via :meth:`to_dict` / :meth:`from_dict`.

    Margins are absolute, on [0, 1] quantities, against the candidate's holdout level:
    ``forget_accuracy_margin`` (share of greedy answers correct), ``forget_probability_margin``
    (mean per-token probability of the answer; strangers score ~0.15–0.3 on the demo
    models from generic tokens, a remembered fact 0.9+), ``forget_rouge_margin`` (ROUGE-L
    recall of greedy answers), ``forget_extraction_margin`` (extraction strength).
    ``forget_held_max``: the share of forget answers that may still be held (module
    docstring; needs ``counterfactual_neighbours``).

    ``forget_probability_floor_ratio``: forget probability must be at least this share of
    the never-seen level (over-unlearning: the default fails an erased person whose
    answers have become 200× less likely than a stranger's). ``mia_auc_min``/
    ``mia_auc_max``: each MIA AUC must lie in this band (0.5 ideal). The lower bound is
    off by default (0.0, always reported): gradient unlearning of a handful of one
    person's facts moves them jointly, so by the time the last fact is at a stranger's
    level the rest are below it and AUC against strangers' answers is near 0 even when
    the floor holds — measured on the demo model (docs/benchmarks.md). A model's stored
    policy can require it.

    ``retain_accuracy_ratio``/``retain_utility_ratio`` (and ``general_*``): candidate ≥
    ratio × parent. ``relearn_recovery_max``: the share of the parent's probability (on
    the attack's evaluation half) that may come back; ``relearn_steps``/``relearn_lr``
    configure the attack (full fine-tuning of a copy, see ``attacks.RelearnConfig``).

    ``counterfactual_neighbours``: when > 0, each forget-side set is held to its
    counterfactual level instead of the holdout's — the model's scores for the *same
    answers* to the same kind of question about this many never-seen people
    (:mod:`workers.engine.baselines`): an answer many people share ("cello") is given
    for strangers too, so giving it for the erased person is no evidence of memory, and
    the over-unlearning floor compares against that level as well. 0: holdout level.

    ``max_*_items`` cap each set (seeded sample, same items before and after); ``None`` =
    all; ``max_probe_items`` caps the holdout's paraphrase and derived-probe baselines
    and each counterfactual set (the forget side's probes are never capped). Forget
    items are not capped by default. ``max_escalations``: failed attempts a job may
    retry with escalated settings (see :func:`next_attempt`).
    """

    version: str = POLICY_VERSION
    forget_accuracy_margin: float = 0.10
    forget_probability_margin: float = 0.05
    forget_rouge_margin: float = 0.10
    forget_extraction_margin: float = 0.10
    forget_held_max: float = 0.0
    check_paraphrases: bool = True
    check_derived_probes: bool = True
    counterfactual_neighbours: int = 4
    forget_probability_floor_ratio: float = 0.005
    mia_auc_min: float = 0.0
    mia_auc_max: float = 0.75
    retain_accuracy_ratio: float = 0.90
    retain_utility_ratio: float = 0.85
    general_accuracy_ratio: float = 0.90
    general_utility_ratio: float = 0.85
    relearn: bool = True
    relearn_recovery_max: float = 0.5
    relearn_steps: int = 10
    relearn_lr: float = 1e-3
    max_forget_items: int | None = None
    max_retain_items: int | None = 100
    max_holdout_items: int | None = 100
    max_general_items: int | None = 100
    max_probe_items: int | None = 48
    max_escalations: int = 2
    batch_size: int = 32
    max_length: int = 128

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be ≥ 0" for name in (
                "forget_accuracy_margin", "forget_probability_margin", "forget_rouge_margin",
                "forget_extraction_margin", "forget_probability_floor_ratio",
                "retain_accuracy_ratio", "retain_utility_ratio", "general_accuracy_ratio",
                "general_utility_ratio", "relearn_recovery_max", "relearn_lr",
                "max_escalations", "counterfactual_neighbours")
            if getattr(self, name) < 0
        ]
        if not 0.0 <= self.forget_held_max <= 1.0:
            problems.append("forget_held_max must be in [0, 1]")
        if not 0.0 <= self.mia_auc_min < self.mia_auc_max <= 1.0:
            problems.append("need 0 ≤ mia_auc_min < mia_auc_max ≤ 1")
        if self.max_escalations > 5:
            problems.append("max_escalations must be ≤ 5")
        if self.relearn_steps < 1 or self.batch_size < 1 or self.max_length < 8:
            problems.append("relearn_steps and batch_size must be ≥ 1, max_length ≥ 8")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifierPolicy:
        """The policy ``data`` describes (missing fields: defaults, except that a
        version "2.0" policy, from before the held-answers rule, keeps it off);
        ``ValueError`` on an unknown field, a value of the wrong type or out of range."""
        from pydantic import TypeAdapter, ValidationError

        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            # a typo in a threshold must not silently fall back to the default
            raise ValueError(f"unknown policy fields: {sorted(unknown)}")
        data = dict(data)
        if data.get("version") == "2.0" and "forget_held_max" not in data:
            # a revision stored before the held-answers rule existed is judged as it was
            data["forget_held_max"] = 1.0
        try:
            return TypeAdapter(cls).validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "policy"
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise ValueError(f"{where}: {msg}") from None


# Kinds of failed rule (``FullVerdict.failures``), which decide how a job escalates:
REMEMBERS = "remembers"            # forgetting, MIA-above or relearning rules: unlearn harder
OVER_UNLEARNED = "over_unlearned"  # the erased person stands out the other way: gentler
UTILITY = "utility"                # other knowledge damaged: gentler
EVIDENCE = "evidence"              # missing evidence: no setting change can help


@dataclass
class FullVerdict:
    """``passed`` iff ``reasons`` is empty. ``metrics``: ``{"before": measurement or None,
    "after": measurement, "relearn": attack or None}``; ``thresholds`` the numbers each
    rule compared against; ``reasons`` one sentence per failed rule; ``policy`` the policy
    used; ``failures`` the kinds of the failed rules (:data:`REMEMBERS`, ...).
    :meth:`to_dict` is strict JSON (NaN → null)."""

    passed: bool
    metrics: dict[str, Any]
    thresholds: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))

    def evidence(self) -> dict[str, Any]:
        """The verdict as a job and a certificate record it (strict JSON): per set
        ``{"before": ..., "after": ...}`` under ``metrics`` (each side the set's
        :func:`metrics.aggregate` plus ``mean_probability``, the per-token answer
        probability), ``mia_auc`` before/after, the ``relearn`` attack, the thresholds,
        reasons, failure kinds and the policy."""
        before = self.metrics.get("before") or {}
        after = self.metrics.get("after") or {}

        def side(values: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if values is None else {**values,
                                                "mean_probability": values.get("probability")}

        sets = {name: {"before": side((before.get("sets") or {}).get(name)),
                       "after": side(values)}
                for name, values in (after.get("sets") or {}).items()}
        return json_safe({
            "verifier": self.policy.get("version", POLICY_VERSION),
            "passed": self.passed,
            "reasons": self.reasons,
            "failures": self.failures,
            "thresholds": self.thresholds,
            "policy": self.policy,
            "metrics": sets,
            "mia_auc": {"before": before.get("mia_auc"), "after": after.get("mia_auc")},
            "relearn": self.metrics.get("relearn"),
            "seconds": {"parent": before.get("seconds"), "candidate": after.get("seconds")},
        })


def _subset(examples: Sequence[Example], max_items: int | None) -> list[Example]:
    if max_items is None or len(examples) <= max_items:
        return list(examples)
    keep = sorted(random.Random(SUBSET_SEED).sample(range(len(examples)), max_items))
    return [examples[i] for i in keep]


def derived_probes(examples: Sequence[Example], tokenizer: Any) -> list[Example]:
    """Probes the erasure request did not phrase, derived from each item (deduplicated):

    * answer-prefix completion: the prompt plus the first third (at least one) of the
      answer's tokens; scored on the rest — a model that still holds the fact completes
      it once started, even if it no longer starts it (answers of < 2 tokens: skipped);
    * bare question: the question text alone (no prompt scaffolding) followed by the
      answer — the fact asked outside the trained format;
    * subject completion: "<subject>: " followed by the answer — the fact as a
      free-text association with the person's name.

    Apply the same derivation to the holdout so the bar is the never-seen level of the
    same probe kind."""
    out: dict[tuple[str, str], Example] = {}

    def add(prompt: str, target: str, ex: Example) -> None:
        if target.strip():
            out.setdefault((prompt, target), Example(prompt=prompt, target=target,
                                                     subject=ex.subject, question=ex.question))

    for ex in examples:
        ids = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
        if len(ids) >= 2:
            cut = max(1, len(ids) // 3)
            head = tokenizer.decode(ids[:cut])
            if ex.target.startswith(head):
                add(ex.prompt + head, ex.target[len(head):], ex)
        if ex.question:
            add(ex.question.strip() + " ", ex.target, ex)
        if ex.subject:
            add(f"{ex.subject}: ", ex.target, ex)
    return list(out.values())


def measure_full(
    model: Any,
    tokenizer: Any,
    forget: Sequence[Example],
    retain: Sequence[Example],
    holdout: Sequence[Example],
    general: Sequence[Example] | None = None,
    policy: VerifierPolicy | None = None,
    parent: bool = False,
    attacked: Sequence[Example] | None = None,
) -> dict[str, Any]:
    """Scores of ``model`` on every set the rules need, plain JSON-able dict:
    ``{"sets": {name: metrics.aggregate(...)}, "mia_auc": {score: auc},
    "relearn_eval": [probability, known share] of the relearning evaluation half,
    "seconds": wall clock}``. ``attacked``: the forget items the relearning attack will
    use (a subset of ``forget``; default all of them). ``parent=True`` scores only
    :data:`PARENT_SETS` (what the rules read from the parent; ``mia_auc`` is then
    ``None``). Sets: forget, holdout, retain, (general), and with the
    policy's probe checks forget/holdout_paraphrased and forget/holdout_derived."""
    pol = policy or VerifierPolicy()
    started = time.perf_counter()
    f_items = _subset(forget, pol.max_forget_items)
    h_items = _subset(holdout, pol.max_holdout_items)
    named: dict[str, list[Example]] = {"forget": f_items, "holdout": h_items,
                                       "retain": _subset(retain, pol.max_retain_items)}
    if general:
        named["general"] = _subset(general, pol.max_general_items)
    if pol.check_paraphrases:
        named["forget_paraphrased"] = paraphrased(f_items)
        named["holdout_paraphrased"] = _subset(paraphrased(h_items), pol.max_probe_items)
    if pol.check_derived_probes:
        named["forget_derived"] = derived_probes(f_items, tokenizer)
        named["holdout_derived"] = _subset(derived_probes(h_items, tokenizer),
                                           pol.max_probe_items)
    cf = (counterfactuals(f_items, holdout, pol.counterfactual_neighbours)
          if pol.counterfactual_neighbours else [])
    if pol.counterfactual_neighbours:
        named["forget" + COUNTERFACTUAL] = _subset(cf, pol.max_probe_items)
        if pol.check_paraphrases:
            named["forget_paraphrased" + COUNTERFACTUAL] = _subset(paraphrased(cf),
                                                                  pol.max_probe_items)
        if pol.check_derived_probes:
            named["forget_derived" + COUNTERFACTUAL] = _subset(derived_probes(cf, tokenizer),
                                                              pol.max_probe_items)
    if parent:
        # the rules read the parent only for its utility and for the relearning attack's
        # starting level; every never-seen level is the candidate's own
        named = {k: v for k, v in named.items() if k in PARENT_SETS}
    sets: dict[str, Any] = {}
    per_item: dict[str, list[ItemScore]] = {}
    for name, items in named.items():
        sets[name], per_item[name] = set_metrics(model, tokenizer, items, pol.batch_size,
                                                 pol.max_length)
        if name in TRUTH_RATIO_SETS:
            sets[name].update(_truth_ratio(model, tokenizer, items, name, pol))
        sets[name]["utility"] = utility(sets[name]) if items else float("nan")
    if pol.counterfactual_neighbours and not parent and f_items:
        sets["forget"]["held"] = (held_share(model, tokenizer, per_item["forget"], cf, pol)
                                  if cf else 0.0)
    _, evaluate = split_by_fact(list(attacked) if attacked is not None else f_items)
    ev = [s for s, ex in zip(per_item["forget"], f_items, strict=True) if ex in evaluate]
    relearn_eval = [
        sum(s.probability for s in ev) / len(ev) if ev else float("nan"),
        sum(1.0 for s in ev if s.extraction_strength >= 1.0) / len(ev) if ev else float("nan"),
    ]
    return json_safe({
        "sets": sets,
        "mia_auc": (mia_aucs(per_item["forget"], per_item["holdout"])
                    if "holdout" in per_item else None),
        "relearn_eval": relearn_eval,
        "seconds": time.perf_counter() - started,
    })


def held_share(model: Any, tokenizer: Any, scores: Sequence[ItemScore],
               counterfactual: Sequence[Example], pol: VerifierPolicy) -> float:
    """Share of the forget items (scored as ``scores``) whose answer is held
    (:func:`~workers.engine.baselines.held_answers`; exact memorisation 1 = reproduced
    word for word), against ``counterfactual``, every one of the items' counterfactual
    rows, scored here uncapped: the rule is per item."""
    cf_scores = score_examples(model, tokenizer, counterfactual, pol.batch_size,
                               pol.max_length)

    def known(items: Sequence[ItemScore]) -> torch.Tensor:
        return torch.tensor([s.exact_memorisation >= 1.0 for s in items])

    return float(held_answers(known(scores), known(cf_scores)).float().mean())


def _truth_ratio(model: Any, tokenizer: Any, items: Sequence[Example], name: str,
                 pol: VerifierPolicy) -> dict[str, Any]:
    """TOFU's truth ratio over the items that carry a paraphrased answer and perturbed
    answers (none: no key): ``truth_ratio`` is mean(min(R, 1/R)) on the forget set (1 =
    the true answer is no more likely than wrong ones) and mean(max(0, 1 − R)) elsewhere
    (1 = the true answer is clearly preferred; it then enters the set's utility)."""
    usable = [ex for ex in items if ex.paraphrased_answer and ex.perturbed_answers]
    if not usable:
        return {}
    ratios = truth_ratios(model, tokenizer, [ex.prompt for ex in usable],
                          [str(ex.paraphrased_answer) for ex in usable],
                          [list(ex.perturbed_answers) for ex in usable],
                          pol.batch_size, pol.max_length)
    agg = truth_ratio_forget if name == "forget" else truth_ratio_other
    return {"truth_ratio": agg(ratios), "truth_ratio_n": len(usable)}


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def judge_full(
    before: dict[str, Any] | None,
    after: dict[str, Any],
    candidate_relearn: RelearnResult | dict[str, Any] | None,
    policy: VerifierPolicy | None = None,
) -> FullVerdict:
    """Apply ``policy`` to the parent's (``before``; ``None`` = audit without a parent, the
    parent-relative utility rules are then reported as not checked) and the candidate's
    (``after``) :func:`measure_full` results and the relearning attack's result
    (``None`` fails when ``policy.relearn``). Any NaN/missing number fails its rule."""
    pol = policy or VerifierPolicy()
    reasons: list[str] = []
    kinds: list[str] = []
    th: dict[str, float] = {}
    sets = after["sets"]

    def fail(kind: str, sentence: str) -> None:
        kinds.append(kind)
        reasons.append(sentence)

    def fails(value: float, limit: float, above: bool) -> bool:
        # NaN on either side is missing evidence: fail, never pass
        if math.isnan(value) or math.isnan(limit):
            return True
        return value > limit if above else value < limit

    if not sets.get("forget", {}).get("n"):
        fail(EVIDENCE, "the forget set is empty: nothing was verified")
    if not sets.get("holdout", {}).get("n"):
        fail(EVIDENCE, "the holdout set is empty: there is no never-seen baseline")

    margins = {"accuracy": pol.forget_accuracy_margin,
               "probability": pol.forget_probability_margin,
               "rouge_l": pol.forget_rouge_margin,
               "extraction_strength": pol.forget_extraction_margin}
    checks = {"forget": True, "forget_paraphrased": pol.check_paraphrases,
              "forget_derived": pol.check_derived_probes}
    def baseline(name: str, base: str) -> tuple[str, dict[str, Any]]:
        if pol.counterfactual_neighbours and sets.get(name + COUNTERFACTUAL, {}).get("n"):
            return name + COUNTERFACTUAL, sets[name + COUNTERFACTUAL]
        return base, sets.get(base, {})

    for name, holdout_name in PROBE_SETS:
        if not checks[name] or name not in sets:
            continue
        got = sets[name]
        base, ref = baseline(name, holdout_name)
        if not got.get("n"):
            continue  # e.g. no paraphrases supplied: nothing to probe (forget itself is checked)
        for key, margin in margins.items():
            limit = _num(ref.get(key)) + margin
            value = _num(got.get(key))
            th[f"{name}_{key}_max"] = limit
            if fails(value, limit, above=True):
                fail(
                    REMEMBERS,
                    f"{name} {key} {value:.3f} is above the never-seen level "
                    f"({base} {_num(ref.get(key)):.3f} + {margin:.2f} = {limit:.3f}): "
                    "the model still knows the erased facts")

    if "held" in sets.get("forget", {}):
        held = _num(sets["forget"]["held"])
        th["forget_held_max"] = pol.forget_held_max
        if fails(held, pol.forget_held_max, above=True):
            fail(REMEMBERS,
                 f"forget held {held:.3f} is above {pol.forget_held_max:.3f}: that share of "
                 "the erased answers is still given word for word about the person and "
                 "about none of the never-seen people asked the same question")

    floor_name, floor_ref = baseline("forget", "holdout")
    floor = pol.forget_probability_floor_ratio * _num(floor_ref.get("probability"))
    th["forget_probability_min"] = floor
    fprob = _num(sets.get("forget", {}).get("probability"))
    if fails(fprob, floor, above=False):
        fail(
            OVER_UNLEARNED,
            f"forget probability {fprob:.5f} is below {pol.forget_probability_floor_ratio:g} × "
            f"the {floor_name} probability = {floor:.5f}: over-unlearned, the erased person "
            "stands out as less likely than a stranger")

    th["mia_auc_min"], th["mia_auc_max"] = pol.mia_auc_min, pol.mia_auc_max
    for score in MIA_SCORES:
        auc = _num(after.get("mia_auc", {}).get(score))
        if fails(auc, pol.mia_auc_max, above=True):
            fail(REMEMBERS, f"MIA {score} AUC {auc:.3f} is above {pol.mia_auc_max:.2f}: "
                           "the forget set is still recognisable as trained-on")
        elif fails(auc, pol.mia_auc_min, above=False):
            fail(OVER_UNLEARNED, f"MIA {score} AUC {auc:.3f} is below {pol.mia_auc_min:.2f}: "
                           "over-unlearned, the forget set stands out the other way")

    if before is not None:
        for name, acc_ratio, util_ratio in (
            ("retain", pol.retain_accuracy_ratio, pol.retain_utility_ratio),
            ("general", pol.general_accuracy_ratio, pol.general_utility_ratio),
        ):
            if name not in before["sets"] and name not in sets:
                continue
            b, a = before["sets"].get(name, {}), sets.get(name, {})
            for key, ratio in (("accuracy", acc_ratio), ("utility", util_ratio)):
                limit = ratio * _num(b.get(key))
                value = _num(a.get(key))
                th[f"{name}_{key}_min"] = limit
                if fails(value, limit, above=False):
                    fail(
                        UTILITY,
                        f"{name} {key} {value:.3f} is below {ratio:.2f} × the parent's "
                        f"{_num(b.get(key)):.3f} = {limit:.3f}: unlearning damaged other "
                        "knowledge")

    relearn_dict: dict[str, Any] | None = None
    if pol.relearn:
        th["relearn_recovery_max"] = pol.relearn_recovery_max
        if candidate_relearn is None:
            fail(EVIDENCE, "no relearning attack was run: robustness unverified")
        else:
            relearn_dict = (candidate_relearn.to_dict()
                            if isinstance(candidate_relearn, RelearnResult)
                            else dict(candidate_relearn))
            rec = _num(relearn_dict.get("recovery"))
            if math.isnan(rec):
                # the candidate never lowered the evaluation half: nothing to recover,
                # and the forgetting rules above already fail such a candidate
                rec = 1.0
            if rec > pol.relearn_recovery_max:
                fail(
                    REMEMBERS,
                    f"relearning recovery {rec:.3f} is above {pol.relearn_recovery_max:.2f}: "
                    f"{relearn_dict.get('config', {}).get('steps')} fine-tuning steps on half "
                    "the erased facts bring the other half back")

    return FullVerdict(
        passed=not reasons,
        metrics={"before": before, "after": after, "relearn": relearn_dict},
        thresholds=th,
        reasons=reasons,
        policy=pol.to_dict(),
        failures=sorted(set(kinds)),
    )


def run_relearn(
    before: dict[str, Any] | None,
    candidate: Any,
    tokenizer: Any,
    forget: Sequence[Example],
    policy: VerifierPolicy,
) -> RelearnResult | None:
    """The policy's relearning attack on ``candidate``, with the parent level taken from
    ``before`` (``None`` → 1.0, a trained fact's level). ``None`` when the forget set has
    fewer than two distinct facts (the attack has nothing to hold out); the verdict then
    fails on "no relearning attack" unless the policy turns the attack off."""
    items = _subset(forget, policy.max_forget_items)
    if len({ex.target for ex in items}) < 2:
        return None
    parent = None
    if before is not None:
        prob, known = before["relearn_eval"]
        parent = (_num(prob), _num(known))
    return relearn_attack(parent, candidate, tokenizer, items,
                          RelearnConfig(steps=policy.relearn_steps,
                                        learning_rate=policy.relearn_lr,
                                        max_length=policy.max_length))


def verify_candidate(
    parent_model: Any,
    candidate_model: Any,
    tokenizer: Any,
    forget: Sequence[Example],
    retain: Sequence[Example],
    holdout: Sequence[Example],
    policy: VerifierPolicy | None = None,
    general: Sequence[Example] | None = None,
    before: dict[str, Any] | None = None,
) -> FullVerdict:
    """Measure the parent (unless ``before`` is given) and the candidate, run the
    relearning attack on a copy of the candidate, and judge."""
    pol = policy or VerifierPolicy()
    if before is None:
        before = measure_full(parent_model, tokenizer, forget, retain, holdout, general, pol,
                              parent=True)
    after = measure_full(candidate_model, tokenizer, forget, retain, holdout, general, pol)
    attack = run_relearn(before, candidate_model, tokenizer, forget, pol) if pol.relearn else None
    return judge_full(before, after, attack, pol)


# Escalation: how far a retry may push each knob, so retries cannot run away.
ESCALATION_LIMITS: dict[str, float] = {
    "epochs": 360, "learning_rate": 5e-3, "forget_weight": 4.0, "max_steps": 400,
    "stop_ratio": 0.125, "retain_weight": 8.0, "min_learning_rate": 1e-5,
}


def stronger(config: dict[str, Any], attempt: int) -> dict[str, Any]:
    """Unlearning settings (a method config as a dict) for retry ``attempt`` (1, 2, ...)
    after a verdict that found the model still remembering: epochs ×2, learning rate
    ×1.5, forget weight ×1.5 and the early-stopping target ×0.5 per attempt,
    ``max_steps`` ×2 when set, each capped by :data:`ESCALATION_LIMITS`; early stopping
    is kept so a person forgotten quickly does not pay the larger budget, and switches to
    the likelihood rule (every item down to its own stranger level, the stricter one:
    the membership rule's point was not enough, and ``stop_ratio`` only lowers the
    likelihood target). ``attempt`` ≤ 0 returns an unchanged copy; attempts beyond 3
    saturate at attempt 3's settings."""
    out = copy.deepcopy(config)
    n = max(0, min(int(attempt), 3))
    if n == 0:
        return out
    lim = ESCALATION_LIMITS
    out["epochs"] = int(min(out.get("epochs", 10) * 2**n, lim["epochs"]))
    if out.get("max_steps") is not None:
        out["max_steps"] = int(min(out["max_steps"] * 2**n, lim["max_steps"]))
    out["learning_rate"] = float(min(out.get("learning_rate", 1e-3) * 1.5**n,
                                     lim["learning_rate"]))
    out["forget_weight"] = float(min(out.get("forget_weight", 1.0) * 1.5**n,
                                     lim["forget_weight"]))
    out["stop_ratio"] = float(max(out.get("stop_ratio", 1.0) * 0.5**n, lim["stop_ratio"]))
    out["stop_rule"] = "likelihood"
    return out


def weaker(config: dict[str, Any], attempt: int) -> dict[str, Any]:
    """Settings for retry ``attempt`` after a verdict that found the model over-unlearned
    or damaged: learning rate ×0.5 and retain weight ×2 per attempt (bounded), and the
    early-stopping check made every step, so training stops as soon as the person is at
    a stranger's level instead of overshooting within a pass. Same saturation as
    :func:`stronger`."""
    out = copy.deepcopy(config)
    n = max(0, min(int(attempt), 3))
    if n == 0:
        return out
    lim = ESCALATION_LIMITS
    out["learning_rate"] = float(max(out.get("learning_rate", 1e-3) * 0.5**n,
                                     lim["min_learning_rate"]))
    out["retain_weight"] = float(min(max(out.get("retain_weight", 1.0), 0.5) * 2**n,
                                     lim["retain_weight"]))
    out["stop_check_every"] = 1
    return out


def careful(config: dict[str, Any], attempt: int) -> dict[str, Any]:
    """Settings for retry ``attempt`` after a verdict that found the model both still
    remembering and damaged: the gentler step of :func:`weaker` (half the rate, twice the
    retain weight, a check every step) with the step budget and stopping rule of
    :func:`stronger` — slower, more protected progress, for as long as it takes."""
    out = weaker(config, attempt)
    bigger = stronger(config, attempt)
    out["epochs"] = bigger["epochs"]
    out["stop_rule"] = bigger["stop_rule"]
    if bigger.get("max_steps") is not None:
        out["max_steps"] = bigger["max_steps"]
    return out


def next_attempt(verdict: FullVerdict, config: dict[str, Any], attempts_made: int,
                 policy: VerifierPolicy) -> tuple[str, dict[str, Any]] | None:
    """What to retry after a failed ``verdict`` of attempt ``attempts_made`` (1 = the
    first run) with ``config``: ``("stronger" | "weaker" | "careful", settings)``, or
    ``None`` when the policy's escalations are spent, the verdict passed, or evidence was
    missing (no setting change can supply it). Still remembers → stronger; over-unlearned
    or damaged → weaker; both → careful."""
    if verdict.passed or attempts_made > policy.max_escalations:
        return None
    kinds = set(verdict.failures)
    if EVIDENCE in kinds:
        return None
    gentler = bool(kinds & {OVER_UNLEARNED, UTILITY})
    if REMEMBERS in kinds and gentler:
        return "careful", careful(config, attempts_made)
    if REMEMBERS in kinds:
        return "stronger", stronger(config, attempts_made)
    return "weaker", weaker(config, attempts_made)
