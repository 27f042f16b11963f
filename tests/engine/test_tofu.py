"""TOFU metric primitives, and a smoke run of the benchmark on a micro model (the real
numbers come from bench/tofu.py; see docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from workers.engine.qa import DEFAULT_TEMPLATE, PromptTemplate
from workers.engine.tofu import (
    TOFU_RECIPE,
    _tokenizer_rows,
    fit_tokenizer,
    harmonic_mean,
    load_sets,
    min_k_scores,
    rouge_l_recall,
    run_tofu,
)

# the TOFU files are read where they lie, never copied: beside the checkout (as in CI),
# or where LETHE_TOFU_DIR points
TOFU = next(
    (p for p in (Path(os.environ.get("LETHE_TOFU_DIR", "/nonexistent")),
                 Path(__file__).resolve().parents[3] / "shared" / "datasets" / "tofu",
                 Path("/work/shared/datasets/tofu"))
     if (p / "full.jsonl").exists()),
    Path("/work/shared/datasets/tofu"),
)
needs_data = pytest.mark.skipif(not (TOFU / "full.jsonl").exists(), reason="no TOFU data")
# a model small enough that the benchmark's plumbing runs in seconds
MICRO = dataclasses.replace(TOFU_RECIPE, hidden=32, layers=1, heads=2, intermediate=64,
                            vocab_size=512, epochs=1)


def test_rouge_l_recall() -> None:
    assert rouge_l_recall("The cat sat on the mat.", "the cat sat on the mat") == 1.0
    assert rouge_l_recall("cat the", "the cat") == 0.5
    assert rouge_l_recall("", "a b") == 0.0
    # recall: extra generated words cost nothing
    assert rouge_l_recall("a x b y c", "a b c") == 1.0


def test_min_k_and_harmonic_mean() -> None:
    scores = min_k_scores([torch.tensor([-1.0, -5.0, -0.1, -0.2, -3.0])])  # lowest 2 of 5
    assert float(scores[0]) == pytest.approx(-4.0)
    assert harmonic_mean([0.5, 0.5]) == pytest.approx(0.5)
    assert harmonic_mean([0.5, 0.0]) == 0.0


@needs_data
def test_load_sets_selects_authors() -> None:
    sets = load_sets(TOFU, "forget01", 5)
    assert (sets.n_authors, sets.n_forget_authors) == (5, 2)
    assert len(sets.forget) == 40 and len(sets.retain) == 60 and len(sets.holdout) == 40
    assert len(sets.forget_perturbed) == 40
    assert {r["question"] for r in sets.retain_perturbed} <= {r["question"] for r in sets.retain}
    assert not {r["question"] for r in sets.retain} & {r["question"] for r in sets.forget}
    with pytest.raises(ValueError):
        load_sets(TOFU, "forget05", 10)  # 10 forget authors need more than 10 in total


@needs_data
def test_tokenizer_fitted_to_the_retained_text_spells_forgotten_names_with_shared_pieces(
) -> None:
    """With the default tokenizer (fitted to the retained authors' text) almost every token
    of the forget authors' answers and paraphrases also occurs in the retained rows, so
    both models trained it; fitted to every scored text, a third of them occur nowhere
    else and only the original ever trains them."""
    sets = load_sets(TOFU, "forget01", 4)
    template = PromptTemplate(DEFAULT_TEMPLATE)

    def forget_only_share(text: str) -> float:
        tok = fit_tokenizer(_tokenizer_rows(sets, text), template, TOFU_RECIPE.vocab_size)

        def ids(s: str) -> list[int]:
            return list(tok(s, add_special_tokens=False)["input_ids"])

        trained = {i for r in sets.retain
                   for s in (template.prompt(r["question"]), r["answer"]) for i in ids(s)}
        scored = [i for r in sets.forget_perturbed
                  for s in (r["answer"], r["paraphrased_answer"]) for i in ids(s)]
        return sum(i not in trained for i in scored) / len(scored)

    assert forget_only_share("retain") < 0.1  # 0.03 measured
    assert forget_only_share("scored") > 0.3  # 0.41 measured
    with pytest.raises(ValueError):
        _tokenizer_rows(sets, "everything")


@needs_data
def test_run_tofu_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.engine.tofu as tofu

    # fewer and shorter generations: the smoke test checks the plumbing, not the numbers
    monkeypatch.setattr(tofu, "ROUGE_NEW_TOKENS", 8)
    monkeypatch.setattr(tofu, "EVAL_ITEMS", 8)
    report = run_tofu(TOFU, "forget01", 3, "npo,task_vector", {"max_steps": 2}, recipe=MICRO,
                      seed=3)
    for key in ("forget_quality", "model_utility_unlearned", "model_utility_original",
                "model_utility_reference", "mia_auc", "unlearn_seconds", "retrain_seconds"):
        assert isinstance(report[key], float), key
    assert 0.0 <= report["forget_quality"] <= 1.0
    assert 0.0 <= report["mia_auc"] <= 1.0
    assert report["privleak"] == pytest.approx(
        (report["mia_auc"] - report["mia_auc_reference"]) / report["mia_auc_reference"] * 100)
    assert set(report["by_method"]) == {"npo", "task_vector"}
    # where the first method's unlearning seconds went, to the hundredth
    timings = report["unlearn_timings"]
    assert timings == report["by_method"]["npo"]["unlearn_timings"]
    assert sum(timings.values()) == pytest.approx(report["unlearn_seconds"], abs=0.05)
    # one seed for the models and the unlearning
    assert report["seed"] == 3 and report["by_method"]["npo"]["method_config"]["seed"] == 3
    assert report["tokenizer_text"] == "retain"
    # what else the trained models' numerics depend on, so runs on two machines compare
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["versions"]["torch"] == torch.__version__


@needs_data
def test_run_tofu_cache_reuses_trained_models(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """With a cache directory the original and reference are trained once: a second run
    loads them (same scores, same measured training times) instead of training again."""
    import workers.engine.tofu as tofu

    monkeypatch.setattr(tofu, "ROUGE_NEW_TOKENS", 4)
    monkeypatch.setattr(tofu, "EVAL_ITEMS", 4)
    first = run_tofu(TOFU, "forget01", 3, "npo", {"max_steps": 1}, recipe=MICRO,
                     cache_dir=tmp_path)
    trained = []
    monkeypatch.setattr(tofu, "train", lambda *a, **k: trained.append(1))
    second = run_tofu(TOFU, "forget01", 3, "npo", {"max_steps": 1}, recipe=MICRO,
                      cache_dir=tmp_path)
    assert not trained
    assert second["retrain_seconds"] == first["retrain_seconds"]
    assert second["original_seconds"] == first["original_seconds"]
    assert second["scores"]["original"] == first["scores"]["original"]
    assert second["scores"]["reference"] == first["scores"]["reference"]
    # the digests name the weights: the same models loaded back, two different models
    assert second["original_sha256"] == first["original_sha256"]
    assert second["reference_sha256"] == first["reference_sha256"]
    assert first["original_sha256"] != first["reference_sha256"]
    # one entry per authors, recipe and seed (the key is what the models depend on)
    assert len(list(tmp_path.iterdir())) == 1


def test_cache_entry_is_trained_once_by_concurrent_runs(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """Two runs that want the same cached model at once (two settings compared side by
    side): one trains it, the other waits for the lock and loads what was saved."""
    import threading
    import time

    import workers.engine.tofu as tofu

    rows = [{"question": f"Where was person {i} born?", "answer": f"In town number {i}."}
            for i in range(8)]
    template = PromptTemplate(DEFAULT_TEMPLATE)
    tokenizer = fit_tokenizer(rows, template, MICRO.vocab_size)
    trained: list[int] = []

    def slow_train(*args: object, **kwargs: object) -> None:
        trained.append(1)
        time.sleep(0.5)  # long enough for the other run to reach the lock meanwhile

    monkeypatch.setattr(tofu, "train", slow_train)
    results: list[tuple[object, float]] = []

    def run() -> None:
        results.append(tofu._train_model(rows, tokenizer, template, MICRO, 0,
                                         tmp_path / "entry" / "original"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trained == [1]
    assert len(results) == 2 and results[0][1] == results[1][1]
    first, second = (tofu.weights_digest(m) for m, _ in results)
    assert first == second
