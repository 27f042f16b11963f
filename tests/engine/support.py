"""Sets the engine tests share, from a demo model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workers.engine.demo_model import load_demo_data


def demo_sets(model_dir: Path, subject_index: int = 0) -> dict[str, Any]:
    """Forget = one trained person's rows, retain = everybody else's, holdout = never seen."""
    data = load_demo_data(model_dir)
    subject = data.people[subject_index]
    return {
        "subject": subject,
        "forget": data.examples([r for r in data.train if r["subject"] == subject]),
        "retain": data.examples([r for r in data.train if r["subject"] != subject]),
        "holdout": data.examples(data.holdout),
    }
