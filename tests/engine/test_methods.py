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
    Forward,
    MethodConfig,
    default_config,
    parse_method_config,
    run_forward,
)
from workers.engine.methods.builtin import NPOMethodConfig, npo_token_loss, unlikelihood_loss
from workers.engine.qa import collate, encode, pad_id, tokenize
from workers.engine.training import (
    checkpoint_activations,
    noise_context,
    noise_vocabulary,
    run_unlearning,
)
from workers.engine.unlearn import ADAPTER_WEIGHTS, Cancelled, UnlearnResult, score_items
from workers.engine.verifier import stronger
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
    npo = default_config("npo")
    assert isinstance(npo, NPOMethodConfig)
    assert npo.granularity == "token" and npo.stop_rule == "membership" and npo.beta is None
    assert npo.effective_beta == 0.3
    assert NPOMethodConfig(granularity="sequence").effective_beta == 0.1
    assert NPOMethodConfig(granularity="sequence", beta=0.2).effective_beta == 0.2


def test_registry_rejects_unknown_names() -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_method_config({"method": "sparse_magic"})
    with pytest.raises(pydantic.ValidationError):
        parse_method_config({"beta": 0.1})  # no discriminator
    with pytest.raises(KeyError):
        default_config("NPO")


@pytest.mark.parametrize("bad", [
    {"method": "npo", "beta": 0},
    {"method": "npo", "granularity": "word"},
    {"method": "npo", "stop_rule": "vibes"},
    {"method": "npo", "stop_auc": 1.5},
    {"method": "npo", "lora_rank": 0},
    {"method": "npo", "learning_rate": -1e-3},
    {"method": "npo", "batch_size": "many"},
    {"method": "npo", "no_such_field": 1},
    {"method": "grad_diff", "retain_loss": "l2"},
    {"method": "simnpo", "beta": -4.5},
    {"method": "task_vector", "negation_scale": 0},
    {"method": "rmu", "layer": -1},
    {"method": "npo", "lora_layers": 0},
    {"method": "npo", "frozen_prefix_mib": -1},
    {"method": "npo", "lora_layers": 2, "target_modules": "all-linear"},  # peft refuses it
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


@pytest.mark.parametrize("path", ["decoder_then_head", "logits_to_keep", "full_then_cut"])
def test_answer_logits_are_the_full_forward_at_answer_positions(
    path: str, demo_model_dir: Path, sets: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The output layer runs only where answers are predicted; what it gives there is
    what the whole forward pass gives: for the plain-head families (the decoder alone,
    the head at the answer tokens), and for other models with and without
    ``logits_to_keep``."""
    from workers.engine import qa

    model, tok = load_version(demo_model_dir)
    if path != "decoder_then_head":
        monkeypatch.setattr(qa, "PLAIN_HEAD_MODELS", frozenset())
    if path == "full_then_cut":
        monkeypatch.setattr(qa, "_keeps_logits", lambda forward: False)
    # transformers' Llama takes logits_to_keep
    assert qa._keeps_logits(type(model).forward) is (path != "full_then_cut")
    assert qa._plain_head(model) is (path == "decoder_then_head")
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
    assert torch.allclose(scored.logits.float(), full[mask], atol=1e-4)
    assert torch.equal(scored.targets[scored.mask], targets[mask])
    assert scored.hidden is not None and len(scored.hidden) == model.config.num_hidden_layers + 1


def test_length_groups_pad_least_with_the_cost_of_a_group() -> None:
    from workers.engine.qa import length_groups

    widths = [100, 10, 12, 98, 11]
    # one group pads all five to 100 (500); two groups cost 3 · 12 + 2 · 100 = 236
    assert length_groups(widths, 0) == [[1], [4], [2], [3], [0]]  # no cost: each alone
    assert length_groups(widths, 50) == [[1, 4, 2], [3, 0]]
    assert length_groups(widths, 1000) == [[1, 4, 2, 3, 0]]  # sorted by width
    assert length_groups([7, 7, 7], 0) == [[0, 1, 2]]  # a tie: the fewer groups
    assert length_groups([9, 7, 7], 1) == [[1, 2], [0]]  # 14 + 9 + 2 against 27 + 1
    assert length_groups([9, 7, 7], 5) == [[1, 2, 0]]  # ties keep the given order
    assert length_groups([], 10) == []


def _tiny_causal_lm(family: str) -> Any:
    import transformers

    common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  pad_token_id=0, tie_word_embeddings=False)
    config_class, model_class = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
        "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    }[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**common)
    return getattr(transformers, model_class)(config).eval()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "phi3"])
def test_rows_grouped_by_length_give_the_whole_batchs_scores_and_gradients(
    family: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every plain-head family: rows of very different lengths run in groups, each cut
    to its widest row, and the answer logits, log-probabilities and the gradients of a
    loss on them are the whole padded batch's (the head is the output embedding and
    nothing more, and the padding after a row changes nothing before it)."""
    from workers.engine import qa

    model = _tiny_causal_lm(family)
    assert family in qa.PLAIN_HEAD_MODELS and qa._plain_head(model)
    rows = [([1, 5, 6], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 2]),
            ([1, 5], [30, 2]), ([1, 40, 41, 42, 43, 44, 45, 46], [31, 32, 2]),
            ([1, 6], [33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 2]),
            ([1, 7, 8], [50, 2])]
    batch = collate(rows, 0)
    widths = [len(p) + len(t) for p, t in rows]
    assert len(qa.length_groups(widths, 0)) > 1
    targets = batch["labels"][:, 1:]
    mask = targets != -100

    def run(overhead: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        monkeypatch.setitem(qa.GROUP_OVERHEAD_TOKENS, "cpu", overhead)
        model.zero_grad()
        scored = qa.answer_logits(model, batch)
        logp = scored.logprobs()
        (logp.sum() + scored.logits.square().mean()).backward()
        return scored.logits.detach(), logp.detach(), [p.grad.clone() for p in
                                                       model.parameters() if p.grad is not None]

    grouped, grouped_logp, grouped_grads = run(0)  # a group per row
    whole, whole_logp, whole_grads = run(10**6)  # one group
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).logits[:, :-1]
    assert grouped.shape == (int(mask.sum()), model.config.vocab_size)
    assert torch.allclose(grouped, full[mask], atol=1e-5)
    assert torch.allclose(whole, full[mask], atol=1e-5)
    assert torch.allclose(grouped_logp, whole_logp, atol=1e-5)
    assert len(grouped_grads) == len(whole_grads) == len(list(model.parameters()))
    for g, w in zip(grouped_grads, whole_grads, strict=True):
        assert torch.allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "phi3"])
def test_frozen_prefix_replays_the_whole_decoders_scores_and_gradients(
    family: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With LoRA on the upper layer only, the states below it are kept per row after a
    row's first pass and replayed after: scores and the adapter's gradients are what the
    whole decoder gives, whether the rows are kept, computed again past the memory
    bound, or replayed into checkpointed layers."""
    from peft import LoraConfig, get_peft_model

    from workers.engine import qa

    model = get_peft_model(_tiny_causal_lm(family), LoraConfig(
        r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                             "down_proj", "qkv_proj", "gate_up_proj"],
        layers_to_transform=[1]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    model.train()
    assert qa.frozen_below(model, 1) and not qa.frozen_below(model, 0)
    rows = [([1, 5, 6], [7, 8, 9, 10, 11, 12, 13, 14, 2]), ([1, 5], [30, 2]),
            ([1, 40, 41, 42, 43, 44, 45, 46], [31, 32, 2]), ([1, 7, 8], [50, 2])]
    batch = collate(rows, 0)
    monkeypatch.setitem(qa.GROUP_OVERHEAD_TOKENS, "cpu", 4)  # several groups

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logp = qa.answer_logits(model, batch).logprobs()
        logp.sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters()
                               if p.grad is not None]

    whole, whole_grads = run()
    # A and B of each of the upper layer's linear layers, nothing below
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(whole_grads) == len(names) > 0 and all(".layers.1." in n for n in names)
    for max_bytes, computed, replayed in ((10**8, 8, 4), (1, 12, 0)):
        with qa.frozen_prefix(model, 1, max_bytes) as prefix:
            assert prefix is not None
            for k in range(3):  # the second pass keeps what the first computed, the third
                # replays it
                logp, grads = run()
                assert prefix.rows if k and max_bytes > 1 else not prefix.rows
                assert torch.allclose(logp, whole, atol=1e-5)
                for g, w in zip(grads, whole_grads, strict=True):
                    assert torch.allclose(g, w, atol=1e-5)
            assert (prefix.computed, prefix.replayed) == (computed, replayed)
            assert prefix.bytes <= max_bytes
    with qa.frozen_prefix(model, 1, 0) as prefix:
        assert prefix is None  # no memory for it: the whole decoder runs
    if family == "llama":  # reentrant checkpoints pass gradients to inputs that need them
        checkpoint_activations(model, use_reentrant=True)
        with qa.frozen_prefix(model, 1, 10**8):
            for _ in range(3):
                logp, grads = run()
                for g, w in zip(grads, whole_grads, strict=True):
                    assert torch.allclose(g, w, atol=1e-5)
    assert not qa._PREFIXES  # nothing left installed


def test_frozen_prefix_needs_a_decoder_without_dropout_below() -> None:
    from workers.engine import qa

    model = _tiny_causal_lm("llama")
    assert qa.frozen_below(model, 1)
    assert not qa.frozen_below(model, 2)  # no layer above to adapt
    model.config.attention_dropout = 0.1
    assert not qa.frozen_below(model, 1)
    model.config.attention_dropout = 0.0
    model.model.layers[0].mlp.add_module("drop", torch.nn.Dropout(0.1))
    assert not qa.frozen_below(model, 1)
    with qa.frozen_prefix(model, 1, 10**8) as prefix:
        assert prefix is None


def test_lora_on_the_last_layers_keeps_the_frozen_states_and_trains_the_same(
    demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
) -> None:
    """``lora_layers``: the adapter sits on the last layer only, and the run that keeps
    the states below it trains the adapter the run without them does."""
    adapters = []
    for mib in (1024, 0):
        model, tok = load_version(demo_model_dir)
        cfg = NPOMethodConfig(max_steps=4, lora_layers=1, frozen_prefix_mib=mib,
                              early_stop=True, stop_rule="membership")
        result = run_unlearning(model, tok, sets["forget"], sets["retain"], cfg,
                                tmp_path / str(mib), holdout=sets["holdout"])
        assert result.stop_checks > 0
        from safetensors.torch import load_file

        weights = load_file(str(tmp_path / str(mib) / ADAPTER_WEIGHTS))
        assert weights and all(".layers.1." in name for name in weights)
        adapters.append(weights)
    assert adapters[0].keys() == adapters[1].keys()
    for name, kept in adapters[0].items():
        assert torch.allclose(kept, adapters[1][name], atol=1e-5), name


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


# ------------------------------------------------------------------- token-level NPO


def _forward(logp: torch.Tensor, mask: torch.Tensor) -> Forward:
    rows, width = logp.shape
    return Forward(logits=torch.zeros(rows, width, 5), logp=logp * mask, mask=mask,
                   targets=torch.zeros(rows, width, dtype=torch.long),
                   positions=torch.arange(width))


def test_npo_token_loss_values() -> None:
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ref = [torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-0.5, -4.0])]
    at_ref = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, 0.0]])
    # at the reference every token gives (2/β)·ln 2, and so does the mean
    assert float(npo_token_loss(_forward(at_ref, mask), ref, 0.3)) == pytest.approx(
        2 / 0.3 * math.log(2))
    # each row is the mean over its own answer tokens (padding ignored), then rows average
    delta = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 4.0, 9.0]])
    per = (2 / 0.3) * torch.nn.functional.softplus(0.3 * delta)
    expected = (per[0].mean() + per[1, :2].mean()) / 2
    loss = npo_token_loss(_forward(at_ref + delta, mask), ref, 0.3)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_npo_token_weights_do_not_fade_with_the_rest_of_the_answer() -> None:
    """A token that has collapsed switches the whole answer off in sequence NPO; per
    token, the tokens that have not fallen keep their full weight."""
    from workers.engine.unlearn import npo_loss

    ref = torch.tensor([[-0.01, -0.01, -0.01, -0.01]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    logp = torch.tensor([[-60.0, -0.01, -0.01, -0.01]], requires_grad=True)
    npo_token_loss(_forward(logp, mask), [ref[0]], 0.3).backward()
    assert logp.grad is not None
    token_grad = logp.grad.clone()
    logp.grad = None
    npo_loss(logp.sum(-1), ref.sum(-1), 0.1).backward()
    sequence_grad = logp.grad
    # per token: d/dlogp = 2σ(0)/4 = 0.25 for the untouched tokens, ~0 for the collapsed
    assert token_grad[0, 1:].tolist() == pytest.approx([0.25] * 3, rel=1e-4)
    assert abs(float(token_grad[0, 0])) < 1e-6
    # per sequence: σ(β·Δ) with Δ ≈ −60 leaves every token about a quarter of that
    assert bool((sequence_grad.abs() < 0.01).all())


def test_unlikelihood_pushes_hardest_where_the_answer_is_most_certain() -> None:
    """−log(1 − p) per token, averaged per row over the selected rows only; its gradient
    on log p is p/(1 − p): large for a saturated token, where NPO's vanishes."""
    mask = torch.tensor([[True, True], [True, False]])
    logp = torch.log(torch.tensor([[0.99, 0.5], [0.2, 1.0]])).requires_grad_(True)
    rows = torch.tensor([True, False])
    loss = unlikelihood_loss(_forward(logp, mask), rows)
    expected = (-math.log(0.01) - math.log(0.5)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    loss.backward()
    assert logp.grad is not None
    assert float(logp.grad[0, 0]) == pytest.approx(0.99 / 0.01 / 2, rel=1e-3)
    assert float(logp.grad[0, 1]) == pytest.approx(0.5 / 0.5 / 2, rel=1e-3)
    assert logp.grad[1].tolist() == [0.0, 0.0]  # not selected
    # both rows selected: the row means average
    both = unlikelihood_loss(_forward(logp.detach(), mask), torch.tensor([True, True]))
    assert float(both) == pytest.approx((expected + -math.log(0.8)) / 2, rel=1e-4)


def test_npo_odds_gradient_pushes_every_token_logit_alike() -> None:
    """With ``odds``, a token's gradient on its logit is 2σ(β·Δ) however certain the
    answer is; NPO's own is 2σ(β·Δ)·(1 − π) and vanishes on a saturated answer."""
    mask = torch.ones(1, 2, dtype=torch.bool)
    probs = torch.tensor([[0.9999, 0.5]])
    ref = [probs.log()[0]]  # at the reference: Δ = 0, σ = 1/2
    grads = {}
    for odds in (False, True):
        logp = probs.log().requires_grad_(True)
        loss = npo_token_loss(_forward(logp, mask), ref, 0.3, odds=odds)
        extra = (-math.log(1e-4) - math.log(0.5)) / 2 if odds else 0.0
        assert float(loss) == pytest.approx(2 / 0.3 * math.log(2) + extra, rel=1e-3)
        loss.backward()
        assert logp.grad is not None
        # on the logit: d/dlogπ · (1 − π), each token a half of the row mean
        grads[odds] = (logp.grad * (1 - probs))[0].tolist()
    assert grads[False] == pytest.approx([1e-4 / 2, 0.5 / 2], rel=1e-2)
    assert grads[True] == pytest.approx([1 / 2, 1 / 2], rel=1e-2)
    # unmasked padding adds nothing, whatever its (zero) log-probability
    padded = npo_token_loss(_forward(torch.tensor([[math.log(0.5), 0.0]]),
                                     torch.tensor([[True, False]])),
                            [torch.tensor([math.log(0.5)])], 0.3, odds=True)
    assert float(padded) == pytest.approx(2 / 0.3 * math.log(2) - math.log(0.5), rel=1e-4)


def test_npo_odds_gradient_moves_a_certain_answer_sooner(demo_model_dir: Path,
                                                         sets: dict[str, Any],
                                                         tmp_path: Path) -> None:
    probabilities = {}
    for odds in (False, True):
        model, tok = load_version(demo_model_dir)
        result = run_unlearning(model, tok, sets["forget"], sets["retain"],
                                NPOMethodConfig(odds_gradient=odds, early_stop=False,
                                                max_steps=16),
                                tmp_path / f"odds-{odds}")
        probabilities[odds] = result.forget_probability
    # the tiny demo model gives its answers 0.99: 0.68 without, 0.52 with (16 steps)
    assert probabilities[True] < probabilities[False] - 0.1, probabilities


def test_held_answers_are_known_about_the_person_only() -> None:
    from workers.engine.baselines import held_answers

    forget = torch.tensor([True, True, False])
    # two strangers per item: item 0's answer is said about a stranger too (shared)
    cf = torch.tensor([False, True, False, False, True, True])
    assert held_answers(forget, cf).tolist() == [False, True, False]


def test_npo_unlikelihood_term_only_on_held_rows(demo_model_dir: Path,
                                                 sets: dict[str, Any]) -> None:
    from workers.engine.methods import ReferenceCache, StepInputs, get_method
    from workers.engine.training import _reference_cache

    model, tok = load_version(demo_model_dir)
    rows = [tokenize(tok, ex, 64) for ex in sets["forget"][:2]]
    method = get_method(NPOMethodConfig(unlikelihood_weight=2.0, retain_weight=0.0))
    cache = _reference_cache(method, model, rows, None, pad_id(tok), torch.device("cpu"))
    batch = collate(rows, pad_id(tok))

    def loss(held: list[bool] | None) -> float:
        inputs = StepInputs(model=model, forget=batch, forget_index=[0, 1], retain=None,
                            alt=None, ref=cache, step=1, total_steps=1,
                            reference=lambda: torch.no_grad(),
                            forget_held=None if held is None else torch.tensor(held))
        with torch.no_grad():
            return float(method.loss(inputs))

    assert isinstance(cache, ReferenceCache)
    plain = loss(None)
    assert plain == pytest.approx(2 / 0.3 * math.log(2), rel=1e-4)  # at the reference
    assert loss([False, False]) == pytest.approx(plain)
    # the parent knows these answers (p ≈ 1): the term is large
    assert loss([True, False]) > plain + 2.0
    assert loss([True, True]) > plain + 2.0


def test_npo_alternative_term_prefers_other_peoples_answers(demo_model_dir: Path,
                                                             sets: dict[str, Any],
                                                             tmp_path: Path) -> None:
    """``alternative_weight``: the instance (not the class) needs the alternatives'
    reference likelihoods; each forget question gets the answer of the retained person
    asked the most similar question; the term starts at (2/β)·ln 2 on top of NPO's; a
    short run raises those answers (relative to the erased ones) more than NPO alone."""
    from workers.engine.baselines import alternatives
    from workers.engine.methods import ReferenceCache, StepInputs, get_method
    from workers.engine.training import _reference_cache

    forget, retain = sets["forget"], sets["retain"]
    plain = get_method(NPOMethodConfig(retain_weight=0.0))
    method = get_method(NPOMethodConfig(alternative_weight=1.0, alternative_beta=0.5,
                                        retain_weight=0.0))
    assert "alt_logp" in method.needs and "alt_logp" not in plain.needs
    assert "alt_logp" not in type(method).needs
    answers = method.alternative_answers(forget, retain)
    assert answers == [ex.target for ex in alternatives(forget, retain, 1)]
    assert set(answers) <= {ex.target for ex in retain}
    assert any(a != ex.target for a, ex in zip(answers, forget, strict=True))
    with pytest.raises(ValueError, match="needs a retain set"):
        method.alternative_answers(forget, [])

    model, tok = load_version(demo_model_dir)
    rows = [tokenize(tok, ex, 64) for ex in forget[:2]]
    alt_rows = [tokenize(tok, dataclasses.replace(ex, target=a), 64)
                for ex, a in zip(forget[:2], answers[:2], strict=True)]
    cache = _reference_cache(method, model, rows, alt_rows, pad_id(tok), torch.device("cpu"))
    assert isinstance(cache, ReferenceCache) and cache.alt_logp is not None
    inputs = StepInputs(model=model, forget=collate(rows, pad_id(tok)), forget_index=[0, 1],
                        retain=None, alt=collate(alt_rows, pad_id(tok)), ref=cache, step=1,
                        total_steps=1, reference=lambda: torch.no_grad())
    with torch.no_grad():
        start = float(method.loss(inputs))
    assert start == pytest.approx(2 / 0.3 * math.log(2) + 2 / 0.5 * math.log(2), rel=1e-4)

    def margin(model: Any) -> float:  # alternatives' mean log-likelihood over the erased
        alt = score_items(model, tok, [dataclasses.replace(ex, target=a)
                                       for ex, a in zip(forget, answers, strict=True)])
        own = score_items(model, tok, forget)
        return float((alt.logp / alt.count).mean() - (own.logp / own.count).mean())

    parent = margin(model)
    gains = {}
    for weight in (0.0, 1.0):
        model, tok = load_version(demo_model_dir)
        result = run_unlearning(model, tok, forget, retain,
                                config_for("npo", alternative_weight=weight),
                                tmp_path / str(weight))
        gains[weight] = margin(result.model) - parent
    assert gains[1.0] > gains[0.0] > 0, gains


def test_npo_granularity_sequence_is_the_published_loss(demo_model_dir: Path,
                                                        sets: dict[str, Any],
                                                        tmp_path: Path) -> None:
    """Both granularities start at (2/β)·ln 2 with their own β defaults; they train
    different adapters."""
    digests = []
    for granularity, beta in (("token", 0.3), ("sequence", 0.1)):
        model, tok = load_version(demo_model_dir)
        losses: list[float] = []

        def progress(step: int, total: int, loss: float, seen: list[float] = losses) -> bool:
            seen.append(loss)
            return True

        cfg = {"method": "npo", "granularity": granularity, "max_steps": 2,
               "retain_weight": 0.0, "early_stop": False}
        result = run_unlearning(model, tok, sets["forget"], [], cfg, tmp_path / granularity,
                                progress)
        assert losses[0] == pytest.approx(2 / beta * math.log(2), rel=1e-5)
        digests.append(result.adapter_sha256)
    assert digests[0] != digests[1]


def _run_with_checks(demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch, forgotten: list[bool],
                     kept: list[bool], **config: Any) -> tuple[UnlearnResult, list[float]]:
    """The default NPO run, a pass per step, with the membership rule's two tests
    answering ``forgotten`` and ``kept`` in turn (then ``True``)."""
    from workers.engine import training

    answers = {"forgotten": iter(forgotten), "kept": iter(kept)}
    monkeypatch.setattr(training.MembershipProbe, "read",
                        lambda self, model, cfg: training.ProbeReading(
                            0.5, None, next(answers["forgotten"], True), None))
    monkeypatch.setattr(training.MembershipProbe, "retain_kept",
                        lambda self, model, ratio: next(answers["kept"], True))
    model, tok = load_version(demo_model_dir)
    losses: list[float] = []
    cfg = NPOMethodConfig(forget_steps_per_pass=None, batch_size=20,  # a pass = 1 step
                          **config)
    result = run_unlearning(model, tok, sets["forget"], sets["retain"], cfg, tmp_path,
                            lambda step, total, loss: losses.append(loss) is None,
                            holdout=sets["holdout"])
    return result, losses


def test_membership_rule_repairs_the_retain_set_before_stopping(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Forgotten from the first check on, but the retain set is 'damaged' for the next
    two checks: the forget term goes off (only the retain NLL is trained, far below
    NPO's (2/β)·ln 2) and training stops at the first check that finds it repaired."""
    result, losses = _run_with_checks(demo_model_dir, sets, tmp_path, monkeypatch,
                                      forgotten=[], kept=[False, False, True])
    assert result.stopped_early and result.steps == 3 and len(losses) == 3
    assert losses[0] > 2.0  # NPO at step 1: (2/0.3)·ln 2 + retain
    assert losses[1] < 0.5 and losses[2] < 0.5  # retain NLL alone: repairing
    # forgotten at every strength: 1/128, then the default margin back towards 1
    margin = NPOMethodConfig().calibration_margin
    assert result.adapter_scale == pytest.approx(1 / 128 + margin * (1 - 1 / 128))


def test_calibration_margin_steps_back_towards_the_trained_adapter(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule holds at every strength, so calibration finds 1/128; a margin of 0.5 ends
    halfway from there to the trained adapter, and the saved adapter is that multiple
    of the same training's calibrated one."""
    from safetensors.torch import load_file

    plain, _ = _run_with_checks(demo_model_dir, sets, tmp_path / "plain", monkeypatch,
                                forgotten=[], kept=[], calibration_margin=0.0)
    stepped, _ = _run_with_checks(demo_model_dir, sets, tmp_path / "margin", monkeypatch,
                                  forgotten=[], kept=[], calibration_margin=0.5)
    assert plain.adapter_scale == pytest.approx(1 / 128)
    assert stepped.adapter_scale == pytest.approx(1 / 128 + 0.5 * (1 - 1 / 128))
    a = load_file(str(tmp_path / "plain" / ADAPTER_WEIGHTS))
    b = load_file(str(tmp_path / "margin" / ADAPTER_WEIGHTS))
    ratio = stepped.adapter_scale / plain.adapter_scale
    for key, value in a.items():
        expected = value * ratio if "lora_B" in key else value
        assert torch.allclose(b[key], expected, rtol=1e-4, atol=1e-7), key


def test_membership_rule_resumes_forgetting_when_the_repair_undoes_it(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Check 1: forgotten, retain damaged → repair. Check 2: retain back, but the person
    is remembered again → the forget term resumes. Check 3: both hold → stop."""
    result, losses = _run_with_checks(demo_model_dir, sets, tmp_path, monkeypatch,
                                      forgotten=[True, False, True], kept=[False, True, True])
    assert result.stopped_early and result.steps == 3
    assert losses[0] > 2.0 and losses[1] < 0.5 and losses[2] > 2.0


def test_membership_rule_trains_on_the_pending_items_alone(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the AUC is reached with answers still held, the next forget batches are the
    pending items only (two held answers, one more above a stranger's level); the rest
    of the person is left at the stranger's level. With none held, every item again."""
    from workers.engine import training
    from workers.engine.methods.builtin import NPO

    n_items = 20  # person 0's rows and their paraphrases
    held = torch.zeros(n_items, dtype=torch.bool)
    held[[2, 5]] = True
    pending = held.clone()
    pending[11] = True
    none = torch.zeros(n_items, dtype=torch.bool)
    above = none.clone()
    above[11] = True
    readings = iter([training.ProbeReading(0.4, held, False, pending),
                     training.ProbeReading(0.4, none, False, above)])
    done = training.ProbeReading(0.4, none, True, none)
    monkeypatch.setattr(training.MembershipProbe, "read",
                        lambda self, model, cfg: next(readings, done))
    monkeypatch.setattr(training.MembershipProbe, "retain_kept",
                        lambda self, model, ratio: True)
    trained: list[list[int]] = []
    loss = NPO.loss

    def spy(self: NPO, inputs: Any) -> torch.Tensor:
        trained.append(sorted(inputs.forget_index))
        assert inputs.forget_held is not None or len(trained) == 1
        return loss(self, inputs)

    monkeypatch.setattr(NPO, "loss", spy)
    model, tok = load_version(demo_model_dir)
    cfg = NPOMethodConfig(forget_steps_per_pass=None, batch_size=n_items)  # a pass = 1 step
    result = run_unlearning(model, tok, sets["forget"], sets["retain"], cfg, tmp_path,
                            holdout=sets["holdout"])
    assert result.n_forget == n_items and result.stopped_early and result.steps == 3
    assert trained == [list(range(n_items)), [2, 5, 11], list(range(n_items))]


@pytest.mark.parametrize("when, expected", [("always", [1, 2, 3, 4]),
                                             ("preferred", [3, 4])])
def test_npo_alternative_term_acts_while_the_answers_are_still_preferred(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, when: str, expected: list[int]) -> None:
    """``alternative_when`` "preferred": the term is off until a reading finds the Min-K%
    AUC at its bar and the answers still preferred (check 2), on while readings say so
    (checks 2 and 3, steps 3 and 4), and the run stops when both bars are met (check
    4); "always" applies it at every step."""
    from workers.engine import training
    from workers.engine.methods import builtin

    readings = iter([training.ProbeReading(0.8, None, False, None),
                     training.ProbeReading(0.7, None, False, None, preferred=True),
                     training.ProbeReading(0.6, None, False, None, preferred=True)])
    none = torch.zeros(20, dtype=torch.bool)
    done = training.ProbeReading(0.5, none, True, none)
    monkeypatch.setattr(training.MembershipProbe, "read",
                        lambda self, model, cfg: next(readings, done))
    monkeypatch.setattr(training.MembershipProbe, "retain_kept",
                        lambda self, model, ratio: True)
    steps: list[int] = []
    term = builtin.alternative_preference

    def spy(fw: Any, alt: Any, inputs: Any, beta: float) -> torch.Tensor:
        steps.append(inputs.step)
        return term(fw, alt, inputs, beta)

    monkeypatch.setattr(builtin, "alternative_preference", spy)
    model, tok = load_version(demo_model_dir)
    cfg = NPOMethodConfig(forget_steps_per_pass=None, batch_size=20,  # a pass = 1 step
                          stop_check_backoff=1, stop_score="both", alternative_weight=1.0,
                          alternative_when=when)
    assert cfg.inert_settings() == []
    result = run_unlearning(model, tok, sets["forget"], sets["retain"], cfg, tmp_path,
                            holdout=sets["holdout"])
    assert result.stopped_early and result.steps == 4
    assert steps == expected
    assert result.preferred_from == 2


@pytest.mark.parametrize("backoff, expected", [
    (4, [1, 3, 7, 11, 15, 16, 17, 18, 19]),
    (1, list(range(1, 20))),
])
def test_membership_checks_back_off_until_the_auc_moves(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, backoff: int, expected: list[int]) -> None:
    """While the AUC reads at least its first reading (above the bar, nothing held), the
    gap to the next check doubles up to ``stop_check_backoff`` passes; the first reading
    below the first returns to a check every pass for good, whatever comes later."""
    from workers.engine import training

    aucs = iter([1.0, 1.0, 1.0, 1.0, 0.9])
    checked: list[int] = []
    steps: list[int] = []

    def read(self: Any, model: Any, cfg: Any) -> training.ProbeReading:
        checked.append(len(steps))
        return training.ProbeReading(next(aucs, 1.0), None, False, None)

    monkeypatch.setattr(training.MembershipProbe, "read", read)
    model, tok = load_version(demo_model_dir)
    cfg = NPOMethodConfig(forget_steps_per_pass=None, batch_size=20,  # a pass = 1 step
                          max_steps=20, stop_check_backoff=backoff)
    result = run_unlearning(model, tok, sets["forget"], sets["retain"], cfg, tmp_path,
                            lambda step, total, loss: steps.append(step) is None,
                            holdout=sets["holdout"])
    assert result.steps == 20 and not result.stopped_early
    assert checked == expected


def test_membership_check_backoff_trains_the_same_adapter(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the real probe: the checks the backoff skips read the AUC above the bar, so
    the run trains the same adapter, stops at the same step and calibrates to the same
    strength as with a check every pass, with fewer readings."""
    from workers.engine import training

    read = training.MembershipProbe.read
    results, readings = [], []
    for backoff in (1, 4):
        seen: list[float] = []

        def spy(self: Any, model: Any, cfg: Any, seen: list[float] = seen
                ) -> training.ProbeReading:
            reading = read(self, model, cfg)
            seen.append(reading.auc)
            return reading

        monkeypatch.setattr(training.MembershipProbe, "read", spy)
        model, tok = load_version(demo_model_dir)
        cfg = NPOMethodConfig(forget_steps_per_pass=None, batch_size=20, epochs=40,
                              stop_check_backoff=backoff)
        results.append(run_unlearning(model, tok, sets["forget"], sets["retain"], cfg,
                                      tmp_path / str(backoff), holdout=sets["holdout"]))
        readings.append(seen)
    every, backed = results
    assert every.stopped_early and every.adapter_scale < 1.0
    assert backed.adapter_sha256 == every.adapter_sha256
    assert (backed.steps, backed.adapter_scale) == (every.steps, every.adapter_scale)
    # checks at steps 1, 3, 7 and 11, where the AUC has moved, then every step
    assert readings[1] == [readings[0][i] for i in [0, 2, 6, *range(10, len(readings[0]))]]
    assert readings[0][0] == readings[0][6] and readings[0][10] < readings[0][0]


def test_settle_passes_train_on_past_the_rule_and_skip_calibration(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Met at the first check (a pass per step): two settling passes follow, the run
    stops at the check after them that meets the rule, and the adapter is kept at full
    strength; without settling the same run stops at once and is scaled back."""
    settled, losses = _run_with_checks(demo_model_dir, sets, tmp_path / "settled",
                                       monkeypatch, forgotten=[], kept=[], settle_passes=2)
    assert settled.stopped_early and settled.steps == 3 and len(losses) == 3
    assert min(losses) > 2.0  # the forget term stays on while settling
    assert settled.adapter_scale == 1.0
    plain, _ = _run_with_checks(demo_model_dir, sets, tmp_path / "plain", monkeypatch,
                                forgotten=[], kept=[])
    assert plain.steps == 1 and plain.adapter_scale < 1.0


def test_settling_still_repairs_the_retain_set(
        demo_model_dir: Path, sets: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Met at check 1 (settling for one pass starts); the retain set is damaged at
    checks 2 and 3, so steps 3 and 4 repair it; check 4 finds it back and the rule met,
    with settling over: stop."""
    result, losses = _run_with_checks(demo_model_dir, sets, tmp_path, monkeypatch,
                                      forgotten=[], kept=[True, False, False, True],
                                      settle_passes=1)
    assert result.stopped_early and result.steps == 4
    assert losses[0] > 2.0 and losses[1] > 2.0 and losses[2] < 0.5 and losses[3] < 0.5


def test_inert_settings_name_what_the_stopping_rule_ignores():
    # given with a non-default value and read by no rule in force: reported, with why
    cfg = parse_method_config({"method": "npo", "stop_rule": "likelihood",
                               "calibration_margin": 0.5, "stop_score": "preference"})
    assert cfg.inert_settings() == [
        "stop_score has no effect under stop_rule 'likelihood' (it belongs to the "
        "'membership' rule)",
        "calibration_margin has no effect under stop_rule 'likelihood' (it belongs to the "
        "'membership' rule)",
    ]
    off = parse_method_config({"method": "grad_diff", "stop_probability": 0.1})
    assert off.inert_settings() == ["stop_probability has no effect while early_stop is false"]
    assert parse_method_config({"method": "npo", "stop_auc_sigmas": 1.0}).inert_settings()
    assert parse_method_config({"method": "npo", "stop_rule": "likelihood",
                                "stop_check_backoff": 1}).inert_settings() == [
        "stop_check_backoff has no effect under stop_rule 'likelihood' (it belongs to the "
        "'membership' rule)"]
    assert parse_method_config({"method": "npo", "settle_passes": 2,
                                "calibration_margin": 0.1}).inert_settings()
    # NPO's repair bar is its own (0.95); the base config's 0.98 is a setting given to it
    assert parse_method_config({"method": "npo", "stop_rule": "likelihood",
                                "repair_ratio": 0.98}).inert_settings() == [
        "repair_ratio has no effect under stop_rule 'likelihood' (it belongs to the "
        "'membership' rule)"]
    # the preference term's settings act only with the term, and "preferred" only
    # where a reading can say so
    assert parse_method_config({"method": "npo", "alternative_when": "preferred",
                                "stop_score": "both"}).inert_settings() == [
        "alternative_when has no effect while alternative_weight is 0"]
    assert parse_method_config({"method": "npo", "alternative_weight": 1.0,
                                "alternative_when": "preferred"}).inert_settings() == [
        "alternative_when 'preferred' has no effect unless early_stop is true, stop_rule "
        "'membership' and stop_score 'both' (their readings say when the erased answers "
        "are still preferred); the term would never act"]
    assert parse_method_config({"method": "npo", "granularity": "sequence",
                                "odds_gradient": True}).inert_settings() == [
        "odds_gradient has no effect with granularity 'sequence' (it acts on each answer "
        "token's term of token-level NPO)"]
    # the kept states need an adapter that leaves the lower layers alone
    assert parse_method_config({"method": "npo", "frozen_prefix_mib": 64}).inert_settings() == [
        "frozen_prefix_mib has no effect while lora_layers is unset (every layer is adapted, "
        "so no hidden state stays the same)"]
    assert parse_method_config({"method": "rmu", "lora_layers": 2,
                                "frozen_prefix_mib": 0}).inert_settings() == [
        f"{name} has no effect with rmu (its adapter sits on the n_adapter_layers layers up "
        "to layer, and its loss reads every hidden state)"
        for name in ("lora_layers", "frozen_prefix_mib")]
    # settings that act, and a method's own defaults, are never reported: a retry that
    # switches NPO to the likelihood rule keeps NPO's default calibration margin
    for data in ({"method": "npo"},
                 {"method": "npo", "stop_score": "preference", "stop_auc_sigmas": 1.0},
                 {"method": "npo", "stop_score": "both", "stop_auc_sigmas": 1.0,
                  "alternative_weight": 1.0, "alternative_when": "preferred"},
                 {"method": "npo", "stop_check_backoff": 1},
                 {"method": "npo", "lora_layers": 2, "frozen_prefix_mib": 64},
                 {"method": "npo", "stop_rule": "likelihood", "stop_ratio": 0.5},
                 {"method": "grad_diff", "early_stop": True, "stop_probability": 0.1},
                 {**default_config("npo").model_dump(), "stop_rule": "likelihood"},
                 stronger(default_config("npo").model_dump(), 1)):
        assert parse_method_config(data).inert_settings() == [], data
