"""Sets the engine tests share, from a demo model directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers.engine.qa import PromptTemplate, examples_from_rows, load_jsonl


def demo_sets(model_dir: Path, subject_index: int = 0) -> dict[str, Any]:
    """Forget = one trained person's rows, retain = everybody else's, holdout = never seen."""
    manifest = json.loads((model_dir / "lethe-demo.json").read_text())
    template = PromptTemplate(manifest["template"])
    train = load_jsonl(model_dir / manifest["train_file"])
    subject = list(dict.fromkeys(r["subject"] for r in train))[subject_index]
    return {
        "subject": subject,
        "forget": examples_from_rows([r for r in train if r["subject"] == subject], template),
        "retain": examples_from_rows([r for r in train if r["subject"] != subject], template),
        "holdout": examples_from_rows(load_jsonl(model_dir / manifest["holdout_file"]), template),
    }
