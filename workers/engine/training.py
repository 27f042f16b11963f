"""The one training loop every unlearning method runs through.

:func:`run_unlearning` wraps the model with a LoRA adapter built from the method's config,
caches the reference quantities the method declared (``Method.needs``) once with the
adapter disabled, then iterates forget batches (seeded reshuffle per pass) with retain
batches (cycled, part of each replaying the most damaged facts when the config asks),
AdamW and gradient clipping, calling the method's loss each step, and stops early once
the forget items are down to the never-seen level when the config asks. The
adapter is saved with safetensors so ``versions.load_version(base, [..., adapter_dir])``
rebuilds the candidate; the result is :class:`workers.engine.unlearn.UnlearnResult`.

Device: whatever the model is on. On CUDA the forward passes run under bf16 autocast and
``gradient_checkpointing`` is honoured; nothing touches CUDA at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from workers.engine.baselines import (
    alternatives,
    counterfactuals,
    held_answers,
    stranger_level,
)
from workers.engine.methods import (
    BaseMethodConfig,
    Method,
    ReferenceCache,
    StepInputs,
    get_method,
    parse_method_config,
    run_forward,
)
from workers.engine.methods.builtin import retain_nll
from workers.engine.metrics import roc_auc
from workers.engine.qa import (
    Example,
    TokenRow,
    by_length,
    collate,
    frozen_prefix,
    pad_id,
    paraphrased,
    to_device,
    tokenize,
)
from workers.engine.unlearn import (
    ADAPTER_WEIGHTS,
    Cancelled,
    ItemScores,
    ProgressCallback,
    RetainSampler,
    UnlearnResult,
    cycle_indices,
    forget_items,
    score_items,
)
from workers.engine.versions import sha256_file

log = logging.getLogger(__name__)

_REF_BATCH = 32  # items per no-grad reference forward pass
# early stopping's target without a holdout set: a stranger's answers score about this
# on the demo models (mostly generic tokens), a remembered fact 0.9+
FALLBACK_STOP_PROBABILITY = 0.15
# never-seen people asked the same question, per forget item, for its stop target
STOP_NEIGHBOURS = 4


def forget_batch_size(cfg: BaseMethodConfig, n_items: int) -> int:
    """Forget items per step: ``batch_size``, grown to ``ceil(n_items /
    forget_steps_per_pass)`` when that is set, capped at ``max_batch_size``. A batch of
    many people then costs a few larger steps per pass instead of many small ones, and
    the retain batch (the same size whatever the batch) is paid once per step: the cost
    per erased person falls as the batch grows."""
    size = cfg.batch_size
    if cfg.forget_steps_per_pass:
        size = max(size, math.ceil(n_items / cfg.forget_steps_per_pass))
    return max(1, min(size, cfg.max_batch_size))


def stop_targets(cfg: BaseMethodConfig, model: Any, tokenizer: Any, items: Sequence[Example],
                 holdout: Sequence[Example] | None) -> torch.Tensor | None:
    """Early stopping's per-item answer-probability targets for the trained forget
    ``items`` (``None``: no early stopping): ``stop_probability`` when set; else each
    item's stranger level among the never-seen people of ``holdout``
    (:func:`workers.engine.baselines.stranger_level`), measured before training; else
    :data:`FALLBACK_STOP_PROBABILITY`. Times ``stop_ratio``."""
    if not cfg.early_stop:
        return None
    if cfg.stop_probability is not None:
        level = torch.full((len(items),), cfg.stop_probability)
    elif not holdout:
        level = torch.full((len(items),), FALLBACK_STOP_PROBABILITY)
    else:
        level = stranger_level(model, tokenizer, items, holdout, STOP_NEIGHBOURS,
                               cfg.max_length)
    return cfg.stop_ratio * level


@contextlib.contextmanager
def _timed(spent: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the ``with`` block takes to ``spent[key]``."""
    began = time.perf_counter()
    try:
        yield
    finally:
        spent[key] = spent.get(key, 0.0) + time.perf_counter() - began


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


_FORGET_QUANTITIES = frozenset({"forget_logp", "forget_logits", "forget_token_logp"})


def checkpoint_activations(model: Any, **kwargs: Any) -> None:
    """Turn on activation (gradient) checkpointing of ``model``'s decoder layers, with
    ``kwargs`` for ``torch.utils.checkpoint``: through ``activation_checkpointing_enable``
    where transformers has it (5.x; the older name is deprecated there and goes in v6),
    else ``gradient_checkpointing_enable``."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs or None)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)


def _forget_reference(
    method: Method, model: Any, batch: dict[str, torch.Tensor], device: torch.device,
) -> list[tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]]:
    """The forget quantities ``method`` needs of one encoded batch, in one forward pass of
    ``model`` as it is (the caller sets eval mode and the reference), per row (``None``
    where not needed): the summed answer log-likelihood, the logits at the answer
    positions (kept in the model's dtype on its device) and the answer-token
    log-probabilities (float32)."""
    with _autocast(device):
        fw = run_forward(model, batch)
    logp = fw.seq_logp.float() if "forget_logp" in method.needs else None
    rows = fw.mask.shape[0]
    logits = (fw.logits.detach().split(fw.mask.sum(-1).tolist())
              if "forget_logits" in method.needs else [None] * rows)
    tokens = "forget_token_logp" in method.needs
    return [(None if logp is None else logp[row], logits[row],
             fw.logp[row][fw.mask[row]].detach().float() if tokens else None)
            for row in range(rows)]


def without_eos(row: TokenRow, eos: int | None) -> TokenRow:
    """``row`` without the end-of-sequence token that ends its target (kept when the
    target is nothing else)."""
    prompt, target = row
    if eos is not None and len(target) > 1 and target[-1] == eos:
        return prompt, target[:-1]
    return row


@torch.no_grad()
def _reference_cache(
    method: Method, model: Any, rows: Sequence[TokenRow], alt_rows: Sequence[TokenRow] | None,
    pad: int, device: torch.device,
) -> ReferenceCache:
    """Reference quantities for the forget items (tokenised ``rows``), no-grad passes of
    the model as given."""
    cache = ReferenceCache()
    if not method.needs:
        return cache
    was_training = model.training
    model.eval()
    # batches of similar length (qa.by_length), the results in item order
    if _FORGET_QUANTITIES & method.needs:
        done = by_length(rows, _REF_BATCH, pad, device,
                         lambda _, batch: _forget_reference(method, model, batch, device))
        logps, logits, tokens = zip(*done, strict=True)
        if "forget_logp" in method.needs:
            cache.forget_logp = torch.stack([t for t in logps if t is not None])
        if "forget_logits" in method.needs:
            cache.forget_logits = [t for t in logits if t is not None]
        if "forget_token_logp" in method.needs:
            cache.forget_token_logp = [t for t in tokens if t is not None]
    if "alt_logp" in method.needs:
        assert alt_rows is not None

        def alt(_: list[int], batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
            with _autocast(device):
                return list(run_forward(model, batch).seq_logp.float())

        cache.alt_logp = torch.stack(by_length(alt_rows, _REF_BATCH, pad, device, alt))
    model.train(was_training)
    return cache


def noise_vocabulary(tokenizer: Any) -> torch.Tensor:
    """Token ids context noise draws from: the whole vocabulary but special tokens."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


def noise_context(batch: dict[str, torch.Tensor], share: float, vocabulary: torch.Tensor,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``batch`` with about ``share`` of its answer *input* tokens replaced by tokens drawn
    uniformly from ``vocabulary``; prompts, padding and ``labels`` are left as they are, so
    every answer token is still the target, predicted from a context with holes in it.
    (The first answer token is predicted from the prompt alone and is never affected.)"""
    ids = batch["input_ids"]
    answer = batch["labels"] != -100
    hit = (torch.rand(ids.shape, generator=generator) < share).to(ids.device) & answer
    drawn = vocabulary[torch.randint(len(vocabulary), ids.shape, generator=generator)]
    return {**batch, "input_ids": torch.where(hit, drawn.to(ids.device), ids)}


@torch.no_grad()
def _batch_reference(method: Method, peft_model: Any, batch: dict[str, torch.Tensor],
                     index: Sequence[int], cache: ReferenceCache,
                     device: torch.device) -> ReferenceCache:
    """``cache`` with the forget quantities of the rows ``index`` recomputed for ``batch``
    (a noised forget batch) by the reference: the adapter disabled, eval mode."""
    if not _FORGET_QUANTITIES & method.needs:
        return cache
    was_training = peft_model.training
    peft_model.eval()
    with peft_model.disable_adapter():
        fresh = _forget_reference(method, peft_model, batch, device)
    peft_model.train(was_training)
    step = dataclasses.replace(cache)
    if cache.forget_logp is not None:
        step.forget_logp = cache.forget_logp.clone()
    if cache.forget_logits is not None:
        step.forget_logits = list(cache.forget_logits)
    if cache.forget_token_logp is not None:
        step.forget_token_logp = list(cache.forget_token_logp)
    for i, (logp, logits, tokens) in zip(index, fresh, strict=True):
        if step.forget_logp is not None and logp is not None:
            step.forget_logp[i] = logp.to(step.forget_logp.device)
        if step.forget_logits is not None and logits is not None:
            step.forget_logits[i] = logits
        if step.forget_token_logp is not None and tokens is not None:
            step.forget_token_logp[i] = tokens
    return step


def _scale_lora(peft_model: Any, factor: float) -> None:
    """lora_B ← factor·lora_B in every LoRA layer: the adapter then adds factor·ΔW
    (negative: task-vector negation)."""
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(factor)


CALIBRATION_STEPS = 7  # bisection steps: the strength is found to within 1/128
RETAIN_PROBE_ITEMS = 64  # retain items the membership rule watches for damage


@dataclasses.dataclass
class ProbeReading:
    """One reading of :class:`MembershipProbe`: the membership ``auc``; ``held``, per
    forget item, whether its answer is still held; whether the rule's test passed;
    ``pending``, per forget item, whether training should still act on it while answers
    are held: held, or its answer probability above the same answer's asked about
    strangers (its own level; the bars' margins are slack for the means, not a target).
    ``held`` and ``pending`` are ``None`` while the AUC is above the rule's bar, when they
    are not measured. ``preferred`` (``stop_score`` "both"): the Min-K% AUC is at its bar
    and the preference AUC above its own; ``auc`` is then the preference AUC."""

    auc: float
    held: torch.Tensor | None
    forgotten: bool
    pending: torch.Tensor | None
    preferred: bool = False


class MembershipProbe:
    """The membership stopping rule's measurements (see ``stop_rule`` in
    :class:`~workers.engine.methods.BaseMethodConfig`): the Min-K% membership AUC of the
    forget items against the never-seen people, and the retain items' mean answer
    probability relative to its level under the parent (measured here, so construct it
    before the adapter is added)."""

    def __init__(self, model: Any, tokenizer: Any, forget: Sequence[Example],
                 forget_rows: Sequence[TokenRow], holdout: Sequence[Example],
                 retain: Sequence[Example], max_length: int,
                 paraphrase: Sequence[bool] | None = None, score: str = "min_k") -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.forget_rows = list(forget_rows)
        self.holdout_rows = [tokenize(tokenizer, ex, max_length) for ex in holdout]
        # the preference score's other answers: for each forget item and each never-seen
        # person's item, the answers others give to the same kind of question
        self.score = score
        self.forget_alt_rows: list[TokenRow] = []
        self.holdout_alt_rows: list[TokenRow] = []
        if score in ("preference", "either", "both"):
            self.forget_alt_rows = [tokenize(tokenizer, ex, max_length) for ex in
                                    alternatives(forget, holdout, STOP_NEIGHBOURS)]
            self.holdout_alt_rows = [tokenize(tokenizer, ex, max_length) for ex in
                                     alternatives(holdout, holdout, STOP_NEIGHBOURS, True)]
            if not self.holdout_alt_rows:
                raise ValueError("the preference score needs at least two never-seen "
                                 "people's items")
        # the never-seen people's Min-K% scores under the parent, for the debug log: the
        # unlearning moves the strangers' own scores too (docs/benchmarks.md)
        self.parent_holdout_min_k: list[float] | None = None
        if log.isEnabledFor(logging.DEBUG):
            parent = self._score(model, self.holdout_rows, True).min_k
            assert parent is not None
            self.parent_holdout_min_k = parent.tolist()
        cf = counterfactuals(forget, holdout, STOP_NEIGHBOURS)
        # the same answer asked about the same stranger recurs across items (shared
        # answers, shared neighbours: 314 distinct rows of 800 in a ten-person batch of
        # the small demo model), and every check scores them: each distinct row once
        distinct: dict[tuple[str, str], Example] = {}
        for ex in cf:
            distinct.setdefault((ex.prompt, ex.target), ex)
        position = {key: i for i, key in enumerate(distinct)}
        self.counterfactual_rows = [tokenize(tokenizer, ex, max_length)
                                    for ex in distinct.values()]
        self.counterfactual_of = torch.tensor([position[(ex.prompt, ex.target)] for ex in cf],
                                              dtype=torch.long)
        # the erased items and their paraphrases are each held to the bars on their own,
        # as the verifier holds them (a mean over both can hide one); the paraphrases'
        # baseline is the verifier's: every paraphrased question of the originals'
        # never-seen neighbours, with the same answers, pooled
        flags = list(paraphrase or [False] * len(forget))
        para = [i for i, p in enumerate(flags) if p]
        originals = [i for i, p in enumerate(flags) if not p]
        self.originals, self.paraphrase_items = originals, para
        # the paraphrases' pooled baseline (mean probability, share reproduced) as last
        # measured, see read()
        self.paraphrase_level: tuple[float, float] | None = None
        self.paraphrase_counterfactual_rows = (
            [tokenize(tokenizer, ex, max_length) for ex in paraphrased(
                [c for i in originals
                 for c in cf[i * STOP_NEIGHBOURS:(i + 1) * STOP_NEIGHBOURS]])]
            if para else [])
        step = max(1, math.ceil(len(retain) / RETAIN_PROBE_ITEMS))
        self.retain_rows = [tokenize(tokenizer, ex, max_length) for ex in retain[::step]]
        self.retain_level = (self._score(model, self.retain_rows).mean_probability
                             if self.retain_rows else None)

    def _score(self, model: Any, rows: Sequence[TokenRow], min_k: bool = False) -> ItemScores:
        return score_items(model, self.tokenizer, [], self.max_length, rows=rows, min_k=min_k)

    def aucs(self, model: Any, forget: ItemScores | None = None,
             cfg: BaseMethodConfig | None = None) -> dict[str, float]:
        """ROC AUC of each membership score the probe's ``score`` reads, forget items
        (members) against the never-seen people: "min_k", the Min-K% score;
        "preference", an answer's mean log-likelihood minus the mean of the other
        answers' (:func:`~workers.engine.baselines.alternatives`) to the same question;
        "either": both; "both": the Min-K% AUC, and the preference AUC only once the
        Min-K% one is at its bar under ``cfg`` (always without ``cfg``). ``forget``: the
        forget items' scores under ``model`` when already measured."""
        forget = forget if forget is not None else self._score(model, self.forget_rows, True)
        holdout = self._score(model, self.holdout_rows, True)
        assert forget.min_k is not None and holdout.min_k is not None
        out = {}
        min_k_auc = roc_auc(forget.min_k.tolist(), holdout.min_k.tolist())
        if self.score in ("min_k", "either", "both"):
            out["min_k"] = min_k_auc
        if self.score in ("preference", "either") or (
                self.score == "both"
                and (cfg is None or min_k_auc <= self.auc_bar(cfg, "min_k"))):
            out["preference"] = roc_auc(
                self._preference(model, forget, self.forget_alt_rows).tolist(),
                self._preference(model, holdout, self.holdout_alt_rows).tolist())
        parent = self.parent_holdout_min_k
        if parent is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("membership probe: preference AUC %s, Min-K%% AUC %.3f (%.3f against "
                      "the parent's scores of the strangers); mean Min-K%% forget %.2f, "
                      "strangers %.2f (parent %.2f)",
                      f"{out['preference']:.3f}" if "preference" in out else "-", min_k_auc,
                      roc_auc(forget.min_k.tolist(), parent), float(forget.min_k.mean()),
                      float(holdout.min_k.mean()), sum(parent) / len(parent))
        return out

    def auc_bar(self, cfg: BaseMethodConfig, score: str) -> float:
        """The AUC the rule asks of ``score``: ``cfg.stop_auc``; for the preference
        score plus ``cfg.stop_auc_sigmas`` standard errors of the AUC of two samples of
        these sizes from one population (Mann-Whitney: √((n₁ + n₀ + 1) / (12 n₁ n₀)))."""
        if score != "preference":
            return cfg.stop_auc
        n1, n0 = len(self.forget_rows), len(self.holdout_rows)
        return cfg.stop_auc + cfg.stop_auc_sigmas * math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))

    def _preference(self, model: Any, own: ItemScores, alt_rows: Sequence[TokenRow]
                    ) -> torch.Tensor:
        """Per item, its answer's mean log-likelihood (nats/token) minus the mean over
        its other answers (``alt_rows``, :data:`STOP_NEIGHBOURS` per item)."""
        alt = self._score(model, alt_rows)
        alt_mean = (alt.logp / alt.count.clamp(min=1)).view(len(own.logp), -1).mean(-1)
        return own.logp / own.count.clamp(min=1) - alt_mean

    def forgotten(self, model: Any, cfg: BaseMethodConfig) -> bool:
        """Whether the rule's forgetting test passes (:meth:`read`)."""
        return self.read(model, cfg).forgotten

    def read(self, model: Any, cfg: BaseMethodConfig) -> ProbeReading:
        """The rule's forgetting test: membership AUC at most ``cfg.stop_auc``; the
        forget items' mean answer probability and share of answers reproduced at most
        ``cfg.stop_margin`` / ``cfg.stop_accuracy_margin`` above the same answers' asked
        about never-seen people (the verifier's counterfactual bars, on this model; the
        erased items and their paraphrases each on their own); and
        at most ``cfg.stop_held_share`` of the answers still held
        (:func:`~workers.engine.baselines.held_answers`: a mean can hide a few facts the
        model still gives word for word). The forget
        items are scored once for all of them; the counterfactuals only once the AUC
        is down, and the paraphrases' pooled baseline only when it can decide the test
        (the rest passes; until then its last level chooses the ``pending`` items)."""
        forget = self._score(model, self.forget_rows, min_k=True)
        aucs = self.aucs(model, forget, cfg)
        passing = [name for name, value in aucs.items() if value <= self.auc_bar(cfg, name)]
        if self.score == "both":
            # Min-K% first, then the preference; the reading's AUC: the first that fails
            failing = [name for name in aucs if name not in passing]
            if failing:
                return ProbeReading(aucs[failing[0]], None, False, None,
                                    preferred=failing[0] == "preference")
        elif not passing:  # the reading's AUC: the first score that passes, else the lowest
            return ProbeReading(min(aucs.values()), None, False, None)
        auc = aucs[passing[0]]
        cf = _gather(self._score(model, self.counterfactual_rows), self.counterfactual_of)
        held = held_answers(forget.known, cf.known)
        n = len(self.forget_rows)
        prob, known = forget.item_probability, forget.known.float()
        cf_prob = cf.item_probability.view(n, -1).mean(-1)
        cf_known = cf.known.float().view(n, -1).mean(-1)

        def within(group: list[int]) -> bool:
            return not group or (
                float(prob[group].mean()) <= float(cf_prob[group].mean()) + cfg.stop_margin
                and float(known[group].mean())
                <= float(cf_known[group].mean()) + cfg.stop_accuracy_margin)

        forgotten = (float(held.float().mean()) <= cfg.stop_held_share
                     and within(self.originals))
        if self.paraphrase_items and self.paraphrase_counterfactual_rows:
            # the largest set scored (942 rows in a ten-person batch of the small demo
            # model, over a third of that job's time when scored at every check)
            if forgotten or self.paraphrase_level is None:
                pcf = self._score(model, self.paraphrase_counterfactual_rows)
                self.paraphrase_level = (pcf.mean_probability,
                                         float(pcf.known.float().mean()))
            cf_prob[self.paraphrase_items] = self.paraphrase_level[0]
            cf_known[self.paraphrase_items] = self.paraphrase_level[1]
            forgotten = forgotten and within(self.paraphrase_items)
        pending = held | (prob > cf_prob)
        log.debug("membership probe: held %.3f, probability %.3g vs strangers' %.3g, "
                  "reproduced %.3f vs %.3f; forgotten %s", float(held.float().mean()),
                  float(prob.mean()), float(cf_prob.mean()), float(known.mean()),
                  float(cf_known.mean()), forgotten)
        return ProbeReading(auc, held, forgotten, pending)

    def retain_kept(self, model: Any, ratio: float) -> bool:
        """Whether the retain items' mean answer probability is at least ``ratio`` × its
        level under the parent (True when there is no retain set to watch)."""
        if self.retain_level is None:
            return True
        return self._score(model, self.retain_rows).mean_probability >= ratio * self.retain_level


def _gather(scores: ItemScores, index: torch.Tensor) -> ItemScores:
    """``scores`` of distinct rows, laid out as the rows ``index`` names."""
    return ItemScores(scores.logp[index], scores.count[index], scores.known[index],
                      None if scores.min_k is None else scores.min_k[index])


def _calibrate(peft_model: Any, holds: Callable[[], bool]) -> float:
    """Scale the trained adapter back to the least strength (a factor in (0, 1]) at which
    the stopping rule still ``holds()``, and return that factor (1 when it never does).

    Training moves all of a person's answers together, so by the time the last one is
    at a stranger's level the others are far below it — an erased person who is *less*
    likely than a stranger stands out (membership inference sees it), and the extra
    strength costs other people's facts. The adapter's effect is ΔW = B·A, so scaling B
    interpolates between the parent (0) and the trained candidate (1); a bisection on
    the rule finds the point where forgetting is just complete, to within
    2^-:data:`CALIBRATION_STEPS`.

    The first reading is at the strength just below full (1 − 2^-CALIBRATION_STEPS, the
    bisection's last point before 1): training stops at the first check where the rule
    holds, often at its very edge, and then no weaker adapter holds. One reading then
    settles it, where the bisection would take every one of its readings to return 1
    (TOFU forget05 at full size: one answer of 200 still held at every strength below
    full, 40 s of a 237 s run). When it holds, the bisection runs as it would have, without
    reading that point again."""
    edge = 1.0 - 2.0**-CALIBRATION_STEPS
    _scale_lora(peft_model, edge)
    if not holds():
        _scale_lora(peft_model, 1.0 / edge)
        return 1.0
    low, high, current = 0.0, 1.0, edge
    for _ in range(CALIBRATION_STEPS):
        mid = (low + high) / 2
        if mid == edge:  # the bisection's last point, read first: it holds
            high = mid
            continue
        _scale_lora(peft_model, mid / current)
        current = mid
        if holds():
            high = mid
        else:
            low = mid
    _scale_lora(peft_model, high / current)
    return high


def run_unlearning(
    model: Any,
    tokenizer: Any,
    forget: Sequence[Example],
    retain: Sequence[Example],
    config: BaseMethodConfig | dict[str, Any],
    out_dir: str | Path,
    on_progress: ProgressCallback | None = None,
    holdout: Sequence[Example] | None = None,
) -> UnlearnResult:
    """Train a LoRA adapter with the method of ``config`` (a config or a dict with
    ``method``) so that ``model`` forgets ``forget`` and keeps ``retain``. ``holdout``
    (people the model never saw) sets early stopping's never-seen level, see
    :class:`~workers.engine.methods.BaseMethodConfig`.

    ``model`` (a plain model, e.g. from ``load_version``) is the reference and is
    modified in place (LoRA layers injected; ``result.model`` wraps it, adapter active,
    eval mode). ``on_progress(step, total_steps, loss)`` is called after every optimiser
    step; returning ``False`` removes the LoRA layers again and raises
    :class:`~workers.engine.unlearn.Cancelled`. ``seconds`` in the result is wall-clock
    time of the whole call. Deterministic given ``config.seed`` on the same hardware.
    """
    cfg = parse_method_config(config) if isinstance(config, dict) else config
    method = get_method(cfg)
    if not forget:
        raise ValueError("nothing to forget")
    n_layers = getattr(model.config, "num_hidden_layers", None)
    layers = method.adapter_layers(n_layers) if n_layers else None
    # with LoRA on the upper layers only, the states below them never change
    with frozen_prefix(model, min(layers) if layers else 0,
                       cfg.frozen_prefix_mib * 2**20) as prefix:
        result = _run_unlearning(model, tokenizer, forget, retain, cfg, method, layers,
                                 out_dir, on_progress, holdout)
        if prefix is not None:
            log.debug("frozen layers below layer %d: %d rows replayed, %d computed, "
                      "%.1f MiB kept", prefix.layer, prefix.replayed, prefix.computed,
                      prefix.bytes / 2**20)
        return result


def _run_unlearning(
    model: Any,
    tokenizer: Any,
    forget: Sequence[Example],
    retain: Sequence[Example],
    cfg: BaseMethodConfig,
    method: Method,
    layers: list[int] | None,
    out_dir: str | Path,
    on_progress: ProgressCallback | None,
    holdout: Sequence[Example] | None,
) -> UnlearnResult:
    from peft import LoraConfig, get_peft_model

    started = time.perf_counter()
    # where the call's seconds go (UnlearnResult.timings)
    spent = dict.fromkeys(("setup", "training", "checks", "calibration", "finish"), 0.0)
    device = next(model.parameters()).device
    items = forget_items(forget, cfg.include_paraphrases)
    alts = None
    if "alt_logp" in method.needs:
        alts = [dataclasses.replace(ex, target=answer)
                for ex, answer in zip(items, method.alternative_answers(items, retain),
                                      strict=True)]
    use_retain = method.uses_retain and cfg.retain_weight > 0
    if use_retain and not retain:
        raise ValueError(f"{method.name} with retain_weight > 0 needs a retain set")
    retain_list = list(retain) if use_retain else []

    # tokenised once: the reference pass, then every pass of training draws the same rows
    # again (~90 passes by default) and the stop checks score them
    pad = pad_id(tokenizer)
    item_rows = [tokenize(tokenizer, ex, cfg.max_length) for ex in items]
    alt_rows = ([tokenize(tokenizer, ex, cfg.max_length) for ex in alts]
                if alts is not None else None)
    # the forget loss acts on the answer's own tokens: pushing down the end-of-sequence
    # token after it lowers the answer's per-token score while the answer itself stays
    # the argmax (the model then says it and runs on); scoring keeps the EOS, as the
    # verifier does
    loss_rows = [without_eos(row, tokenizer.eos_token_id) for row in item_rows]
    cache = _reference_cache(method, model, loss_rows, alt_rows, pad, device)
    probe = None
    if cfg.early_stop and cfg.stop_rule == "membership" and holdout:
        originals = {(ex.prompt, ex.target) for ex in forget}
        probe = MembershipProbe(model, tokenizer, items, item_rows, holdout,
                                retain_list, cfg.max_length,
                                paraphrase=[(ex.prompt, ex.target) not in originals
                                            for ex in items],
                                score=cfg.stop_score)
    targets = None if probe is not None else stop_targets(cfg, model, tokenizer, items,
                                                          holdout)

    torch.manual_seed(cfg.seed)  # LoRA A's initialisation draws from the global RNG
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # typed int; used as alpha / r
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if cfg.gradient_checkpointing and device.type == "cuda":
        checkpoint_activations(model)
        model.enable_input_require_grads()  # frozen embeddings: let grads reach LoRA
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)

    forget_bs = forget_batch_size(cfg, len(items))
    steps_per_epoch = math.ceil(len(items) / forget_bs)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    check_every = cfg.stop_check_every or steps_per_epoch
    # membership rule: while the AUC has not moved below its first reading, each check
    # doubles the interval to the next, up to stop_check_backoff intervals
    interval, next_check = check_every, check_every
    first_auc: float | None = None
    backing_off = cfg.stop_check_backoff > 1
    gen = torch.Generator().manual_seed(cfg.seed)
    all_items = list(range(len(items)))
    pool = all_items  # the forget items trained on
    forget_order = cycle_indices(len(pool), gen)
    sampler = (RetainSampler(len(retain_list), cfg.retain_batch_size or cfg.batch_size,
                             cfg.retain_hard_share, cfg.retain_hard_nll, gen)
               if retain_list else None)

    def reference() -> contextlib.AbstractContextManager[Any]:
        return peft_model.disable_adapter()

    retain_rows: dict[int, TokenRow] = {}  # retain items as first drawn (may be many)
    vocabulary = noise_vocabulary(tokenizer) if cfg.context_noise > 0 else None

    def retain_row(i: int) -> TokenRow:
        if i not in retain_rows:
            retain_rows[i] = tokenize(tokenizer, retain_list[i], cfg.max_length)
        return retain_rows[i]

    history: list[float] = []
    loss_value = float("nan")
    step = 0
    stopped_early = False
    repairing = False  # membership rule: the forget term is off until the retain set is back
    settle_end: int | None = None  # membership rule met: the step settling runs to
    scores = None
    held: torch.Tensor | None = None
    preferred = False  # stop_score "both": Min-K% at its bar, the answers still preferred
    preferred_from: int | None = None  # the first step such a reading came at
    stop_checks = 0  # readings of the stopping rule during training

    def measured(measure: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``measure(*args, **kwargs)``, its seconds counted as a stop check's."""
        with _timed(spent, "checks"):
            return measure(*args, **kwargs)

    spent["setup"] = time.perf_counter() - started
    try:
        peft_model.train()
        loop_began = time.perf_counter()
        while step < total:
            step += 1
            idx = [pool[next(forget_order)] for _ in range(min(forget_bs, len(pool)))]
            fbatch = to_device(collate([loss_rows[i] for i in idx], pad), device)
            ref = cache
            if vocabulary is not None:
                fbatch = noise_context(fbatch, cfg.context_noise, vocabulary, gen)
                ref = _batch_reference(method, peft_model, fbatch, idx, cache, device)
            abatch = (to_device(collate([alt_rows[i] for i in idx], pad), device)
                      if alt_rows is not None else None)
            rbatch, ridx = None, []
            if sampler is not None:
                ridx = sampler.draw()
                rbatch = to_device(collate([retain_row(i) for i in ridx], pad), device)
            inputs = StepInputs(model=peft_model, forget=fbatch, forget_index=idx,
                                retain=rbatch, alt=abatch, ref=ref, step=step,
                                total_steps=total, reference=reference,
                                forget_held=None if held is None else held[idx],
                                forget_preferred=preferred)
            with _autocast(device):
                loss = retain_nll(inputs) if repairing else method.loss(inputs)
            if sampler is not None and inputs.retain_row_nll is not None:
                sampler.update(ridx, inputs.retain_row_nll)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimiser.step()
            loss_value = float(loss.detach())
            history.append(loss_value)
            if on_progress is not None and on_progress(step, total, loss_value) is False:
                raise Cancelled(step, total)
            check = step == next_check and step < total
            # membership rule: forgotten once a membership attack cannot tell these
            # people from strangers; damage done on the way is repaired before stopping,
            # and if the repair brought some of them back, forgetting resumes
            if probe is not None and check:
                reading = measured(probe.read, peft_model, cfg)
                stop_checks += 1
                log.debug("step %d of %d: membership AUC %.3f, forgotten %s", step, total,
                          reading.auc, reading.forgotten)
                if backing_off:
                    # a reading with the AUC above the bar measures nothing else, so one
                    # skipped changes neither the pool nor any decision
                    first_auc = reading.auc if first_auc is None else first_auc
                    if (reading.held is None and not reading.forgotten
                            and reading.auc >= first_auc):
                        interval = min(2 * interval, cfg.stop_check_backoff * check_every)
                    else:
                        backing_off, interval = False, check_every
                # once membership can no longer tell, while answers are still held,
                # training goes on with the pending items alone (the held answers and
                # those still above a stranger's level): the rest are at a stranger's
                # level, and pushing them further makes them stand out and costs other
                # people's facts (a ten-person batch of the small demo model stopped
                # after 248 steps this way, against 348 with the held answers alone;
                # docs/benchmarks.md). With none held, every item is trained again
                held, pending = reading.held, reading.pending
                preferred = reading.preferred
                if preferred and preferred_from is None:
                    preferred_from = step
                now_pool = (pending.nonzero().flatten().tolist()
                            if held is not None and pending is not None and bool(held.any())
                            else all_items)
                if now_pool != pool:
                    pool, forget_order = now_pool, cycle_indices(len(now_pool), gen)
                done = False
                if repairing:
                    if measured(probe.retain_kept, peft_model, cfg.repair_ratio):
                        done = reading.forgotten
                        repairing = False
                elif reading.forgotten:
                    done = measured(probe.retain_kept, peft_model, cfg.repair_ratio)
                    repairing = not done
                if done and settle_end is None and cfg.settle_passes:
                    # met: train on past the transition the rule stops in (see
                    # ``settle_passes``), then stop at the first check that meets it again
                    settle_end = step + cfg.settle_passes * steps_per_epoch
                    log.debug("step %d: rule met, settling until step %d", step, settle_end)
                elif done and (settle_end is None or step >= settle_end):
                    stopped_early = True
                    break
            if check:
                next_check = step + interval
            if targets is not None and check:
                # an item is forgotten once its answer is no more likely than the same
                # answer about a stranger; more steps would only make it stand out and
                # cost other people's facts
                scores = measured(score_items, peft_model, tokenizer, items, cfg.max_length,
                                  rows=item_rows)
                stop_checks += 1
                if bool((scores.item_probability <= targets).all()):
                    stopped_early = True
                    break
                scores = None
        spent["training"] = time.perf_counter() - loop_began - spent["checks"]
        if method.negate_adapter:
            _scale_lora(peft_model, -float(getattr(cfg, "negation_scale", 1.0)))
        peft_model.eval()
        scale = 1.0
        with _timed(spent, "calibration"):
            if stopped_early and probe is not None and not cfg.settle_passes:
                scale = _calibrate(peft_model,
                                   lambda: probe.forgotten(peft_model, cfg))
                if cfg.calibration_margin and scale < 1.0:
                    final = scale + cfg.calibration_margin * (1.0 - scale)
                    _scale_lora(peft_model, final / scale)
                    scale = final
            elif stopped_early and targets is not None:
                stop_at = targets

                def forgotten() -> bool:
                    probs = score_items(peft_model, tokenizer, items, cfg.max_length,
                                        rows=item_rows).item_probability
                    return bool((probs <= stop_at).all())

                scale = _calibrate(peft_model, forgotten)
                scores = None
        if scores is None or method.negate_adapter:
            scores = score_items(peft_model, tokenizer, items, cfg.max_length, rows=item_rows)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(out), safe_serialization=True)
    except BaseException:
        # leave the caller's model as it was: no LoRA layers, eval mode
        peft_model.unload()
        if cfg.gradient_checkpointing and device.type == "cuda":
            model.gradient_checkpointing_disable()
        model.eval()
        raise
    if cfg.gradient_checkpointing and device.type == "cuda":
        model.gradient_checkpointing_disable()  # the model peft wrapped, LoRA layers and all

    adapter_sha256 = sha256_file(out / ADAPTER_WEIGHTS)
    seconds = time.perf_counter() - started
    spent["finish"] = seconds - sum(spent.values())
    return UnlearnResult(
        adapter_dir=str(out),
        adapter_sha256=adapter_sha256,
        steps=step,
        stopped_early=stopped_early,
        stop_target=None if targets is None else float(targets.mean()),
        adapter_scale=scale,
        forget_probability=scores.mean_probability,
        forget_known=int(scores.known.sum()),
        final_loss=loss_value,
        seconds=seconds,
        timings=spent,
        stop_checks=stop_checks,
        preferred_from=preferred_from,
        config=cfg.model_dump(mode="json"),
        n_forget=len(items),
        n_retain=len(retain_list),
        loss_history=history,
        model=peft_model,
    )
