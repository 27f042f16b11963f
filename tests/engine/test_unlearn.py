"""NPO unlearning on the tiny demo model: the person is forgotten, the others are kept, the
adapter reloads to the same model, runs are deterministic and cancellable."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.support import demo_sets
from workers.engine.methods import get_method
from workers.engine.methods.builtin import NPOMethodConfig
from workers.engine.metrics import score_examples
from workers.engine.qa import (
    Example,
    by_length,
    encode,
    given_order,
    greedy_generate,
    length_batches,
    pad_id,
    tokenize,
)
from workers.engine.tofu import token_scores
from workers.engine.training import (
    MembershipProbe,
    _calibrate,
    _reference_cache,
    forget_batch_size,
    run_unlearning,
    stop_targets,
)
from workers.engine.unlearn import (
    ADAPTER_WEIGHTS,
    Cancelled,
    UnlearnResult,
    forget_items,
    npo_loss,
    score_items,
)
from workers.engine.verifier import VerifierPolicy, judge_full, measure_full
from workers.engine.versions import load_version, sha256_file


@pytest.fixture(scope="module")
def sets(demo_model_dir: Path) -> dict[str, Any]:
    return demo_sets(demo_model_dir)


@pytest.fixture(scope="module")
def unlearned(demo_model_dir: Path, sets: dict[str, Any],
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One default unlearning run of subject 0, measured before and after."""
    model, tok = load_version(demo_model_dir)
    before = measure_full(model, tok, sets["forget"], sets["retain"], sets["holdout"],
                          parent=True)
    calls: list[tuple[int, int, float]] = []

    def progress(step: int, total: int, loss: float) -> bool:
        calls.append((step, total, loss))
        return True

    out = tmp_path_factory.mktemp("adapter")
    result = run_unlearning(model, tok, sets["forget"], sets["retain"], NPOMethodConfig(), out,
                            progress, holdout=sets["holdout"])
    after = measure_full(result.model, tok, sets["forget"], sets["retain"], sets["holdout"])
    return {"model": model, "tok": tok, "before": before, "after": after, "result": result,
            "calls": calls}


def test_npo_loss_values() -> None:
    ref = torch.tensor([-5.0, -3.0])
    # at the reference the loss is (2/β)·ln 2 whatever β; lower likelihood, lower loss
    assert float(npo_loss(ref, ref, 0.1)) == pytest.approx(20 * math.log(2))
    assert float(npo_loss(ref, ref, 1.0)) == pytest.approx(2 * math.log(2))
    assert float(npo_loss(ref - 10, ref, 0.1)) < float(npo_loss(ref, ref, 0.1))
    # it is the literature's −(2/β)·mean logσ(−β·Δ)
    delta = torch.tensor([1.5, -4.0])
    lit = -(2 / 0.1) * torch.nn.functional.logsigmoid(-0.1 * delta).mean()
    assert float(npo_loss(ref + delta, ref, 0.1)) == pytest.approx(float(lit))


def test_forget_items_adds_each_paraphrase_once() -> None:
    rows = [Example("q1", "a", paraphrased_prompts=("p",)),
            Example("q2", "a", paraphrased_prompts=("p",))]
    assert [e.prompt for e in forget_items(rows, include_paraphrases=True)] == ["q1", "p", "q2"]
    assert [e.prompt for e in forget_items(rows, include_paraphrases=False)] == ["q1", "q2"]


def test_forgets_the_person_and_keeps_the_others(unlearned: dict[str, Any]) -> None:
    before, after = unlearned["before"]["sets"], unlearned["after"]["sets"]
    assert before["forget"]["accuracy"] == 1.0
    assert after["forget"]["accuracy"] <= after["forget_counterfactual"]["accuracy"] + 0.10
    assert after["forget"]["probability"] < 0.5 * before["forget"]["probability"]
    assert after["retain"]["accuracy"] >= 0.9 * before["retain"]["accuracy"]
    # every rule but the attack (tested with the verifier)
    verdict = judge_full(unlearned["before"], unlearned["after"], None,
                         VerifierPolicy(relearn=False))
    assert verdict.passed, verdict.reasons


def test_result_describes_the_run(unlearned: dict[str, Any], sets: dict[str, Any]) -> None:
    result: UnlearnResult = unlearned["result"]
    cfg = NPOMethodConfig()
    assert cfg.stop_rule == "membership" and cfg.granularity == "token"
    n_items = len(forget_items(sets["forget"], cfg.include_paraphrases))
    per_epoch = math.ceil(n_items / forget_batch_size(cfg, n_items))
    assert per_epoch <= cfg.forget_steps_per_pass
    assert result.n_forget == n_items == 20 and result.n_retain == len(sets["retain"])
    # stopped at the end of a pass, once a membership attack could not tell the person
    # from strangers and the counterfactual bars held (the likelihood target is unused)
    assert result.stopped_early and result.steps < cfg.epochs * per_epoch
    assert result.steps % per_epoch == 0 and result.steps == len(result.loss_history)
    assert result.stop_target is None
    model, tok = unlearned["model"], unlearned["tok"]
    trained = forget_items(sets["forget"], True)
    originals = {(ex.prompt, ex.target) for ex in sets["forget"]}
    probe = MembershipProbe(model, tok, trained,
                            [tokenize(tok, ex, cfg.max_length) for ex in trained],
                            sets["holdout"], sets["retain"], cfg.max_length,
                            paraphrase=[(ex.prompt, ex.target) not in originals
                                        for ex in trained])
    reading = probe.read(result.model, cfg)
    assert reading.forgotten and reading.auc <= cfg.stop_auc
    # no answer still given word for word about this person only
    assert reading.held is not None and not bool(reading.held.any())
    # under the parent many are (8 of these 20 on the tiny model: known, and said about
    # no stranger; the rest are answers it gives strangers too)
    with result.model.disable_adapter():
        parent = probe.read(result.model, cfg.model_copy(update={"stop_auc": 1.0}))
    assert parent.held is not None and float(parent.held.float().mean()) >= 0.25
    assert not parent.forgotten
    # the adapter was calibrated back to just-forgotten, never strengthened
    assert 0.0 < result.adapter_scale <= 1.0
    assert result.adapter_sha256 == sha256_file(Path(result.adapter_dir) / ADAPTER_WEIGHTS)
    assert (Path(result.adapter_dir) / "adapter_config.json").exists()
    assert result.final_loss == result.loss_history[-1] and math.isfinite(result.final_loss)
    assert result.config == cfg.model_dump(mode="json")
    summary = json.loads(json.dumps(result.to_dict()))
    assert "model" not in summary and summary["adapter_sha256"] == result.adapter_sha256
    calls = unlearned["calls"]
    assert [c[0] for c in calls] == list(range(1, result.steps + 1))
    assert {c[1] for c in calls} == {cfg.epochs * per_epoch}  # the cap, known up front
    assert not result.model.training
    # where the seconds went: every part measured, adding up to the whole call
    timings = result.timings
    assert set(timings) == {"setup", "training", "checks", "calibration", "finish"}
    assert all(timings[part] > 0 for part in timings), timings
    assert sum(timings.values()) == pytest.approx(result.seconds, rel=1e-6)
    # one reading at most per pass (fewer while the checks back off), the last one stopped
    assert 1 <= result.stop_checks <= result.steps // per_epoch
    assert summary["timings"] == timings and summary["stop_checks"] == result.stop_checks


def test_membership_rule_holds_the_items_and_their_paraphrases_to_the_bars_apart(
        demo_model_dir: Path, sets: dict[str, Any]) -> None:
    """Forgotten originals must not average away paraphrases that still give the answer,
    and a paraphrase is compared with strangers asked in paraphrase (as the verifier
    does). Scores are set by hand; the probe's rows are the real ones."""
    from workers.engine.baselines import counterfactuals
    from workers.engine.qa import paraphrased
    from workers.engine.unlearn import ItemScores

    _, tok = load_version(demo_model_dir)
    forget = sets["forget"][:2]
    items = forget_items(forget, True)
    paraphrase = [ex.prompt not in {f.prompt for f in forget} for ex in items]
    assert 0 < sum(paraphrase) < len(items)
    rows = [tokenize(tok, ex, 128) for ex in items]
    cfg = NPOMethodConfig()

    def probe_with(flags: list[bool] | None, para_prob: float) -> MembershipProbe:
        probe = MembershipProbe(load_version(demo_model_dir)[0], tok, items, rows,
                                sets["holdout"], [], 128, paraphrase=flags)

        def scores(probs: list[float], min_k: float | None) -> ItemScores:
            p = torch.tensor(probs)
            return ItemScores(p.log(), torch.ones(len(probs)), torch.zeros(len(probs),
                                                                           dtype=torch.bool),
                              None if min_k is None else torch.full((len(probs),), min_k))

        def score(model: Any, rows_: Any, min_k: bool = False) -> ItemScores:
            if rows_ is probe.forget_rows:  # originals forgotten, paraphrases not
                return scores([para_prob if f else 0.01 for f in paraphrase], -9.0)
            if rows_ is probe.holdout_rows:
                return scores([0.1] * len(rows_), -1.0)
            if rows_ is probe.counterfactual_rows:  # strangers, asked as trained
                return scores([0.3] * len(rows_), None)
            # the verifier's baseline: the strangers' paraphrased questions, pooled
            assert rows_ is probe.paraphrase_counterfactual_rows
            assert len(rows_) == len(paraphrased(counterfactuals(forget, sets["holdout"], 4)))
            return scores([0.05] * len(rows_), None)

        probe._score = score  # type: ignore[method-assign]
        return probe

    # one mean over both: (the originals' 0.01 and the paraphrases' 0.3) is within the
    # strangers' 0.3 + margin, though every paraphrase still gives the answer at 0.3
    assert probe_with(None, 0.3).read(None, cfg).forgotten
    # apart: the paraphrases are six times the strangers' paraphrased level
    reading = probe_with(paraphrase, 0.3).read(None, cfg)
    assert reading.auc == 0.0 and not reading.forgotten
    # none is held (none is given word for word), but the paraphrases are what keeps
    # the rule from passing: training goes on with them alone
    assert reading.held is not None and not bool(reading.held.any())
    assert reading.pending is not None and reading.pending.tolist() == paraphrase
    # at the strangers' paraphrased level they pass
    assert probe_with(paraphrase, 0.05 + cfg.stop_margin / 2).read(None, cfg).forgotten
    assert probe_with(paraphrase, 0.05 + cfg.stop_margin * 2).read(None, cfg).forgotten is False


def test_preference_score_is_not_fooled_by_strangers_falling_along(
        demo_model_dir: Path, sets: dict[str, Any]) -> None:
    """Unlearning can lower every unfamiliar answer, strangers' too: then the erased
    people's answers stay above the strangers' (Min-K% AUC 1) though the model prefers
    their true answers no more than other people's. The preference score compares each
    answer with the others given to the same question; scores set by hand, the probe's
    rows the real ones."""
    from workers.engine.unlearn import ItemScores

    model, tok = load_version(demo_model_dir)
    items = forget_items(sets["forget"], False)
    rows = [tokenize(tok, ex, 128) for ex in items]
    probe = MembershipProbe(model, tok, items, rows, sets["holdout"], [], 128,
                            score="preference")
    assert len(probe.forget_alt_rows) == 4 * len(items)
    assert len(probe.holdout_alt_rows) == 4 * len(sets["holdout"])
    # "either" reads both scores, so it needs the same rows
    both = MembershipProbe(model, tok, items, rows, sets["holdout"], [], 128, score="either")
    assert both.forget_alt_rows == probe.forget_alt_rows
    assert both.holdout_alt_rows == probe.holdout_alt_rows
    assert set(both.aucs(model)) == {"min_k", "preference"}
    assert both.aucs(model)["preference"] == probe.aucs(model)["preference"]
    # on the real rows: a float AUC, the parent prefers the erased people's answers
    cfg = NPOMethodConfig(stop_score="preference")
    assert probe.aucs(model)["preference"] > 0.9
    levels = {"forget": -1.0, "holdout": -5.0, "forget_alt": -1.0, "holdout_alt": -5.0}

    def score(model_: Any, rows_: Any, min_k: bool = False) -> ItemScores:
        name = {id(probe.forget_rows): "forget", id(probe.holdout_rows): "holdout",
                id(probe.forget_alt_rows): "forget_alt",
                id(probe.holdout_alt_rows): "holdout_alt"}.get(id(rows_), "forget")
        n = len(rows_)
        return ItemScores(torch.full((n,), levels[name]), torch.ones(n),
                          torch.zeros(n, dtype=torch.bool),
                          torch.full((n,), levels[name]) if min_k else None)

    probe._score = score  # type: ignore[method-assign]
    # everybody's answers as likely as any other answer to the question: the erased
    # people are strangers by preference, though far above them by Min-K%
    assert probe.aucs(None) == {"preference": 0.5}
    probe.score = "either"
    assert probe.aucs(None) == {"min_k": 1.0, "preference": 0.5}
    reading = probe.read(None, cfg)
    assert reading.auc == 0.5 and reading.forgotten  # the score that passes
    probe.score = "min_k"
    assert probe.aucs(None) == {"min_k": 1.0}
    assert probe.read(None, cfg).auc == 1.0 and not probe.read(None, cfg).forgotten
    # still preferring their own answers: members by either score
    probe.score, levels["forget_alt"] = "either", -3.0
    assert probe.aucs(None) == {"min_k": 1.0, "preference": 1.0}
    assert not probe.read(None, cfg).forgotten
    # "both": Min-K% first; the preference is scored only once Min-K% is at its bar
    probe.score = "both"
    assert probe.aucs(None, cfg=cfg) == {"min_k": 1.0}
    reading = probe.read(None, cfg)
    assert reading.auc == 1.0 and not reading.forgotten and not reading.preferred
    # strangers by Min-K%, their answers still preferred to others' answers
    levels["forget"], levels["forget_alt"] = -5.0, -8.0
    assert probe.aucs(None, cfg=cfg) == {"min_k": 0.5, "preference": 1.0}
    reading = probe.read(None, cfg)
    assert reading.auc == 1.0 and reading.preferred and not reading.forgotten
    assert reading.held is None and reading.pending is None
    levels["forget_alt"] = -5.0  # and no longer preferred: both bars met
    reading = probe.read(None, cfg)
    assert reading.auc == 0.5 and reading.forgotten and not reading.preferred
    probe.score, levels["forget"] = "either", -1.0
    # the preference bar: stop_auc, plus standard errors of two same-population
    # samples' AUC; Min-K%'s stays stop_auc
    n1, n0 = len(items), len(sets["holdout"])
    assert probe.auc_bar(cfg, "preference") == probe.auc_bar(cfg, "min_k") == 0.5
    wider = cfg.model_copy(update={"stop_auc_sigmas": 2.0})
    assert probe.auc_bar(wider, "preference") == pytest.approx(
        0.5 + 2 * math.sqrt((n1 + n0 + 1) / (12 * n1 * n0)))
    assert probe.auc_bar(wider, "min_k") == 0.5


def test_membership_probe_scores_each_counterfactual_row_once(
        demo_model_dir: Path, sets: dict[str, Any]) -> None:
    """Rows repeated across items (a shared answer asked about the same stranger) are
    scored once, and every item still gets its own neighbours' scores, in order."""
    from workers.engine.baselines import counterfactuals
    from workers.engine.unlearn import score_items

    model, tok = load_version(demo_model_dir)
    # two people with the same answers: every counterfactual row appears twice
    items = forget_items(sets["forget"], False)
    twice = [*items, *items]
    rows = [tokenize(tok, ex, 128) for ex in twice]
    probe = MembershipProbe(model, tok, twice, rows, sets["holdout"], [], 128)
    cf = counterfactuals(twice, sets["holdout"], 4)
    assert len(probe.counterfactual_rows) <= len(cf) // 2
    expected = [tokenize(tok, ex, 128) for ex in cf]
    assert [probe.counterfactual_rows[i] for i in probe.counterfactual_of.tolist()] == expected
    direct = score_items(model, tok, cf, 128)
    cfg = NPOMethodConfig()
    reading = probe.read(model, cfg.model_copy(update={"stop_auc": 1.0}))
    assert reading.held is not None
    known = direct.known.view(len(twice), -1).any(-1)
    assert reading.held.tolist() == (score_items(model, tok, twice, 128).known & ~known).tolist()


def test_score_items_answers_in_the_order_given(demo_model_dir: Path,
                                               sets: dict[str, Any]) -> None:
    """Batches are cut from the rows sorted by length; the scores come back in the
    caller's order, each the item's own (as scored alone, without padding)."""
    model, tok = load_version(demo_model_dir)
    items = [*sets["forget"], *sets["holdout"]]
    # longest first and shortest last, so that sorting moves every row
    items.sort(key=lambda ex: -len(tokenize(tok, ex, 128)[1]))
    assert len({len(tokenize(tok, ex, 128)[1]) for ex in items}) > 1
    batched = score_items(model, tok, items, 128, batch_size=4, min_k=True)
    alone = [score_items(model, tok, [ex], 128, batch_size=1, min_k=True) for ex in items]
    assert batched.count.tolist() == [int(a.count[0]) for a in alone]
    assert batched.known.tolist() == [bool(a.known[0]) for a in alone]
    assert torch.allclose(batched.logp, torch.cat([a.logp for a in alone]), atol=1e-4)
    assert batched.min_k is not None
    assert torch.allclose(batched.min_k, torch.cat([a.min_k for a in alone if a.min_k is not None]),
                          atol=1e-4)
    empty = score_items(model, tok, [], 128, min_k=True)
    assert empty.logp.numel() == 0 and empty.min_k is not None and empty.min_k.numel() == 0


def test_length_batches_cut_sorted_rows_and_given_order_inverts_them() -> None:
    rows = [([1], [2, 3, 4]), ([1], [2]), ([1, 1], [2, 3]), ([1], [2, 3]), ([], [9])]
    batches = length_batches(rows, 2)
    # lengths 4, 2, 4, 3, 1: sorted 4 (1), 1 (2), 3 (3), 0 (4), 2 (4) - ties in given order
    assert batches == [[4, 1], [3, 0], [2]]
    done = [f"row {i}" for batch in batches for i in batch]
    assert [done[j] for j in given_order(batches)] == [f"row {i}" for i in range(5)]
    assert length_batches([], 4) == [] and given_order([]) == []


def test_by_length_scores_collated_batches_and_answers_in_the_order_given() -> None:
    rows = [([1], [2, 3, 4]), ([1], [2]), ([1, 1], [2, 3]), ([1], [2, 3]), ([], [9])]
    seen: list[list[int]] = []

    def score(indices: list[int], batch: dict[str, torch.Tensor]) -> list[str]:
        seen.append(indices)
        assert batch["input_ids"].shape[0] == len(indices)
        # each batch pads to its own longest row
        assert batch["attention_mask"].shape[1] == max(sum(map(len, rows[i])) for i in indices)
        return [f"row {i}: {int(batch['attention_mask'][k].sum())}"
                for k, i in enumerate(indices)]

    done = by_length(rows, 2, 0, "cpu", score)
    assert seen == length_batches(rows, 2)
    assert done == [f"row {i}: {sum(map(len, row))}" for i, row in enumerate(rows)]
    assert by_length([], 2, 0, "cpu", score) == []


def test_every_scoring_loop_answers_in_the_order_given(demo_model_dir: Path,
                                                        sets: dict[str, Any]) -> None:
    """The verifier's scores, the reference cache and the TOFU benchmark's token scores
    batch rows of similar length too (``qa.length_batches``); each returns every item's
    own numbers (as scored alone) in the caller's order."""
    model, tok = load_version(demo_model_dir)
    items = [*sets["forget"], *sets["holdout"]]
    items.sort(key=lambda ex: -len(tokenize(tok, ex, 128)[1]))  # sorting moves every row
    batched = score_examples(model, tok, items, batch_size=4)
    alone = [score_examples(model, tok, [ex], batch_size=1)[0] for ex in items]
    assert [s.n_tokens for s in batched] == [s.n_tokens for s in alone]
    assert [s.nll for s in batched] == pytest.approx([s.nll for s in alone], abs=1e-4)
    assert [s.min_k_pp for s in batched] == pytest.approx([s.min_k_pp for s in alone],
                                                          abs=1e-3)

    token_lp = token_scores(model, tok, items, batch_size=4)
    token_alone = [token_scores(model, tok, [ex], batch_size=1)[0] for ex in items]
    assert [t.numel() for t in token_lp] == [t.numel() for t in token_alone]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(token_lp, token_alone,
                                                                strict=True))

    method = get_method(NPOMethodConfig())
    rows = [tokenize(tok, ex, 128) for ex in items]
    device = next(model.parameters()).device
    cache = _reference_cache(method, model, rows, None, pad_id(tok), device)
    assert cache.forget_logp is not None and cache.forget_token_logp is not None
    for i, row in enumerate(rows):
        own = _reference_cache(method, model, [row], None, pad_id(tok), device)
        assert own.forget_logp is not None and own.forget_token_logp is not None
        assert float(cache.forget_logp[i]) == pytest.approx(float(own.forget_logp[0]), abs=1e-3)
        assert torch.allclose(cache.forget_token_logp[i], own.forget_token_logp[0], atol=1e-4)


def test_likelihood_rule_stops_every_item_at_its_stranger_level(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path) -> None:
    model, tok = load_version(demo_model_dir)
    cfg = NPOMethodConfig(stop_rule="likelihood")
    n_items = len(forget_items(sets["forget"], cfg.include_paraphrases))
    per_epoch = math.ceil(n_items / forget_batch_size(cfg, n_items))
    # each answer's level: the same answer to the same kind of question about a
    # stranger (measured on the parent)
    stranger = stop_targets(cfg, model, tok, forget_items(sets["forget"], True),
                            sets["holdout"])
    assert stranger is not None and stranger.shape == (n_items,)
    assert bool((stranger > 0).all())
    # a stranger's level is below a remembered fact's (some answers are common: the tiny
    # model gives them to strangers too, which is exactly what the per-item level is for)
    before = score_items(model, tok, sets["forget"]).mean_probability
    assert float(stranger.mean()) < 0.5 * before
    result = run_unlearning(model, tok, sets["forget"], sets["retain"], cfg, tmp_path,
                            holdout=sets["holdout"])
    assert result.stopped_early and result.steps % per_epoch == 0
    assert result.stop_target == pytest.approx(float(stranger.mean()), rel=1e-4)
    assert result.forget_probability <= result.stop_target
    assert 0.0 < result.adapter_scale <= 1.0


def test_saved_adapter_reloads_to_the_same_model(unlearned: dict[str, Any],
                                                 demo_model_dir: Path,
                                                 sets: dict[str, Any]) -> None:
    result: UnlearnResult = unlearned["result"]
    tok = unlearned["tok"]
    reloaded, _ = load_version(demo_model_dir, [result.adapter_dir])
    items = sets["forget"] + sets["retain"][:40] + sets["holdout"][:10]
    batch = encode(tok, items)
    with torch.no_grad():
        mem = result.model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        disk = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(disk[mask], mem[mask], rtol=0, atol=1e-4)
    prompts = [ex.prompt for ex in items]
    assert greedy_generate(reloaded, tok, prompts) == greedy_generate(result.model, tok, prompts)


def test_deterministic_given_seed(demo_model_dir: Path, sets: dict[str, Any],
                                  tmp_path: Path) -> None:
    model, tok = load_version(demo_model_dir)
    cfg = NPOMethodConfig(max_steps=3, seed=7)
    digests = []
    for run in ("a", "b"):
        result = run_unlearning(model, tok, sets["forget"], sets["retain"], cfg, tmp_path / run)
        digests.append(result.adapter_sha256)
        result.model.unload()
    other = run_unlearning(model, tok, sets["forget"], sets["retain"],
                            NPOMethodConfig(max_steps=3, seed=8), tmp_path / "c")
    assert digests[0] == digests[1] != other.adapter_sha256


def test_cancel_stops_promptly_and_restores_the_model(demo_model_dir: Path,
                                                      sets: dict[str, Any],
                                                      tmp_path: Path) -> None:
    model, tok = load_version(demo_model_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[int] = []

    def progress(step: int, total: int, loss: float) -> bool:
        seen.append(step)
        return step < 2  # cancel at the second step

    started = time.perf_counter()
    with pytest.raises(Cancelled) as info:
        run_unlearning(model, tok, sets["forget"], sets["retain"],
                            NPOMethodConfig(epochs=1000), tmp_path / "out", progress)
    assert time.perf_counter() - started < 30
    assert info.value.step == 2 and seen == [1, 2] and info.value.total_steps > 1000
    assert not (tmp_path / "out" / ADAPTER_WEIGHTS).exists()
    # the caller's model is back to the parent: no LoRA layers, same weights, eval mode
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_callback_returning_none_does_not_cancel(demo_model_dir: Path, sets: dict[str, Any],
                                                 tmp_path: Path) -> None:
    model, tok = load_version(demo_model_dir)
    result = run_unlearning(model, tok, sets["forget"], sets["retain"],
                            NPOMethodConfig(max_steps=2), tmp_path, lambda *_: None)
    assert result.steps == 2


def test_rejects_empty_sets(demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path) -> None:
    model, tok = load_version(demo_model_dir)
    with pytest.raises(ValueError):
        run_unlearning(model, tok, [], sets["retain"], NPOMethodConfig(), tmp_path)
    with pytest.raises(ValueError):
        run_unlearning(model, tok, sets["forget"], [], NPOMethodConfig(), tmp_path)


def test_stranger_level_trusts_the_counterfactual_only_for_answers_said_about_strangers(
        demo_model_dir: Path) -> None:
    from workers.engine.baselines import counterfactuals, neighbours, stranger_level
    from workers.engine.qa import answer_correct

    model, tok = load_version(demo_model_dir)
    kinds = set()
    for subject in range(3):
        s = demo_sets(demo_model_dir, subject)
        items, holdout = forget_items(s["forget"], True), s["holdout"]
        level = stranger_level(model, tok, items, holdout, 4)
        cf = score_items(model, tok, counterfactuals(items, holdout, 4)).item_probability
        cf = cf.view(len(items), 4).mean(-1)
        own = score_items(model, tok, holdout).item_probability
        for i, near in enumerate(neighbours(items, holdout, 4)):
            # what the model answers, decoding greedily, when asked about the strangers
            said = greedy_generate(model, tok, [holdout[j].prompt for j in near],
                                   max_new_tokens=8)
            if any(answer_correct(g, items[i].target) for g in said):
                kinds.add("shared")
                assert float(level[i]) == pytest.approx(float(cf[i]))
            else:
                kinds.add("own")
                expected = min(float(cf[i]), float(own[near].mean()))
                assert float(level[i]) == pytest.approx(expected, rel=1e-4)
    assert kinds == {"shared", "own"}  # the demo model has both kinds of answer


def test_forget_batch_grows_with_the_batch_of_people() -> None:
    cfg = NPOMethodConfig()
    assert forget_batch_size(cfg, 20) == 8  # one person: the configured batch
    assert forget_batch_size(cfg, 200) == 50  # ten: a pass still takes four steps
    assert forget_batch_size(cfg, 1000) == 64  # fifty: bounded by max_batch_size
    assert forget_batch_size(NPOMethodConfig(forget_steps_per_pass=None), 1000) == 8


def test_forget_loss_acts_on_the_answer_not_the_end_of_sequence(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pushing down the EOS after an answer lowers its score while the answer stays the
    argmax (the model says it and runs on); the forget loss sees the answer tokens only."""
    from workers.engine.methods.builtin import NPO
    from workers.engine.training import without_eos

    model, tok = load_version(demo_model_dir)
    eos = tok.eos_token_id
    assert without_eos(([1, 2], [7, 8, eos]), eos) == ([1, 2], [7, 8])
    assert without_eos(([1, 2], [eos]), eos) == ([1, 2], [eos])  # an empty answer: kept
    assert without_eos(([1, 2], [7, 8]), eos) == ([1, 2], [7, 8])
    seen: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
    original = NPO.loss

    def spy(self: NPO, inputs: Any) -> torch.Tensor:
        seen.append((inputs.forget["labels"].clone(),
                     [inputs.ref.forget_token_logp[i] for i in inputs.forget_index]))
        return original(self, inputs)

    monkeypatch.setattr(NPO, "loss", spy)
    run_unlearning(model, tok, sets["forget"], sets["retain"], NPOMethodConfig(max_steps=2),
                   tmp_path)
    assert len(seen) == 2
    for labels, refs in seen:
        answers = [row[row != -100] for row in labels]
        assert all(len(a) > 0 and int(a[-1]) != eos for a in answers)
        # the reference's per-token log-probabilities cover the same tokens
        assert [len(r) for r in refs] == [len(a) for a in answers]


class _Adapter(torch.nn.Module):
    """A stand-in for a peft model: one LoRA B matrix the calibration scales."""

    def __init__(self) -> None:
        super().__init__()
        self.lora_B = torch.nn.Parameter(torch.ones(1))


@pytest.mark.parametrize(
    ("threshold", "readings", "expected"),
    [
        (0.999, 1, 1.0),  # the rule holds at full strength only: one reading settles it
        (0.99, 7, 127 / 128),  # the bisection's last point is the first reading's
        (0.8, 8, 103 / 128),  # the least strength of 2^-7 steps at which it holds
        (0.3, 8, 39 / 128),
    ],
)
def test_calibration_scales_the_adapter_back_to_the_weakest_strength_that_holds(
    threshold: float, readings: int, expected: float
) -> None:
    adapter = _Adapter()
    strengths: list[float] = []

    def holds() -> bool:
        strengths.append(float(adapter.lora_B))
        return strengths[-1] >= threshold

    assert _calibrate(adapter, holds) == pytest.approx(expected)
    assert float(adapter.lora_B) == pytest.approx(expected, rel=1e-6)
    # the first reading just below full strength, then (if it holds) the bisection
    assert len(strengths) == readings and strengths[0] == pytest.approx(127 / 128)
    if readings > 1:
        assert strengths[1] == pytest.approx(0.5)
