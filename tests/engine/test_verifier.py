"""Verifier v2 on the tiny demo model: adapters that forget nothing, wreck the model, or
forget only the exact wording are refused; a genuine NPO unlearning passes. Plus the
rules on hand-made measurements, so that weakening any rule breaks a test."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.support import demo_sets
from workers.engine.attacks import RelearnConfig, relearn_attack, split_by_fact
from workers.engine.baselines import alternatives, counterfactuals, neighbours
from workers.engine.methods.builtin import NPOMethodConfig
from workers.engine.metrics import score_examples
from workers.engine.qa import Example, PromptTemplate, write_jsonl
from workers.engine.standalone import main as standalone_main
from workers.engine.training import run_unlearning
from workers.engine.verifier import (
    VerifierPolicy,
    derived_probes,
    judge_full,
    measure_full,
    next_attempt,
    stronger,
    verify_candidate,
)
from workers.engine.versions import load_version


@pytest.fixture(scope="module")
def sets(demo_model_dir: Path) -> dict[str, Any]:
    return demo_sets(demo_model_dir)


@pytest.fixture(scope="module")
def parent(demo_model_dir: Path, sets: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    model, tok = load_version(demo_model_dir)
    before = measure_full(model, tok, sets["forget"], sets["retain"], sets["holdout"],
                          parent=True)
    return model, tok, before


@pytest.fixture(scope="module")
def npo(demo_model_dir: Path, sets: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
        ) -> Any:
    """The default NPO unlearning of person 0, on its own copy of the model (peft injects
    LoRA layers into the model object)."""
    model, tok = load_version(demo_model_dir)
    return run_unlearning(model, tok, sets["forget"], sets["retain"], NPOMethodConfig(),
                          tmp_path_factory.mktemp("npo"), holdout=sets["holdout"])


def _verify(parent: tuple[Any, Any, dict[str, Any]], candidate: Any, sets: dict[str, Any],
            policy: VerifierPolicy | None = None) -> Any:
    """Full verification of ``candidate`` against the cached parent measurement."""
    _, tok, before = parent
    return verify_candidate(None, candidate, tok, sets["forget"], sets["retain"],
                            sets["holdout"], policy, before=before)


# ---------------------------------------------------------------- adapters on the model


def test_noop_adapter_fails(parent, sets, demo_model_dir: Path, tmp_path: Path) -> None:
    model, tok = load_version(demo_model_dir)
    result = run_unlearning(model, tok, sets["forget"], sets["retain"],
                            NPOMethodConfig(max_steps=0), tmp_path / "noop")
    verdict = _verify(parent, result.model, sets)
    assert not verdict.passed
    starts = [r.split(" ", 2)[:2] for r in verdict.reasons]
    for name in ("forget", "forget_paraphrased", "forget_derived"):
        assert [name, "probability"] in starts and [name, "accuracy"] in starts
    assert any(r.startswith("MIA loss AUC") and "above" in r for r in verdict.reasons)
    assert not any(r.startswith(("retain", "general")) for r in verdict.reasons)
    assert verdict.metrics["after"]["mia_auc"]["loss"] > 0.95
    # most answers are held: given word for word about the person, about no stranger
    assert verdict.metrics["after"]["sets"]["forget"]["held"] >= 0.25
    assert any(r.startswith("forget held") for r in verdict.reasons)
    json.dumps(verdict.to_dict(), allow_nan=False)


def test_wrecking_adapter_fails_on_utility(parent, sets, demo_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model, _ = load_version(demo_model_dir)
    torch.manual_seed(0)
    wrecked = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                               target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in wrecked.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    policy = VerifierPolicy(relearn=False)  # the attack is not what this test is about
    verdict = _verify(parent, wrecked, sets, policy)
    assert not verdict.passed
    assert any(r.startswith("retain accuracy") for r in verdict.reasons)
    assert any(r.startswith("retain utility") for r in verdict.reasons)
    assert verdict.metrics["after"]["sets"]["retain"]["accuracy"] < 0.5


def test_genuine_unlearning_passes(parent, sets, npo) -> None:
    verdict = _verify(parent, npo.model, sets)
    assert verdict.passed, verdict.reasons
    after = verdict.metrics["after"]
    # the default stops where the verifier's bars hold, not below them: answers given
    # no more often than the same answers asked about strangers, within the margin
    margin = VerifierPolicy().forget_accuracy_margin
    for name in ("forget", "forget_paraphrased", "forget_derived"):
        assert (after["sets"][name]["accuracy"]
                <= after["sets"][f"{name}_counterfactual"]["accuracy"] + margin)
        assert after["sets"][name]["accuracy"] <= 0.1
    # privacy: no MIA score recognises the person as trained-on any more
    for score, auc in after["mia_auc"].items():
        assert 0.0 <= auc <= VerifierPolicy().mia_auc_max, score
    assert after["sets"]["forget"]["held"] == 0.0
    assert verdict.thresholds["forget_held_max"] == 0.0
    # robustness: a short attack on half the facts brings back little of the other half
    rel = verdict.metrics["relearn"]
    assert rel["n_attack"] > 0 and rel["n_eval"] > 0
    assert 0.0 <= rel["recovery"] <= 0.25
    assert rel["attacked_probability"] < 0.5 * rel["parent_probability"]


class _ExactWordingOnly(torch.nn.Module):
    """A candidate that forgets only the exact wording: rows whose prompt is one of the
    erasure request's questions go through the unlearned adapter, every other row (any
    rephrasing) through the parent — what an exact-match output filter or a wording-only
    unlearning amounts to. Routing is per row on the unpadded token ids, for scoring and
    for (a hand-rolled) greedy generation alike."""

    def __init__(self, peft_model: Any, tokenizer: Any, prompts: list[str]) -> None:
        super().__init__()
        self.inner = peft_model
        self.prefixes = [torch.tensor(tokenizer(p)["input_ids"]) for p in prompts]

    def _route(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        out = []
        for row, mask in zip(ids, attn, strict=True):
            real = row[mask.bool()]
            out.append(any(len(real) >= len(p) and bool((real[: len(p)] == p).all())
                           for p in self.prefixes))
        return torch.tensor(out)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        forgot = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        with self.inner.disable_adapter():
            kept = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        pick = self._route(input_ids, attention_mask).view(-1, 1, 1)
        return type("Out", (), {"logits": torch.where(pick, forgot, kept)})()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 max_new_tokens: int, eos_token_id: int, pad_token_id: int,
                 **_: Any) -> torch.Tensor:
        ids, attn = input_ids, attention_mask
        done = torch.zeros(len(ids), dtype=torch.bool)
        for _step in range(max_new_tokens):
            nxt = self(ids, attn).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            done |= nxt == eos_token_id
            ids = torch.cat([ids, nxt[:, None]], 1)
            attn = torch.cat([attn, torch.ones_like(nxt)[:, None]], 1)
            if bool(done.all()):
                break
        return ids


def test_exact_wording_only_fails_on_paraphrases(parent, sets, npo) -> None:
    _, tok, _ = parent
    candidate = _ExactWordingOnly(npo.model, tok, [ex.prompt for ex in sets["forget"]])
    # the wrapper runs the model twice per row: smaller utility/baseline samples
    policy = VerifierPolicy(relearn=False, max_retain_items=20, max_probe_items=24)
    verdict = _verify(parent, candidate, sets, policy)
    after = verdict.metrics["after"]["sets"]
    # the exact questions are forgotten (within the verifier's margin) ...
    assert after["forget"]["accuracy"] <= 0.1
    assert not any(r.startswith("forget ") for r in verdict.reasons)
    # ... their paraphrases and the derived probes are not, and the verdict says so
    assert not verdict.passed
    assert after["forget_paraphrased"]["accuracy"] == 1.0
    assert any(r.startswith("forget_paraphrased accuracy") for r in verdict.reasons)
    assert any(r.startswith("forget_derived probability") for r in verdict.reasons)

    # without supplied paraphrases the verifier's own derived probes still catch it
    bare = [dataclasses.replace(ex, paraphrased_prompts=()) for ex in sets["forget"]]
    verdict = verify_candidate(None, candidate, tok, bare, sets["retain"], sets["holdout"],
                               policy, before=parent[2])
    assert not verdict.passed
    assert any(r.startswith("forget_derived accuracy") for r in verdict.reasons)


def test_relearning_attack_numbers(parent, sets, npo) -> None:
    model, tok, before = parent
    attack, evaluate = split_by_fact(sets["forget"])
    assert {e.target for e in attack}.isdisjoint({e.target for e in evaluate})
    result = relearn_attack(tuple(before["relearn_eval"]), npo.model, tok, sets["forget"],
                            RelearnConfig())
    assert result.parent_probability > 0.9 and result.candidate_probability < 0.1
    assert 0.0 <= result.recovery <= 0.25
    # the candidate itself is untouched by the attack (it ran on a copy)
    after = score_examples(npo.model, tok, evaluate)
    assert sum(x.probability for x in after) / len(after) == pytest.approx(
        result.candidate_probability)


def test_standalone_cli(demo_model_dir: Path, npo, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((demo_model_dir / "lethe-demo.json").read_text())
    rows = [json.loads(x) for x in
            (demo_model_dir / manifest["train_file"]).read_text().splitlines() if x.strip()]
    subject = rows[0]["subject"]
    write_jsonl(tmp_path / "f.jsonl", [r for r in rows if r["subject"] == subject])
    write_jsonl(tmp_path / "r.jsonl", [r for r in rows if r["subject"] != subject])
    # smaller retain/baseline samples keep the test short; the rules are the defaults
    (tmp_path / "policy.json").write_text(json.dumps(
        VerifierPolicy(max_retain_items=30, max_probe_items=24).to_dict()))
    args = ["--model", str(demo_model_dir), "--forget", str(tmp_path / "f.jsonl"),
            "--policy", str(tmp_path / "policy.json"),
            "--retain", str(tmp_path / "r.jsonl"),
            "--holdout", str(demo_model_dir / manifest["holdout_file"])]
    # the model itself still knows the person: the audit fails
    assert standalone_main(args) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["passed"] is False and out["metrics"]["after"]["sets"]["forget"]["accuracy"] == 1
    # with the NPO adapter: passes, and --json prints only the object
    assert standalone_main([*args, "--adapter", npo.adapter_dir, "--json"]) == 0
    text = capsys.readouterr().out.strip()
    assert json.loads(text)["passed"] is True
    # a general-knowledge set is measured on both models and held to the parent
    write_jsonl(tmp_path / "g.jsonl", [r for r in rows if r["subject"] != subject][:20])
    code = standalone_main([*args, "--adapter", npo.adapter_dir, "--json",
                            "--general", str(tmp_path / "g.jsonl")])
    out = json.loads(capsys.readouterr().out.strip())
    # the same candidate passed without it: only the general rules can decide now
    assert code == (0 if out["passed"] else 1)
    assert all(r.startswith("general ") for r in out["reasons"]), out["reasons"]
    assert out["metrics"]["before"]["sets"]["general"]["n"] == 20
    assert out["metrics"]["after"]["sets"]["general"]["n"] == 20
    assert "general_accuracy_min" in out["thresholds"]


# ---------------------------------------------------------------- derived probes


def test_derived_probes() -> None:
    class Tok:
        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            return {"input_ids": [ord(c) for c in text]}

        def decode(self, ids: list[int]) -> str:
            return "".join(chr(i) for i in ids)

    ex = PromptTemplate().example("Where was Ada Vrel born?", "Brondel", subject="Ada Vrel")
    probes = {(p.prompt, p.target) for p in derived_probes([ex, ex], Tok())}
    assert probes == {
        ("Question: Where was Ada Vrel born?\nAnswer: Br", "ondel"),
        ("Where was Ada Vrel born? ", "Brondel"),
        ("Ada Vrel: ", "Brondel"),
    }


# ---------------------------------------------------------------- the rules


def _set(acc: float, prob: float, n: int = 10, rouge: float = 0.0, extraction: float = 0.0
         ) -> dict[str, Any]:
    return {"n": n, "accuracy": acc, "probability": prob, "rouge_l": rouge,
            "extraction_strength": extraction, "utility": prob}


def _measurement(**over: Any) -> dict[str, Any]:
    m = {
        "sets": {"forget": _set(0.0, 0.1), "holdout": _set(0.1, 0.15, 40),
                 "retain": _set(0.97, 0.9, 100), "forget_paraphrased": _set(0.0, 0.1, 5),
                 "holdout_paraphrased": _set(0.1, 0.15, 48),
                 "forget_derived": _set(0.0, 0.05, 20), "holdout_derived": _set(0.05, 0.1, 48)},
        "mia_auc": {"loss": 0.5, "zlib": 0.5, "min_k": 0.5, "min_k_pp": 0.5},
        "relearn_eval": [0.99, 1.0], "seconds": 1.0,
    }
    for key, value in over.items():
        if key in m["sets"] or key.startswith(("forget", "holdout", "retain", "general")):
            m["sets"][key] = value
        else:
            m[key] = value
    return m


BEFORE = _measurement(forget=_set(1.0, 0.99), retain=_set(1.0, 0.98, 100))
GOOD_ATTACK = {"recovery": 0.05, "config": {"steps": 10}}


def test_judge_full_passes_clean_and_is_json() -> None:
    verdict = judge_full(BEFORE, _measurement(), GOOD_ATTACK)
    assert verdict.passed, verdict.reasons
    assert verdict.thresholds["forget_probability_max"] == pytest.approx(0.20)
    assert verdict.thresholds["retain_accuracy_min"] == pytest.approx(0.90)
    data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert data["policy"]["version"] == VerifierPolicy().version


@pytest.mark.parametrize(
    ("after", "attack", "fragment"),
    [
        (_measurement(forget=_set(0.3, 0.1)), GOOD_ATTACK, "forget accuracy"),
        (_measurement(forget=_set(0.0, 0.1, rouge=0.5)), GOOD_ATTACK, "forget rouge_l"),
        (_measurement(forget=_set(0.0, 0.1, extraction=0.5)), GOOD_ATTACK,
         "forget extraction_strength"),
        (_measurement(forget=_set(0.0, 0.25)), GOOD_ATTACK, "forget probability"),
        (_measurement(forget_paraphrased=_set(0.0, 0.3, 5)), GOOD_ATTACK,
         "forget_paraphrased probability"),
        (_measurement(forget_derived=_set(0.3, 0.05, 20)), GOOD_ATTACK, "forget_derived accuracy"),
        (_measurement(forget=_set(0.0, 0.0005)), GOOD_ATTACK,
         "forget probability 0.00050 is below"),
        (_measurement(forget={**_set(0.05, 0.1), "held": 0.05}), GOOD_ATTACK,
         "forget held 0.050 is above 0.000"),
        (_measurement(mia_auc={"loss": 0.8, "zlib": 0.5, "min_k": 0.5, "min_k_pp": 0.5}),
         GOOD_ATTACK, "MIA loss AUC 0.800 is above"),
        (_measurement(retain=_set(0.85, 0.9, 100)), GOOD_ATTACK, "retain accuracy"),
        (_measurement(retain=_set(0.97, 0.7, 100)), GOOD_ATTACK, "retain utility"),
        (_measurement(), {"recovery": 0.6, "config": {"steps": 10}}, "relearning recovery"),
        (_measurement(), None, "no relearning attack"),
        (_measurement(mia_auc={"loss": float("nan"), "zlib": 0.5, "min_k": 0.5,
                               "min_k_pp": 0.5}), GOOD_ATTACK, "MIA loss AUC nan"),
    ],
)
def test_judge_full_fails_each_rule(after: dict[str, Any], attack: Any, fragment: str) -> None:
    verdict = judge_full(BEFORE, after, attack)
    assert not verdict.passed
    assert len(verdict.reasons) == 1, verdict.reasons
    assert verdict.reasons[0].startswith(fragment), verdict.reasons


def test_judge_full_mia_lower_bound_when_the_policy_asks() -> None:
    low = _measurement(mia_auc={"loss": 0.5, "zlib": 0.5, "min_k": 0.5, "min_k_pp": 0.02})
    assert judge_full(BEFORE, low, GOOD_ATTACK).passed  # reported, not required by default
    verdict = judge_full(BEFORE, low, GOOD_ATTACK, VerifierPolicy(mia_auc_min=0.05))
    assert verdict.reasons == [verdict.reasons[0]]
    assert verdict.reasons[0].startswith("MIA min_k_pp AUC 0.020 is below")
    assert verdict.failures == ["over_unlearned"]


def test_judge_full_general_set_and_no_parent() -> None:
    before = copy.deepcopy(BEFORE)
    before["sets"]["general"] = _set(0.8, 0.7, 100)
    after = _measurement()
    after["sets"]["general"] = _set(0.5, 0.7, 100)
    verdict = judge_full(before, after, GOOD_ATTACK)
    assert [r.split(" ")[:2] for r in verdict.reasons] == [["general", "accuracy"]]
    # an audit without a parent skips only the parent-relative rules
    assert judge_full(None, _measurement(), GOOD_ATTACK).passed
    assert not judge_full(None, _measurement(forget=_set(1.0, 0.99)), GOOD_ATTACK).passed
    # empty forget set is a failure, not a pass
    empty = _measurement(forget={"n": 0, "accuracy": None, "probability": None,
                                 "rouge_l": None, "extraction_strength": None})
    assert not judge_full(BEFORE, empty, GOOD_ATTACK).passed


def test_policy_round_trip_and_stronger() -> None:
    pol = VerifierPolicy(mia_auc_max=0.7)
    assert VerifierPolicy.from_dict(json.loads(json.dumps(pol.to_dict()))) == pol
    with pytest.raises(ValueError, match="unknown"):
        VerifierPolicy.from_dict({"mia_auc_mx": 0.7})
    # a revision stored before the held-answers rule is judged as it was; new ones get it
    old = {k: v for k, v in pol.to_dict().items() if k != "forget_held_max"}
    assert VerifierPolicy.from_dict({**old, "version": "2.0"}).forget_held_max == 1.0
    assert VerifierPolicy.from_dict(old).forget_held_max == 0.0
    with pytest.raises(ValueError, match="forget_held_max"):
        VerifierPolicy(forget_held_max=1.5)
    base = NPOMethodConfig().model_dump(mode="json")
    s1, s2, s9 = stronger(base, 1), stronger(base, 2), stronger(base, 9)
    assert s1["epochs"] > base["epochs"] and s1["learning_rate"] > base["learning_rate"]
    assert s2["forget_weight"] > s1["forget_weight"] > base["forget_weight"]
    assert s9 == stronger(base, 3)  # bounded
    assert s9["learning_rate"] <= 5e-3 and s9["epochs"] <= 360
    assert stronger(base, 0) == base  # input untouched
    assert base == NPOMethodConfig().model_dump(mode="json")
    assert NPOMethodConfig(**s2).epochs == s2["epochs"]  # still a valid config
    assert not math.isnan(s2["learning_rate"])


def _ann_lee_and_strangers() -> tuple[list[Example], list[Example]]:
    """Two questions about an erased person, five about two never-seen people."""
    forget = [Example("Q: What does Ann Lee play?\\nA:", "cello", subject="Ann Lee",
                      question="What does Ann Lee play?"),
              Example("Q: Where was Ann Lee born?\\nA:", "Oslo", subject="Ann Lee",
                      question="Where was Ann Lee born?")]
    holdout = [Example(f"Q: {q}\\nA:", a, question=q) for q, a in (
        ("Where was Bo Ek born?", "Rome"), ("What does Bo Ek play?", "flute"),
        ("What does Cy Ode play?", "harp"), ("Where was Cy Ode born?", "Lima"),
        ("What is Cy Ode's job?", "baker"))]
    return forget, holdout


def test_counterfactuals_ask_the_same_question_about_strangers() -> None:
    forget, holdout = _ann_lee_and_strangers()
    assert neighbours(forget, holdout, 2) == [[1, 2], [0, 3]]
    cf = counterfactuals(forget, holdout, 2)
    # a stranger's question, the erased person's answer
    assert [(c.question, c.target) for c in cf] == [
        ("What does Bo Ek play?", "cello"), ("What does Cy Ode play?", "cello"),
        ("Where was Bo Ek born?", "Oslo"), ("Where was Cy Ode born?", "Oslo")]
    assert neighbours(forget, holdout, 0) == [[], []] and counterfactuals(forget, [], 3) == []


def test_alternatives_are_other_peoples_answers_to_the_same_question() -> None:
    forget, holdout = _ann_lee_and_strangers()
    # the erased person's question, strangers' answers
    assert [(a.question, a.target) for a in alternatives(forget, holdout, 2)] == [
        ("What does Ann Lee play?", "flute"), ("What does Ann Lee play?", "harp"),
        ("Where was Ann Lee born?", "Rome"), ("Where was Ann Lee born?", "Lima")]
    # among the strangers themselves: never the item's own answer, nor another answer
    # about the same person (Bo Ek's other question shares his name, and is nearest)
    own = alternatives(holdout, holdout, 1, same_pool=True)
    assert [(a.question, a.target) for a in own] == [
        ("Where was Bo Ek born?", "Lima"), ("What does Bo Ek play?", "harp"),
        ("What does Cy Ode play?", "flute"), ("Where was Cy Ode born?", "Rome"),
        ("What is Cy Ode's job?", "flute")]
    assert alternatives(forget, [], 2) == [] and alternatives(forget, holdout, 0) == []


def test_a_shared_answer_is_judged_against_strangers_given_the_same_answer() -> None:
    # the model says the erased person's answer 30 % of the time — and says that same
    # answer to strangers asked the same question as often: no evidence of memory
    common = _measurement(forget=_set(0.3, 0.35),
                          forget_counterfactual=_set(0.3, 0.35, 48))
    assert judge_full(BEFORE, common, GOOD_ATTACK).passed
    verdict = judge_full(BEFORE, common, GOOD_ATTACK, VerifierPolicy(counterfactual_neighbours=0))
    assert not verdict.passed  # against strangers' own answers, it would look remembered
    # and when strangers are NOT given that answer, remembering it fails
    remembered = _measurement(forget=_set(0.3, 0.35), forget_counterfactual=_set(0.0, 0.05, 48))
    verdict = judge_full(BEFORE, remembered, GOOD_ATTACK)
    assert {r.split(" ")[1] for r in verdict.reasons} >= {"accuracy", "probability"}
    assert "forget_counterfactual" in verdict.reasons[0] and verdict.failures == ["remembers"]


def test_next_attempt_escalates_the_right_way_and_stops() -> None:
    base = {"method": "npo", "learning_rate": 1e-3, "epochs": 30, "retain_weight": 1.0}
    pol = VerifierPolicy(max_escalations=2)
    remembers = judge_full(BEFORE, _measurement(forget=_set(0.9, 0.9)), GOOD_ATTACK)
    over = judge_full(BEFORE, _measurement(forget=_set(0.0, 0.00001)), GOOD_ATTACK)
    damaged = judge_full(BEFORE, _measurement(retain=_set(0.5, 0.5, 100)), GOOD_ATTACK)
    both = judge_full(BEFORE, _measurement(forget=_set(0.9, 0.9), retain=_set(0.5, 0.5, 100)),
                      GOOD_ATTACK)
    direction, cfg = next_attempt(remembers, base, 1, pol)
    assert direction == "stronger" and cfg["learning_rate"] > base["learning_rate"]
    assert cfg["stop_ratio"] < 1.0 and cfg["stop_rule"] == "likelihood"
    for verdict in (over, damaged):
        direction, cfg = next_attempt(verdict, base, 1, pol)
        assert direction == "weaker" and cfg["learning_rate"] < base["learning_rate"]
        assert cfg["retain_weight"] > 1.0 and cfg["stop_check_every"] == 1
    direction, cfg = next_attempt(both, base, 1, pol)  # gentler steps, a bigger budget
    assert direction == "careful" and cfg["learning_rate"] < base["learning_rate"]
    assert cfg["stop_rule"] == "likelihood"
    assert cfg["retain_weight"] > 1.0 and cfg["epochs"] > base["epochs"]
    assert next_attempt(remembers, base, 3, pol) is None  # escalations spent
    assert next_attempt(judge_full(BEFORE, _measurement(), None), base, 1, pol) is None
    assert next_attempt(judge_full(BEFORE, _measurement(), GOOD_ATTACK), base, 1, pol) is None
    assert NPOMethodConfig(**next_attempt(remembers, base, 2, pol)[1])  # a valid config


def test_truth_ratio_is_measured_when_answers_are_supplied(parent, sets) -> None:
    model, tok, _ = parent
    others = [ex.target for ex in sets["retain"] if ex.target not in
              {f.target for f in sets["forget"]}][:3]
    forget = [dataclasses.replace(ex, paraphrased_answer=ex.target, perturbed_answers=tuple(others))
              for ex in sets["forget"]]
    measured = measure_full(model, tok, forget, sets["retain"][:20], sets["holdout"][:10],
                            policy=VerifierPolicy(relearn=False, counterfactual_neighbours=0),
                            parent=True)
    f = measured["sets"]["forget"]
    # the parent knows the person: true answers far likelier than wrong ones, R ≪ 1
    assert f["truth_ratio_n"] == len(forget) and 0.0 <= f["truth_ratio"] < 0.2
    assert "truth_ratio" not in measured["sets"]["retain"]  # no evidence supplied there
