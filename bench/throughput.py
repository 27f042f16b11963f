"""Throughput of one NPO unlearning step (LoRA, forget + retain batch, AdamW) through the
shared loop, on random weights: the demo model sizes, the TOFU benchmark's CPU model
(``tofu``), and a Llama-shaped 1.1 B model
(``llama-1b``: hidden 2048, 22 layers, 32 heads with 4 key/value heads, MLP 5632,
vocabulary 32000, untied) for accelerators.

Every step runs a forget batch and a retain batch of ``--batch-size`` rows each, all rows
``--seq-len`` tokens long (no padding; the forget loss leaves out each forget row's final
EOS, so those rows reach the model one token shorter), through :func:`run_unlearning`
exactly as a worker does: the reference log-likelihoods of the forget items are computed
once before training (NPO needs them; they never change), so a step is the trained model's
forward and backward pass and nothing else.

``--lora-layers N`` puts the adapter on the last N decoder layers only (the engine's
``lora_layers``): the backward pass stops at the lowest adapted layer, and a row's hidden
states at that layer are kept from its second forward pass on (``frozen_prefix_mib``),
so from its third the layers below are not run at all (``--frozen-prefix-mib 0`` keeps
none). There are 64 forget rows and 19 times as many retain rows (TOFU forget05's
ratio), so in a short run the forget rows come back and most retain rows do not, as in
a real run; ``--warmup`` should then cover the forget rows' first two passes
(``2 * 64 / batch size`` steps).

Reports per size and batch size: steady-state seconds/step (median after ``--warmup``
steps, a quarter of them by default), tokens/s (the tokens of the step's rows, counted on
the model's last decoder layer, not assumed), model FLOP/s, peak memory (CUDA: max
allocated bytes; CPU: the process's peak RSS, which includes Python and torch), and on
CUDA the model FLOPs utilisation against ``--peak-tflops`` (dense bf16). FLOPs are counted
per module on what it was given: 2·P·t for each forward pass of a decoder layer or the
output layer over t tokens (P its weights; the output layer sees the answer tokens only),
and as much again for the backward pass of the output layer and of every adapted layer
and those above it (the gradients reaching the LoRA inputs). A recomputation under
gradient checkpointing is not counted, nor are LoRA's own products and the attention
scores, so the figure is a lower bound.

    python bench/throughput.py --sizes tiny,small --steps 12 [--json]
    python bench/throughput.py --sizes small --steps 48 --warmup 24 --lora-layers 2
    python bench/throughput.py --sizes llama-1b --batch-sizes 8,16,32 --seq-len 512 \\
        --device cuda --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workers.engine.demo_model import (  # noqa: E402
    RECIPES,
    default_threads,
    make_model,
    runtime_environment,
    train_tokenizer,
)
from workers.engine.methods import get_method, parse_method_config  # noqa: E402
from workers.engine.qa import Example  # noqa: E402
from workers.engine.tofu import TOFU_RECIPE  # noqa: E402
from workers.engine.training import run_unlearning  # noqa: E402

WORDS = [f"w{i}" for i in range(400)]
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
            "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000}
# the demo recipes, the TOFU benchmark's CPU model (hidden 192, 4 layers, vocabulary 4096)
BUILT = {**RECIPES, "tofu": TOFU_RECIPE}
SIZES = (*BUILT, "llama-1b")
N_FORGET = 64
N_RETAIN = 19 * N_FORGET  # TOFU forget05's ratio: retain rows seldom come back


def synthetic(n: int, prompt_words: int, answer_words: int,
              rng: random.Random) -> list[Example]:
    """Question/answer items of one shape: the same number of words everywhere."""
    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))
    return [Example(f"Question: {words(prompt_words)}\nAnswer:", words(answer_words))
            for _ in range(n)]


def make(size: str, tok: Any, device: str) -> Any:
    """Random-weight model of ``size`` on ``device`` (bf16 on CUDA)."""
    if size == "llama-1b":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**LLAMA_1B, max_position_embeddings=4096,
                             tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    else:
        model = make_model(BUILT[size], tok).to(device)
    if device.startswith("cuda"):
        model.to(torch.bfloat16)
    return model


def data(size: str, seq_len: int, rng: random.Random) -> tuple[Any, list[Example], list[Example]]:
    """Tokenizer and forget/retain items whose rows are all ``seq_len`` tokens or close:
    every word of the synthetic vocabulary is one token once the BPE has learnt it."""
    answer_words = max(4, seq_len // 8)
    prompt_words = max(1, seq_len - answer_words - 6)
    forget = synthetic(N_FORGET, prompt_words, answer_words, rng)
    retain = synthetic(N_RETAIN, prompt_words, answer_words, rng)
    vocab = LLAMA_1B["vocab_size"] if size == "llama-1b" else BUILT[size].vocab_size
    tok = train_tokenizer([e.prompt for e in forget + retain],
                          [e.target for e in forget + retain], vocab)
    return tok, forget, retain


class FlopCounter:
    """Model FLOPs and row tokens of the forward passes of ``model`` (a plain causal LM
    whose decoder is ``model.model.layers`` and output layer ``get_output_embeddings()``),
    counted per module on the hidden states it is given (see the module docstring).
    ``first_trained``: the lowest decoder layer with an adapter."""

    def __init__(self, model: Any, first_trained: int) -> None:
        self.flops = 0
        self.tokens = 0
        layers = list(model.model.layers)
        head = model.get_output_embeddings()
        self.handles = [
            module.register_forward_pre_hook(self._hook(module, backward, last),
                                             with_kwargs=True)
            for module, backward, last in [
                *((layer, i >= first_trained, i == len(layers) - 1)
                  for i, layer in enumerate(layers)),
                (head, True, False)]]

    def _hook(self, module: Any, backward: bool, last: bool) -> Any:
        weights = sum(p.numel() for p in module.parameters())

        def count(_: Any, args: Any, kwargs: dict[str, Any]) -> None:
            if torch._C._current_graph_task_id() != -1:
                return  # a recomputation inside the backward pass (checkpointing)
            states = args[0] if args else kwargs["hidden_states"]
            tokens = states.numel() // states.shape[-1]
            passes = 2 if backward and torch.is_grad_enabled() else 1
            self.flops += 2 * weights * tokens * passes
            if last:
                self.tokens += tokens
        return count

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def measure(size: str, model: Any, tok: Any, forget: list[Example], retain: list[Example],
            steps: int, warmup: int, batch_size: int, seq_len: int, device: str,
            peak_tflops: float, gradient_checkpointing: bool,
            lora_layers: int | None, frozen_prefix_mib: int = 1024
            ) -> tuple[dict[str, Any], Any]:
    """One configuration; returns the row and the model with the LoRA layers removed."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    n_params = sum(p.numel() for p in model.parameters())
    n_layers = model.config.num_hidden_layers
    cfg = {"method": "npo", "max_steps": steps, "batch_size": batch_size,
           "retain_batch_size": batch_size, "forget_steps_per_pass": None,
           "retain_hard_share": 0.0, "early_stop": False, "include_paraphrases": False,
           "max_length": seq_len, "gradient_checkpointing": gradient_checkpointing,
           "lora_layers": lora_layers,
           **({"frozen_prefix_mib": frozen_prefix_mib} if lora_layers else {})}
    # the layers the engine will adapt, as run_unlearning picks them
    adapted = get_method(parse_method_config(cfg)).adapter_layers(n_layers)
    counter = FlopCounter(model, min(adapted) if adapted else 0)
    stamps: list[tuple[float, int, int]] = []

    def progress(step: int, total: int, loss: float) -> bool:
        if cuda:
            torch.cuda.synchronize()
        stamps.append((time.perf_counter(), counter.tokens, counter.flops))
        return True

    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_unlearning(model, tok, forget, retain, cfg, Path(tmp) / "a", progress)
    finally:
        counter.remove()
    pairs = list(itertools.pairwise(stamps[max(1, warmup):]))
    if not pairs:
        raise ValueError(f"{steps} steps leave nothing to measure after {warmup} warm-up steps")
    step_s = statistics.median(b[0] - a[0] for a, b in pairs)
    per_step = statistics.median(b[1] - a[1] for a, b in pairs)
    flops = statistics.median(b[2] - a[2] for a, b in pairs)
    out: dict[str, Any] = {
        "size": size, "device": device, "parameters": n_params, "batch_size": batch_size,
        "seq_len": seq_len, "gradient_checkpointing": gradient_checkpointing,
        "lora_layers": lora_layers,
        "frozen_prefix_mib": frozen_prefix_mib if lora_layers else None, "layers": n_layers,
        "tokens_per_step": per_step,
        "flops_per_step": flops, "seconds_per_step": step_s,
        "tokens_per_second": per_step / step_s, "flops_per_second": flops / step_s,
        "threads": torch.get_num_threads(), **runtime_environment(),
    }
    if cuda:
        out["device_name"] = torch.cuda.get_device_name(device)
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        out["mfu"] = flops / step_s / (peak_tflops * 1e12)
        out["peak_tflops"] = peak_tflops
    else:
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out, result.model.unload()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small", help=f"comma-separated: {SIZES}")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=None,
                        help="steps left out of the medians (default: a quarter of --steps)")
    parser.add_argument("--lora-layers", type=int, default=None,
                        help="adapter on the last N decoder layers only (default: all)")
    parser.add_argument("--frozen-prefix-mib", type=int, default=1024,
                        help="with --lora-layers: MiB of kept states below the adapter "
                             "(0 keeps none)")
    parser.add_argument("--batch-sizes", default="8",
                        help="rows per forget batch (and per retain batch), comma-separated")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per row")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="accelerator's dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    if set(sizes) - set(SIZES):
        parser.error(f"unknown size(s) {sorted(set(sizes) - set(SIZES))}; choose from {SIZES}")
    warmup = args.steps // 4 if args.warmup is None else args.warmup
    if not 0 <= warmup < args.steps - 1:
        parser.error(f"--warmup must leave at least two of the {args.steps} steps")
    if args.lora_layers is not None and args.lora_layers < 1:
        parser.error("--lora-layers must be at least 1")
    if args.frozen_prefix_mib < 0:
        parser.error("--frozen-prefix-mib must be at least 0")
    if args.device == "cpu":
        torch.set_num_threads(default_threads())
    rows = []
    for size in sizes:
        tok, forget, retain = data(size, args.seq_len, random.Random(0))
        torch.manual_seed(0)
        model = make(size, tok, args.device)
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            try:
                row, model = measure(size, model, tok, forget, retain, args.steps, warmup,
                                     bs, args.seq_len, args.device, args.peak_tflops,
                                     args.gradient_checkpointing, args.lora_layers,
                                     args.frozen_prefix_mib)
            except torch.OutOfMemoryError:
                # run_unlearning has removed its LoRA layers again; larger batches won't fit
                print(f"{size:8s} batch {bs:3d}: out of memory", file=sys.stderr, flush=True)
                rows.append({"size": size, "batch_size": bs, "seq_len": args.seq_len,
                             "gradient_checkpointing": args.gradient_checkpointing,
                             "out_of_memory": True})
                break
            rows.append(row)
            mem = row.get("peak_memory_bytes", row.get("peak_rss_bytes", 0)) / 2**20
            mfu = f"  MFU {row['mfu']:.1%}" if "mfu" in row else ""
            print(f"{size:8s} {row['parameters']/1e6:8.2f}M params  batch {bs:3d}  "
                  f"{row['tokens_per_step']:.0f} tok/step  "
                  f"{row['seconds_per_step'] * 1e3:.1f} ms/step  "
                  f"{row['tokens_per_second']:.0f} tok/s  "
                  f"{row['flops_per_second'] / 1e9:.2f} GFLOP/s  peak {mem:.0f} MiB{mfu}",
                  file=sys.stderr if args.json else sys.stdout, flush=True)
        del model
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
