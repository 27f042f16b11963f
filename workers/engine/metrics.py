"""Unlearning metrics as defined in ``/work/shared/UNLEARNING.md``, on any Hugging Face
causal LM + tokenizer and a list of :class:`~workers.engine.qa.Example`.

Per item (one teacher-forced forward pass per batch, see :func:`score_examples`):

* ``probability`` exp(−mean answer-token NLL), in [0, 1];
* ``exact_memorisation`` share of answer tokens whose teacher-forced argmax is the label;
* ``extraction_strength`` 1 − k/T, k the shortest answer prefix after which the argmax
  reproduces the whole rest of the answer (teacher forced), T the answer length;
* membership-inference scores, all oriented so that HIGHER = "looks like a member":
  ``loss`` = −NLL, ``zlib`` = −NLL / len(zlib(answer bytes)), ``min_k`` = mean of the
  lowest k·T token log-probs, ``min_k_pp`` = the same on log-probs standardised by the
  vocabulary's mean and std of log-prob at that position (Min-K%++).

Per item from greedy generation (:func:`generation_scores`): ROUGE-L recall of the
generated answer against the target (word tokens, LCS) and ``answer_correct``.

Per set: means of the above (:func:`set_metrics`), ROC AUC of members vs non-members for
each MIA score (:func:`mia_aucs`), the TOFU truth ratio (:func:`truth_ratios`) and a
utility number (:func:`utility`). Answer tokens include the EOS that ``qa.encode``
appends for probability/MIA scores (what the model is trained on) but exclude it for
exact memorisation and extraction strength (those ask "does it say the answer").
"""

from __future__ import annotations

import math
import re
import statistics
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from workers.engine.qa import (
    Example,
    answer_correct,
    by_length,
    greedy_generate,
    pad_id,
    tokenize,
)

MIA_SCORES: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_pp")
DEFAULT_MIN_K = 0.4

_WORD = re.compile(r"\w+", re.UNICODE)


# ---------------------------------------------------------------- pure functions


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+`` runs) used by ROUGE-L."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len·len) DP, one row
    kept)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall = LCS(prediction, reference) / len(reference), on word tokens, in
    [0, 1]. An empty reference scores 0 (nothing to recall)."""
    ref = words(reference)
    if not ref:
        return 0.0
    return lcs_length(words(prediction), ref) / len(ref)


def roc_auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """Rank-based ROC AUC: P(score of a member > score of a non-member), ties count ½
    (Mann-Whitney U / (n₁·n₀)). NaN when either side is empty."""
    if not members or not nonmembers:
        return float("nan")
    pooled = sorted([(s, 1) for s in members] + [(s, 0) for s in nonmembers])
    # average ranks over tie groups (1-based)
    rank_sum = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        avg_rank = (i + j) / 2.0 + 1.0
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 1)
        i = j + 1
    n1, n0 = len(members), len(nonmembers)
    return (rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def extraction_strength(hits: Sequence[bool]) -> float:
    """1 − k/T from the per-token teacher-forced argmax hits of an answer of T tokens: k is
    one past the last miss (the shortest prefix after which every token is reproduced).
    All hits → 1.0, last token missed → 0.0, empty answer → 0.0."""
    t = len(hits)
    if t == 0:
        return 0.0
    k = 0
    for i, h in enumerate(hits):
        if not h:
            k = i + 1
    return 1.0 - k / t


def min_k_mean(values: Sequence[float], k: float = DEFAULT_MIN_K) -> float:
    """Mean of the lowest ``ceil(k·len)`` values (at least one); NaN if empty."""
    if not values:
        return float("nan")
    n = max(1, math.ceil(k * len(values)))
    return sum(sorted(values)[:n]) / n


def zlib_length(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (at least 1)."""
    return max(1, len(zlib.compress(text.encode("utf-8"))))


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of non-negative numbers; 0 if any is 0, NaN if empty or NaN inside."""
    if not values or any(math.isnan(v) for v in values):
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


# ---------------------------------------------------------------- model scores


@dataclass
class ItemScore:
    """Teacher-forced scores of one item. ``nll`` nats/token over answer tokens + EOS,
    ``n_tokens`` that count; ``probability`` = exp(−nll); ``exact_memorisation`` and
    ``extraction_strength`` in [0, 1] over answer tokens without EOS; MIA scores as in the
    module docstring (higher = more member-like)."""

    nll: float
    n_tokens: int
    probability: float
    exact_memorisation: float
    extraction_strength: float
    loss: float
    zlib: float
    min_k: float
    min_k_pp: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def score_examples(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 32,
    max_length: int = 128,
    min_k: float = DEFAULT_MIN_K,
) -> list[ItemScore]:
    """:class:`ItemScore` of every example, in the order given, one forward pass per batch
    (batches of similar length, :func:`qa.by_length`), model in eval mode (restored
    afterwards). Works on plain and peft models, any device."""
    if not examples:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    pad = pad_id(tokenizer)
    def score(indices: list[int], batch: dict[str, torch.Tensor]) -> list[ItemScore]:
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1, :].float()
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        logprobs = torch.log_softmax(logits, dim=-1)
        tok_lp = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        # Min-K%++: standardise by the mean and std of log p under p itself at each position
        probs = logprobs.exp()
        mu = (probs * logprobs).sum(-1)
        var = (probs * logprobs.square()).sum(-1) - mu.square()
        std_lp = (tok_lp - mu) / var.clamp(min=1e-12).sqrt()
        hits = logits.argmax(-1) == labels
        out: list[ItemScore] = []
        for i, j in enumerate(indices):
            m = mask[i]
            lp = tok_lp[i][m].tolist()
            zs = std_lp[i][m].tolist()
            lab = labels[i][m].tolist()
            h = hits[i][m].tolist()
            # drop the trailing EOS for "does it say the answer" scores
            if eos is not None and lab and lab[-1] == eos:
                h = h[:-1]
            nll = -sum(lp) / max(1, len(lp))
            out.append(ItemScore(
                nll=nll,
                n_tokens=len(lp),
                probability=math.exp(-nll),
                exact_memorisation=sum(h) / len(h) if h else 0.0,
                extraction_strength=extraction_strength(h),
                loss=-nll,
                zlib=-nll / zlib_length(examples[j].target),
                min_k=min_k_mean(lp, min_k),
                min_k_pp=min_k_mean(zs, min_k),
            ))
        return out

    rows = [tokenize(tokenizer, ex, max_length) for ex in examples]
    scores = by_length(rows, batch_size, pad, device, score)
    model.train(was_training)
    return scores


@dataclass
class GenerationScore:
    """Greedy answer of one item: its text, ROUGE-L recall vs the target in [0, 1], and
    whether it is ``qa.answer_correct``."""

    generated: str
    rouge_l: float
    correct: bool


def generation_scores(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    slack_tokens: int = 4,
) -> list[GenerationScore]:
    """Greedy generation from each prompt, scored against its target. ``max_new_tokens``
    defaults to the longest target's token count + ``slack_tokens`` (enough to say the
    answer and show that it ends), which keeps generation cheap on short answers."""
    if not examples:
        return []
    if max_new_tokens is None:
        longest = max(len(tokenizer(ex.target, add_special_tokens=False)["input_ids"])
                      for ex in examples)
        max_new_tokens = longest + slack_tokens
    gens = greedy_generate(model, tokenizer, [ex.prompt for ex in examples],
                           max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [GenerationScore(g, rouge_l_recall(g, ex.target), answer_correct(g, ex.target))
            for g, ex in zip(gens, examples, strict=True)]


def aggregate(items: Sequence[ItemScore], gens: Sequence[GenerationScore] | None) -> dict[str, Any]:
    """Set-level means: ``n``, ``probability``, ``exact_memorisation``,
    ``extraction_strength``, the MIA scores, and (with generations) ``accuracy`` and
    ``rouge_l``. Empty set → NaNs (plain floats, JSON-safe via :func:`json_safe`)."""
    res: dict[str, Any] = {"n": len(items)}
    for key in ("probability", "exact_memorisation", "extraction_strength", *MIA_SCORES):
        res[key] = _mean([getattr(s, key) for s in items])
    if gens is not None:
        res["accuracy"] = _mean([1.0 if g.correct else 0.0 for g in gens])
        res["rouge_l"] = _mean([g.rouge_l for g in gens])
    return res


def set_metrics(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 32,
    max_length: int = 128,
    generate: bool = True,
) -> tuple[dict[str, Any], list[ItemScore]]:
    """Set-level metrics (see :func:`aggregate`) and the per-item scores (for AUCs)."""
    items = score_examples(model, tokenizer, examples, batch_size, max_length)
    gens = generation_scores(model, tokenizer, examples, batch_size) if generate else None
    return aggregate(items, gens), items


def mia_aucs(members: Sequence[ItemScore], nonmembers: Sequence[ItemScore]) -> dict[str, float]:
    """ROC AUC per MIA score of members (forget set) vs non-members (holdout): ≈ 0.5 when
    the forget set is indistinguishable from never-seen text; ≫ 0.5 still memorised,
    ≪ 0.5 over-unlearned."""
    return {key: roc_auc([getattr(s, key) for s in members], [getattr(s, key) for s in nonmembers])
            for key in MIA_SCORES}


@torch.no_grad()
def truth_ratios(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    paraphrased_answers: Sequence[str],
    perturbed_answers: Sequence[Sequence[str]],
    batch_size: int = 32,
    max_length: int = 128,
) -> list[float]:
    """TOFU truth ratio per item: R = P_pert / P_para with length-normalised probabilities
    (exp(−mean NLL)); P_pert the geometric mean over the item's perturbed answers."""
    para = score_examples(model, tokenizer,
                          [Example(p, a) for p, a in zip(prompts, paraphrased_answers,
                                                         strict=True)],
                          batch_size, max_length)
    flat = [Example(p, a) for p, alts in zip(prompts, perturbed_answers, strict=True)
            for a in alts]
    pert = score_examples(model, tokenizer, flat, batch_size, max_length)
    out: list[float] = []
    pos = 0
    for i, alts in enumerate(perturbed_answers):
        if not alts:
            out.append(float("nan"))
            continue
        # geometric mean of length-normalised probs = exp(−mean of NLLs)
        mean_nll = sum(s.nll for s in pert[pos : pos + len(alts)]) / len(alts)
        pos += len(alts)
        out.append(math.exp(-mean_nll + para[i].nll))
    return out


def truth_ratio_forget(ratios: Sequence[float]) -> float:
    """Forget-set aggregate: mean(min(R, 1/R)); 1 = cannot tell the true answer apart."""
    vals = [min(r, 1.0 / r) for r in ratios if r > 0 and not math.isnan(r)]
    return _mean(vals)


def truth_ratio_other(ratios: Sequence[float]) -> float:
    """Retain/other-set aggregate: mean(max(0, 1 − R)); 1 = true answer clearly preferred."""
    return _mean([max(0.0, 1.0 - r) for r in ratios if not math.isnan(r)])


def utility(set_values: dict[str, Any]) -> float:
    """Utility of one set (model-utility style): harmonic mean of its ``probability``,
    ``rouge_l`` and, when present, ``truth_ratio``, in [0, 1]."""
    parts = [set_values["probability"], set_values.get("rouge_l", float("nan"))]
    if set_values.get("truth_ratio") is not None:
        parts.append(set_values["truth_ratio"])
    return harmonic_mean([float(p) for p in parts])


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by ``None`` (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
