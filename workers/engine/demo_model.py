"""Build Lethe's own demo model: a small Llama-style causal LM trained from scratch on the
synthetic people of :mod:`workers.engine.corpus`, with no model hub involved.

The result is a standard Hugging Face directory::

    DIR/config.json, model.safetensors, generation_config.json   # LlamaForCausalLM
    DIR/tokenizer.json, tokenizer_config.json, ...                # BPE trained on the corpus
    DIR/data/train.jsonl      # exactly the rows trained on (one per trained question)
    DIR/data/holdout.jsonl    # people never trained on
    DIR/lethe-demo.json       # prompt template and the build report

Training goes through :func:`workers.engine.qa.encode` with the template stored in
``lethe-demo.json``, and accuracy is measured with :func:`workers.engine.qa.greedy_generate`
and :func:`workers.engine.qa.answer_correct`, so unlearning and verification code that
use the same primitives see the model exactly as it was taught.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from workers.engine import corpus as corpus_mod
from workers.engine.qa import (
    DEFAULT_TEMPLATE,
    Example,
    PromptTemplate,
    answer_correct,
    encode,
    examples_from_rows,
    greedy_generate,
    load_jsonl,
    split_holdout,
    split_retain,
    write_jsonl,
)

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
MANIFEST = "lethe-demo.json"

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a build besides the seed.

    ``lr`` is AdamW's peak learning rate; it warms up linearly over the first
    ``warmup_frac`` of the steps and then follows a cosine down to ``lr * final_lr_frac``.
    """

    n_train_people: int
    n_holdout_people: int
    n_trained_variants: int  # canonical question + this many minus one paraphrases
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int  # upper bound for the BPE trainer; the corpus may need fewer
    epochs: int
    batch_size: int
    lr: float
    warmup_frac: float = 0.05
    final_lr_frac: float = 0.02
    weight_decay: float = 0.0
    grad_clip: float = 1.0


RECIPES: dict[str, Recipe] = {
    "small": Recipe(n_train_people=150, n_holdout_people=30, n_trained_variants=3,
                    hidden=128, layers=4, heads=4, intermediate=384, vocab_size=2048,
                    epochs=12, batch_size=16, lr=1e-3),
    "tiny": Recipe(n_train_people=20, n_holdout_people=8, n_trained_variants=3,
                   hidden=128, layers=2, heads=4, intermediate=256, vocab_size=1024,
                   epochs=14, batch_size=8, lr=1e-3),
}


@dataclass
class DemoModelReport:
    """What a build produced and how well the model learnt it.

    Accuracies are fractions in [0, 1] of greedy answers judged correct by
    :func:`qa.answer_correct`: ``train_accuracy`` over every trained question,
    ``paraphrase_accuracy`` over the untrained paraphrase probes of trained facts,
    ``holdout_accuracy`` over the canonical questions of holdout people (chance level).
    ``seconds`` is wall-clock time of the whole build, ``train_seconds`` of the training
    loop alone (both include nothing of the caller's imports, but the first build in a
    process pays transformers' lazy model import, a few seconds); ``final_loss`` is the
    answer-token cross-entropy (nats) averaged over the last epoch's batches.
    """

    size: str
    seed: int
    seconds: float
    train_seconds: float
    parameters: int
    vocab_size: int
    n_train_people: int
    n_holdout_people: int
    n_train_items: int
    n_train_facts: int
    n_paraphrase_probes: int
    n_holdout_items: int
    epochs: int
    steps: int
    train_accuracy: float
    paraphrase_accuracy: float
    holdout_accuracy: float
    final_loss: float
    torch_threads: int
    recipe: dict[str, Any]


def cpu_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def runtime_environment() -> dict[str, Any]:
    """What a trained model's numerics depend on besides the seed and the thread count,
    for benchmark reports: the library versions, the CPU, the instruction set torch's
    own CPU kernels run with and whether MKL's is pinned (different kernels round
    differently, so the same seed trained on another CPU gives another model;
    docs/benchmarks.md, "The same seed on another machine trains other models")."""
    from importlib.metadata import PackageNotFoundError, version

    libs: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "tokenizers"):
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = None
    return {"cpu": _cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            # MKL's code path (its matrix products): chosen by CPU unless this pins it
            "mkl_cbwr": os.environ.get("MKL_CBWR"), "versions": libs}


def _cpu_name() -> str:
    """The CPU's model name as Linux reports it, else what Python's platform says."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_threads() -> int:
    """Torch threads for a build: every core but one, at least one.

    One core is left to the rest of the service (API, broker, database, other jobs): a
    model this small gains little from a second thread (about 1.2x per step, measured on
    two cores) but loses a lot when another process is busy, because the OpenMP
    threads spin waiting for each other (4-70x slower per step, measured).
    """
    return max(1, cpu_cores() - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train_tokenizer(prompts: Sequence[str], targets: Sequence[str], vocab_size: int) -> Any:
    """Byte-level BPE trained on the prompts and answers, as a ``PreTrainedTokenizerFast``.

    Prompts and answers are fed separately because :func:`qa.encode` tokenises them
    separately (an answer starts a fresh word with no leading space); the BOS token is
    added by the post-processor so that ``add_special_tokens=True`` behaves as usual.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*prompts, *targets], trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        padding_side="right", model_max_length=256,
    )


def make_model(recipe: Recipe, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=256,
        # untied: the input and output roles of a token differ a lot in a memorisation task
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _lr_factor(step: int, total: int, warmup: int, final: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy (nats) of the answer tokens, as ``model(**batch).loss`` computes
    it, but with the output layer applied to the answer positions only: they are a few of
    each row's ~20 tokens, and the vocabulary projection would otherwise be wasted work."""
    hidden = model.model(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    scored = labels != -100
    logits = model.lm_head(hidden[:, :-1][scored])
    return torch.nn.functional.cross_entropy(logits.float(), labels[scored])


def train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    recipe: Recipe,
    seed: int,
    on_progress: ProgressFn | None = None,
) -> tuple[int, float]:
    """Answer-only training through :func:`qa.encode`; returns (steps, last-epoch loss)."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(examples) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = max(1, int(total * recipe.warmup_frac))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98),
                            weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, total, warmup, recipe.final_lr_frac)
    )
    # tokenised once: encode() of a subset equals the rows of the full batch cut to width
    device = next(model.parameters()).device
    full = {k: v.to(device) for k, v in encode(tokenizer, examples).items()}
    lengths = full["attention_mask"].sum(1).cpu()
    # on CUDA the matrix products run in bf16 (weights and optimiser stay fp32)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    model.train()
    step, epoch_loss = 0, float("nan")
    report_every = max(1, total // 100)
    for _ in range(recipe.epochs):
        order = torch.randperm(len(examples), generator=gen)
        loss_sum, loss_n = 0.0, 0
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            width = int(lengths[idx].max())
            batch = {k: v[idx.to(device), :width] for k, v in full.items()}
            with autocast:
                loss_t = answer_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            sched.step()
            step += 1
            loss = loss_t.item()
            loss_sum += loss * len(idx)
            loss_n += len(idx)
            if on_progress is not None and (step % report_every == 0 or step == total):
                on_progress(step, total, loss)
        epoch_loss = loss_sum / loss_n
    model.eval()
    return step, epoch_loss


def accuracy(model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of prompts whose greedy continuation reproduces the answer."""
    if not prompts:
        return float("nan")
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    outs = greedy_generate(model, tokenizer, list(prompts), max_new_tokens=longest + 2,
                           batch_size=64)
    return sum(answer_correct(g, a) for g, a in zip(outs, answers, strict=True)) / len(prompts)


def _portable_tokenizer_config(out: Path) -> None:
    """Name the tokenizer class ``PreTrainedTokenizerFast``: transformers 5 writes its
    internal ``TokenizersBackend``, which 4.x (allowed by our requirements) cannot load,
    while 5.x loads either name into the same class."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def build_demo_model(
    out_dir: str | Path,
    size: str = "small",
    seed: int = 0,
    on_progress: ProgressFn | None = None,
    recipe: Recipe | None = None,
    threads: int | None = None,
) -> DemoModelReport:
    """Generate the corpus, train tokenizer and model from scratch, save to ``out_dir``.

    ``size`` picks a recipe from :data:`RECIPES` (``recipe`` overrides it, for
    experiments). ``on_progress(step, total_steps, loss)`` is called about a hundred times
    during training. ``threads`` defaults to :func:`default_threads`; torch's thread
    count is restored afterwards. Deterministic in ``seed`` for a given thread count.
    """
    if recipe is None:
        if size not in RECIPES:
            raise ValueError(f"unknown size {size!r}; choose from {sorted(RECIPES)}")
        recipe = RECIPES[size]
    threads = threads or default_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _build(Path(out_dir), size, seed, recipe, threads, on_progress)
    finally:
        torch.set_num_threads(previous)


def _build(out: Path, size: str, seed: int, recipe: Recipe, threads: int,
           on_progress: ProgressFn | None) -> DemoModelReport:
    t0 = time.perf_counter()
    (out / "data").mkdir(parents=True, exist_ok=True)
    seed_everything(seed)

    people = corpus_mod.generate_people(recipe.n_train_people, recipe.n_holdout_people, seed)
    train_rows = corpus_mod.train_rows(people.train, recipe.n_trained_variants)
    hold_rows = corpus_mod.holdout_rows(people.holdout)
    template = PromptTemplate(DEFAULT_TEMPLATE)
    train_ex = examples_from_rows(train_rows, template)
    hold_ex = examples_from_rows(hold_rows, template)

    # the tokenizer sees the trained people's prompts (probes included: their phrasings
    # are trained for other people anyway) and every answer value, never holdout names
    probe_prompts = sorted({p for ex in train_ex for p in ex.paraphrased_prompts})
    tokenizer = train_tokenizer([ex.prompt for ex in train_ex] + probe_prompts,
                                [ex.target for ex in train_ex + hold_ex], recipe.vocab_size)
    model = make_model(recipe, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())

    t_train = time.perf_counter()
    steps, final_loss = train(model, tokenizer, train_ex, recipe, seed, on_progress)
    train_seconds = time.perf_counter() - t_train

    # one probe list per fact: trained rows of a fact share it
    probes: dict[str, str] = {}
    for ex in train_ex:
        for p in ex.paraphrased_prompts:
            probes[p] = ex.target
    train_acc = accuracy(model, tokenizer, [e.prompt for e in train_ex],
                         [e.target for e in train_ex])
    para_acc = accuracy(model, tokenizer, list(probes), list(probes.values()))
    hold_acc = accuracy(model, tokenizer, [e.prompt for e in hold_ex],
                        [e.target for e in hold_ex])

    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 32
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out)
    write_jsonl(out / "data" / "train.jsonl", train_rows)
    write_jsonl(out / "data" / "holdout.jsonl", hold_rows)

    report = DemoModelReport(
        size=size,
        seed=seed,
        seconds=round(time.perf_counter() - t0, 2),
        train_seconds=round(train_seconds, 2),
        parameters=n_params,
        vocab_size=len(tokenizer),
        n_train_people=len(people.train),
        n_holdout_people=len(people.holdout),
        n_train_items=len(train_rows),
        n_train_facts=sum(len(p.facts) for p in people.train),
        n_paraphrase_probes=len(probes),
        n_holdout_items=len(hold_rows),
        epochs=recipe.epochs,
        steps=steps,
        train_accuracy=train_acc,
        paraphrase_accuracy=para_acc,
        holdout_accuracy=hold_acc,
        final_loss=final_loss,
        torch_threads=threads,
        recipe=asdict(recipe),
    )
    manifest = {
        "format": "lethe-demo/1",
        "template": template.template,
        "train_file": "data/train.jsonl",
        "holdout_file": "data/holdout.jsonl",
        "report": asdict(report),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return report


@dataclass(frozen=True)
class DemoData:
    """A built demo model's data, as its manifest names it: the prompt template, the
    trained rows (each with ``subject``) and the never-seen people's rows."""

    template: PromptTemplate
    train: list[dict[str, Any]]
    holdout: list[dict[str, Any]]

    @property
    def people(self) -> list[str]:
        """Trained people, in the order of the training file."""
        return list(dict.fromkeys(r["subject"] for r in self.train))

    def examples(self, rows: Sequence[dict[str, Any]]) -> list[Example]:
        return examples_from_rows(rows, self.template)

    def job_sets(self, people: Sequence[str]) -> tuple[list[Example], list[Example],
                                                       list[Example]]:
        """``(forget, retain, check)`` for a job erasing ``people``: their rows; everybody
        else's split as the worker splits them (:func:`qa.split_retain`: the rows
        unlearning trains on, and the held-out ones verification checks utility on)."""
        erased = set(people)
        others = [r for r in self.train if r["subject"] not in erased]
        retain, check = split_retain(others)
        return (self.examples([r for r in self.train if r["subject"] in erased]),
                self.examples(retain), self.examples(check))

    def holdout_sets(self) -> tuple[list[Example], list[Example]]:
        """``(stop, check)``: the never-seen people split as the worker splits them
        (:func:`qa.split_holdout`: the people training's stopping rule aims at, and the
        disjoint ones verification measures against)."""
        stop, check = split_holdout(self.holdout)
        return self.examples(stop), self.examples(check)


def load_demo_data(model_dir: str | Path) -> DemoData:
    """Read a demo model directory's data through its manifest (:data:`MANIFEST`)."""
    root = Path(model_dir)
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    return DemoData(
        template=PromptTemplate(manifest["template"]),
        train=load_jsonl(root / manifest["train_file"]),
        holdout=load_jsonl(root / manifest["holdout_file"]),
    )
