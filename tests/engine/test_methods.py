"""Every registered unlearning method through the shared loop on the tiny demo model:
forgets (lower answer probability), validates its config, cancels cleanly; the
task-vector adapter reloads through ``load_version``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import torch

from tests.engine.support import demo_sets
from workers.engine.methods import (
    METHOD_NAMES,
    REGISTRY,
    MethodConfig,
    default_config,
    parse_method_config,
    run_forward,
)
from workers.engine.qa import encode
from workers.engine.training import noise_context, noise_vocabulary, run_unlearning
from workers.engine.unlearn import ADAPTER_WEIGHTS, Cancelled, UnlearnResult, score_items
from workers.engine.versions import load_version

# Short runs: a dozen steps at rates that move the tiny model that fast. SimNPO's
# γ = 0.125 and the one-layer RMU adapter need a larger rate in so few steps.
STEPS = 12
FAST: dict[str, dict[str, Any]] = {
    "simnpo": {"learning_rate": 5e-3},
    "rmu": {"learning_rate": 1e-2},
    "task_vector": {"learning_rate": 1e-2},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # the machine is shared: one thread is as fast for this model and never spins
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def sets(demo_model_dir: Path) -> dict[str, Any]:
    return demo_sets(demo_model_dir)


@pytest.fixture(scope="module")
def before(demo_model_dir: Path, sets: dict[str, Any]) -> float:
    model, tok = load_version(demo_model_dir)
    return score_items(model, tok, sets["forget"]).mean_probability


def config_for(name: str, **extra: Any) -> dict[str, Any]:
    return {"method": name, "max_steps": STEPS, **FAST.get(name, {}), **extra}


# ------------------------------------------------------------------- registry


def test_registry_names_and_defaults() -> None:
    assert set(METHOD_NAMES) == {"grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo",
                                 "rmu", "undial", "task_vector"}
    for name in METHOD_NAMES:
        cfg = default_config(name)
        assert cfg.method == name  # type: ignore[attr-defined]
        assert isinstance(cfg, REGISTRY[name][0])
        # round-trips through JSON, as the API stores it
        assert parse_method_config(cfg.model_dump(mode="json")) == cfg
    assert default_config("npo").beta == 0.1  # type: ignore[attr-defined]


def test_registry_rejects_unknown_names() -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_method_config({"method": "sparse_magic"})
    with pytest.raises(pydantic.ValidationError):
        parse_method_config({"beta": 0.1})  # no discriminator
    with pytest.raises(KeyError):
        default_config("NPO")


@pytest.mark.parametrize("bad", [
    {"method": "npo", "beta": 0},
    {"method": "npo", "lora_rank": 0},
    {"method": "npo", "learning_rate": -1e-3},
    {"method": "npo", "batch_size": "many"},
    {"method": "npo", "no_such_field": 1},
    {"method": "grad_diff", "retain_loss": "l2"},
    {"method": "simnpo", "beta": -4.5},
    {"method": "task_vector", "negation_scale": 0},
    {"method": "rmu", "layer": -1},
    {"method": "grad_ascent", "beta": 0.1},  # another method's hyper-parameter
])
def test_registry_rejects_bad_hyper_parameters(bad: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_method_config(bad)


def test_method_config_as_a_pydantic_field() -> None:
    class Job(pydantic.BaseModel):
        config: MethodConfig

    job = Job.model_validate_json('{"config": {"method": "grad_diff", "retain_loss": "kl"}}')
    assert job.config.method == "grad_diff"
    assert job.config.retain_loss == "kl"  # type: ignore[union-attr]
    schema = Job.model_json_schema()  # what FastAPI publishes
    assert "discriminator" in str(schema)


# ------------------------------------------------------------------- unlearning


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_forgets(name: str, demo_model_dir: Path, sets: dict[str, Any], before: float,
                        tmp_path: Path) -> None:
    model, tok = load_version(demo_model_dir)
    calls: list[tuple[int, int, float]] = []

    def progress(step: int, total: int, loss: float) -> bool:
        calls.append((step, total, loss))
        return True

    result = run_unlearning(model, tok, sets["forget"], sets["retain"], config_for(name),
                            tmp_path / "adapter", progress)
    assert isinstance(result, UnlearnResult)
    assert result.steps == STEPS and [c[0] for c in calls] == list(range(1, STEPS + 1))
    assert all(c[1] == STEPS for c in calls)
    assert all(torch.isfinite(torch.tensor(c[2])) for c in calls)
    assert (Path(result.adapter_dir) / ADAPTER_WEIGHTS).exists()
    assert result.config["method"] == name
    after = score_items(result.model, tok, sets["forget"]).mean_probability
    assert after < 0.95 * before, (name, before, after)


def test_grad_diff_with_kl_retain(demo_model_dir: Path, sets: dict[str, Any], before: float,
                                  tmp_path: Path) -> None:
    model, tok = load_version(demo_model_dir)
    result = run_unlearning(model, tok, sets["forget"], sets["retain"],
                            config_for("grad_diff", retain_loss="kl"), tmp_path)
    assert score_items(result.model, tok, sets["forget"]).mean_probability < 0.95 * before


def test_task_vector_adapter_loads_and_changes_outputs(
    demo_model_dir: Path, sets: dict[str, Any], before: float, tmp_path: Path
) -> None:
    model, tok = load_version(demo_model_dir)
    result = run_unlearning(model, tok, sets["forget"], sets["retain"],
                            config_for("task_vector"), tmp_path / "tv")
    in_memory = score_items(result.model, tok, sets["forget"])
    base, _ = load_version(demo_model_dir)
    loaded, _ = load_version(demo_model_dir, [result.adapter_dir])
    reloaded = score_items(loaded, tok, sets["forget"])
    assert reloaded.mean_probability < 0.95 * before
    # the saved adapter is the negated one the loop measured
    assert torch.allclose(reloaded.logp, in_memory.logp, atol=1e-3)
    ids = torch.tensor([[tok.bos_token_id, *tok(sets["forget"][0].prompt)["input_ids"][1:]]])
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, loaded(input_ids=ids).logits,
                                  atol=1e-4)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_cancellation_restores_the_model(name: str, demo_model_dir: Path,
                                         sets: dict[str, Any], tmp_path: Path) -> None:
    model, tok = load_version(demo_model_dir)
    ids = torch.tensor([[tok.bos_token_id, 5, 6, 7]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits.clone()

    def progress(step: int, total: int, loss: float) -> bool:
        return step < 2

    with pytest.raises(Cancelled) as info:
        run_unlearning(model, tok, sets["forget"], sets["retain"], config_for(name),
                       tmp_path / "adapter", progress)
    assert (info.value.step, info.value.total_steps) == (2, STEPS)
    assert not (tmp_path / "adapter").exists()
    assert not any("lora" in n for n, _ in model.named_modules())
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference)


@pytest.mark.parametrize("keep", [True, False], ids=["logits_to_keep", "full_then_cut"])
def test_answer_logits_are_the_full_forward_at_answer_positions(
    keep: bool, demo_model_dir: Path, sets: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The output layer runs only where answers are predicted; what it gives there is
    what the whole forward pass gives, for models with and without ``logits_to_keep``."""
    from workers.engine import qa

    model, tok = load_version(demo_model_dir)
    if not keep:
        monkeypatch.setattr(qa, "_keeps_logits", lambda cls: False)
    assert qa._keeps_logits(type(model)) is keep  # transformers' Llama takes logits_to_keep
    # rows of different prompt and answer lengths, so the kept positions are a union
    rows = [sets["forget"][0], sets["retain"][3], sets["holdout"][7]]
    batch = qa.encode(tok, rows)
    with torch.no_grad():
        scored = qa.answer_logits(model, batch, hidden=True)
        full = model(input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    assert scored.positions.tolist() == mask.any(0).nonzero().squeeze(-1).tolist()
    assert scored.positions.numel() < targets.shape[1]  # prompt positions were skipped
    assert torch.equal(scored.mask.sum(-1), mask.sum(-1))
    expected = torch.log_softmax(full, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(scored.logprobs().sum(-1), (expected * mask).sum(-1), atol=1e-4)
    assert torch.allclose(scored.logits[scored.mask].float(), full[mask], atol=1e-4)
    assert torch.equal(scored.targets[scored.mask], targets[mask])
    assert scored.hidden is not None and len(scored.hidden) == model.config.num_hidden_layers + 1


# ------------------------------------------------------------------- context noise


def test_noise_context_replaces_answer_inputs_only() -> None:
    ids = torch.arange(400).view(4, 100)
    labels = torch.full_like(ids, -100)
    labels[:, 20:80] = ids[:, 20:80]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    vocabulary = torch.tensor([1000, 1001, 1002])
    out = noise_context(batch, 0.3, vocabulary, torch.Generator().manual_seed(0))
    changed = out["input_ids"] != ids
    assert torch.equal(out["labels"], labels) and out["labels"] is labels
    assert not changed[:, :20].any() and not changed[:, 80:].any()  # prompt, padding
    assert 0.2 < changed[:, 20:80].float().mean().item() < 0.4
    assert set(out["input_ids"][changed].tolist()) <= {1000, 1001, 1002}
    assert torch.equal(batch["input_ids"], torch.arange(400).view(4, 100))  # not in place
    again = noise_context(batch, 0.3, vocabulary, torch.Generator().manual_seed(0))
    assert torch.equal(again["input_ids"], out["input_ids"])


def test_context_noise_scores_the_reference_on_the_noised_batch(
    demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path
) -> None:
    """At step 1 the adapter is zero, so the model is its reference: NPO's forget term is
    (2/β)·ln 2 exactly when both log-likelihoods come from the same noised batch, and
    not when the reference were the cached clean rows'."""
    model, tok = load_version(demo_model_dir)
    losses: list[float] = []

    def progress(step: int, total: int, loss: float) -> bool:
        losses.append(loss)
        return True

    # long answers, so that a noised context changes how likely their later tokens are
    forget = [dataclasses.replace(ex, target=f"{ex.target} and {ex.target} again, {ex.target}")
              for ex in sets["forget"]]
    cfg = {"method": "npo", "max_steps": 1, "retain_weight": 0.0, "early_stop": False,
           "context_noise": 0.5, "beta": 0.1}
    run_unlearning(model, tok, forget, [], cfg, tmp_path / "noised", progress)
    assert losses[0] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)

    model, tok = load_version(demo_model_dir)
    batch = encode(tok, forget[:8])
    noised = noise_context(batch, 0.5, noise_vocabulary(tok), torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = score_items(model, tok, forget[:8]).logp
        noisy = run_forward(model, noised).seq_logp
    assert not torch.allclose(clean, noisy, atol=1e-2)  # so the test above can fail
