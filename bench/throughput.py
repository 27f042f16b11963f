"""Throughput of one NPO unlearning step (LoRA, forget + retain batch, AdamW) through the
shared loop, for the demo model sizes on random weights.

Reports per size: steady-state seconds/step (median after warm-up), tokens/s (non-pad
tokens of the forget and retain batches per second), peak memory (CUDA: max allocated
bytes; CPU: the process's peak RSS, a high-water mark that includes Python and torch),
and on CUDA the model FLOPs utilisation against ``--peak-tflops`` (bf16 dense).
FLOPs per step are estimated as 4·N·T (forward 2·N·T plus the backward pass through the
frozen weights to reach the LoRA inputs, 2·N·T; LoRA's own weight gradients and attention
score FLOPs are ignored), N = model parameters, T = tokens per step.

    python bench/throughput.py --sizes tiny,small --steps 12 [--device cuda] [--json]
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

from workers.engine.demo_model import RECIPES, default_threads, make_model, train_tokenizer  # noqa: E402
from workers.engine.qa import Example, encode  # noqa: E402
from workers.engine.training import run_unlearning  # noqa: E402

WORDS = [f"w{i}" for i in range(400)]


def synthetic(n: int, answer_words: int, rng: random.Random) -> list[Example]:
    """Question/answer items of fixed shape (token counts differ only by BPE merges)."""
    return [Example(f"Question: what about item {rng.randrange(10**6)}?\nAnswer: ",
                    " ".join(rng.choice(WORDS) for _ in range(answer_words)))
            for _ in range(n)]


def measure(size: str, steps: int, batch_size: int, answer_words: int, device: str,
            peak_tflops: float) -> dict[str, Any]:
    rng = random.Random(0)
    forget, retain = synthetic(64, answer_words, rng), synthetic(256, answer_words, rng)
    tok = train_tokenizer([e.prompt for e in forget + retain],
                          [e.target for e in forget + retain], RECIPES[size].vocab_size)
    torch.manual_seed(0)
    model = make_model(RECIPES[size], tok).to(device)
    if device.startswith("cuda"):
        model.to(torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()
    n_params = sum(p.numel() for p in model.parameters())
    stamps: list[float] = []

    def progress(step: int, total: int, loss: float) -> bool:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return True

    # tokens per step: encode the same shapes once to count non-pad tokens
    per_step = int(encode(tok, forget[:batch_size])["attention_mask"].sum()
                   + encode(tok, retain[:batch_size])["attention_mask"].sum())
    cfg = {"method": "npo", "max_steps": steps, "batch_size": batch_size,
           "include_paraphrases": False}
    with tempfile.TemporaryDirectory() as tmp:
        run_unlearning(model, tok, forget, retain, cfg, Path(tmp) / "a", progress)
    warm = max(1, steps // 4)
    step_s = statistics.median(b - a for a, b in itertools.pairwise(stamps[warm:]))
    out: dict[str, Any] = {
        "size": size, "device": device, "parameters": n_params, "batch_size": batch_size,
        "tokens_per_step": per_step, "seconds_per_step": step_s,
        "tokens_per_second": per_step / step_s, "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        flops = 4.0 * n_params * per_step
        out["mfu"] = flops / step_s / (peak_tflops * 1e12)
        out["peak_tflops"] = peak_tflops
    else:
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--answer-words", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="accelerator's dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(default_threads())
    rows = [measure(s, args.steps, args.batch_size, args.answer_words, args.device,
                    args.peak_tflops) for s in args.sizes.split(",")]
    for r in rows:
        mem = r.get("peak_memory_bytes", r.get("peak_rss_bytes", 0)) / 2**20
        mfu = f"  MFU {r['mfu']:.2%}" if "mfu" in r else ""
        print(f"{r['size']:6s} {r['parameters']/1e6:.2f}M params  {r['tokens_per_step']} tok/step  "
              f"{r['seconds_per_step']*1e3:.0f} ms/step  {r['tokens_per_second']:.0f} tok/s  "
              f"peak {mem:.0f} MiB{mfu}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
