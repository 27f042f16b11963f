"""The built-in unlearning methods (definitions: ``/work/shared/UNLEARNING.md``). Each is
a typed config plus a loss; the shared loop in :mod:`workers.engine.training` does the
rest. Losses are in nats (per token where length-normalised).

Learning rates default to 1e-3 (the NPO rate measured on the demo models) rather than the
literature's full-fine-tuning rates, except RMU and task vectors (5e-3, see there);
β, δ, γ, α, c follow UNLEARNING.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from workers.engine.baselines import alternatives
from workers.engine.methods.base import BaseMethodConfig, Forward, Method, StepInputs
from workers.engine.qa import Example
from workers.engine.unlearn import npo_loss

# Fixed refusal answers for IdkDPO; item i gets IDK_ANSWERS[i % len] so runs are
# deterministic and every phrasing is used.
IDK_ANSWERS: tuple[str, ...] = (
    "I don't know.",
    "I'm not sure.",
    "I have no information about that.",
    "I can't answer that.",
    "That is not something I know.",
)


def retain_nll(inputs: StepInputs) -> torch.Tensor:
    """Mean per-token NLL of the retain answers (0 when there is no retain batch)."""
    if inputs.retain is None:
        return torch.zeros((), device=inputs.forget["input_ids"].device)
    fw = inputs.forward(inputs.retain)
    inputs.retain_row_nll = fw.mean_nll.detach().float().cpu()
    return fw.token_nll


# ----------------------------------------------------------------------- grad ascent


class GradAscentConfig(BaseMethodConfig):
    """Gradient ascent: minimise −NLL of the forget answers; no retain term."""

    method: Literal["grad_ascent"] = "grad_ascent"
    retain_weight: float = Field(0.0, ge=0.0)


class GradAscent(Method):
    name = "grad_ascent"
    config_class = GradAscentConfig
    config: GradAscentConfig
    uses_retain = False

    def loss(self, inputs: StepInputs) -> torch.Tensor:
        return -self.config.forget_weight * inputs.forward(inputs.forget).token_nll


# ----------------------------------------------------------------------- grad diff


class GradDiffConfig(BaseMethodConfig):
    """GradDiff: −NLL on forget + α · (NLL, or KL(ref ‖ θ) per token) on retain."""

    method: Literal["grad_diff"] = "grad_diff"
    retain_loss: Literal["nll", "kl"] = "nll"


class GradDiff(Method):
    name = "grad_diff"
    config_class = GradDiffConfig
    config: GradDiffConfig

    def loss(self, inputs: StepInputs) -> torch.Tensor:
        cfg = self.config
        loss = -cfg.forget_weight * inputs.forward(inputs.forget).token_nll
        if inputs.retain is None or cfg.retain_weight == 0:
            return loss
        if cfg.retain_loss == "nll":
            return loss + cfg.retain_weight * retain_nll(inputs)
        # KL to the reference on the retain answers' next-token distributions; the
        # reference is recomputed (adapter off) because retain batches are cycled and
        # caching full-vocabulary logits for every retain item would not fit real models
        cur = inputs.forward(inputs.retain)
        with torch.no_grad(), inputs.reference():
            ref = inputs.forward(inputs.retain)
        cur_lp = torch.log_softmax(cur.logits.float(), -1)  # [N answer tokens, V]
        ref_lp = torch.log_softmax(ref.logits.float(), -1)
        kl = F.kl_div(cur_lp, ref_lp, log_target=True, reduction="batchmean")
        return loss + cfg.retain_weight * kl


# ----------------------------------------------------------------------- NPO


class NPOMethodConfig(BaseMethodConfig):
    """NPO (Zhang et al. 2024): (2/β)·mean softplus(β·(logπ_θ − logπ_ref)) + α·NLL_retain.

    ``granularity``: ``"sequence"`` is the published loss, Δ = logπ_θ − logπ_ref summed
    over the answer (β default 0.1). ``"token"`` (the default) applies it to every
    answer token, (2/β)·softplus(β·Δ_t) averaged over the answer's tokens, then over the
    items (β default 0.3). With the summed Δ, an item's weight σ(β·Δ) vanishes once a
    few of its tokens have collapsed, and the rest of the answer — the facts a
    paraphrase still carries — is left where it was; per token, each token keeps its
    weight until it has fallen itself. On TOFU forget01 this took forget quality from
    2 of 5 model pairs at the target to 4 of 5, and 5 of 5 once the stop also required no
    held answers (docs/benchmarks.md).

    Lethe's default method. Its defaults were measured on the demo models and TOFU: early
    stopping by membership inference against the never-seen people, with the retain set
    repaired before stopping if it lost more than 5 % (``stop_rule`` and
    ``repair_ratio``, see the base config; the likelihood rule when there are none), a
    cap of 90 passes, a pass in at most 4 steps (one person's ~20
    items: 3 steps of 8; a batch of 50 people: 16 steps of 64), 32 retain items per step
    of which half replay the currently most damaged facts. The adapter is scaled back to
    the stopping point, so people forgotten quickly cost the others less, and then a
    quarter of the way back towards the trained adapter (``calibration_margin``): at the
    very edge of the rule, TOFU forget01 met the target on 4 of 5 model pairs, with the
    margin on 5 of 5, while the small demo model's first-attempt verdicts stayed the
    same (6 of 10) and the failing ones moved closer to the verifier's bars
    (docs/benchmarks.md).

    ``repair_ratio`` 0.95 (0.98 for the other methods): on TOFU forget05 at full size
    the stricter bar sent each stop of the membership rule into a retain-only repair
    that brought the erased answers back with the retained ones, and the run cycled
    between the two for 40 % of its passes. At 0.95, on two full-size model pairs:
    forget quality 7.5e-5 and 1.2e-4 against 2.4e-10 and 2.4e-6, utility 0.969 × and
    0.963 × against 0.990 × and 0.985 ×, 112 and 144 steps against 172 and 236. On
    forget01 every model pair still met the target, on forget05 ``--authors 20`` five
    pairs of five gave the same forget quality, and a batch of fifty demo-model people
    took 816 steps against 976 (docs/benchmarks.md, "A looser repair bar").

    ``unlikelihood_weight`` (off by default): once the membership rule's AUC is reached,
    the answers still held (known word for word for this person only, see
    ``stop_held_share``) get an unlikelihood term, −log(1 − π_θ(y_t)) per answer token,
    on top. NPO's gradient on a token's logit is ∝ 1 − π_θ(y_t) and vanishes for exactly
    those answers: on the small demo model a batch of ten people kept 16–20 of 200
    answers at probability 0.99 to the step cap while NPO pushed everyone else below a
    stranger's level. The unlikelihood gradient is ∝ π_θ(y_t), strongest where the answer
    is most certain. It is not the default: that batch still ends at the cap with 14 of
    200 answers given, and on the tiny demo model the adapter it trains calibrates to a
    point where the paraphrased prompts sit just above the verifier's bar
    (docs/benchmarks.md).

    ``odds_gradient`` (token granularity; off by default): NPO's gradient on an answer
    token's logit is 2σ(β·Δ)·(1 − π_θ(y_t)), and it vanishes while the model is sure of
    the answer. TOFU's full-size original gives its forget05 answers 0.99996 per token,
    and the first 56 steps of the default run left them where they were. With the
    option each token also gets 2σ(β·Δ)·(−log(1 − π_θ(y_t))), its weight σ(β·Δ) held
    fixed: the push on the logit is 2σ(β·Δ) however sure the model is, the same as NPO's
    once the answer is unlikely. Without the stop (240 steps), the answers moved from
    step 24 instead of 56, and the forget quality was 0.05 or more at 7 of the 15
    checks from step 128 on. The default's best at any check was 0.016. With the
    membership stop it ended at 2.6e-7 after 232 steps: each time the rule was met,
    the retain set was below ``repair_ratio``, and the retain-only repair brought the
    erased answers back with it. The option is therefore not the default
    (docs/benchmarks.md).

    ``alternative_weight`` (off by default): adds a preference term that asks, for each
    forget question, for another person's answer over the erased one:
    −(2/β)·logσ(β·(Δ̄_alt − Δ̄_forget)), Δ̄ the answer's log-likelihood ratio to the
    reference per token, β ``alternative_beta``. The other answer is the one the retained
    person asked the most similar question gives (:func:`~workers.engine.baselines.
    alternatives` over the job's retain set: what other people answer to the same kind
    of question, TOFU's perturbed answers without an editor). NPO alone takes the erased
    wording down and leaves the facts a paraphrase still carries; a retrained model
    answers such a question with some other plausible person's facts, and this term
    asks for that. On TOFU forget05 at full size (one model pair, unlearning seeds 0–3,
    weight 1, β 1) it took forget quality from 1.2e-4, 2.9e-11, 1.4e-3 and 8.1e-7 to
    0.052, 7.5e-5, 0.022 and 9.7e-4, at utility 0.966, 0.965, 0.980 and 0.942 × the
    original's: the first run at full size to meet the forget05 target by its own stop;
    at weight 0.5, 0.022, 4.3e-3, 6.5e-4 and 4.3e-3 at 0.949–0.974 ×
    (docs/benchmarks.md). It is not the default: one run of eight meets the target, the
    runs nearest it cost 15 % of retraining against the default's 11–13 %, and on
    forget01 at full size (one pair, seeds 0–3) it lowered forget quality on every seed
    (0.014, 0.097, 0.097, 0.029 → 5.0e-4, 1.3e-3, 3.0e-3, 5.0e-4): there the default
    already rejects the erased facts more firmly than the retrained model, and the term
    pushes further past it.

    ``alternative_when``: ``"always"`` (the default) applies the term at every step;
    ``"preferred"`` only while the membership rule's last reading (``stop_score``
    "both") found the erased people strangers by Min-K% but their answers still
    preferred to other people's. NPO trains alone until the Min-K% bar is met, as by
    default; where the model still prefers the erased answers there, the run goes on
    with the term until the preference AUC is at its bar too; where it does not, the
    term never acts and the run stops where the default does. The aim is a weight the
    job sets from its own readings, since a fixed one helped forget05 and hurt forget01.
    On TOFU forget05 ``--authors 20`` (three model pairs, preference bar one standard
    error) the term acted on one pair. There it took forget quality from 0.088 to 0.178
    and the forget truth-ratio score from 0.679 to 0.730, the retrained model's being
    0.737, at 1.029 × utility. On the other two it never acted, and they gave the
    default's results to the digit. Unlearning took 19–49 % longer: the preference is
    read at every check once the Min-K% bar is met, and at each step of the calibration.
    At full size (forget05, one pair, seeds 0–3) the reading said "preferred" on every
    seed, but the run then stops only once the preference is at its bar too: NPO drove
    the Min-K% AUC to 0.09–0.17 (the retrained model's 0.59) meanwhile, forget quality
    stayed under the fixed weight's on every seed, and unlearning cost 23–32 % of
    retraining. Off by default. The opposite gate (the term from the first step, off
    while a reading finds the preference at its bar) was tried and removed: the
    preference AUC reaches its bar only where the Min-K% test has passed too, so it
    closed only during the retain-only repair and every run matched the fixed weight
    to the digit (docs/benchmarks.md).
    """

    method: Literal["npo"] = "npo"
    granularity: Literal["token", "sequence"] = "token"
    unlikelihood_weight: float = Field(0.0, ge=0.0)
    odds_gradient: bool = False
    beta: float | None = Field(None, gt=0.0)
    stop_rule: Literal["likelihood", "membership"] = "membership"
    epochs: int = Field(90, ge=1)
    forget_steps_per_pass: int | None = Field(4, ge=1)
    retain_batch_size: int | None = Field(32, ge=1)
    retain_hard_share: float = Field(0.5, ge=0.0, le=1.0)
    early_stop: bool = True
    calibration_margin: float = Field(0.25, ge=0.0, le=1.0)
    repair_ratio: float = Field(0.95, ge=0.0, le=1.0)
    alternative_weight: float = Field(0.0, ge=0.0)
    alternative_beta: float = Field(1.0, gt=0.0)
    alternative_when: Literal["always", "preferred"] = "always"

    def inert_settings(self) -> list[str]:
        out = super().inert_settings()
        given = self.given_settings()
        if self.alternative_weight == 0:
            out.extend(f"{name} has no effect while alternative_weight is 0"
                       for name in ("alternative_beta", "alternative_when") if name in given)
        elif self.alternative_when == "preferred" and not (
                self.early_stop and self.stop_rule == "membership"
                and self.stop_score == "both"):
            out.append("alternative_when 'preferred' has no effect unless early_stop is "
                       "true, stop_rule 'membership' and stop_score 'both' (their readings "
                       "say when the erased answers are still preferred); the term would "
                       "never act")
        if self.granularity == "sequence" and "odds_gradient" in given:
            out.append("odds_gradient has no effect with granularity 'sequence' (it acts "
                       "on each answer token's term of token-level NPO)")
        return out

    @property
    def effective_beta(self) -> float:
        """``beta``, or its default for the granularity (token 0.3, sequence 0.1)."""
        if self.beta is not None:
            return self.beta
        return NPO_TOKEN_BETA if self.granularity == "token" else NPO_SEQUENCE_BETA


NPO_TOKEN_BETA = 0.3
NPO_SEQUENCE_BETA = 0.1


class NPO(Method):
    name = "npo"
    config_class = NPOMethodConfig
    config: NPOMethodConfig
    needs = frozenset({"forget_logp", "forget_token_logp"})

    def __init__(self, config: BaseMethodConfig) -> None:
        super().__init__(config)
        if self.config.alternative_weight > 0:
            self.needs = self.needs | {"alt_logp"}

    def alternative_answers(self, items: Sequence[Example], retain: Sequence[Example]
                            ) -> list[str]:
        """Per forget item, the answer of the retain item whose question is most like
        its own (see ``alternative_weight``)."""
        if not retain:
            raise ValueError("npo with alternative_weight > 0 needs a retain set (the "
                             "other people's answers)")
        return [ex.target for ex in alternatives(items, retain, 1)]

    def loss(self, inputs: StepInputs) -> torch.Tensor:
        cfg = self.config
        assert isinstance(cfg, NPOMethodConfig)
        beta = cfg.effective_beta
        fw = inputs.forward(inputs.forget)
        if cfg.granularity == "sequence":
            assert inputs.ref.forget_logp is not None
            ref = inputs.ref.forget_logp[inputs.forget_index]
            forget = npo_loss(fw.seq_logp.float(), ref, beta)
        else:
            assert inputs.ref.forget_token_logp is not None
            forget = npo_token_loss(fw, [inputs.ref.forget_token_logp[i]
                                         for i in inputs.forget_index], beta,
                                    odds=cfg.odds_gradient)
        if cfg.alternative_weight > 0 and (cfg.alternative_when == "always"
                                           or inputs.forget_preferred):
            assert inputs.alt is not None
            forget = forget + cfg.alternative_weight * alternative_preference(
                fw, inputs.forward(inputs.alt), inputs, cfg.alternative_beta)
        held = inputs.forget_held
        if cfg.unlikelihood_weight and held is not None and bool(held.any()):
            forget = forget + cfg.unlikelihood_weight * unlikelihood_loss(fw, held)
        return cfg.forget_weight * forget + cfg.retain_weight * retain_nll(inputs)


def alternative_preference(fw: Forward, alt: Forward, inputs: StepInputs,
                           beta: float) -> torch.Tensor:
    """−(2/β)·mean logσ(β·(Δ̄_alt − Δ̄_forget)): DPO on per-token log-likelihood ratios
    to the reference, the alternative answers (``alt``) preferred to the forget answers
    (``fw``). Starts at (2/β)·ln 2."""
    ref = inputs.ref
    assert ref.forget_logp is not None and ref.alt_logp is not None
    idx = inputs.forget_index
    lose = (fw.seq_logp.float() - ref.forget_logp[idx]) / fw.count.clamp(min=1)
    win = (alt.seq_logp.float() - ref.alt_logp[idx]) / alt.count.clamp(min=1)
    return dpo_loss(win, lose, beta)


def dpo_loss(win: torch.Tensor, lose: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO: −(2/β)·mean logσ(β·(win − lose)), ``win`` and ``lose`` the preferred and the
    rejected answers' log-likelihood ratios to the reference, per row."""
    return -(2.0 / beta) * F.logsigmoid(beta * (win - lose)).mean()


def unlikelihood_loss(fw: Forward, rows: torch.Tensor) -> torch.Tensor:
    """Unlikelihood: −log(1 − π_θ(y_t)) averaged over each row's answer tokens, then
    over the rows selected by the boolean mask ``rows`` (at least one)."""
    p = fw.logp.float().exp().clamp(max=1.0 - 1e-6)
    per_token = -torch.log1p(-p) * fw.mask
    return (per_token.sum(-1) / fw.count)[rows.to(fw.logp.device)].mean()


def npo_token_loss(fw: Forward, ref_tokens: list[torch.Tensor], beta: float,
                   odds: bool = False) -> torch.Tensor:
    """Token-level NPO: (2/β)·softplus(β·(logπ_θ(y_t) − logπ_ref(y_t))) averaged over each
    row's answer tokens, then over the rows. ``ref_tokens[row]`` are the reference's
    answer-token log-probabilities of that row, in answer order (the order of
    ``fw.logp[row][fw.mask[row]]``). Starts at (2/β)·ln 2.

    ``odds``: each token also gets 2·σ(β·Δ_t)·(−log(1 − π_θ(y_t))), its weight σ(β·Δ_t)
    held fixed, so that its gradient on the token's logit is 2·σ(β·Δ_t) where NPO's is
    2·σ(β·Δ_t)·(1 − π_θ(y_t)): NPO's push on the answer's log-odds instead of its
    log-probability. Where π_θ is small the two are the same (see
    ``NPOMethodConfig.odds_gradient``)."""
    ref = torch.cat(ref_tokens).to(fw.logp.device)
    delta = torch.zeros_like(fw.logp, dtype=torch.float32)
    delta[fw.mask] = fw.logp[fw.mask].float() - ref
    per_token = (2.0 / beta) * F.softplus(beta * delta)
    if odds:
        p = fw.logp.float().exp().clamp(max=1.0 - 1e-7)
        per_token = per_token + 2.0 * torch.sigmoid(beta * delta).detach() * -torch.log1p(-p)
    per_token = per_token * fw.mask
    return (per_token.sum(-1) / fw.count).mean()


# ----------------------------------------------------------------------- SimNPO


class SimNPOConfig(BaseMethodConfig):
    """SimNPO (Fan et al. 2024): −(2/β)·mean logσ(β·(NLL_norm − δ)) with the
    length-normalised NLL and no reference model; γ (``forget_weight``) 0.125."""

    method: Literal["simnpo"] = "simnpo"
    beta: float = Field(4.5, gt=0.0)
    delta: float = 0.0
    forget_weight: float = Field(0.125, ge=0.0)


class SimNPO(Method):
    name = "simnpo"
    config_class = SimNPOConfig
    config: SimNPOConfig

    def loss(self, inputs: StepInputs) -> torch.Tensor:
        cfg = self.config
        nll = inputs.forward(inputs.forget).mean_nll.float()
        forget = (2.0 / cfg.beta) * F.softplus(-cfg.beta * (nll - cfg.delta)).mean()
        return cfg.forget_weight * forget + cfg.retain_weight * retain_nll(inputs)


# ----------------------------------------------------------------------- IdkDPO


class IdkDPOConfig(BaseMethodConfig):
    """DPO with win = a fixed "I don't know"-style answer, lose = the forget answer:
    −(2/β)·mean logσ(β·((logπ_θ(w) − logπ_ref(w)) − (logπ_θ(l) − logπ_ref(l)))) + α·NLL_retain."""

    method: Literal["idk_dpo"] = "idk_dpo"
    beta: float = Field(0.1, gt=0.0)


class IdkDPO(Method):
    name = "idk_dpo"
    config_class = IdkDPOConfig
    config: IdkDPOConfig
    needs = frozenset({"forget_logp", "alt_logp"})

    def alternative_answer(self, index: int) -> str | None:
        return IDK_ANSWERS[index % len(IDK_ANSWERS)]

    def loss(self, inputs: StepInputs) -> torch.Tensor:
        cfg = self.config
        ref = inputs.ref
        assert ref.forget_logp is not None and ref.alt_logp is not None
        assert inputs.alt is not None
        idx = inputs.forget_index
        lose = inputs.forward(inputs.forget).seq_logp.float() - ref.forget_logp[idx]
        win = inputs.forward(inputs.alt).seq_logp.float() - ref.alt_logp[idx]
        forget = dpo_loss(win, lose, cfg.beta)
        return cfg.forget_weight * forget + cfg.retain_weight * retain_nll(inputs)


# ----------------------------------------------------------------------- RMU


class RMUConfig(BaseMethodConfig):
    """RMU (Li et al. 2024, WMDP): push layer-``layer`` hidden states at the forget
    answers' positions to ``steering_coef``·u (u a fixed random unit vector); retain: MSE
    to the reference's (adapter-disabled) hidden states. LoRA only on ``target_modules``
    (MLP ``down_proj``) of layers ``layer − n_adapter_layers + 1 … layer``: later layers
    are left as they were so they read the scrambled activations unchanged.
    ``layer=None`` picks the middle layer ((n_layers − 1) // 2)."""

    method: Literal["rmu"] = "rmu"
    layer: int | None = Field(None, ge=0)
    n_adapter_layers: int = Field(3, ge=1)
    steering_coef: float = Field(20.0, gt=0.0)
    # one rank-8 down_proj adapter has few parameters to move the activations with
    learning_rate: float = Field(5e-3, gt=0.0, le=1.0)
    retain_weight: float = Field(100.0, ge=0.0)
    target_modules: list[str] | str = Field(default_factory=lambda: ["down_proj"])

    def inert_settings(self) -> list[str]:
        out = super().inert_settings()
        given = self.given_settings()
        out.extend(f"{name} has no effect with rmu (its adapter sits on the "
                   "n_adapter_layers layers up to layer, and its loss reads every hidden "
                   "state)" for name in ("lora_layers", "frozen_prefix_mib")
                   if name in given and self.lora_layers is not None)
        return out


class RMU(Method):
    name = "rmu"
    config_class = RMUConfig
    config: RMUConfig

    def __init__(self, config: BaseMethodConfig) -> None:
        super().__init__(config)
        self._direction: torch.Tensor | None = None

    def layer_of(self, n_layers: int) -> int:
        layer = self.config.layer
        layer = (n_layers - 1) // 2 if layer is None else layer
        if layer >= n_layers:
            raise ValueError(f"rmu layer {layer} but the model has {n_layers} layers")
        return layer

    def adapter_layers(self, n_layers: int) -> list[int] | None:
        layer = self.layer_of(n_layers)
        return list(range(max(0, layer - self.config.n_adapter_layers + 1), layer + 1))

    def direction(self, hidden_size: int, device: torch.device) -> torch.Tensor:
        if self._direction is None or self._direction.numel() != hidden_size:
            gen = torch.Generator().manual_seed(self.config.seed)
            u = torch.rand(hidden_size, generator=gen)  # as in RMU: uniform, then unit norm
            self._direction = u / u.norm()
        return self._direction.to(device)

    def loss(self, inputs: StepInputs) -> torch.Tensor:
        cfg = self.config
        n_layers = inputs.model.config.num_hidden_layers
        # hidden_states[0] is the embedding output, [k + 1] the output of layer k
        pick = self.layer_of(n_layers) + 1
        cur = inputs.forward(inputs.forget, hidden=True)
        assert cur.hidden is not None
        h = cur.hidden[pick][:, cur.positions][cur.mask].float()  # predicting answer tokens
        target = cfg.steering_coef * self.direction(h.shape[-1], h.device)
        loss = cfg.forget_weight * F.mse_loss(h, target.expand_as(h))
        if inputs.retain is None or cfg.retain_weight == 0:
            return loss
        rcur = inputs.forward(inputs.retain, hidden=True)
        with torch.no_grad(), inputs.reference():
            rref = inputs.forward(inputs.retain, hidden=True)
        assert rcur.hidden is not None and rref.hidden is not None
        live = inputs.retain["attention_mask"].bool()
        retain = F.mse_loss(rcur.hidden[pick][live].float(), rref.hidden[pick][live].float())
        return loss + cfg.retain_weight * retain


# ----------------------------------------------------------------------- UNDIAL


class UNDIALConfig(BaseMethodConfig):
    """UNDIAL (Dong et al. 2024): self-distillation of the forget answers to
    softmax(teacher_logits − β·onehot(label)), the teacher being the reference model;
    no retain term by default."""

    method: Literal["undial"] = "undial"
    beta: float = Field(10.0, gt=0.0)
    retain_weight: float = Field(0.0, ge=0.0)


class UNDIAL(Method):
    name = "undial"
    config_class = UNDIALConfig
    config: UNDIALConfig
    needs = frozenset({"forget_logits"})

    def loss(self, inputs: StepInputs) -> torch.Tensor:
        cfg = self.config
        assert inputs.ref.forget_logits is not None
        cur = inputs.forward(inputs.forget)
        student = cur.logits.float()  # [N answer tokens, V], row-major
        teacher = torch.cat([inputs.ref.forget_logits[i] for i in inputs.forget_index]).to(
            student.device, torch.float32)
        labels = cur.targets[cur.mask]
        teacher = teacher - cfg.beta * F.one_hot(labels, teacher.shape[-1]).float()
        target = torch.softmax(teacher, -1)
        forget = -(target * torch.log_softmax(student, -1)).sum(-1).mean()
        return cfg.forget_weight * forget + cfg.retain_weight * retain_nll(inputs)


# ----------------------------------------------------------------------- task vector


class TaskVectorConfig(BaseMethodConfig):
    """Task-vector negation (Ilharco et al. 2023): fine-tune an adapter ON the forget
    answers (NLL), then save its negation scaled by ``negation_scale`` (lora_B ← −λ·lora_B,
    so the adapter adds −λ·ΔW). No retain term."""

    method: Literal["task_vector"] = "task_vector"
    negation_scale: float = Field(2.0, gt=0.0, le=10.0)
    # an already-memorised forget set gives small gradients: a larger step is needed
    # for the adapter to learn a direction worth negating
    learning_rate: float = Field(5e-3, gt=0.0, le=1.0)
    retain_weight: float = Field(0.0, ge=0.0)


class TaskVector(Method):
    name = "task_vector"
    config_class = TaskVectorConfig
    config: TaskVectorConfig
    uses_retain = False
    negate_adapter = True

    def loss(self, inputs: StepInputs) -> torch.Tensor:
        return self.config.forget_weight * inputs.forward(inputs.forget).token_nll


BUILTIN_METHODS: tuple[type[Method], ...] = (
    GradAscent, GradDiff, NPO, SimNPO, IdkDPO, RMU, UNDIAL, TaskVector,
)
