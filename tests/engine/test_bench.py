"""The benchmark scripts' own logic: what bench/throughput.py counts and how bench_tofu
checks its options (the numbers themselves are in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from workers.engine.qa import Example, collate, encode, pad_id, tokenize
from workers.engine.training import checkpoint_activations

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_counts_the_tokens_the_model_saw(capsys: pytest.CaptureFixture[str]) -> None:
    throughput = _load("throughput")
    # rows of exactly 24 tokens (prompts are cut from the left to fit), 3 forget + 3
    # retain rows per step; the forget loss leaves out each forget row's EOS, so 3 × 23 +
    # 3 × 24 = 141 tokens reach the model each step, counted by its hook
    assert throughput.main(["--sizes", "tiny", "--steps", "5", "--batch-sizes", "3,2",
                            "--seq-len", "24", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["batch_size"] for r in rows] == [3, 2]
    assert [r["tokens_per_step"] for r in rows] == [141, 94]
    for r in rows:
        assert r["tokens_per_second"] == pytest.approx(r["tokens_per_step"]
                                                       / r["seconds_per_step"])
        assert r["peak_rss_bytes"] > 0 and "mfu" not in r  # MFU only against a GPU's peak
        assert r["flops_per_second"] == pytest.approx(r["flops_per_step"]
                                                      / r["seconds_per_step"])
    # the adapter on the last layer only: the same rows, less backward work
    assert throughput.main(["--sizes", "tiny", "--steps", "5", "--batch-sizes", "3",
                            "--seq-len", "24", "--lora-layers", "1", "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]
    assert last["tokens_per_step"] == 141 and last["lora_layers"] == 1
    assert last["flops_per_step"] < rows[0]["flops_per_step"]


def test_throughput_counts_flops_per_module_on_what_it_was_given() -> None:
    throughput = _load("throughput")
    tok, _, _ = throughput.data("tiny", 16, __import__("random").Random(0))
    torch.manual_seed(0)
    model = throughput.make("tiny", tok, "cpu")
    layers = [sum(p.numel() for p in layer.parameters()) for layer in model.model.layers]
    head = model.get_output_embeddings().weight.numel()
    assert len(layers) >= 2
    counter = throughput.FlopCounter(model, first_trained=1)
    ids = torch.randint(3, 100, (2, 5))
    with torch.no_grad():  # forward only: 2 FLOPs per weight and token, every module
        model(input_ids=ids)
    forward = 2 * (sum(layers) + head) * 10
    assert (counter.flops, counter.tokens) == (forward, 10)
    # with gradients: the backward pass of the output layer and of layers 1 and up
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert counter.flops == 2 * forward + 2 * (sum(layers[1:]) + head) * 10
    assert counter.tokens == 20  # the backward pass is not a forward pass
    # a recomputation inside the backward pass (gradient checkpointing) is not counted
    checkpoint_activations(model, use_reentrant=False)
    model.train()
    before = counter.flops
    model(input_ids=ids, labels=ids).loss.backward()
    assert counter.flops - before == forward + 2 * (sum(layers[1:]) + head) * 10
    counter.remove()
    model(input_ids=ids)
    assert counter.tokens == 30


@pytest.mark.parametrize("args", [["--sizes", "huge"], ["--steps", "4", "--warmup", "3"],
                                  ["--lora-layers", "0"], ["--frozen-prefix-mib", "-1"]])
def test_throughput_rejects_bad_options(args: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _load("throughput").main(args)
    assert "error:" in capsys.readouterr().err


def test_bench_tofu_rejects_unknown_model_size(tmp_path: Path) -> None:
    from workers.engine.tofu import TOFU_RECIPES, bench_tofu

    assert set(TOFU_RECIPES) == {"small", "medium"}
    with pytest.raises(ValueError, match="model size"):
        bench_tofu(tmp_path, model_size="large")
    with pytest.raises(ValueError, match="tokenizer text"):
        bench_tofu(tmp_path, tokenizer_text="everything")
    if not torch.cuda.is_available():  # refused before any data is read or model trained
        with pytest.raises(ValueError, match="CUDA is not available"):
            bench_tofu(tmp_path, device="cuda")


def test_encode_is_collated_tokenize() -> None:
    from workers.engine.demo_model import train_tokenizer

    examples = [Example("Question: who is Ada?\nAnswer:", "a mathematician"),
                Example("Question: where?\nAnswer:", "London, in the year 1815 or so")]
    tok = train_tokenizer([e.prompt for e in examples], [e.target for e in examples], 300)
    rows = [tokenize(tok, e, 12) for e in examples]
    for (p, t), batch_row in zip(rows, encode(tok, examples, 12)["input_ids"], strict=True):
        assert len(p) + len(t) <= 12
        assert batch_row[: len(p) + len(t)].tolist() == p + t
    batch = collate(rows, pad_id(tok))
    for key, value in encode(tok, examples, 12).items():
        assert batch[key].equal(value), key


def test_lethe_bench_tofu_says_what_is_wrong(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "app.cli", "bench", "tofu", "--data",
                          str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 2
    assert "lethe bench tofu:" in out.stderr and "full.jsonl" in out.stderr
    assert "Traceback" not in out.stderr
