"""Pieces every unlearning run shares: the LoRA targets, the result type, the forget
items as trained (paraphrases included), per-item scoring, the NPO loss and the
retain sampler. The one training loop is :func:`workers.engine.training.run_unlearning`;
Lethe's default method is its ``npo`` (see ``methods.builtin.NPOMethodConfig``).

NPO loss per step (see ``/work/shared/UNLEARNING.md``)::

    L = γ · (2/β) · mean_forget softplus(β · (logπ_θ(y|x) − logπ_ref(y|x)))
      + α · NLL_retain

``softplus(z) = −logσ(−z)``, so the first term is the literature's
``−(2/β)·mean logσ(−β·(logπ_θ − logπ_ref))``. ``logπ`` is the summed log-likelihood of
the answer tokens (+ EOS), ``NLL_retain`` the mean per-token negative log-likelihood of
the retain answers. The reference ``π_ref`` is the model as given (the parent version,
before the adapter); its forget log-likelihoods are computed once, before training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from workers.engine.qa import (
    Example,
    TokenRow,
    answer_logits,
    by_length,
    pad_id,
    tokenize,
)

# Every linear projection of a Llama-style decoder block (attention and MLP); lm_head and
# the embeddings are left alone so the vocabulary geometry other people depend on stays put.
LLAMA_LINEAR_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

ADAPTER_WEIGHTS = "adapter_model.safetensors"

ProgressCallback = Callable[[int, int, float], "bool | None"]


class Cancelled(Exception):  # noqa: N818 - the product's vocabulary: a job is "cancelled"
    """Raised by the training loop when ``on_progress`` returned ``False``. The caller's
    model has been restored (the LoRA layers removed) and nothing was saved."""

    def __init__(self, step: int, total_steps: int) -> None:
        super().__init__(f"unlearning cancelled at step {step}/{total_steps}")
        self.step = step
        self.total_steps = total_steps


@dataclass
class UnlearnResult:
    """Outcome of :func:`unlearn`.

    ``adapter_dir`` holds ``adapter_model.safetensors`` + ``adapter_config.json``;
    ``adapter_sha256`` is the hex SHA-256 of the weights file. ``final_loss`` is the last
    step's total loss, ``seconds`` wall-clock time of the whole call (reference pass,
    training, saving). ``stopped_early``: early stopping ended the run before its step
    budget; ``stop_target`` the forget probability it aimed at (``None`` without early
    stopping); ``forget_probability``/``forget_known`` the trained forget items' mean
    answer probability and how many are still greedy answers, at the end;
    ``adapter_scale`` the strength early stopping's calibration kept (1: as trained).
    ``timings``: where ``seconds`` went — ``setup`` (tokenising, the reference pass, the
    stopping rule's baselines), ``training`` (the steps and their progress reports),
    ``checks`` (the ``stop_checks`` readings of the stopping rule during training),
    ``calibration`` (the adapter's strength: one reading, or up to one more than
    :data:`~workers.engine.training.CALIBRATION_STEPS`) and ``finish`` (the final
    scores, saving the adapter). ``preferred_from`` (membership rule, ``stop_score``
    "both"): the step of the first reading that found the Min-K% AUC at its bar and the
    erased answers still preferred to other people's (``None``: none did). ``model`` is
    the candidate: the peft-wrapped model, adapter active, in eval mode — the same
    object the caller passed in, now with LoRA layers injected (``model.unload()`` gives
    the parent back, ``model.merge_and_unload()`` a plain model).
    """

    adapter_dir: str
    adapter_sha256: str
    steps: int
    stopped_early: bool
    forget_probability: float
    forget_known: int
    final_loss: float
    seconds: float
    config: dict[str, Any]
    n_forget: int
    n_retain: int
    stop_target: float | None = None
    adapter_scale: float = 1.0
    timings: dict[str, float] = field(default_factory=dict)
    stop_checks: int = 0
    preferred_from: int | None = None
    loss_history: list[float] = field(default_factory=list)
    model: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (everything but the model)."""
        out = dataclasses.asdict(dataclasses.replace(self, model=None))
        out.pop("model")
        return out


def forget_items(forget: Sequence[Example], include_paraphrases: bool) -> list[Example]:
    """The forget set as trained on: each item, plus (if asked) one item per paraphrased
    prompt; an identical (prompt, answer) pair is kept once, since the corpora repeat a
    fact's paraphrases on each of its rows and duplicates would weigh it more."""
    items: list[Example] = []
    seen: set[tuple[str, str]] = set()
    for ex in forget:
        variants = [ex]
        if include_paraphrases:
            variants += [dataclasses.replace(ex, prompt=p, paraphrased_prompts=())
                         for p in ex.paraphrased_prompts]
        for item in variants:
            if (item.prompt, item.target) not in seen:
                seen.add((item.prompt, item.target))
                items.append(item)
    return items


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


@dataclass
class ItemScores:
    """Per-item scores of a list of examples under one model (CPU tensors, aligned with
    the examples): ``logp`` summed answer log-likelihood (nats, answer tokens + EOS),
    ``count`` number of those tokens, ``known`` whether every answer token (EOS aside) is
    the model's argmax given the true prefix, i.e. greedy decoding still says the answer;
    ``min_k`` (when asked for) the Min-K% membership score, the mean of the lowest 40 % of
    the answer-token log-likelihoods (:func:`workers.engine.metrics.min_k_mean`)."""

    logp: torch.Tensor
    count: torch.Tensor
    known: torch.Tensor
    min_k: torch.Tensor | None = None

    @property
    def item_probability(self) -> torch.Tensor:
        """Per item, exp(mean answer-token log-likelihood): the per-token answer probability."""
        return torch.exp(self.logp / self.count.clamp(min=1))

    @property
    def mean_probability(self) -> float:
        """Mean over items of :attr:`item_probability`: the verifier's measure."""
        return float(self.item_probability.mean())


@torch.no_grad()
def score_items(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_length: int = 128,
    batch_size: int = 32,
    rows: Sequence[TokenRow] | None = None,
    min_k: bool = False,
) -> ItemScores:
    """:class:`ItemScores` of ``examples`` under ``model`` in eval mode (one forward pass
    per batch, no generation), in the order given. ``rows``: the examples already
    tokenised (:func:`qa.tokenize` with the same ``max_length``), for callers that score
    the same items again and again. ``min_k``: also the Min-K% score of each item.

    Batches are cut from the rows sorted by length, so that a batch pads its rows to
    about their own length: on the 200 forget and 200 never-seen items of a TOFU forget05
    stop check this scores 30 % fewer positions than batches in the given order."""
    from workers.engine.metrics import min_k_mean

    if rows is None:
        rows = [tokenize(tokenizer, ex, max_length) for ex in examples]
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id

    def score(_: list[int], batch: dict[str, torch.Tensor]
              ) -> Iterable[tuple[float, int, bool, float]]:
        out = answer_logits(model, batch)
        logp, mask, labels = out.logprobs(), out.mask, out.targets
        hit = out.laid_out(out.logits.argmax(-1) == labels[mask])
        scored = mask & (labels != eos) if eos is not None else mask
        mks = ([min_k_mean(lp[m].float().tolist()) for lp, m in zip(logp, mask, strict=True)]
               if min_k else [math.nan] * len(logp))
        return zip(logp.sum(-1).float().tolist(), mask.sum(-1).tolist(),
                   (hit | ~scored).all(-1).tolist(), mks, strict=True)

    done = by_length(rows, batch_size, pad_id(tokenizer), _device_of(model), score)
    model.train(was_training)
    logps, counts, known, mks = zip(*done, strict=True) if done else ((), (), (), ())
    return ItemScores(torch.tensor(logps, dtype=torch.float32),
                      torch.tensor(counts, dtype=torch.long),
                      torch.tensor(known, dtype=torch.bool),
                      torch.tensor(mks, dtype=torch.float32) if min_k else None)


def cycle_indices(n: int, generator: torch.Generator) -> Iterator[int]:
    """Endless stream of indices into ``n`` items: a fresh seeded permutation per pass."""
    while True:
        yield from torch.randperm(n, generator=generator).tolist()


class RetainSampler:
    """Draws retain batches (indices into the retain list), deterministic in its generator.

    ``1 − hard_share`` of each batch cycles through the whole retain set in seeded random
    order; ``hard_share`` replays the items seen so far whose answer NLL (nats/token, as
    last measured in a training batch) is highest and above ``hard_nll``. Forgetting does
    not damage other facts evenly — it pushes probability towards some generic answer
    that then wins for whichever people were learnt least firmly — so the retain term
    spends its effort where the damage shows, at no extra forward passes.
    """

    def __init__(self, n: int, batch_size: int, hard_share: float, hard_nll: float,
                 generator: torch.Generator) -> None:
        self.size = min(batch_size, n)
        self.n_hard = round(self.size * hard_share)
        self.hard_nll = hard_nll
        self.order = cycle_indices(n, generator)
        self.nll: dict[int, float] = {}

    def draw(self) -> list[int]:
        damaged = sorted(
            (i for i, v in self.nll.items() if v > self.hard_nll),
            key=lambda i: (-self.nll[i], i),
        )[: self.n_hard]
        picked = list(damaged)
        while len(picked) < self.size:
            i = next(self.order)
            if i not in damaged:
                picked.append(i)
        return picked

    def update(self, indices: Sequence[int], nll: torch.Tensor) -> None:
        for i, v in zip(indices, nll.tolist(), strict=True):
            self.nll[i] = v


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO forget loss ``(2/β)·mean softplus(β·(logπ_θ − logπ_ref))`` (= −(2/β)·mean
    logσ(−β·Δ)); starts at ``(2/β)·ln 2`` and falls towards 0 as the answers get less likely."""
    return (2.0 / beta) * F.softplus(beta * (logp - ref_logp)).mean()
