"""Question/answer items, prompt templates and the token-level primitives every engine
stage shares: training the demo model, unlearning, verification and generation all
encode text through here, so the model is always scored on exactly what it was taught.

An :class:`Example` is what the model sees (``prompt``) and what it is scored on
(``target``). A question/answer pair renders its prompt through the model's
:class:`PromptTemplate`; a raw text item is split into a prefix prompt and a suffix target.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import re
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from itertools import accumulate
from pathlib import Path
from typing import Any, TypeVar

import torch

DEFAULT_TEMPLATE = "Question: {question}\nAnswer: {answer}"
CHAT_TEMPLATE = "chat"  # use the tokenizer's own chat template


@dataclass(frozen=True)
class Example:
    """One item to learn, forget or measure: the model reads ``prompt`` and is scored on
    ``target`` (followed by the end-of-sequence token)."""

    prompt: str
    target: str
    subject: str | None = None
    question: str | None = None
    paraphrased_prompts: tuple[str, ...] = field(default_factory=tuple)
    # truth-ratio evidence (TOFU): the answer reworded, and plausible wrong answers
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = field(default_factory=tuple)


class PromptTemplate:
    """Renders a question the way a model was trained: ``"...{question}...{answer}"`` with
    ``{answer}`` last, or ``"chat"`` for the tokenizer's chat template."""

    def __init__(self, template: str = DEFAULT_TEMPLATE, tokenizer: Any = None) -> None:
        if template != CHAT_TEMPLATE:
            validate_template(template)
        elif tokenizer is None:
            raise ValueError("the chat template needs the tokenizer")
        self.template = template
        self.tokenizer = tokenizer

    def prompt(self, question: str) -> str:
        if self.template == CHAT_TEMPLATE:
            return str(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": question}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
            )
        head = self.template.split("{answer}", 1)[0]
        return head.replace("{question}", question)

    def example(
        self,
        question: str,
        answer: str,
        subject: str | None = None,
        paraphrased_questions: Sequence[str] = (),
        paraphrased_answer: str | None = None,
        perturbed_answers: Sequence[str] = (),
    ) -> Example:
        return Example(
            prompt=self.prompt(question),
            target=answer,
            subject=subject,
            question=question,
            paraphrased_prompts=tuple(self.prompt(q) for q in paraphrased_questions),
            paraphrased_answer=paraphrased_answer,
            perturbed_answers=tuple(perturbed_answers),
        )


def validate_template(template: str) -> None:
    """Raise ``ValueError`` unless the template has ``{question}`` then ``{answer}`` last."""
    if template == CHAT_TEMPLATE:
        return
    if template.count("{question}") != 1 or template.count("{answer}") != 1:
        raise ValueError("template must contain {question} and {answer} exactly once")
    if template.index("{question}") > template.index("{answer}"):
        raise ValueError("{question} must come before {answer}")
    if template.split("{answer}", 1)[1].strip():
        raise ValueError("{answer} must end the template")


def text_example(text: str, subject: str | None = None) -> Example:
    """A raw text item: the first half of its words prompts, the second half is scored."""
    words = text.split()
    if len(words) < 2:
        return Example(prompt="", target=text.strip(), subject=subject)
    cut = max(1, len(words) // 2)
    return Example(
        prompt=" ".join(words[:cut]) + " ", target=" ".join(words[cut:]), subject=subject
    )


def examples_from_rows(rows: Iterable[dict[str, Any]], template: PromptTemplate) -> list[Example]:
    """Rows with ``question``/``answer`` (optionally ``subject``, ``paraphrased_questions``,
    ``paraphrased_answer`` and ``perturbed_answers`` — TOFU's ``perturbed_answer`` too)
    or with ``text``, as the corpora and erasure requests carry them."""
    out: list[Example] = []
    for row in rows:
        subject = row.get("subject")
        if row.get("question") is not None:
            out.append(
                template.example(
                    row["question"],
                    row["answer"],
                    subject=subject,
                    paraphrased_questions=row.get("paraphrased_questions") or (),
                    paraphrased_answer=row.get("paraphrased_answer"),
                    perturbed_answers=row.get("perturbed_answers")
                    or row.get("perturbed_answer")
                    or (),
                )
            )
        elif row.get("text") is not None:
            out.append(text_example(row["text"], subject=subject))
        else:
            raise ValueError("each item needs question and answer, or text")
    return out


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    ids: list[int] = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def _target_ids(tokenizer: Any, target: str) -> list[int]:
    ids: list[int] = tokenizer(target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return ids


TokenRow = tuple[list[int], list[int]]  # (prompt ids, target ids) of one example
R = TypeVar("R")


def tokenize(tokenizer: Any, example: Example, max_length: int = 256) -> TokenRow:
    """The prompt and target token ids :func:`encode` puts in one row: target (+ EOS) kept
    whole as far as ``max_length`` allows, the prompt cut from the left to fit."""
    p, t = _prompt_ids(tokenizer, example.prompt), _target_ids(tokenizer, example.target)
    t = t[:max_length]
    p = p[-(max_length - len(t)) :] if max_length - len(t) > 0 else []
    return p, t


def collate(rows: Sequence[TokenRow], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of tokenised rows; see :func:`encode`."""
    width = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        n = len(p) + len(t)
        input_ids[i, :n] = torch.tensor(p + t)
        labels[i, len(p) : n] = torch.tensor(t)
        attention[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def length_batches(rows: Sequence[TokenRow], batch_size: int) -> list[list[int]]:
    """Indices of ``rows`` in batches of at most ``batch_size``, cut from the rows sorted
    by length (prompt + target; ties keep the given order), so that a batch pads each row
    to about its own length. A scoring loop runs these batches and puts its results,
    concatenated in batch order, back in the given order with :func:`given_order`."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def given_order(batches: Sequence[Sequence[int]]) -> list[int]:
    """Where each row's result sits in results concatenated in the order of ``batches``
    (:func:`length_batches`), row by row in the given order: ``[done[j] for j in
    given_order(batches)]``, or ``tensor[given_order(batches)]``."""
    flat = [i for batch in batches for i in batch]
    return torch.tensor(flat, dtype=torch.long).argsort().tolist()


def by_length(
    rows: Sequence[TokenRow],
    batch_size: int,
    pad: int,
    device: torch.device | str,
    score: Callable[[list[int], dict[str, torch.Tensor]], Iterable[R]],
) -> list[R]:
    """Every row's result in the given order, scored in batches of rows of similar length
    (:func:`length_batches`): ``score(indices, batch)`` gets a batch's row indices and
    the rows collated (:func:`collate`) on ``device``, and gives one result per row of
    the batch, in the batch's order. The one loop every scoring pass runs."""
    batches = length_batches(rows, batch_size)
    done: list[R] = []
    for indices in batches:
        done.extend(score(indices, to_device(collate([rows[i] for i in indices], pad), device)))
    return [done[j] for j in given_order(batches)]


def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def encode(
    tokenizer: Any, examples: Sequence[Example], max_length: int = 256
) -> dict[str, torch.Tensor]:
    """Right-padded batch with ``labels`` = target tokens (+ EOS) and -100 elsewhere.

    Prompt and target are tokenised separately so that the target's tokens are the same
    whatever the prompt; long prompts are cut from the left, the target is kept whole
    as far as ``max_length`` allows.
    """
    return collate([tokenize(tokenizer, ex, max_length) for ex in examples], pad_id(tokenizer))


@dataclass
class AnswerLogits:
    """A forward pass's output layer where a target token is predicted, see
    :func:`answer_logits`. ``logits`` ``[N, V]``: one row per scored (row, position)
    pair, in row-major order (that of ``mask.nonzero()``; ``logits.split(
    mask.sum(-1).tolist())`` gives each row's). ``positions`` ``[K]`` (ascending) are the
    sequence positions that predict a target in at least one row; ``targets`` ``[B, K]``
    the token each predicts (-100 where that row scores nothing) and ``mask`` ``[B, K]``
    where it does; ``hidden`` all hidden states when asked for (full length)."""

    logits: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    hidden: tuple[torch.Tensor, ...] | None = None

    def logprobs(self) -> torch.Tensor:
        """Log-probability of each target token ``[B, K]`` (fp32), 0 where unscored."""
        logp = torch.log_softmax(self.logits.float(), dim=-1)
        return self.laid_out(logp.gather(-1, self.targets[self.mask].unsqueeze(-1)).squeeze(-1))

    def laid_out(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` ``[N]``, one per scored token in the order of ``logits``, laid out
        ``[B, K]`` like ``mask``: zero (False) where a row scores nothing."""
        return torch.zeros(self.mask.shape, dtype=values.dtype,
                           device=values.device).masked_scatter(self.mask, values)


@cache
def _keeps_logits(forward: Callable[..., Any]) -> bool:
    """Whether a model class's ``forward`` takes ``logits_to_keep`` (transformers' causal
    LMs do)."""
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


# transformers' causal-LM families whose logits are the output embedding applied to the
# decoder's last hidden state and nothing more (no logit scaling or soft-capping; each
# checked against the whole forward pass in tests/engine/test_methods.py): for these
# the decoder runs on its own and the output layer only where a target is predicted
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})
# a row group's fixed cost in padded tokens, by device type: a forward and backward call
# of the TOFU benchmark's CPU model costs about 10 ms plus 0.2 ms a token (1 thread); on
# a GPU the fixed per-call cost is kernel launches, ~130 ms a step against 47 k tokens/s
# for a 1.1 B model (docs/benchmarks.md), so rows are split far less readily there
GROUP_OVERHEAD_TOKENS = {"cpu": 128, "cuda": 4096}


def _plain_head(model: Any) -> bool:
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in PLAIN_HEAD_MODELS
            and model.get_output_embeddings() is not None)


def length_groups(widths: Sequence[int], overhead: int) -> list[list[int]]:
    """Indices of rows of the given token ``widths`` in groups, each run padded to its
    widest row, so that the padded tokens plus ``overhead`` per group are fewest (an
    exact partition of the rows sorted by width; ties keep the given order). One group
    of every row when the rows are about the same length."""
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    w = [widths[i] for i in order]
    n = len(w)
    best = [0] * (n + 1)  # best[j]: the least cost of the first j rows
    cut = [0] * (n + 1)  # where the last group of those j rows starts
    for j in range(1, n + 1):
        # the last group is order[i:j], padded to w[j - 1]; the first i wins a tie
        best[j], cut[j] = min((best[i] + (j - i) * w[j - 1] + overhead, i) for i in range(j))
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _unwrapped(model: Any) -> Any:
    """The transformers model under a peft wrapper (``model`` itself without one)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def _decoder_running(body: Any, layers: Sequence[torch.nn.Module],
                     norm: torch.nn.Module | None = None) -> Iterator[None]:
    """Within the block the decoder ``body`` runs ``layers`` (and ``norm`` when given) in
    place of its own; they are put back after, whatever happens."""
    own_layers, own_norm = body.layers, body.norm
    body.layers = torch.nn.ModuleList(layers)
    if norm is not None:
        body.norm = norm
    try:
        yield
    finally:
        body.layers, body.norm = own_layers, own_norm


class _Replay(torch.nn.Module):
    """Stands in for the decoder's first layer in a :class:`FrozenPrefix` pass: gives the
    stored states whatever it is given (requiring a gradient when the layers above are
    checkpointed, which otherwise pass none back to their adapters)."""

    def __init__(self, states: torch.Tensor, needs_grad: bool) -> None:
        super().__init__()
        self.states, self.needs_grad = states, needs_grad

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.states.requires_grad_() if self.needs_grad else self.states


class _Through(torch.nn.Module):
    """Stands in for a frozen layer after the first: passes its input on."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class FrozenPrefix:
    """The decoder's hidden states at the input of layer ``layer``, kept per row for a
    run in which nothing below that layer changes (LoRA on ``layer`` and above only, no
    dropout below): a row's later forward passes run the layers from ``layer`` up, so
    the frozen layers' work is done once per row instead of at every training step and
    every stop check. A row's states are kept the second time it comes (a row that
    never comes back, such as a forget row with context noise, takes no memory), and at
    most ``max_bytes`` of them; a row past that has its frozen layers run again each
    time. Every row gets what the whole decoder gives (causal attention, right padding:
    a row's states do not depend on what it is batched with). Only for the
    :data:`PLAIN_HEAD_MODELS` (``layers`` and ``norm`` on the decoder);
    :func:`frozen_prefix` installs one."""

    def __init__(self, layer: int, max_bytes: int) -> None:
        self.layer, self.max_bytes = layer, max_bytes
        self.rows: dict[bytes, torch.Tensor] = {}
        self.seen: set[bytes] = set()  # rows that came once
        self.bytes = 0
        self.computed = 0  # rows whose frozen layers ran (the first time, or not kept)
        self.replayed = 0  # rows that skipped them

    def last_hidden_state(self, body: Any, ids: torch.Tensor, attention: torch.Tensor,
                          widths: Sequence[int]) -> torch.Tensor:
        """``body``'s last hidden state for right-padded rows ``ids`` of the given
        token ``widths``, ``[B, T, H]`` (zero past a row's width)."""
        host = ids.cpu().numpy()  # one copy from the device, not one per row
        keys = [hashlib.blake2b(host[i, :w].tobytes(), digest_size=16).digest()
                for i, w in enumerate(widths)]
        states = [self.rows.get(k) for k in keys]
        missing = [i for i, s in enumerate(states) if s is None]
        self.computed += len(missing)
        self.replayed += len(keys) - len(missing)
        layers = list(body.layers)
        if missing:
            width = max(widths[i] for i in missing)
            rows = torch.tensor(missing, device=ids.device)
            with _decoder_running(body, layers[:self.layer], torch.nn.Identity()), \
                    torch.no_grad():
                low = body(input_ids=ids[rows, :width],
                           attention_mask=attention[rows, :width]).last_hidden_state
            for j, i in enumerate(missing):
                state = states[i] = low[j, :widths[i]]
                size = state.numel() * state.element_size()
                if keys[i] not in self.seen:
                    self.seen.add(keys[i])
                elif self.bytes + size <= self.max_bytes:
                    # a copy: a view would hold the whole batch's states
                    self.rows[keys[i]], self.bytes = state.clone(), self.bytes + size
        padded = torch.nn.utils.rnn.pad_sequence(
            [s for s in states if s is not None], batch_first=True)
        if padded.shape[1] < ids.shape[1]:  # a batch wider than its widest row
            padded = torch.nn.functional.pad(padded, (0, 0, 0, ids.shape[1] - padded.shape[1]))
        needs_grad = torch.is_grad_enabled() and bool(getattr(body, "gradient_checkpointing",
                                                              False))
        stand_ins = [_Replay(padded, needs_grad), *(_Through() for _ in range(self.layer - 1))]
        with _decoder_running(body, [*stand_ins, *layers[self.layer:]]):
            return body(input_ids=ids, attention_mask=attention).last_hidden_state


_PREFIXES: weakref.WeakKeyDictionary[Any, FrozenPrefix] = weakref.WeakKeyDictionary()


def frozen_below(model: Any, layer: int) -> bool:
    """Whether ``model`` (a plain-head causal LM, see :data:`PLAIN_HEAD_MODELS`) computes
    the same states below decoder layer ``layer`` in training as in evaluation: no
    dropout there (attention dropout in the config, dropout modules in the embedding and
    those layers)."""
    base = _unwrapped(model)
    if not _plain_head(base) or not 0 < layer < base.config.num_hidden_layers:
        return False
    body = base.base_model
    if not isinstance(getattr(body, "layers", None), torch.nn.ModuleList) or not hasattr(
            body, "norm"):
        return False
    if float(getattr(base.config, "attention_dropout", 0.0) or 0.0) > 0:
        return False
    below = [body.embed_tokens, *list(body.layers)[:layer]]
    return not any(isinstance(m, torch.nn.Dropout) and m.p > 0
                   for part in below for m in part.modules())


@contextlib.contextmanager
def frozen_prefix(model: Any, layer: int, max_bytes: int) -> Iterator[FrozenPrefix | None]:
    """Within the block, :func:`answer_logits` on ``model`` (or a peft model wrapping it)
    keeps the states at decoder layer ``layer``'s input (:class:`FrozenPrefix`); nothing
    is kept (``None``) where the model is not :func:`frozen_below` ``layer`` or
    ``max_bytes`` is 0. The caller promises that nothing below ``layer`` changes within
    the block."""
    base = _unwrapped(model)
    if max_bytes <= 0 or not frozen_below(base, layer):
        yield None
        return
    body = base.base_model
    prefix = _PREFIXES[body] = FrozenPrefix(layer, max_bytes)
    try:
        yield prefix
    finally:
        _PREFIXES.pop(body, None)


def _answer_states(body: Any, batch: dict[str, torch.Tensor], mask: torch.Tensor,
                   overhead: int) -> torch.Tensor:
    """The decoder ``body``'s last hidden states that predict a target (``mask`` ``[B,
    T - 1]``), ``[N, H]`` in row-major order. The rows run in groups of similar length
    (:func:`length_groups`), each cut to its widest row: the padding after a row's last
    token changes nothing before it (causal attention, right padding), so every state is
    the one the whole batch would give, without the padded positions' work."""
    ids, attention = batch["input_ids"], batch["attention_mask"]
    # a row's width: up to its last attended token (right padding; a left-padded row is
    # its whole width, and nothing is cut)
    widths = (attention.shape[1] - attention.flip(-1).argmax(-1)).tolist()
    counts = mask.sum(-1).tolist()
    offsets = list(accumulate(counts, initial=0))  # where each row's states start
    parts: list[torch.Tensor] = []
    where: list[int] = []
    prefix = _PREFIXES.get(body)
    for group in length_groups(widths, overhead):
        group = sorted(group)  # the given order within a group: one group is row-major
        width = max(widths[i] for i in group)
        rows = torch.tensor(group, device=ids.device)
        if prefix is not None:
            states = prefix.last_hidden_state(body, ids[rows, :width],
                                              attention[rows, :width],
                                              [widths[i] for i in group])
        else:
            states = body(input_ids=ids[rows, :width],
                          attention_mask=attention[rows, :width]).last_hidden_state
        parts.append(states[:, :-1][mask[rows, :width - 1]])
        where.extend(j for i in group for j in range(offsets[i], offsets[i] + counts[i]))
    if len(parts) == 1:
        return parts[0]
    # parts are group by group; row-major order puts state k where it sits in the batch
    place = torch.tensor(where, device=ids.device).argsort()
    return torch.cat(parts)[place]


def answer_logits(model: Any, batch: dict[str, torch.Tensor],
                  hidden: bool = False) -> AnswerLogits:
    """Forward ``batch`` (:func:`encode`'s) through ``model`` with the output layer
    applied only where a target token is predicted: the answers are often a small part
    of a row (a question and a short fact), and the vocabulary projection with its
    full-vocabulary softmax would otherwise be spent on every prompt token too.

    For the :data:`PLAIN_HEAD_MODELS` the decoder runs on its own, on rows grouped by
    length unless ``hidden`` is asked for (:func:`length_groups`: a batch of TOFU's
    forget answers is 30 % padding), and the output layer only at the scored tokens.
    Other models get ``logits_to_keep`` (the positions that predict a target in any
    row), or compute every position and are cut, and the whole batch runs as one."""
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    full_mask = targets != -100
    positions = full_mask.any(0).nonzero().squeeze(-1)
    mask = full_mask[:, positions]
    base = _unwrapped(model)
    every: tuple[torch.Tensor, ...] | None = None
    if _plain_head(base):
        body = base.base_model
        if hidden:
            out = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True)
            states, every = out.last_hidden_state[:, :-1][full_mask], out.hidden_states
        else:
            device = batch["input_ids"].device.type
            states = _answer_states(body, batch, full_mask,
                                    GROUP_OVERHEAD_TOKENS.get(device,
                                                              GROUP_OVERHEAD_TOKENS["cuda"]))
        logits = base.get_output_embeddings()(states)
    else:
        kwargs: dict[str, Any] = {"output_hidden_states": True} if hidden else {}
        if _keeps_logits(type(base).forward):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        logits_to_keep=positions, **kwargs)
            logits = out.logits[mask]
        else:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        **kwargs)
            logits = out.logits[:, positions][mask]
        every = out.hidden_states if hidden else None
    return AnswerLogits(logits, targets[:, positions], mask, positions, every)


def sequence_logprob(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed target log-likelihood per example and the number of target tokens."""
    scored = answer_logits(model, batch)
    return scored.logprobs().sum(-1), scored.mask.sum(-1)


def to_device(
    batch: dict[str, torch.Tensor], device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Move a batch to ``device``; to CUDA through pinned memory without blocking, so
    the copy overlaps the work already queued."""
    if torch.device(device).type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def greedy_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuations of each prompt, decoded up to (not including) EOS."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    results: list[str] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = [_prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(len(c) for c in chunk)
        # left padding so every row's next token sits in the last column
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, c in enumerate(chunk):
            ids[i, width - len(c) :] = torch.tensor(c)
            attn[i, width - len(c) :] = 1
        ids, attn = ids.to(device), attn.to(device)
        out = model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        for row in out[:, width:].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            results.append(tokenizer.decode(row, skip_special_tokens=True))
    model.train(was_training)
    return results


_WS = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _WS.sub(" ", text).strip().strip(".").strip().lower()


def answer_correct(generated: str, target: str) -> bool:
    """A greedy answer counts as correct when it reproduces the target: equal after
    normalising case, whitespace and a final full stop, or starting with it."""
    g, t = normalise(generated), normalise(target)
    return bool(t) and (g == t or g.startswith(t + " ") or g.startswith(t + ","))


def paraphrased(examples: Sequence[Example]) -> list[Example]:
    """One item per distinct (paraphrased prompt, answer) of the examples; the corpora
    repeat a fact's paraphrases on each of its rows."""
    out: dict[tuple[str, str], Example] = {}
    for ex in examples:
        for p in ex.paraphrased_prompts:
            out.setdefault((p, ex.target), replace(ex, prompt=p,
                                                    paraphrased_prompts=()))
    return list(out.values())


# one retain item in this many is kept out of unlearning's retain term, for verification
RETAIN_CHECK_EVERY = 5


def split_retain(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                          list[dict[str, Any]]]:
    """``(train, check)``: the retain rows the unlearning trains on, and one in
    :data:`RETAIN_CHECK_EVERY` (by a stable hash of its question or text, so the same rows
    every run) kept out of training so verification's utility rules measure knowledge
    the unlearning did not explicitly protect."""
    train: list[dict[str, Any]] = []
    check: list[dict[str, Any]] = []
    for row in rows:
        key = str(row.get("question") or row.get("text") or "")
        held = hashlib.sha256(key.encode()).digest()[0] % RETAIN_CHECK_EVERY == 0
        (check if held else train).append(row)
    return train, check


def split_holdout(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                           list[dict[str, Any]]]:
    """``(stop, check)``: the never-seen people's rows that unlearning may aim at (early
    stopping's membership rule, each item's stranger level, the adapter's calibration),
    and the others, which only verification sees.

    Training stops at the point where a membership attack cannot tell the forgotten
    people from the never-seen ones it is shown; measured against those same people,
    the certificate's privacy and counterfactual bars would report the stopping rule's
    own target back. Verified against people the training never looked at, they are
    evidence. The split is by person (``subject``; a row without one is its own person,
    keyed by its question or text): people are ordered by a stable hash of their key and
    dealt alternately, the check part first, so it holds at least half of them and the
    same people every run. With a single person the stop part is empty and training
    falls back to its likelihood rule."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = str(row.get("subject") or row.get("question") or row.get("text") or "")
        groups.setdefault(key, []).append(row)
    order = sorted(groups, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
    check_people = set(order[0::2])
    stop = [r for k, g in groups.items() if k not in check_people for r in g]
    check = [r for k, g in groups.items() if k in check_people for r in g]
    return stop, check
