"""TOFU (Maini et al. 2024) on CPU-sized models: the benchmark's protocol at a scale that
runs without a model hub.

From the TOFU JSON Lines in ``data_dir`` (read in place, never copied) this trains a small
Llama-style model from scratch on the chosen authors of ``full`` (the *original*), and a
second one on the same authors minus the forget split (the *reference*, TOFU's "retrained"
gold standard), both with :mod:`workers.engine.demo_model`'s trainer and one byte-level BPE
tokenizer fitted to the retained authors' text (:data:`TOKENIZER_TEXTS`). It
then unlearns the forget split from the original with
:func:`workers.engine.training.run_unlearning` and reports, per UNLEARNING.md:

- ``forget_quality``: KS-test p-value between the unlearned and the reference model's
  per-item truth ratios on the forget items (≥ 0.05: indistinguishable from retraining);
- ``model_utility_*``: harmonic mean of retain answer probability, retain ROUGE-L recall
  and retain truth-ratio score, for original / unlearned / reference. Only the retain set
  enters: a model trained from scratch on fictitious authors knows no real authors or
  world facts, so those sets (reported separately as ``*_option_probability``) sit at
  chance for every model and would only flatten the comparison;
- ``mia_auc``: ROC AUC of Min-K% (k = 0.4) scores, forget items (members) against the
  matching holdout authors (never trained), for each model; ``privleak`` (MUSE):
  ``(AUC_unlearned − AUC_reference) / AUC_reference · 100`` — about 0 when the unlearned
  model tells forgotten from never-seen authors no better or worse than retraining does,
  strongly negative when it over-unlearns (the forgotten authors stand out as *less*
  familiar than never-seen ones);
- ``unlearn_seconds``, ``retrain_seconds``, ``original_seconds`` (wall clock); per
  method, ``unlearn_timings`` says where the unlearning seconds went (setup, training
  steps, the ``stop_checks`` readings of the stopping rule, calibration, finish; see
  :class:`~workers.engine.unlearn.UnlearnResult`), and ``preferred_from`` the step from
  which the rule found the erased answers still preferred to other people's
  (``stop_score`` "both").

Author selection: ``authors`` = N keeps the forget split's k authors (the last k of
``full``) and the first N − k authors of ``full`` as the retain authors (the ones
``retain_perturbed`` covers, so the retain truth ratio is measurable).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from workers.engine.demo_model import (
    Recipe,
    default_threads,
    make_model,
    runtime_environment,
    train,
    train_tokenizer,
)
from workers.engine.metrics import roc_auc
from workers.engine.qa import (
    DEFAULT_TEMPLATE,
    Example,
    PromptTemplate,
    answer_logits,
    by_length,
    greedy_generate,
    load_jsonl,
    pad_id,
    tokenize,
)

SPLITS = ("forget01", "forget05", "forget10")
ROWS_PER_AUTHOR = 20
MIN_K = 0.4

# Model and training recipe for the CPU benchmark (see docs/benchmarks.md for timings).
TOFU_RECIPE = Recipe(
    n_train_people=0, n_holdout_people=0, n_trained_variants=1,
    hidden=192, layers=4, heads=4, intermediate=512, vocab_size=4096,
    epochs=40, batch_size=16, lr=2e-3,
)
# A larger model for accelerators (~36 M parameters, the size of the calibration anchor in
# docs/benchmarks.md): it trains on all 200 authors in about a minute on one GPU.
TOFU_RECIPE_MEDIUM = Recipe(
    n_train_people=0, n_holdout_people=0, n_trained_variants=1,
    hidden=512, layers=8, heads=8, intermediate=1536, vocab_size=8192,
    epochs=30, batch_size=32, lr=1e-3,
)
TOFU_RECIPES = {"small": TOFU_RECIPE, "medium": TOFU_RECIPE_MEDIUM}
EVAL_ITEMS = 40  # retain items used for utility (deterministic, evenly spaced)
ROUGE_NEW_TOKENS = 96


@dataclass
class TofuSets:
    """The rows of one benchmark run (``dict`` rows as in the JSON Lines)."""

    forget: list[dict[str, Any]]
    forget_perturbed: list[dict[str, Any]]
    retain: list[dict[str, Any]]
    retain_perturbed: list[dict[str, Any]]
    holdout: list[dict[str, Any]]
    options: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    n_authors: int = 0
    n_forget_authors: int = 0


def load_sets(data_dir: str | Path, split: str, authors: int | None) -> TofuSets:
    """Read the TOFU files for ``split``; see the module docstring for ``authors``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    root = Path(data_dir)
    full = load_jsonl(root / "full.jsonl")
    forget = load_jsonl(root / f"{split}.jsonl")
    k = len(forget) // ROWS_PER_AUTHOR
    if [r["question"] for r in forget] != [r["question"] for r in full[-len(forget):]]:
        raise ValueError(f"{split} is not the last {k} authors of full")
    total_authors = len(full) // ROWS_PER_AUTHOR
    n = total_authors if authors is None else authors
    if not k < n <= total_authors:
        raise ValueError(f"authors must be in ({k}, {total_authors}] for {split}")
    retain = full[: (n - k) * ROWS_PER_AUTHOR]
    retain_q = {r["question"] for r in retain}
    by_q = {r["question"]: r for r in load_jsonl(root / f"{split}_perturbed.jsonl")}
    options = {}
    for name in ("real_authors", "world_facts"):
        path = root / f"{name}_perturbed.jsonl"
        if path.exists():
            options[name] = load_jsonl(path)
    return TofuSets(
        forget=forget,
        forget_perturbed=[by_q[r["question"]] for r in forget],
        retain=retain,
        retain_perturbed=[r for r in load_jsonl(root / "retain_perturbed.jsonl")
                          if r["question"] in retain_q],
        holdout=load_jsonl(root / f"holdout{split[-2:]}.jsonl"),
        options=options,
        n_authors=n,
        n_forget_authors=k,
    )


# ------------------------------------------------------------------ scoring primitives


@torch.no_grad()
def token_scores(model: Any, tokenizer: Any, examples: Sequence[Example],
                 batch_size: int = 32) -> list[torch.Tensor]:
    """Per item, the answer tokens' log-probabilities (nats, answer + EOS), in the order
    given (scored in batches of similar length, :func:`qa.by_length`)."""
    model.eval()

    def score(_: list[int], batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        scored = answer_logits(model, batch)
        logp, mask = scored.logprobs(), scored.mask
        return [lp[m].float().cpu() for lp, m in zip(logp, mask, strict=True)]

    rows = [tokenize(tokenizer, ex, 256) for ex in examples]
    return by_length(rows, batch_size, pad_id(tokenizer), next(model.parameters()).device,
                     score)


def mean_logp(model: Any, tokenizer: Any, examples: Sequence[Example]) -> torch.Tensor:
    """Length-normalised answer log-likelihood per item (nats/token)."""
    return torch.stack([t.mean() for t in token_scores(model, tokenizer, examples)])


def truth_ratios(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]],
                 template: PromptTemplate) -> torch.Tensor:
    """Per-item TOFU truth ratio R = P_pert / P_para (length-normalised probabilities,
    P_pert the geometric mean over the perturbed answers), as a tensor of R."""
    para = [Example(template.prompt(r["question"]), r["paraphrased_answer"]) for r in rows]
    pert = [Example(template.prompt(r["question"]), a) for r in rows for a in r["perturbed_answer"]]
    lp_para = mean_logp(model, tokenizer, para)
    lp_pert = mean_logp(model, tokenizer, pert)
    counts = [len(r["perturbed_answer"]) for r in rows]
    lp_pert_mean = torch.stack([c.mean() for c in torch.split(lp_pert, counts)])
    return torch.exp(lp_pert_mean - lp_para)


_WORD = re.compile(r"\w+")


def rouge_l_recall(generated: str, reference: str) -> float:
    """ROUGE-L recall: LCS length of the lower-cased word sequences / reference length."""
    gen, ref = _WORD.findall(generated.lower()), _WORD.findall(reference.lower())
    if not ref:
        return 0.0
    prev = [0] * (len(gen) + 1)
    for r in ref:  # O(len(ref) · len(gen)) dynamic programme, one row at a time
        cur = [0]
        for j, g in enumerate(gen):
            cur.append(prev[j] + 1 if r == g else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1] / len(ref)


def min_k_scores(token_logps: Sequence[torch.Tensor], k: float = MIN_K) -> torch.Tensor:
    """Min-K% membership score per item: mean of its lowest ⌈k·n⌉ token log-probs."""
    return torch.stack([torch.sort(t).values[: max(1, math.ceil(k * t.numel()))].mean()
                        for t in token_logps])


def privleak(auc_unlearned: float, auc_reference: float) -> float:
    """MUSE's PrivLeak in percent: the unlearned model's MIA AUC relative to the
    retrained reference's (0: the same; negative: over-unlearned)."""
    return (auc_unlearned - auc_reference) / auc_reference * 100


def harmonic_mean(values: Sequence[float]) -> float:
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def evenly(rows: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` rows, evenly spaced (deterministic subsample)."""
    if len(rows) <= n:
        return list(rows)
    return [rows[i * len(rows) // n] for i in range(n)]


@dataclass
class ModelScores:
    """One model's TOFU numbers. Probabilities are length-normalised (per-token geometric
    mean), in [0, 1]; truth ratios as in UNLEARNING.md."""

    retain_probability: float
    retain_rouge_l: float
    retain_truth_ratio: float
    model_utility: float
    forget_probability: float
    forget_rouge_l: float
    forget_truth_ratio: float
    mia_auc: float
    option_probability: dict[str, float]


def score_model(model: Any, tokenizer: Any, sets: TofuSets,
                template: PromptTemplate) -> tuple[ModelScores, torch.Tensor]:
    """Score ``model``; also returns its per-item forget truth ratios (for the KS test)."""
    def ex(rows: Sequence[dict[str, Any]]) -> list[Example]:
        return [Example(template.prompt(r["question"]), r["answer"]) for r in rows]

    retain_rows = evenly(sets.retain_perturbed or sets.retain, EVAL_ITEMS)
    retain_ex, forget_ex = ex(retain_rows), ex(sets.forget)
    retain_p = float(torch.exp(mean_logp(model, tokenizer, retain_ex)).mean())
    forget_p = float(torch.exp(mean_logp(model, tokenizer, forget_ex)).mean())

    def rouge(examples: list[Example]) -> float:
        gens = greedy_generate(model, tokenizer, [e.prompt for e in examples],
                               max_new_tokens=ROUGE_NEW_TOKENS)
        return sum(rouge_l_recall(g, e.target) for g, e in zip(gens, examples, strict=True)) \
            / len(examples)

    retain_rouge, forget_rouge = rouge(retain_ex), rouge(forget_ex)
    if sets.retain_perturbed:
        r = truth_ratios(model, tokenizer, evenly(sets.retain_perturbed, EVAL_ITEMS), template)
        retain_tr = float(torch.clamp(1 - r, min=0).mean())
    else:
        retain_tr = float("nan")
    fr = truth_ratios(model, tokenizer, sets.forget_perturbed, template)
    forget_tr = float(torch.minimum(fr, 1 / fr).mean())
    members = min_k_scores(token_scores(model, tokenizer, forget_ex))
    non_members = min_k_scores(token_scores(model, tokenizer, ex(sets.holdout)))
    options = {}
    for name, rows in sets.options.items():
        # p_true / Σ p_options with length-normalised probabilities
        flat = [Example(template.prompt(r["question"]), a)
                for r in rows for a in [r["answer"], *r["perturbed_answer"]]]
        lp = mean_logp(model, tokenizer, flat)
        counts = [1 + len(r["perturbed_answer"]) for r in rows]
        options[name] = float(torch.stack(
            [torch.softmax(c, 0)[0] for c in torch.split(lp, counts)]).mean())
    utility_parts = [retain_p, retain_rouge] + ([retain_tr] if sets.retain_perturbed else [])
    return ModelScores(
        retain_probability=retain_p,
        retain_rouge_l=retain_rouge,
        retain_truth_ratio=retain_tr,
        model_utility=harmonic_mean(utility_parts),
        forget_probability=forget_p,
        forget_rouge_l=forget_rouge,
        forget_truth_ratio=forget_tr,
        mia_auc=roc_auc(members.tolist(), non_members.tolist()),
        option_probability=options,
    ), fr


# ------------------------------------------------------------------ the benchmark


def weights_digest(model: Any) -> str:
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes and bytes, in
    name order): which model a report scored, exactly. Unlike the original's forget
    quality, a KS p-value that takes one value per step of 1/n in the statistic and so
    is shared by different models, two digests agree only for the same weights."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@contextmanager
def _cache_lock(entry: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on the cache directory ``entry`` against other processes
    (nothing to hold without a cache).

    Two benchmark runs of the same authors, recipe and seed (two settings compared side
    by side) would otherwise both train the same model into the same directory; with the
    lock the second waits for the first and then loads what it saved."""
    if entry is None:
        yield
        return
    import fcntl

    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_model(rows: Sequence[dict[str, Any]], tokenizer: Any, template: PromptTemplate,
                 recipe: Recipe, seed: int, cache: Path | None = None,
                 device: str = "cpu") -> tuple[Any, float]:
    """Train a model on ``rows`` on ``device``; with ``cache`` (a directory), reuse the
    model saved there by an earlier run of the same rows, recipe and seed (the training
    time reported is the one measured when it was trained). A run that finds another
    process training the same entry waits for it."""
    with _cache_lock(cache):
        if cache is not None and (cache / "seconds.json").exists():
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(cache)).to(device)  # type: ignore[arg-type]
            return model, float(json.loads((cache / "seconds.json").read_text())["seconds"])
        torch.manual_seed(seed)
        model = make_model(recipe, tokenizer).to(device)
        examples = [template.example(r["question"], r["answer"]) for r in rows]
        t0 = time.perf_counter()
        train(model, tokenizer, examples, recipe, seed)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if cache is not None:
            model.save_pretrained(str(cache), safe_serialization=True)
            (cache / "seconds.json").write_text(json.dumps({"seconds": seconds}))
        return model, seconds


TOKENIZER_TEXTS = ("retain", "scored")
"""What the benchmark's byte-level BPE tokenizer is fitted to.

``retain`` (the default): the retained authors' questions and answers, the text both the
original and the reference train on. Every multi-byte token then occurs in both models'
training data, and the forget and holdout authors' names are spelled with pieces the two
models learned alike, as with a pretrained model whose tokenizer predates the data later
erased (TOFU's Llama models). ``scored``: every text either model is scored on (the
forget, holdout and perturbed answers too), the recipe before 2026-11-29. Fitted to the
forget answers, the tokenizer gets whole tokens for the forget authors' names and
places that only the original ever trains: a LoRA on the linear layers cannot take
those embeddings back, and the reference's truth ratios and Min-K% scores partly
measure whether a token was trained at all (docs/benchmarks.md, "What the truth ratio
measures at this scale")."""


def _tokenizer_rows(sets: TofuSets, text: str) -> list[dict[str, Any]]:
    if text == "retain":
        return list(sets.retain)
    if text == "scored":
        return [*sets.retain, *sets.forget, *sets.holdout, *sets.retain_perturbed,
                *sets.forget_perturbed]
    raise ValueError(f"tokenizer text must be one of {TOKENIZER_TEXTS}")


def fit_tokenizer(rows: Sequence[dict[str, Any]], template: PromptTemplate,
                  vocab_size: int) -> Any:
    """The benchmark's tokenizer, fitted to ``rows``' prompts and every answer they carry
    (answer, paraphrased and perturbed answers where present)."""
    prompts = [template.prompt(r["question"]) for r in rows]
    answers = [a for r in rows
               for a in [r["answer"], r.get("paraphrased_answer", ""),
                         *r.get("perturbed_answer", [])]
               if a]
    return train_tokenizer(prompts, answers, vocab_size)


def _cache_key(rows: Sequence[dict[str, Any]], recipe: Recipe, seed: int) -> str:
    """What the trained models depend on: the rows the tokenizer sees (the training
    rows among them), the recipe and the seed."""
    import hashlib

    blob = json.dumps([list(rows), asdict(recipe), seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_tofu(
    data_dir: str | Path,
    split: str = "forget01",
    authors: int | None = 10,
    method: str | Sequence[str] = "npo",
    method_overrides: dict[str, Any] | None = None,
    recipe: Recipe = TOFU_RECIPE,
    seed: int = 0,
    work_dir: str | Path | None = None,
    log: Any = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    tokenizer_text: str = "retain",
) -> dict[str, Any]:
    """Run the benchmark on ``device``; returns the JSON-ready report (see module
    docstring).

    ``tokenizer_text``: what the models' tokenizer is fitted to, see
    :data:`TOKENIZER_TEXTS`.

    ``cache_dir``: keep the trained original and reference models (and tokenizer) there,
    keyed by what they depend on, so that comparing methods or settings on the same
    authors trains them once; ``retrain_seconds`` stays the measured training time.

    ``method`` may name several methods (a sequence or "a,b"): the original and the
    reference are trained once and each method unlearns its own copy of the original.
    The top-level ``forget_quality``/``model_utility_unlearned``/``mia_auc``/
    ``unlearn_seconds`` are the first method's; ``by_method`` has every method's.
    ``method_overrides`` (config fields) apply to every method.
    """
    methods = [m.strip() for m in method.split(",")] if isinstance(method, str) else list(method)
    import tempfile

    from workers.engine.methods import parse_method_config
    from workers.engine.training import run_unlearning

    say = log or (lambda msg: None)
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(default_threads())
    try:
        sets = load_sets(data_dir, split, authors)
        template = PromptTemplate(DEFAULT_TEMPLATE)
        # one tokenizer for every model, so truth ratios and Min-K% compare like with like
        tokenizer_rows = _tokenizer_rows(sets, tokenizer_text)
        cache = None
        if cache_dir is not None:
            # the trained rows are not all among the tokenizer's ("retain")
            key = _cache_key([*tokenizer_rows, *sets.retain, *sets.forget], recipe, seed)
            cache = Path(cache_dir) / f"{split}-{sets.n_authors}-{key}"
        with _cache_lock(None if cache is None else cache / "tokenizer"):
            if cache is not None and (cache / "tokenizer" / "tokenizer.json").exists():
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(cache / "tokenizer"))
            else:
                tokenizer = fit_tokenizer(tokenizer_rows, template, recipe.vocab_size)
                if cache is not None:  # save_pretrained creates the directories
                    tokenizer.save_pretrained(str(cache / "tokenizer"))
        say(f"{sets.n_authors} authors ({sets.n_forget_authors} forget), "
            f"{len(sets.retain) + len(sets.forget)} training rows")

        original, original_seconds = _train_model(
            [*sets.retain, *sets.forget], tokenizer, template, recipe, seed,
            None if cache is None else cache / "original", device)
        say(f"original trained in {original_seconds:.0f}s")
        reference, retrain_seconds = _train_model(
            sets.retain, tokenizer, template, recipe, seed,
            None if cache is None else cache / "reference", device)
        say(f"reference (retain only) trained in {retrain_seconds:.0f}s")

        s_orig, tr_orig = score_model(original, tokenizer, sets, template)
        s_ref, tr_ref = score_model(reference, tokenizer, sets, template)
        from scipy.stats import ks_2samp

        def quality(tr: torch.Tensor) -> float:
            return float(ks_2samp(tr.numpy(), tr_ref.numpy()).pvalue)

        forget_ex = [template.example(r["question"], r["answer"]) for r in sets.forget]
        retain_ex = [template.example(r["question"], r["answer"]) for r in sets.retain]
        # never-trained authors: early stopping's counterfactual (stranger) level
        holdout_ex = [template.example(r["question"], r["answer"]) for r in sets.holdout]
        by_method: dict[str, dict[str, Any]] = {}
        for name in methods:
            config = parse_method_config({"method": name, "seed": seed,
                                          **(method_overrides or {})})
            candidate = copy.deepcopy(original)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(work_dir) / f"adapter-{name}" if work_dir else Path(tmp) / "adapter"
                result = run_unlearning(candidate, tokenizer, forget_ex, retain_ex, config, out,
                                        holdout=holdout_ex)
            say(f"unlearned ({name}) in {result.seconds:.1f}s, {result.steps} steps")
            s_unl, tr_unl = score_model(result.model, tokenizer, sets, template)
            by_method[name] = {
                "forget_quality": quality(tr_unl),
                "model_utility_unlearned": s_unl.model_utility,
                "mia_auc": s_unl.mia_auc,
                "privleak": privleak(s_unl.mia_auc, s_ref.mia_auc),
                "unlearn_seconds": result.seconds,
                "unlearn_steps": result.steps,
                "unlearn_timings": {k: round(v, 2) for k, v in result.timings.items()},
                "stop_checks": result.stop_checks,
                "preferred_from": result.preferred_from,
                "stopped_early": result.stopped_early,
                "adapter_scale": result.adapter_scale,
                "scores": asdict(s_unl),
                "method_config": result.config,
            }
            del candidate, result

        first = by_method[methods[0]]
        return {
            "benchmark": "tofu",
            "split": split,
            "method": methods[0],
            "authors": sets.n_authors,
            "forget_authors": sets.n_forget_authors,
            "n_forget": len(sets.forget),
            "n_retain_train": len(sets.retain),
            "n_retain_eval": min(EVAL_ITEMS, len(sets.retain_perturbed or sets.retain)),
            "n_holdout": len(sets.holdout),
            "forget_quality": first["forget_quality"],
            "forget_quality_original": quality(tr_orig),
            "model_utility_unlearned": first["model_utility_unlearned"],
            "model_utility_original": s_orig.model_utility,
            "model_utility_reference": s_ref.model_utility,
            "mia_auc": first["mia_auc"],
            "mia_auc_original": s_orig.mia_auc,
            "mia_auc_reference": s_ref.mia_auc,
            "privleak": first["privleak"],
            "unlearn_seconds": first["unlearn_seconds"],
            "retrain_seconds": retrain_seconds,
            "original_seconds": original_seconds,
            "original_sha256": weights_digest(original),
            "reference_sha256": weights_digest(reference),
            "unlearn_steps": first["unlearn_steps"],
            "unlearn_timings": first["unlearn_timings"],
            "utility_sets": ["retain"],
            "utility_note": "model utility = harmonic mean of retain probability, ROUGE-L "
                            "recall, truth-ratio score; real_authors/world_facts are "
                            "reported as option_probability only (scratch model, chance)",
            "scores": {"original": asdict(s_orig), "reference": asdict(s_ref),
                       "unlearned": first["scores"]},
            "by_method": by_method,
            "seed": seed,
            "device": device,
            "tokenizer_text": tokenizer_text,
            "device_name": (torch.cuda.get_device_name(device) if device.startswith("cuda")
                            else "cpu"),
            "recipe": asdict(recipe),
            "torch_threads": torch.get_num_threads(),
            **runtime_environment(),
            "total_seconds": time.perf_counter() - started,
        }
    finally:
        torch.set_num_threads(previous_threads)


def bench_tofu(data_dir: str | Path, split: str = "forget01", authors: int | None = 10,
               method: str | Sequence[str] = "npo", json_out: bool = False,
               method_overrides: dict[str, Any] | None = None,
               cache_dir: str | Path | None = None, seed: int = 0,
               model_size: str = "small", device: str = "cpu",
               tokenizer_text: str = "retain") -> dict[str, Any]:
    """CLI hook for ``lethe bench tofu``: runs :func:`run_tofu`, prints progress and a
    summary, and with ``json_out`` prints the report as one JSON object last."""
    import sys

    if model_size not in TOFU_RECIPES:
        raise ValueError(f"model size must be one of {sorted(TOFU_RECIPES)}")
    if tokenizer_text not in TOKENIZER_TEXTS:
        raise ValueError(f"tokenizer text must be one of {TOKENIZER_TEXTS}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available to this torch build")
    report = run_tofu(data_dir, split, authors, method, method_overrides,
                      recipe=TOFU_RECIPES[model_size], seed=seed,
                      log=lambda msg: print(f"[tofu] {msg}", file=sys.stderr, flush=True),
                      cache_dir=cache_dir, device=device, tokenizer_text=tokenizer_text)
    report["model_size"] = model_size
    keys = ("forget_quality", "forget_quality_original", "model_utility_original",
            "model_utility_unlearned", "model_utility_reference", "mia_auc_original",
            "mia_auc", "mia_auc_reference", "privleak", "unlearn_seconds", "retrain_seconds")
    stream = sys.stderr if json_out else sys.stdout
    for key in keys:
        print(f"{key:26s} {report[key]:.4g}", file=stream)
    for name, res in report["by_method"].items():
        print(f"{name:12s} forget_quality {res['forget_quality']:.3g}  utility "
              f"{res['model_utility_unlearned']:.3f}  mia_auc {res['mia_auc']:.3f}  "
              f"privleak {res['privleak']:+.0f}%  "
              f"{res['unlearn_seconds']:.1f}s", file=stream)
    if json_out:
        print(json.dumps(report))
    return report
