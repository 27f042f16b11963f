"""Cost per erased person as the batch grows: one job unlearning 1, 10 or 50 people of a
demo model at once, through the default method (``npo``: early stopping per item at the
counterfactual level, adapter calibration), as the scheduler's batches do.

    python bench/batch_cost.py --model-dir DIR [--sizes 1,10,50] [--set JSON] [--json]

DIR is a demo model (``lethe demo-model build --size small --out DIR``). Each size starts
from a fresh copy of the model; retain = everybody not in the batch (four in five rows,
as the worker trains). Prints one JSON object last: per size the wall time, steps,
seconds per person, and the forget / retain scores after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.engine.demo_model import load_demo_data  # noqa: E402
from workers.engine.methods import parse_method_config  # noqa: E402
from workers.engine.training import run_unlearning  # noqa: E402
from workers.engine.unlearn import score_items  # noqa: E402
from workers.engine.versions import load_version  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--set", default="{}", metavar="JSON",
                        help="npo config overrides, e.g. '{\"batch_size\": 32}'")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args(argv)
    data = load_demo_data(args.model_dir)
    holdout, _ = data.holdout_sets()  # the never-seen people the worker trains against
    people = sorted(data.people)
    config = parse_method_config({"method": "npo", **json.loads(args.set)})
    out = []
    for size in (int(s) for s in args.sizes.split(",")):
        forget, retain, check = data.job_sets(people[:size])
        check = check[:300]
        model, tok = load_version(args.model_dir)
        started = time.perf_counter()
        result = run_unlearning(model, tok, forget, retain, config,
                                Path("/tmp") / f"lethe-batch-{size}", holdout=holdout)
        seconds = time.perf_counter() - started
        kept = score_items(result.model, tok, check)
        row = {
            "people": size, "forget_items": result.n_forget, "seconds": round(seconds, 1),
            "steps": result.steps, "stopped_early": result.stopped_early,
            "seconds_per_person": round(seconds / size, 2),
            "forget_probability": round(result.forget_probability, 4),
            "stop_target": round(result.stop_target or float("nan"), 4),
            "forget_known": result.forget_known, "adapter_scale": result.adapter_scale,
            "retain_check_known": round(float(kept.known.float().mean()), 3),
        }
        out.append(row)
        if not args.json:
            print(json.dumps(row), flush=True)
    print(json.dumps({"config": config.model_dump(mode="json"), "sizes": out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
