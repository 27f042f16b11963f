"""Unlearning metrics on tiny hand-made inputs: exact values a weakened or wrong
implementation would miss."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from workers.engine.metrics import (
    ItemScore,
    extraction_strength,
    harmonic_mean,
    json_safe,
    lcs_length,
    mia_aucs,
    min_k_mean,
    roc_auc,
    rouge_l_recall,
    score_examples,
    truth_ratio_forget,
    truth_ratio_other,
    truth_ratios,
    utility,
    zlib_length,
)
from workers.engine.qa import Example


def test_lcs_and_rouge_l_recall() -> None:
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert lcs_length([], ["a"]) == 0
    assert rouge_l_recall("the cat sat on the mat", "the cat on mat") == 1.0
    # LCS "the mat" = 2 of the reference's 4 words; order matters (not a bag of words)
    assert rouge_l_recall("mat the on", "the cat on mat") == pytest.approx(0.5)
    assert rouge_l_recall("Born in Brondel.", "brondel") == 1.0  # case, punctuation
    assert rouge_l_recall("nothing", "Brondel") == 0.0
    assert rouge_l_recall("x", "") == 0.0


def test_roc_auc_rank_based_with_ties() -> None:
    assert roc_auc([3, 4], [1, 2]) == 1.0
    assert roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    # pairs: (2>1) (2<3) (3>1) (3=3 → ½) → 2.5 / 4
    assert roc_auc([2, 3], [1, 3]) == pytest.approx(0.625)
    assert math.isnan(roc_auc([], [1.0]))


def test_extraction_strength() -> None:
    assert extraction_strength([True, True, True, True]) == 1.0
    assert extraction_strength([False, True, True, True]) == 0.75  # k = 1 of T = 4
    assert extraction_strength([True, False, True, True]) == 0.5
    assert extraction_strength([True, True, True, False]) == 0.0
    assert extraction_strength([]) == 0.0


def test_min_k_zlib_harmonic() -> None:
    assert min_k_mean([-1.0, -5.0, -2.0, -0.5, -3.0], 0.4) == pytest.approx(-4.0)  # 2 lowest
    assert min_k_mean([-2.0], 0.4) == -2.0
    assert zlib_length("aaaaaaaaaaaaaaaaaaaaaaaa") < zlib_length("the quick brown fox jumps")
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.0, 1.0]) == 0.0
    assert utility({"probability": 0.5, "rouge_l": 1.0}) == pytest.approx(2 / 3)
    assert json_safe({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}


def test_truth_ratio_aggregates() -> None:
    assert truth_ratio_forget([1.0, 0.5, 2.0]) == pytest.approx(2 / 3)
    assert truth_ratio_other([0.25, 2.0]) == pytest.approx(0.375)


def _item(**kw: float) -> ItemScore:
    base = dict(nll=1.0, n_tokens=2, probability=0.3, exact_memorisation=0.0,
                extraction_strength=0.0, loss=-1.0, zlib=-0.1, min_k=-1.0, min_k_pp=-1.0)
    base.update(kw)
    return ItemScore(**base)  # type: ignore[arg-type]


def test_mia_aucs_orientation() -> None:
    members = [_item(loss=-0.1, zlib=-0.01, min_k=-0.2, min_k_pp=0.5)] * 3
    strangers = [_item()] * 4
    assert mia_aucs(members, strangers) == {"loss": 1.0, "zlib": 1.0, "min_k": 1.0,
                                            "min_k_pp": 1.0}
    assert mia_aucs(strangers, members)["loss"] == 0.0


# ---------------------------------------------------------------- a hand-built "model"


class _Tok:
    """Characters 'a'..'d' are tokens 2..5; BOS 0, EOS 1, no pad token."""

    bos_token_id, eos_token_id, pad_token_id = 0, 1, None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord(c) - ord("a") + 2 for c in text]
        return {"input_ids": ([0] if add_special_tokens else []) + ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 2 + ord("a")) for i in ids if i >= 2)


class _Cycle(torch.nn.Module):
    """Predicts token ``(t + 1)`` after token ``t`` with probability ``p`` (rest uniform),
    over a 6-token vocabulary: it "knows" the sequences a→b→c→d."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.p = p

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None) -> Any:
        v = 6
        probs = torch.full((*input_ids.shape, v), (1 - self.p) / (v - 1))
        nxt = (input_ids + 1).clamp(max=v - 1)
        probs.scatter_(-1, nxt.unsqueeze(-1), self.p)
        return type("Out", (), {"logits": probs.log() + self.w})()


def test_score_examples_exact_values() -> None:
    tok, model = _Tok(), _Cycle(p=0.8)
    # prompt "a" → target "bc" + EOS: tokens b, c are the argmax (p=0.8); EOS is not (0.04)
    [s] = score_examples(model, tok, [Example(prompt="a", target="bc")])
    lp = [math.log(0.8), math.log(0.8), math.log(0.04)]
    assert s.n_tokens == 3
    assert s.nll == pytest.approx(-sum(lp) / 3)
    assert s.probability == pytest.approx(math.exp(sum(lp) / 3))
    assert s.exact_memorisation == 1.0 and s.extraction_strength == 1.0  # EOS excluded
    assert s.loss == pytest.approx(-s.nll)
    assert s.zlib == pytest.approx(-s.nll / zlib_length("bc"))
    # k = 0.4: the ceil(0.4·3) = 2 lowest of 3 → mean(log .04, log .8)
    assert s.min_k == pytest.approx((math.log(0.04) + math.log(0.8)) / 2)
    [s2] = score_examples(model, tok, [Example(prompt="a", target="bc")], min_k=0.3)
    assert s2.min_k == pytest.approx(math.log(0.04))
    # a wrong answer: "a" after "a" is never the argmax
    [w] = score_examples(model, tok, [Example(prompt="a", target="ba")])
    assert w.exact_memorisation == 0.5 and w.extraction_strength == 0.0
    assert w.probability < s.probability


def test_score_examples_min_k_pp_standardises() -> None:
    tok = _Tok()
    sharp, flat = _Cycle(p=0.99), _Cycle(p=0.2)
    [a] = score_examples(sharp, tok, [Example(prompt="a", target="bc")])
    [b] = score_examples(flat, tok, [Example(prompt="a", target="bc")])
    # by hand: at each position mu = Σ p·log p, sigma² = Σ p·(log p)² − mu²; the score is
    # the mean of the 2 lowest (log p(label) − mu) / sigma over b, c, EOS
    def expected(p: float) -> float:
        q = (1 - p) / 5
        mu = p * math.log(p) + 5 * q * math.log(q)
        sd = math.sqrt(p * math.log(p) ** 2 + 5 * q * math.log(q) ** 2 - mu**2)
        z = sorted([(math.log(p) - mu) / sd] * 2 + [(math.log(q) - mu) / sd])
        return (z[0] + z[1]) / 2

    assert a.min_k_pp == pytest.approx(expected(0.99), rel=1e-4)
    assert b.min_k_pp == pytest.approx(expected(0.2), rel=1e-4)


def test_truth_ratios_on_hand_model() -> None:
    tok, model = _Tok(), _Cycle(p=0.8)
    # paraphrased answer "bc" is the model's belief; perturbed "ba", "bd" are not
    [r] = truth_ratios(model, tok, ["a"], ["bc"], [["ba", "bd"]])
    assert 0 < r < 1
    [same] = truth_ratios(model, tok, ["a"], ["bc"], [["bc"]])
    assert same == pytest.approx(1.0)


def test_paraphrased_deduplicates() -> None:
    from workers.engine.qa import paraphrased

    a = Example("p1", "t", paraphrased_prompts=("q1", "q2"))
    b = Example("p2", "t", paraphrased_prompts=("q1",))
    assert [e.prompt for e in paraphrased([a, b])] == ["q1", "q2"]


def test_split_retain_is_stable_and_keeps_about_one_in_five() -> None:
    from workers.engine.qa import split_retain

    rows = [{"question": f"q{i}?", "answer": "a"} for i in range(500)]
    train, check = split_retain(rows)
    assert len(train) + len(check) == 500 and not {r["question"] for r in train} & {
        r["question"] for r in check}
    assert 60 < len(check) < 140  # one in five, by hash
    assert split_retain(list(reversed(rows)))[1] == list(reversed(check))  # row-wise, stable


def test_split_holdout_splits_by_person_stably_with_at_least_half_checked() -> None:
    from workers.engine.qa import split_holdout

    rows = [{"subject": f"P{p}", "question": f"q{p}-{i}?", "answer": "a"}
            for p in range(9) for i in range(3)]
    stop, check = split_holdout(rows)
    people = {r["subject"] for r in stop}, {r["subject"] for r in check}
    assert not people[0] & people[1] and len(people[1]) == 5 and len(people[0]) == 4
    assert len(stop) + len(check) == len(rows)
    assert [r["question"] for r in check] == [r["question"] for r in rows if r in check]
    assert split_holdout(list(reversed(rows)))[1] == list(reversed(check))  # stable
    # rows without a subject are each their own person; one person: nothing to stop on
    loose = [{"question": f"q{i}?", "answer": "a"} for i in range(10)]
    assert [len(part) for part in split_holdout(loose)] == [5, 5]
    assert split_holdout(rows[:3]) == ([], rows[:3])
