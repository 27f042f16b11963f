"""What computing the output layer only at answer positions saves: one forward and
backward pass of the loss the unlearning methods use (mean answer-token NLL), through
:func:`workers.engine.methods.run_forward` (vocabulary projection and log-softmax at the
positions that predict an answer token), against the same loss from every position's
logits, as the engine computed it before. Random-weight Llama, rows of ``--prompt``
prompt tokens and ``--answer`` answer tokens.

    python bench/output_layer.py --vocab 32000 --hidden 256 --layers 2 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workers.engine.methods import run_forward  # noqa: E402


def every_position_nll(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum() / mask.sum()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=96)
    parser.add_argument("--answer", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
        tie_word_embeddings=False))
    ids = torch.randint(3, args.vocab, (args.batch, args.prompt + args.answer))
    labels = torch.full_like(ids, -100)
    labels[:, args.prompt:] = ids[:, args.prompt:]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    variants = {"answer_positions": lambda: run_forward(model, batch).token_nll,
                "every_position": lambda: every_position_nll(model, batch)}
    row: dict[str, Any] = {k: getattr(args, k) for k in
                           ("vocab", "hidden", "layers", "batch", "prompt", "answer", "threads")}
    for name, loss_fn in variants.items():
        times = []
        for _ in range(args.repeats):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss = loss_fn()
            loss.backward()
            times.append(time.perf_counter() - start)
        row[f"{name}_ms"] = statistics.median(times[2:]) * 1e3
        row[f"{name}_nll"] = float(loss.detach())
    row["speedup"] = row["every_position_ms"] / row["answer_positions_ms"]
    print(f"fwd+bwd: answer positions {row['answer_positions_ms']:.0f} ms, every position "
          f"{row['every_position_ms']:.0f} ms ({row['speedup']:.1f}x); NLL "
          f"{row['answer_positions_nll']:.5f} vs {row['every_position_nll']:.5f}",
          file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
