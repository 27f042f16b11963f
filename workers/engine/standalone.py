"""Stand-alone audit: ``lethe verify --model DIR [--adapter DIR] --forget FILE --retain FILE
--holdout FILE [--json]`` (also ``python -m workers.engine.standalone`` with the same
flags). Files are JSON Lines with ``question`` and ``answer`` (optionally ``subject``,
``paraphrased_questions``) or ``text``.

With ``--adapter`` the candidate is model + adapter and the model is its parent (full
verification, parent-relative utility rules included). Without, the model itself is
audited against the holdout baseline: does it still know the forget set, compared with
never-seen items? (No parent: utility rules are not checked; the relearning attack
counts recovery towards the level of a trained fact.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.engine.qa import DEFAULT_TEMPLATE, PromptTemplate, examples_from_rows, load_jsonl
from workers.engine.verifier import (
    FullVerdict,
    VerifierPolicy,
    judge_full,
    measure_full,
    run_relearn,
)
from workers.engine.versions import load_version


def _template_of(model_dir: Path, template: str | None) -> str:
    """The given template, else the demo manifest's, else the default one."""
    if template:
        return template
    manifest = model_dir / "lethe-demo.json"
    if manifest.exists():
        return str(json.loads(manifest.read_text()).get("template", DEFAULT_TEMPLATE))
    return DEFAULT_TEMPLATE


def run_audit(
    model_dir: str | Path,
    adapter_dir: str | Path | None,
    forget_file: str | Path,
    retain_file: str | Path,
    holdout_file: str | Path,
    template: str | None = None,
    policy: VerifierPolicy | None = None,
    device: str = "cpu",
    general_file: str | Path | None = None,
) -> FullVerdict:
    """Load the model (and candidate), read the sets (``general_file``: optional general
    knowledge held to the parent like retain), measure, attack and judge.
    ``template`` defaults to the model's demo manifest template or ``qa.DEFAULT_TEMPLATE``
    (``"chat"`` = the tokenizer's chat template)."""
    pol = policy or VerifierPolicy()
    base = Path(model_dir)
    model, tok = load_version(base, device=device)
    tmpl = PromptTemplate(_template_of(base, template), tok)
    forget = examples_from_rows(load_jsonl(forget_file), tmpl)
    retain = examples_from_rows(load_jsonl(retain_file), tmpl)
    holdout = examples_from_rows(load_jsonl(holdout_file), tmpl)
    general = examples_from_rows(load_jsonl(general_file), tmpl) if general_file else None
    before: dict[str, Any] | None = None
    candidate = model
    if adapter_dir is not None:
        before = measure_full(model, tok, forget, retain, holdout, general, pol, parent=True)
        del model
        candidate, _ = load_version(base, [adapter_dir], device=device)
    after = measure_full(candidate, tok, forget, retain, holdout, general, pol)
    attack = run_relearn(before, candidate, tok, forget, pol) if pol.relearn else None
    return judge_full(before, after, attack, pol)


def _summary(verdict: FullVerdict) -> str:
    lines = [f"verdict: {'PASSED' if verdict.passed else 'FAILED'}"]
    lines += [f"  - {r}" for r in verdict.reasons]
    after = verdict.metrics["after"]
    for name, values in after["sets"].items():
        shown = ", ".join(f"{k}={values[k]:.3f}" for k in
                          ("accuracy", "probability", "rouge_l", "extraction_strength")
                          if values.get(k) is not None)
        lines.append(f"  {name} (n={values['n']}): {shown}")
    lines.append("  MIA AUC: " + ", ".join(
        f"{k}={v:.3f}" if v is not None else f"{k}=n/a" for k, v in after["mia_auc"].items()))
    if verdict.metrics.get("relearn"):
        rec = verdict.metrics["relearn"]["recovery"]
        lines.append(f"  relearning recovery: {rec:.3f}" if rec is not None
                     else "  relearning recovery: n/a")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints a human summary (unless ``--json``) and then, LAST, one JSON
    object with ``passed``, ``metrics``, ``thresholds``, ``reasons``, ``policy``. Exit
    status 0 when passed, 1 when failed, 2 on bad arguments."""
    parser = argparse.ArgumentParser(prog="lethe verify", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="base model directory")
    parser.add_argument("--adapter", default=None, help="LoRA adapter directory (candidate)")
    parser.add_argument("--forget", required=True, help="JSONL of items that must be forgotten")
    parser.add_argument("--retain", required=True, help="JSONL of items that must be kept")
    parser.add_argument("--holdout", required=True, help="JSONL of never-seen items (baseline)")
    parser.add_argument("--general", default=None,
                        help="JSONL of general knowledge that must be kept (optional)")
    parser.add_argument("--template", default=None, help="prompt template, or 'chat'")
    parser.add_argument("--policy", default=None, help="JSON file with VerifierPolicy fields")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args(argv)
    policy = (VerifierPolicy.from_dict(json.loads(Path(args.policy).read_text()))
              if args.policy else VerifierPolicy())
    verdict = run_audit(args.model, args.adapter, args.forget, args.retain, args.holdout,
                        args.template, policy, args.device, args.general)
    if not args.json:
        print(_summary(verdict))
    print(json.dumps(verdict.to_dict(), allow_nan=False))
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
