"""Unlearning by NPO (Negative Preference Optimization, Zhang et al. 2024) with a retain
NLL term, training only a LoRA adapter on top of the current model version.

Loss per step (see ``/work/shared/UNLEARNING.md``)::

    L = γ · (2/β) · mean_forget softplus(β · (logπ_θ(y|x) − logπ_ref(y|x)))
      + α · NLL_retain

``softplus(z) = −logσ(−z)``, so the first term is the literature's
``−(2/β)·mean logσ(−β·(logπ_θ − logπ_ref))``. ``logπ`` is the summed log-likelihood of
the answer tokens (+ EOS), ``NLL_retain`` the mean per-token negative log-likelihood of
the retain answers. The reference ``π_ref`` is the model as given (the parent version,
before the adapter); its forget log-likelihoods are computed once, before training.

The candidate model is returned in memory as ``UnlearnResult.model`` (the peft wrapper,
adapter active, unmerged) so the verifier can measure it without touching disk, and the
adapter is saved so that ``versions.load_version(base, [*chain, result.adapter_dir])``
rebuilds the same model later.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from workers.engine.qa import Example, encode, sequence_logprob, to_device, token_logprobs
from workers.engine.versions import sha256_file

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
    """Raised by :func:`unlearn` when ``on_progress`` returned ``False``. The caller's
    model has been restored (the LoRA layers removed) and nothing was saved."""

    def __init__(self, step: int, total_steps: int) -> None:
        super().__init__(f"unlearning cancelled at step {step}/{total_steps}")
        self.step = step
        self.total_steps = total_steps


@dataclass
class NPOConfig:
    """Hyper-parameters of one NPO unlearning run.

    Loss weights: ``beta`` (β, NPO temperature), ``forget_weight`` (γ), ``retain_weight``
    (α), as in UNLEARNING.md. ``learning_rate`` is AdamW's constant rate for the LoRA
    parameters (no weight decay; gradients clipped to ``max_grad_norm``).

    Length: at most ``max_steps`` optimiser steps when set, else ``epochs`` passes over the
    forget items (a pass = ``ceil(n_forget_items / batch_size)`` steps). With
    ``stop_probability`` set, training stops early at the end of the first pass after
    which no forget answer is the greedy answer any more and the forget items' mean
    answer probability (the verifier's measure) is ≤ ``stop_probability``: the budget is a
    cap, and people who are forgotten quickly cost the others less.

    Batches: each step sees ``batch_size`` forget items and ``retain_batch_size``
    (default: ``batch_size``) retain items, of which a ``retain_hard_share`` are the
    retain items seen so far with the highest answer NLL above ``retain_hard_nll``
    (nats/token) — the facts unlearning is currently damaging — and the rest a seeded
    random cycle through the retain set. ``include_paraphrases`` adds each forget item's
    paraphrased prompts as further forget items, so the fact is forgotten, not one
    phrasing of it. ``max_length`` is in tokens (prompt + answer).

    LoRA: ``lora_rank``, ``lora_alpha`` (scale = alpha / rank), ``lora_dropout``,
    ``target_modules`` (default every linear projection of a Llama-style block; peft's
    ``"all-linear"`` works for other architectures).

    Defaults were measured on the tiny and small demo models (see the engine's report):
    they forget one person to below the holdout level while keeping ≥ 0.95 of the
    retain accuracy, in a few tens of steps.
    """

    beta: float = 0.1
    retain_weight: float = 1.0
    forget_weight: float = 1.0
    learning_rate: float = 1e-3
    epochs: int = 30
    max_steps: int | None = None
    stop_probability: float | None = 0.15
    batch_size: int = 8
    retain_batch_size: int | None = 32
    retain_hard_share: float = 0.5
    retain_hard_nll: float = 0.1
    include_paraphrases: bool = True
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: list(LLAMA_LINEAR_MODULES))
    max_length: int = 128
    max_grad_norm: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class UnlearnResult:
    """Outcome of :func:`unlearn`.

    ``adapter_dir`` holds ``adapter_model.safetensors`` + ``adapter_config.json``;
    ``adapter_sha256`` is the hex SHA-256 of the weights file. ``final_loss`` is the last
    step's total loss, ``seconds`` wall-clock time of the whole call (reference pass,
    training, saving). ``model`` is the candidate: the peft-wrapped model, adapter active,
    in eval mode — the same object the caller passed in, now with LoRA layers injected
    (``model.unload()`` gives the parent back, ``model.merge_and_unload()`` a plain model).
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
    the model's argmax given the true prefix, i.e. greedy decoding still says the answer."""

    logp: torch.Tensor
    count: torch.Tensor
    known: torch.Tensor

    @property
    def mean_probability(self) -> float:
        """Mean over items of exp(mean answer-token log-likelihood): the verifier's measure."""
        return float(torch.exp(self.logp / self.count.clamp(min=1)).mean())


@torch.no_grad()
def score_items(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_length: int = 128,
    batch_size: int = 32,
) -> ItemScores:
    """:class:`ItemScores` of ``examples`` under ``model`` in eval mode (one forward pass
    per batch, no generation)."""
    device = _device_of(model)
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    logps: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    known: list[torch.Tensor] = []
    for start in range(0, len(examples), batch_size):
        batch = to_device(encode(tokenizer, examples[start : start + batch_size], max_length),
                          device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, mask = token_logprobs(logits, batch["labels"])
        labels = batch["labels"][:, 1:]
        hit = logits[:, :-1, :].argmax(-1) == labels
        scored = mask & (labels != eos) if eos is not None else mask
        logps.append(logp.sum(-1).float().cpu())
        counts.append(mask.sum(-1).cpu())
        known.append((hit | ~scored).all(-1).cpu())
    model.train(was_training)
    if not logps:
        empty = torch.zeros(0)
        return ItemScores(empty, empty.long(), empty.bool())
    return ItemScores(torch.cat(logps), torch.cat(counts), torch.cat(known))


def _epochs_of_indices(n: int, generator: torch.Generator) -> Iterator[int]:
    """Endless stream of indices into ``n`` items: a fresh seeded permutation per pass."""
    while True:
        yield from torch.randperm(n, generator=generator).tolist()


class _RetainSampler:
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
        self.order = _epochs_of_indices(n, generator)
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


def unlearn(
    model: Any,
    tokenizer: Any,
    forget: Sequence[Example],
    retain: Sequence[Example],
    config: NPOConfig | None = None,
    out_dir: str | Path = "adapter",
    on_progress: ProgressCallback | None = None,
) -> UnlearnResult:
    """Train a LoRA adapter that makes ``model`` forget ``forget`` while keeping ``retain``.

    ``model`` is the current version (a plain merged model, e.g. from ``load_version``)
    and also serves as the NPO reference. It is modified in place: LoRA layers are
    injected and the returned ``UnlearnResult.model`` wraps it. ``on_progress(step,
    total_steps, loss)`` is called after every optimiser step (``step`` counts from 1,
    ``loss`` is that step's total loss); returning ``False`` (not merely a falsy value)
    stops training and raises :class:`Cancelled`, after removing the LoRA layers again so
    the caller's model is unchanged. The adapter is saved to ``out_dir`` with safetensors.
    Deterministic given ``config.seed`` (on the same hardware and thread count).
    """
    from peft import LoraConfig, get_peft_model

    cfg = config or NPOConfig()
    if not forget:
        raise ValueError("nothing to forget")
    if not retain and cfg.retain_weight > 0:
        raise ValueError("a retain set is needed when retain_weight > 0")
    started = time.perf_counter()
    device = _device_of(model)
    items = forget_items(forget, cfg.include_paraphrases)
    retain_list = list(retain)
    retain_bs = cfg.retain_batch_size or cfg.batch_size

    # The reference is the parent version: score the forget items once, before any
    # adapter exists, instead of running a frozen copy every step.
    scores = score_items(model, tokenizer, items, cfg.max_length)
    ref = scores.logp.to(device)

    torch.manual_seed(cfg.seed)  # LoRA A's initialisation draws from the global RNG
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)

    steps_per_epoch = math.ceil(len(items) / cfg.batch_size)
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    forget_order = _epochs_of_indices(len(items), gen)
    sampler = (
        _RetainSampler(len(retain_list), retain_bs, cfg.retain_hard_share, cfg.retain_hard_nll,
                       gen)
        if retain_list and cfg.retain_weight > 0
        else None
    )

    history: list[float] = []
    loss_value = float("nan")
    step = 0
    stopped_early = False
    try:
        peft_model.train()
        while step < total_steps:
            step += 1
            idx = [next(forget_order) for _ in range(min(cfg.batch_size, len(items)))]
            batch = to_device(encode(tokenizer, [items[i] for i in idx], cfg.max_length), device)
            logp, _ = sequence_logprob(peft_model, batch)
            loss = cfg.forget_weight * npo_loss(logp.float(), ref[idx], cfg.beta)
            if sampler is not None:
                ridx = sampler.draw()
                rbatch = encode(tokenizer, [retain_list[i] for i in ridx], cfg.max_length)
                rlogp, rcount = sequence_logprob(peft_model, to_device(rbatch, device))
                rlogp, rcount = rlogp.float(), rcount.clamp(min=1)
                sampler.update(ridx, (-rlogp / rcount).detach().cpu())
                # per-token mean, like the loss the model was trained with
                nll = -rlogp.sum() / rcount.sum()
                loss = loss + cfg.retain_weight * nll
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimiser.step()
            loss_value = float(loss.detach())
            history.append(loss_value)
            if on_progress is not None and on_progress(step, total_steps, loss_value) is False:
                raise Cancelled(step, total_steps)
            if cfg.stop_probability is not None and step % steps_per_epoch == 0:
                # forgotten: no answer is greedy any more and they are about as likely as
                # a stranger's; more steps would only cost other people's facts
                scores = score_items(peft_model, tokenizer, items, cfg.max_length)
                if (not bool(scores.known.any())
                        and scores.mean_probability <= cfg.stop_probability):
                    stopped_early = step < total_steps
                    break
        peft_model.eval()
        if cfg.stop_probability is None or step % steps_per_epoch:
            scores = score_items(peft_model, tokenizer, items, cfg.max_length)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(out), safe_serialization=True)
    except BaseException:
        # leave the caller's model as it was: no LoRA layers, eval mode
        peft_model.unload()
        model.eval()
        raise

    return UnlearnResult(
        adapter_dir=str(out),
        adapter_sha256=sha256_file(out / ADAPTER_WEIGHTS),
        steps=step,
        stopped_early=stopped_early,
        forget_probability=scores.mean_probability,
        forget_known=int(scores.known.sum()),
        final_loss=loss_value,
        seconds=time.perf_counter() - started,
        config=cfg.to_dict(),
        n_forget=len(items),
        n_retain=len(retain_list),
        loss_history=history,
        model=peft_model,
    )
