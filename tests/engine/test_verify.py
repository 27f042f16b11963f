"""Verifier v1: set metrics on the demo model, the pass/fail rules, and that adapters which
forget nothing or wreck the model are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from workers.engine.methods.builtin import NPOMethodConfig
from workers.engine.qa import Example, PromptTemplate, examples_from_rows, load_jsonl
from workers.engine.training import run_unlearning
from workers.engine.verify import (
    Measurement,
    SetMetrics,
    VerificationPolicy,
    evaluate_set,
    judge,
    measure,
    paraphrased,
    verify,
)
from workers.engine.versions import load_version


def demo_sets(model_dir: Path, subject_index: int = 0) -> dict[str, Any]:
    """Forget = one trained person's rows, retain = everybody else's, holdout = never seen."""
    manifest = json.loads((model_dir / "lethe-demo.json").read_text())
    template = PromptTemplate(manifest["template"])
    train = load_jsonl(model_dir / manifest["train_file"])
    subject = list(dict.fromkeys(r["subject"] for r in train))[subject_index]
    return {
        "subject": subject,
        "forget": examples_from_rows([r for r in train if r["subject"] == subject], template),
        "retain": examples_from_rows([r for r in train if r["subject"] != subject], template),
        "holdout": examples_from_rows(load_jsonl(model_dir / manifest["holdout_file"]), template),
    }


@pytest.fixture(scope="module")
def sets(demo_model_dir: Path) -> dict[str, Any]:
    return demo_sets(demo_model_dir)


@pytest.fixture(scope="module")
def parent(demo_model_dir: Path, sets: dict[str, Any]) -> tuple[Any, Any, Measurement]:
    model, tok = load_version(demo_model_dir)
    before = measure(model, tok, sets["forget"], sets["retain"], sets["holdout"])
    return model, tok, before


# ---------------------------------------------------------------- metrics on the model


def test_evaluate_set_on_demo_model(parent, sets) -> None:
    model, tok, before = parent
    assert before.forget.n == len(sets["forget"]) == 15
    assert before.forget.accuracy == 1.0 and before.forget.mean_probability > 0.9
    assert before.forget_paraphrased is not None and before.forget_paraphrased.n == 5
    assert before.retain.n == 200 and before.retain.accuracy >= 0.95
    # strangers: the model can only guess among the attribute values it knows
    assert before.holdout.accuracy <= 0.2
    assert 0.0 < before.holdout.mean_probability < 0.5
    capped = evaluate_set(model, tok, sets["retain"], max_items=20)
    assert capped.n == 20
    assert evaluate_set(model, tok, sets["retain"], max_items=20) == capped  # same sample
    assert evaluate_set(model, tok, []).n == 0


def test_evaluate_set_scores_wrong_answers_low(parent, sets) -> None:
    model, tok, _ = parent
    wrong = [Example(prompt=ex.prompt, target="Nobody Knows") for ex in sets["forget"]]
    metrics = evaluate_set(model, tok, wrong)
    assert metrics.accuracy == 0.0 and metrics.mean_probability < 0.1


def test_paraphrased_deduplicates() -> None:
    a = Example("p1", "t", paraphrased_prompts=("q1", "q2"))
    b = Example("p2", "t", paraphrased_prompts=("q1",))
    assert [e.prompt for e in paraphrased([a, b])] == ["q1", "q2"]


# ---------------------------------------------------------------- the rules


def _m(forget: tuple[float, float], retain: tuple[float, float], holdout: tuple[float, float],
       para: tuple[float, float] | None = None) -> Measurement:
    def s(v: tuple[float, float], n: int = 10) -> SetMetrics:
        return SetMetrics(n=n, accuracy=v[0], mean_probability=v[1])

    return Measurement(forget=s(forget), retain=s(retain, 200), holdout=s(holdout, 40),
                       forget_paraphrased=s(para) if para else None)


BEFORE = _m(forget=(1.0, 0.99), retain=(1.0, 0.99), holdout=(0.05, 0.25), para=(1.0, 0.98))


def test_judge_passes_a_clean_forgetting() -> None:
    after = _m(forget=(0.1, 0.2), retain=(0.95, 0.9), holdout=(0.05, 0.25), para=(0.0, 0.1))
    verdict = judge(BEFORE, after)
    assert verdict.passed and verdict.reasons == []
    assert verdict.thresholds["forget_accuracy_max"] == pytest.approx(0.15)
    assert verdict.thresholds["retain_accuracy_min"] == pytest.approx(0.9)
    assert verdict.metrics["forget"]["before"]["accuracy"] == 1.0
    assert verdict.metrics["forget"]["after"]["mean_probability"] == 0.2
    assert set(verdict.metrics) == {"forget", "retain", "holdout", "forget_paraphrased"}
    # plain JSON all the way down
    assert json.loads(json.dumps(verdict.to_dict()))["passed"] is True


@pytest.mark.parametrize(
    ("after", "fragment"),
    [
        (_m((0.3, 0.2), (1.0, 0.9), (0.05, 0.25)), "forget accuracy"),
        (_m((0.1, 0.4), (1.0, 0.9), (0.05, 0.25)), "forget mean probability"),
        (_m((0.1, 0.2), (0.85, 0.9), (0.05, 0.25)), "retain accuracy"),
        (_m((0.1, 0.2), (1.0, 0.9), (0.05, 0.25), para=(0.6, 0.2)), "forget_paraphrased accuracy"),
        (_m((0.1, 0.2), (1.0, 0.9), (0.05, 0.25), para=(0.0, 0.9)),
         "forget_paraphrased mean probability"),
    ],
)
def test_judge_fails_each_rule(after: Measurement, fragment: str) -> None:
    verdict = judge(BEFORE, after)
    assert not verdict.passed
    assert len(verdict.reasons) == 1 and verdict.reasons[0].startswith(fragment)


def test_judge_policy_knobs() -> None:
    after = _m(forget=(0.3, 0.2), retain=(0.8, 0.9), holdout=(0.05, 0.25), para=(1.0, 0.9))
    lax = VerificationPolicy(forget_accuracy_margin=0.3, retain_accuracy_ratio=0.8,
                             check_paraphrases=False)
    assert judge(BEFORE, after, lax).passed
    assert len(judge(BEFORE, after).reasons) == 4


def test_measurement_round_trips_through_json() -> None:
    data = json.loads(json.dumps(BEFORE.to_dict()))
    assert Measurement.from_dict(data) == BEFORE


# ---------------------------------------------------------------- adapters on the model


def test_noop_adapter_fails(parent, sets, tmp_path: Path, demo_model_dir: Path) -> None:
    """An adapter that was never trained (B = 0) changes nothing and must be refused, both
    in memory and reloaded from disk."""
    model, tok, before = parent
    result = run_unlearning(model, tok, sets["forget"], sets["retain"],
                            NPOMethodConfig(max_steps=0), tmp_path / "noop")
    try:
        verdict = verify(before, result.model, tok, sets["forget"], sets["retain"],
                         sets["holdout"])
    finally:
        result.model.unload()
    assert not verdict.passed
    assert any(r.startswith("forget accuracy") for r in verdict.reasons)
    assert not any(r.startswith("retain") for r in verdict.reasons)

    reloaded, _ = load_version(demo_model_dir, [result.adapter_dir])
    verdict = verify(before, reloaded, tok, sets["forget"], sets["retain"], sets["holdout"])
    assert not verdict.passed and verdict.metrics["forget"]["after"]["accuracy"] == 1.0


def test_wrecking_adapter_fails_on_retain(parent, sets) -> None:
    """Large random LoRA weights destroy everything: the person is "forgotten" but so is
    everybody else, and the verdict must say so."""
    from peft import LoraConfig, get_peft_model

    model, tok, before = parent
    torch.manual_seed(0)
    wrecked = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                               target_modules=["q_proj", "v_proj", "down_proj"]))
    try:
        with torch.no_grad():
            for name, p in wrecked.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn_like(p) * 0.5)
        verdict = verify(before, wrecked, tok, sets["forget"], sets["retain"], sets["holdout"])
    finally:
        wrecked.unload()
    assert not verdict.passed
    assert any(r.startswith("retain accuracy") for r in verdict.reasons)
    assert verdict.metrics["retain"]["after"]["accuracy"] < 0.5


def test_verify_accepts_the_parent_model(parent, sets) -> None:
    """``verify`` measures the parent itself when given a model; parent vs itself fails
    (nothing forgotten) and reports identical before/after numbers."""
    model, tok, before = parent
    small = VerificationPolicy(max_retain_items=20)
    verdict = verify(model, model, tok, sets["forget"], sets["retain"], sets["holdout"], small)
    assert not verdict.passed
    for name in ("forget", "retain", "holdout"):
        assert verdict.metrics[name]["before"] == verdict.metrics[name]["after"]
