"""TOFU benchmark on a CPU-sized model trained from scratch (see workers/engine/tofu.py).

    python bench/tofu.py --data /work/shared/datasets/tofu --split forget01 --authors 6 \
        --method npo --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.engine.methods import METHOD_NAMES  # noqa: E402
from workers.engine.tofu import (  # noqa: E402
    SPLITS,
    TOFU_RECIPES,
    TOKENIZER_TEXTS,
    bench_tofu,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/datasets/tofu",
                        help="directory with the TOFU *.jsonl files (read in place)")
    parser.add_argument("--split", choices=SPLITS, default="forget01")
    parser.add_argument("--authors", type=int, default=10,
                        help="authors trained on (forget authors included); 200 = all")
    parser.add_argument("--method", default="npo",
                        help=f"one of {', '.join(METHOD_NAMES)}, or several comma-separated "
                             "(models trained once)")
    parser.add_argument("--set", default="{}", metavar="JSON",
                        help='method config overrides, e.g. \'{"max_steps": 40}\'')
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="keep the trained original/reference models here and reuse them")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of model training and unlearning (the method's seed "
                             "unless --set gives one)")
    parser.add_argument("--model-size", choices=sorted(TOFU_RECIPES), default="small",
                        help="small: the CPU model; medium: ~36 M parameters, for a GPU")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--tokenizer-text", choices=TOKENIZER_TEXTS, default="retain",
                        help="what the tokenizer is fitted to: the retained authors' text "
                             "(default) or every text scored (the earlier recipe)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    unknown = set(args.method.split(",")) - set(METHOD_NAMES)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; choose from {METHOD_NAMES}")
    bench_tofu(args.data, args.split, args.authors, args.method, args.json,
               method_overrides=json.loads(args.set), cache_dir=args.cache, seed=args.seed,
               model_size=args.model_size, device=args.device,
               tokenizer_text=args.tokenizer_text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
