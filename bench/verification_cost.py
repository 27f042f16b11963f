"""Verification cost against unlearning cost on a demo model, through the code the workers
run: the default method (NPO, early stopping at the stranger level, calibration) on one
person, then the full verifier under the default policy (parent measured only where the
rules read it, candidate on every set incl. counterfactuals, relearning attack).

    python bench/verification_cost.py --model-dir DIR [--people 3] [--json]

DIR is a demo model (``lethe demo-model build --size small --out DIR``). Each of the first
``--people`` people is unlearned from a fresh copy of the model and verified; prints one
JSON object last with per-person times and the ratio verify / unlearn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.engine.demo_model import load_demo_data  # noqa: E402
from workers.engine.methods import parse_method_config  # noqa: E402
from workers.engine.training import run_unlearning  # noqa: E402
from workers.engine.verifier import (  # noqa: E402
    VerifierPolicy,
    judge_full,
    measure_full,
    run_relearn,
)
from workers.engine.versions import load_version  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--people", type=int, default=3)
    parser.add_argument("--set", default='{"method": "npo"}', metavar="JSON",
                        help="method config (default: the default method, npo)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args(argv)
    data = load_demo_data(args.model_dir)
    holdout_stop, holdout = data.holdout_sets()  # as the worker splits them
    people = sorted(data.people)[: args.people]
    policy = VerifierPolicy()
    config = parse_method_config(json.loads(args.set))
    runs = []
    for person in people:
        forget, retain, check = data.job_sets([person])
        model, tok = load_version(args.model_dir)
        t0 = time.perf_counter()
        before = measure_full(model, tok, forget, check, holdout, None, policy, parent=True)
        t_parent = time.perf_counter() - t0
        t0 = time.perf_counter()
        # the adapter in a directory of its own, removed once trained (the candidate is
        # result.model): two runs side by side do not overwrite each other's
        with tempfile.TemporaryDirectory(prefix="lethe-bench-adapter-") as out:
            result = run_unlearning(model, tok, forget, retain, config, Path(out),
                                    holdout=holdout_stop)
        t_unlearn = time.perf_counter() - t0
        t0 = time.perf_counter()
        after = measure_full(result.model, tok, forget, check, holdout, None, policy)
        t_candidate = time.perf_counter() - t0
        t0 = time.perf_counter()
        attack = run_relearn(before, result.model, tok, forget, policy)
        t_attack = time.perf_counter() - t0
        verdict = judge_full(before, after, attack, policy)
        verify = t_parent + t_candidate + t_attack
        run = {"person": person, "unlearn_s": round(t_unlearn, 2), "steps": result.steps,
               "adapter_scale": result.adapter_scale, "measure_parent_s": round(t_parent, 2),
               "measure_candidate_s": round(t_candidate, 2),
               "relearn_attack_s": round(t_attack, 2), "verify_s": round(verify, 2),
               "ratio": round(verify / t_unlearn, 3), "passed": verdict.passed,
               "reasons": verdict.reasons}
        runs.append(run)
        if not args.json:
            print(json.dumps(run))
    print(json.dumps({
        "runs": runs,
        "median_unlearn_s": statistics.median(r["unlearn_s"] for r in runs),
        "median_verify_s": statistics.median(r["verify_s"] for r in runs),
        "median_ratio": statistics.median(r["ratio"] for r in runs),
        "passed": sum(r["passed"] for r in runs),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
