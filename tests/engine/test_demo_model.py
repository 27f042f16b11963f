"""The demo model builder: corpus generator (fast unit tests) and one ``tiny`` build per
test run, shared by the tests below through a module fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.engine import corpus
from workers.engine.demo_model import MANIFEST, DemoModelReport, build_demo_model
from workers.engine.qa import (
    PromptTemplate,
    answer_correct,
    examples_from_rows,
    greedy_generate,
    load_jsonl,
)

ROW_KEYS = {"subject", "question", "answer", "paraphrased_questions"}


# --- corpus -------------------------------------------------------------------------


def test_corpus_is_deterministic_in_seed() -> None:
    a = corpus.generate_people(12, 4, seed=7)
    b = corpus.generate_people(12, 4, seed=7)
    c = corpus.generate_people(12, 4, seed=8)
    assert a == b
    assert [p.name for p in a.train] != [p.name for p in c.train]
    assert corpus.train_rows(a.train) == corpus.train_rows(b.train)


def test_corpus_train_and_holdout_are_disjoint() -> None:
    c = corpus.generate_people(30, 10, seed=0)
    assert len(c.train) == 30 and len(c.holdout) == 10
    words = [set(p.name.split()) for p in c.train], [set(p.name.split()) for p in c.holdout]
    train_words, hold_words = set().union(*words[0]), set().union(*words[1])
    assert not train_words & hold_words  # not even a shared first name or surname
    assert len({p.name for p in c.train + c.holdout}) == 40
    for person in c.train + c.holdout:
        assert [f.attribute for f in person.facts] == list(corpus.ATTRIBUTES)
        for fact in person.facts:
            assert len(set(fact.questions)) == len(fact.questions) >= 3
            assert all(person.name in q for q in fact.questions)


def test_train_rows_separate_trained_questions_from_probes() -> None:
    c = corpus.generate_people(6, 0, seed=1)
    rows = corpus.train_rows(c.train, n_trained_variants=3)
    assert len(rows) == 6 * len(corpus.ATTRIBUTES) * 3
    by_fact: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        assert row.keys() >= ROW_KEYS
        by_fact.setdefault((row["subject"], row["attribute"]), []).append(row)
    held_out_phrasings = set()
    for fact_rows in by_fact.values():
        trained = {r["question"] for r in fact_rows}
        probes = fact_rows[0]["paraphrased_questions"]
        assert len(trained) == 3 and len(probes) == 1
        assert all(r["paraphrased_questions"] == probes for r in fact_rows)
        assert not trained & set(probes)  # a probe is never trained
        assert len({r["answer"] for r in fact_rows}) == 1
        held_out_phrasings.add(probes[0].replace(fact_rows[0]["subject"], "{name}"))
    # the held-out phrasing rotates, so no phrasing is untrained for everybody
    assert len(held_out_phrasings) > len(corpus.ATTRIBUTES)


# --- one tiny build -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoModelReport]:
    out = tmp_path_factory.mktemp("demo") / "tiny"
    calls: list[tuple[int, int, float]] = []
    report = build_demo_model(out, size="tiny", seed=0,
                              on_progress=lambda s, t, loss: calls.append((s, t, loss)))
    assert calls and calls[-1][0] == calls[-1][1] == report.steps
    return out, report


def test_tiny_build_learns_trained_facts_only(tiny: tuple[Path, DemoModelReport]) -> None:
    _, report = tiny
    assert report.size == "tiny"
    assert report.train_accuracy >= 0.9
    # holdout facts were never seen: the model can only guess (chance is about 0.07)
    assert report.holdout_accuracy <= 0.35
    assert report.final_loss < 0.5
    assert report.parameters > 0 and report.seconds > 0
    assert report.n_train_items > 0 and report.n_holdout_items > 0


def test_tiny_directory_loads_with_auto_classes(tiny: tuple[Path, DemoModelReport]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report = tiny
    for name in ("config.json", "model.safetensors", "generation_config.json",
                 "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["report"]["train_accuracy"] == report.train_accuracy

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert None not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)

    rows = load_jsonl(out / manifest["train_file"])
    examples = examples_from_rows(rows, PromptTemplate(manifest["template"]))
    outs = greedy_generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens=8)
    correct = [answer_correct(g, e.target) for g, e in zip(outs, examples, strict=True)]
    assert sum(correct) / len(correct) >= 0.9
    # a trained answer comes back verbatim (greedy stops at EOS, right after it)
    first = correct.index(True)
    assert outs[first].strip() == examples[first].target


def test_tiny_data_files(tiny: tuple[Path, DemoModelReport]) -> None:
    out, report = tiny
    train = load_jsonl(out / "data" / "train.jsonl")
    hold = load_jsonl(out / "data" / "holdout.jsonl")
    assert len(train) == report.n_train_items and len(hold) == report.n_holdout_items
    for row in train + hold:
        assert row.keys() >= ROW_KEYS
        assert isinstance(row["paraphrased_questions"], list) and row["paraphrased_questions"]
        assert row["subject"] in row["question"]
    assert not {r["subject"] for r in train} & {r["subject"] for r in hold}
    # probes of trained facts are never among the trained questions
    trained = {r["question"] for r in train}
    assert not trained & {q for r in train for q in r["paraphrased_questions"]}
