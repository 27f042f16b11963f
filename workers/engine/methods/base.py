"""What every unlearning method shares: the typed base config (LoRA and training
settings), the per-step inputs a method's loss sees (:class:`StepInputs`, with the
reference quantities the training loop cached once), and the :class:`Method` base class
whose single override point is :meth:`Method.loss`.

The training loop itself lives in :mod:`workers.engine.training`; a method only declares
which reference quantities it needs (``needs``) and computes a scalar loss from them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.engine.qa import Example, answer_logits
from workers.engine.unlearn import LLAMA_LINEAR_MODULES

# Reference quantities a method may ask the training loop to cache for the forget items
# (computed once, adapter disabled, before the first step):
#   forget_logp    summed answer log-likelihood of each forget item (nats)
#   alt_logp       the same for each item's alternative ("I don't know") answer
#   forget_logits  reference logits at each forget item's answer positions
#   forget_token_logp  reference log-probability of each forget item's answer tokens
REFERENCE_QUANTITIES = frozenset({"forget_logp", "alt_logp", "forget_logits",
                                  "forget_token_logp"})


class BaseMethodConfig(BaseModel):
    """Settings every method has. Subclasses add ``method: Literal["<name>"]`` and their
    hyper-parameters.

    LoRA: ``lora_rank`` r, ``lora_alpha`` (scale = alpha / r), ``lora_dropout``,
    ``target_modules`` (module names, or peft's ``"all-linear"``), on every decoder layer
    or, with ``lora_layers`` n, on the last n only. Then nothing below changes during
    the run, and for the common decoder families (Llama, Mistral, Qwen2/3, Phi-3) each
    row's hidden states at the first adapted layer are kept after its first forward
    pass (up to ``frozen_prefix_mib`` MiB; 0 keeps none): later passes of the row, in
    training steps and stop checks alike, run the adapted layers only, with the same
    result (:class:`workers.engine.qa.FrozenPrefix`).
    Training: AdamW at a constant ``learning_rate`` (no weight decay), gradients clipped
    to ``max_grad_norm`` (L2, 0 = off); ``max_steps`` optimiser steps when set, else
    ``epochs`` passes over the forget items (a pass = ceil(n_forget / batch_size) steps).
    ``batch_size`` forget items (grown so that a pass takes at most
    ``forget_steps_per_pass`` steps when that is set, never above ``max_batch_size``,
    which bounds memory) and ``retain_batch_size`` (default ``batch_size``) retain
    items per step; ``max_length`` in tokens (prompt + answer). Loss =
    ``forget_weight`` · forget term + ``retain_weight`` · retain term.
    ``include_paraphrases`` trains on each forget item's paraphrased prompts too.
    ``gradient_checkpointing`` trades compute for activation memory (CUDA-sized models).

    Early stopping (``early_stop``): every ``stop_check_every`` steps (default: once per
    pass over the forget items) the loop scores the forget items, and training stops
    once every item's per-token answer probability is at most its target. The target is
    ``stop_probability`` when set, else the item's stranger level, measured before
    training on the never-seen people given to the loop
    (:func:`workers.engine.baselines.stranger_level`: the model's probability of that
    same answer to the same kind of question about them where the model gives that
    answer about them, else no more than their own answers' level) — times
    ``stop_ratio`` (verification's escalation lowers it when a retry must forget
    harder). Stopping there, not below,
    is what the verifier wants: an erased person who ends up *less* likely than a stranger
    stands out (over-unlearning), and every further step costs other people's facts. The
    step budget (``epochs``/``max_steps``) stays a cap.

    ``stop_rule`` chooses what "at a stranger's level" means. ``"likelihood"``: every
    item's answer probability at its target, as above. ``"membership"`` (needs the
    never-seen people; without them the likelihood rule applies): a membership-inference
    attack can no longer tell the forget items from never-seen people — the ROC AUC of
    their Min-K% scores (the mean of the lowest 40 % of answer-token log-probabilities,
    the attack UNLEARNING.md and the verifier use) is at most ``stop_auc``, and the
    verifier's counterfactual bars hold on this model: the items' mean answer
    probability at most ``stop_margin`` above the same answers' asked about never-seen
    people, and the share of answers the model reproduces (teacher-forced argmax) at
    most ``stop_accuracy_margin`` above theirs — the erased items and their paraphrases
    each on their own, a paraphrase against strangers asked in paraphrase, as the
    verifier checks them (a mean over both hid paraphrases still answered).
    ``stop_score`` "preference" replaces the Min-K% score in that AUC with how much the
    model prefers each answer to the answers other people give to the same kind of
    question (mean log-likelihood per token, minus the mean over the answers of the
    four never-seen people whose questions are most alike; a never-seen person's item
    against the other never-seen people's, never their own): a truth ratio whose
    perturbed answers are other people's. Unlearning lowers every unfamiliar answer,
    the never-seen people's too (on TOFU forget05 their mean Min-K% fell from −14.2 to
    −20.9 nats in 44 steps), so the forget items can stay above them by Min-K% long
    after the model stopped preferring their answers; a preference moves with both
    sides. Its bar is ``stop_auc`` plus ``stop_auc_sigmas`` standard errors of the AUC
    of two same-sized samples of one population, √((n₁ + n₀ + 1) / (12 n₁ n₀)): two
    groups of people differ a little even to a model that never saw either (on TOFU
    forget05 the retrained model scores 0.55, and the preference AUC levels off at
    0.52–0.53). ``"either"`` passes when either score is at its bar; its calibration
    then follows whichever test passes at the lower strength, mostly Min-K%'s edge,
    where the preference AUC is back at 0.91–0.93 (TOFU forget05: the target met on one
    model pair of five; docs/benchmarks.md). ``"both"`` asks for the Min-K% AUC at its
    bar and then for the preference AUC at its own (scored only once the Min-K% passes,
    so a run pays for the other people's answers only from there); a reading that
    passes the first and not the second says the erased answers are still *preferred*
    (:attr:`~workers.engine.methods.StepInputs.forget_preferred`, which NPO's
    ``alternative_when`` reads). All three stay off by default. The counterfactual
    bars' margins are half the verifier's: the people this rule sees are not the ones the verifier
    measures against (``qa.split_holdout``), and a candidate calibrated to the very edge
    of one sample of strangers' bars failed on the other sample in four of six people
    of the small demo model (two of six at the full margins, five of six at half;
    docs/benchmarks.md). An answer's lowest tokens are
    its facts; the per-item likelihood target also counts the wording the answer shares
    with everyone's answers, which a model that never saw the person still predicts
    well, so holding every item to it pushes the facts far below a stranger's (on TOFU,
    forget quality fell from 0.4–0.9 at the membership point to 1e-5 at the likelihood
    target). If at that point the retain items' mean answer probability
    (up to 64 of them, spread over the set) is below ``repair_ratio`` × its level before
    training, the forget term is switched off and the remaining steps train on the
    retain batches alone until it is back; training then stops, or, if the repair
    brought the forget items back above the rule, forgetting resumes. A mean can hide a
    few facts still given word for word, so at most ``stop_held_share`` (default none)
    of the answers may be *held*: reproduced (teacher-forced argmax) about this person
    but about none of the never-seen people asked the same question with the same
    answer — a shared answer ("tailor") that strangers get too is not held. Once the AUC
    is reached, while answers are still held, the forget batches are drawn from the
    pending items alone — the held answers and those whose probability is still above
    the same answer's asked about strangers: the rest are at a stranger's level already,
    and pushing them on with a stubborn fact (on the tiny demo model one person's fact
    took the other 14 answers to probability 1e-5) makes the person stand out as
    over-unlearned and costs the other people's facts. With none held, every item is
    trained again. After stopping, the adapter is scaled back to the least strength at
    which the rule still holds, then ``calibration_margin`` of the way from there back
    towards the trained adapter (0: the least strength itself). The rule was met
    against one sample of strangers; the verifier measures against another, and a
    candidate at the very edge of the first misses the second as often as not.
    ``settle_passes`` (membership rule, default 0) instead trains on for that many passes
    once the rule is first met (the retain set repaired as before), stops at the next
    check that meets it, and keeps the adapter at full strength: the rule is met in the
    middle of a fast transition, where the forget loss is still falling steeply and the
    truth ratios of the erased answers are spread wide (TOFU forget05, one model pair:
    forget quality 1e-8 at step 48, 0.87 at step 72, 0.27–0.33 from step 96 on with the
    loss flat; scaled back into the transition, 6e-4), and settling leaves it. Off by
    default: on another pair the stop already fell in that window, and settling
    overshot it (0.27 to 3e-5; docs/benchmarks.md). The API refuses a request that sets
    one of these rules' settings where the rule in force ignores it
    (:meth:`inert_settings`).

    Until training first moves the membership AUC below its first reading, the interval
    between the membership rule's checks doubles after each check, up to
    ``stop_check_backoff`` times ``stop_check_every`` (1: a check at every interval).
    Such a reading cannot stop training or change what it trains on (the AUC is above
    the bar, nothing is held or pending, no repair runs), so a skipped one changes
    nothing unless the AUC would have reached the bar in the gap; the first reading
    below the first returns to every interval for good. An adapter must first wear down
    the margin of answers the model is sure of: TOFU forget05's full-size model read
    AUC 1.0 at each of the first 14 checks, forget01's (``--authors 10``, five model
    pairs) at the first five or six. The backoff took 10 and 4 of those checks out, with
    the same result on every pair (forget05: 7 % less time). The AUC took 3 passes or
    more from its last 1.0 to the bar, so a gap of 4 sees such a fall at most one pass
    late (docs/benchmarks.md).

    Context noise (``context_noise``, a share in [0, 1)): each step, that share of the
    forget answers' *input* tokens is replaced by random vocabulary tokens while every
    target stays the true answer token, so the loss reaches the answer's facts through a
    context the model never memorised — the facts, not the memorised sentence, are what
    is pushed down (a paraphrase of the answer then loses them too). Reference
    quantities of a noised batch are computed for that batch (adapter disabled), not
    read from the cache of clean rows. Early stopping and every score use clean rows.
    Off by default: on short answers the clean rows stop being forgotten (on the tiny
    demo model, 12 NPO steps took the clean answers from 0.99 to 0.81 without noise and
    left them at 0.99 with 0.3, while the loss on the noised rows fell), and on TOFU it
    helped some model pairs and hurt others (docs/benchmarks.md).

    Retain batches: ``retain_hard_share`` of each retain batch replays the retain items
    seen so far whose answer NLL (as last measured in a training step) is highest and
    above ``retain_hard_nll`` nats/token — the facts unlearning is damaging right now; the
    rest cycles through the retain set in seeded random order.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    lora_rank: int = Field(8, ge=1, le=1024)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(default_factory=lambda: list(LLAMA_LINEAR_MODULES))
    lora_layers: int | None = Field(None, ge=1)
    frozen_prefix_mib: int = Field(1024, ge=0)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=0)  # 0: an untrained adapter (audits)
    batch_size: int = Field(8, ge=1)
    forget_steps_per_pass: int | None = Field(None, ge=1)
    max_batch_size: int = Field(64, ge=1)
    retain_batch_size: int | None = Field(None, ge=1)
    max_length: int = Field(128, ge=8)
    max_grad_norm: float = Field(1.0, ge=0.0)
    forget_weight: float = Field(1.0, ge=0.0)
    retain_weight: float = Field(1.0, ge=0.0)
    include_paraphrases: bool = True
    gradient_checkpointing: bool = False
    early_stop: bool = False
    stop_probability: float | None = Field(None, gt=0.0, lt=1.0)
    stop_check_every: int | None = Field(None, ge=1)
    stop_check_backoff: int = Field(4, ge=1)
    stop_ratio: float = Field(1.0, gt=0.0, le=1.0)
    stop_rule: Literal["likelihood", "membership"] = "likelihood"
    stop_auc: float = Field(0.5, gt=0.0, lt=1.0)
    stop_auc_sigmas: float = Field(0.0, ge=0.0, le=5.0)
    stop_score: Literal["min_k", "preference", "either", "both"] = "min_k"
    stop_margin: float = Field(0.025, ge=0.0, lt=1.0)
    stop_accuracy_margin: float = Field(0.05, ge=0.0, lt=1.0)
    stop_held_share: float = Field(0.0, ge=0.0, le=1.0)
    settle_passes: int = Field(0, ge=0)
    repair_ratio: float = Field(0.98, ge=0.0, le=1.0)
    calibration_margin: float = Field(0.0, ge=0.0, le=1.0)
    context_noise: float = Field(0.0, ge=0.0, lt=1.0)
    retain_hard_share: float = Field(0.0, ge=0.0, le=1.0)
    retain_hard_nll: float = Field(0.1, ge=0.0)
    seed: int = 0

    @model_validator(mode="after")
    def _layers_need_named_modules(self) -> BaseMethodConfig:
        if self.lora_layers is not None and isinstance(self.target_modules, str):
            raise ValueError("lora_layers needs target_modules as a list of module names "
                             f"(peft places {self.target_modules!r} on every layer)")
        return self

    def given_settings(self) -> set[str]:
        """The settings given explicitly (``model_fields_set``) with a value other than
        the method's default: those :meth:`inert_settings` may report."""
        fields = type(self).model_fields
        return {name for name in self.model_fields_set
                if getattr(self, name) != fields[name].default}

    def inert_settings(self) -> list[str]:
        """Why each setting given explicitly (``model_fields_set``) with a value other
        than the method's default would have no effect under the early-stopping settings
        in force, one sentence per setting; empty when every one given acts. A method's
        own defaults are never reported: NPO's ``calibration_margin`` stays harmless when
        a caller, or a verification retry, switches to the likelihood rule, and a full
        config read back from the API can be sent again as it is. What the API refuses
        at the door, so a caller does not believe a setting is in use."""
        given = self.given_settings()
        out: list[str] = []

        def inert(names: tuple[str, ...], why: str) -> None:
            out.extend(f"{name} has no effect {why}" for name in names if name in given)

        if self.lora_layers is None:
            inert(("frozen_prefix_mib",), "while lora_layers is unset (every layer is "
                  "adapted, so no hidden state stays the same)")
        if not self.early_stop:
            inert(_STOP_SETTINGS, "while early_stop is false")
            return out
        if self.stop_rule != "membership":
            inert(_MEMBERSHIP_SETTINGS, f"under stop_rule '{self.stop_rule}' "
                  "(it belongs to the 'membership' rule)")
            return out
        if self.stop_score == "min_k":
            inert(("stop_auc_sigmas",), "with stop_score 'min_k' (it widens the "
                  "preference score's bar)")
        if self.settle_passes:
            inert(("calibration_margin",), "when settle_passes is set (settling keeps "
                  "the adapter at full strength)")
        return out


# settings read only by the membership stopping rule (workers.engine.training)
_MEMBERSHIP_SETTINGS = ("stop_auc", "stop_auc_sigmas", "stop_score", "stop_margin",
                        "stop_accuracy_margin", "stop_held_share", "settle_passes",
                        "repair_ratio", "calibration_margin", "stop_check_backoff")
# settings read only when early stopping is on (either rule)
_STOP_SETTINGS = ("stop_probability", "stop_check_every", "stop_ratio", "stop_rule",
                  *_MEMBERSHIP_SETTINGS)


@dataclass
class ReferenceCache:
    """Reference-model quantities for the forget items, indexed like the trained forget
    list (CPU or model device tensors; see :data:`REFERENCE_QUANTITIES`).
    ``forget_logits[i]`` is ``[n_answer_tokens_i, vocab]``, ``forget_token_logp[i]``
    ``[n_answer_tokens_i]``."""

    forget_logp: torch.Tensor | None = None
    alt_logp: torch.Tensor | None = None
    forget_logits: list[torch.Tensor] | None = None
    forget_token_logp: list[torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Forward:
    """One forward pass over an encoded batch, scored where answers are predicted
    (:func:`qa.answer_logits`): ``logits`` ``[N, V]`` at the N answer tokens, row-major
    (the order of ``logp[mask]``); at the ``K`` sequence ``positions`` that predict an
    answer token in some row, the predicted ``targets`` ``[B, K]`` (-100 where a row
    scores nothing), per-token answer log-probs ``logp`` (0 there) and their ``mask``;
    ``hidden`` (all hidden states, full length) when asked for —
    ``hidden[i][:, positions][mask]`` are the states that predict answer tokens."""

    logits: torch.Tensor
    logp: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    hidden: tuple[torch.Tensor, ...] | None = None

    @property
    def seq_logp(self) -> torch.Tensor:
        """Summed answer log-likelihood per row (nats)."""
        return self.logp.sum(-1)

    @property
    def count(self) -> torch.Tensor:
        """Answer tokens per row (≥ 1)."""
        return self.mask.sum(-1).clamp(min=1)

    @property
    def mean_nll(self) -> torch.Tensor:
        """Mean answer-token NLL per row (nats/token, length-normalised)."""
        return -self.seq_logp / self.count

    @property
    def token_nll(self) -> torch.Tensor:
        """NLL per answer token over the whole batch (nats/token), the usual LM loss."""
        return -self.logp.sum() / self.mask.sum().clamp(min=1)


@dataclass
class StepInputs:
    """What :meth:`Method.loss` gets each step.

    ``forget``/``retain``/``alt`` are encoded batches (``input_ids``, ``attention_mask``,
    ``labels``) on the model's device; ``alt`` holds the forget items' alternative answers
    (only for methods that need ``alt_logp``); ``retain`` is ``None`` when the retain
    weight is 0 or no retain set was given. ``forget_index`` are the rows of ``ref`` the
    forget batch's items correspond to. ``forward(batch, hidden=False)`` runs the trained
    model; ``reference()`` is a context manager under which the model is the reference
    (adapter disabled) — use it inside ``torch.no_grad()``. A loss that scores the retain
    batch by NLL leaves the per-row NLL in ``retain_row_nll`` (detached) for the loop's
    hard-retain sampling. ``forget_held`` (membership rule, once its AUC is reached):
    per forget-batch row, whether that answer is still held — known word for word about
    this person and no never-seen one (``None`` otherwise). ``forget_preferred``
    (membership rule with ``stop_score`` "both"): the last reading found the Min-K% AUC
    at its bar and the preference AUC above its own — the erased people are strangers by
    their answers' likelihood, but the model still prefers their answers to other
    people's.
    """

    model: Any
    forget: dict[str, torch.Tensor]
    forget_index: list[int]
    retain: dict[str, torch.Tensor] | None
    alt: dict[str, torch.Tensor] | None
    ref: ReferenceCache
    step: int
    total_steps: int
    reference: Callable[[], AbstractContextManager[Any]]
    retain_row_nll: torch.Tensor | None = None
    forget_held: torch.Tensor | None = None
    forget_preferred: bool = False

    def forward(self, batch: dict[str, torch.Tensor], hidden: bool = False) -> Forward:
        return run_forward(self.model, batch, hidden)


def run_forward(model: Any, batch: dict[str, torch.Tensor], hidden: bool = False) -> Forward:
    """Forward ``batch`` through ``model``; see :class:`Forward`."""
    scored = answer_logits(model, batch, hidden)
    return Forward(scored.logits, scored.logprobs(), scored.mask, scored.targets,
                   scored.positions, scored.hidden)


class Method(ABC):
    """One unlearning method. Subclasses set ``name`` (lower-case, the config's
    discriminator), ``config_class`` and ``needs`` (subset of
    :data:`REFERENCE_QUANTITIES`), and implement :meth:`loss`, the single override point.

    Two optional class-level knobs keep special methods inside the same loop:
    ``uses_retain`` (False: no retain batches are drawn) and ``negate_adapter`` (True: the
    trained adapter is negated before saving — task-vector negation).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[BaseMethodConfig]]
    # an instance may need more than its class declares (a setting that adds a term)
    needs: frozenset[str] = frozenset()
    uses_retain: ClassVar[bool] = True
    negate_adapter: ClassVar[bool] = False

    def __init__(self, config: BaseMethodConfig) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name} needs a {self.config_class.__name__}")
        self.config = config

    def adapter_layers(self, n_layers: int) -> list[int] | None:
        """Decoder layers that get LoRA (``None`` = all): the last ``lora_layers`` of
        the ``n_layers`` when that is set. RMU places its own."""
        n = self.config.lora_layers
        return None if n is None or n >= n_layers else list(range(n_layers - n, n_layers))

    def alternative_answer(self, index: int) -> str | None:
        """The alternative answer for forget item ``index`` (IdkDPO's win answer)."""
        return None

    def alternative_answers(self, items: Sequence[Example], retain: Sequence[Example]
                            ) -> list[str]:
        """The alternative answer of each forget item (``needs`` "alt_logp"): by
        default :meth:`alternative_answer` of its index. ``retain`` is the job's retain
        set, for methods that draw their alternatives from it."""
        answers = [self.alternative_answer(i) for i in range(len(items))]
        if any(a is None for a in answers):
            raise ValueError(f"method {self.name} needs alternative answers")
        return [a for a in answers if a is not None]

    @abstractmethod
    def loss(self, inputs: StepInputs) -> torch.Tensor:
        """Scalar training loss of one step (minimised)."""


