"""Relearning attack: does a candidate that "forgot" really not know any more, or does a
few fine-tuning steps on part of the erased data bring the rest back?

The forget set is split by FACT (items with the same target answer stay together), so
the attack teaches one half of the person's facts and measures the other half: a model
that truly lost the knowledge has to learn those facts from scratch and cannot; a model
whose knowledge was only suppressed gets it back (Hu et al. 2024; Łucki et al. 2024).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from workers.engine.metrics import score_examples
from workers.engine.qa import Example, encode, sequence_logprob, to_device


@dataclass
class RelearnConfig:
    """The attack: ``steps`` AdamW steps at ``learning_rate`` on a full-weight copy of the
    candidate, batches of ``batch_size`` items from the attack half, answer NLL loss.
    Full fine-tuning (not LoRA) so that the attack can reach every weight unlearning
    touched; the copy is thrown away afterwards."""

    steps: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 8
    max_length: int = 128
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RelearnResult:
    """Probabilities (mean exp(−NLL) per item) and greedy-argmax knowledge share on the
    EVALUATION half (facts never used in the attack): ``parent_*`` before unlearning,
    ``candidate_*`` after unlearning, ``attacked_*`` after the attack on the candidate.
    ``recovery`` = (attacked − candidate) / (parent − candidate) probability, clipped to
    [0, ∞): 0 nothing came back, 1 fully back to the parent's level (NaN when the
    candidate never lowered it). ``known_recovery`` the same on the share of evaluation
    items whose answer is fully reproduced by argmax (extraction strength 1).
    ``seconds`` wall-clock of the attack and its scoring."""

    n_attack: int
    n_eval: int
    parent_probability: float
    candidate_probability: float
    attacked_probability: float
    parent_known: float
    candidate_known: float
    attacked_known: float
    recovery: float
    known_recovery: float
    seconds: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_by_fact(forget: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """Two halves of the forget items, keeping every item of one fact (same target) in the
    same half; facts alternate in first-seen order so the halves are balanced."""
    facts = list(dict.fromkeys(ex.target for ex in forget))
    attack_facts = set(facts[0::2])
    attack = [ex for ex in forget if ex.target in attack_facts]
    evaluate = [ex for ex in forget if ex.target not in attack_facts]
    return attack, evaluate


def _plain_copy(model: Any) -> Any:
    """A trainable full-weight copy of ``model``; a peft candidate is merged first."""
    clone = copy.deepcopy(model)
    if hasattr(clone, "merge_and_unload"):
        clone = clone.merge_and_unload()
    for p in clone.parameters():
        p.requires_grad_(True)
    return clone


def _stats(model: Any, tokenizer: Any, items: Sequence[Example], max_length: int
           ) -> tuple[float, float]:
    scores = score_examples(model, tokenizer, items, max_length=max_length)
    n = max(1, len(scores))
    return (sum(s.probability for s in scores) / n,
            sum(1.0 for s in scores if s.extraction_strength >= 1.0) / n)


def _ratio(attacked: float, candidate: float, parent: float) -> float:
    gap = parent - candidate
    if gap <= 1e-6:
        return float("nan")
    return max(0.0, (attacked - candidate) / gap)


def relearn_attack(
    parent: Any | tuple[float, float] | None,
    candidate: Any,
    tokenizer: Any,
    forget: Sequence[Example],
    config: RelearnConfig | None = None,
) -> RelearnResult:
    """Run the attack on a copy of ``candidate`` (left untouched). ``parent`` is the parent
    model, or its precomputed ``(probability, known share)`` on the evaluation half
    (see :func:`split_by_fact`), or ``None`` (then the parent level is taken as 1.0/1.0,
    the level of a trained fact). Needs at least two distinct facts in ``forget``."""
    cfg = config or RelearnConfig()
    started = time.perf_counter()
    attack, evaluate = split_by_fact(forget)
    if not attack or not evaluate:
        raise ValueError("the relearning attack needs at least two distinct forget facts")
    if parent is None:
        p_prob, p_known = 1.0, 1.0
    elif isinstance(parent, tuple):
        p_prob, p_known = parent
    else:
        p_prob, p_known = _stats(parent, tokenizer, evaluate, cfg.max_length)
    c_prob, c_known = _stats(candidate, tokenizer, evaluate, cfg.max_length)

    device = next(candidate.parameters()).device
    clone = _plain_copy(candidate)
    clone.train()
    opt = torch.optim.AdamW([p for p in clone.parameters() if p.requires_grad],
                            lr=cfg.learning_rate, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.steps):
        idx = torch.randperm(len(attack), generator=gen)[: cfg.batch_size].tolist()
        batch = to_device(encode(tokenizer, [attack[i] for i in idx], cfg.max_length), device)
        logp, count = sequence_logprob(clone, batch)
        loss = -(logp.float().sum() / count.clamp(min=1).sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    clone.eval()
    a_prob, a_known = _stats(clone, tokenizer, evaluate, cfg.max_length)
    del clone
    return RelearnResult(
        n_attack=len(attack), n_eval=len(evaluate),
        parent_probability=p_prob, candidate_probability=c_prob, attacked_probability=a_prob,
        parent_known=p_known, candidate_known=c_known, attacked_known=a_known,
        recovery=_ratio(a_prob, c_prob, p_prob),
        known_recovery=_ratio(a_known, c_known, p_known),
        seconds=time.perf_counter() - started, config=cfg.to_dict(),
    )
