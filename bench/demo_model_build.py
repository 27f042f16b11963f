"""Benchmark: build the demo model(s) from scratch and print the build reports as JSON.

    .venv/bin/python bench/demo_model_build.py                 # small, then tiny
    .venv/bin/python bench/demo_model_build.py --sizes tiny --keep /tmp/demo

Each report has wall-clock ``seconds`` (whole build) and ``train_seconds`` (training loop),
parameter count, item counts and greedy answer accuracies on trained questions,
untrained paraphrases of trained facts, and holdout people (chance level).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.engine.demo_model import (  # noqa: E402
    RECIPES,
    build_demo_model,
    cpu_cores,
    default_threads,
    runtime_environment,
)


def progress_printer(label: str, every_s: float = 10.0) -> Callable[[int, int, float], None]:
    """An ``on_progress`` callback printing a line to stderr about every ``every_s`` s."""
    last = 0.0

    def progress(step: int, total: int, loss: float) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last > every_s or step == total:
            last = now
            print(f"  {label}: step {step}/{total} loss {loss:.4f}", file=sys.stderr)

    return progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "tiny"], choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: every core but one)"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="build into KEEP/SIZE and keep it (default: a temporary dir)",
    )
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="lethe-demo-bench-") as tmp:
        root = args.keep or Path(tmp)
        for size in args.sizes:
            load_before = os.getloadavg()[0]
            report = build_demo_model(
                root / size,
                size=size,
                seed=args.seed,
                on_progress=progress_printer(size),
                threads=args.threads,
            )
            results.append({**asdict(report), "load_average_before": load_before})
    machine = {
        "cpu_cores": cpu_cores(),
        "torch_threads_default": default_threads(),
        "python": platform.python_version(),
        **runtime_environment(),
    }
    print(json.dumps({"machine": machine, "builds": results}, indent=2))


if __name__ == "__main__":
    main()
