"""`lethe demo`: the whole pipeline on the embedded default — demo model, registration,
one erasure request, unlearn → verify → publish — in this process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.db.models import DEFAULT_TENANT_ID, Certificate, ErasureRequest, Model, UnlearningJob
from app.db.session import session_scope
from app.services import intake, privacy, registry, scheduling
from app.settings import get_settings

DEMO_MODEL = "demo"
TERMINAL = {"completed", "failed", "cancelled"}


def ensure_demo_model(
    size: str, say: Callable[[str], None], progress: Callable[[int, int, float], None] | None
) -> Path:
    from workers.engine.demo_model import build_demo_model

    out = (get_settings().data_dir / "models" / f"demo-{size}").resolve()
    if (out / "config.json").exists() and (out / "data" / "train.jsonl").exists():
        say(f"Demo model found at {out}")
        return out
    say(
        f"Building the demo model ({size}) at {out} — trained from scratch on fictitious "
        "people, a few minutes on CPU …"
    )
    report = build_demo_model(out, size=size, on_progress=progress)
    say(
        f"Built in {report.seconds:.0f} s: {report.train_accuracy:.0%} of trained facts "
        f"answered correctly, {report.holdout_accuracy:.0%} of never-seen people's."
    )
    return out


def ensure_registered(model_dir: Path) -> Model:
    meta = json.loads((model_dir / "lethe-demo.json").read_text())
    with session_scope() as session:
        existing = session.scalar(
            select(Model).where(Model.tenant_id == DEFAULT_TENANT_ID, Model.name == DEMO_MODEL)
        )
        if existing is not None and existing.base_path == str(model_dir):
            return existing
        name = DEMO_MODEL if existing is None else f"{DEMO_MODEL}-{int(time.time())}"
        return registry.register_model(
            session,
            DEFAULT_TENANT_ID,
            name=name,
            path=str(model_dir),
            retain_path=str(model_dir / "data" / "train.jsonl"),
            holdout_path=str(model_dir / "data" / "holdout.jsonl"),
            prompt_template=meta.get("prompt_template") or meta["template"],
            actor="demo",
        )


def pick_subject(model: Model) -> tuple[str, list[dict[str, Any]]]:
    """The first trained person nobody has asked to erase from this model yet."""
    from workers.engine.qa import load_jsonl

    rows = load_jsonl(model.retain_path)
    with session_scope() as session:
        taken = set(
            session.scalars(
                select(ErasureRequest.subject_hash).where(ErasureRequest.model_id == model.id)
            )
        )
    subjects: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        subjects.setdefault(row["subject"], []).append(row)
    for subject, facts in subjects.items():
        if privacy.subject_hash(subject) not in taken:
            return subject, [{"question": r["question"], "answer": r["answer"]} for r in facts]
    raise RuntimeError("every demo person has already been erased; remove the data dir")


def run_demo(
    size: str = "small",
    say: Callable[[str], None] = print,
    on_job: Callable[[UnlearningJob], None] | None = None,
    build_progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Run the demo end to end; returns the summary printed by ``lethe demo --json``."""
    from workers.engine.certificates import public_keys

    started = time.perf_counter()
    model_dir = ensure_demo_model(size, say, build_progress)
    model = ensure_registered(model_dir)
    subject, facts = pick_subject(model)
    say(f"Erasure request: forget everything about {subject} ({len(facts)} facts), e.g.")
    for fact in facts[:3]:
        say(f"  Q: {fact['question']}  A: {fact['answer']}")
    with session_scope() as session:
        request = intake.submit_erasure_request(
            session,
            DEFAULT_TENANT_ID,
            model_name=model.name,
            subject_id=subject,
            forget=facts,
            actor="demo",
        )
        request_id = request.id
    scheduling.schedule_soon(model.id)
    status, last_seen = "received", None
    while status not in TERMINAL:
        time.sleep(0.5)
        with session_scope() as session:
            req = session.get(ErasureRequest, request_id)
            assert req is not None
            status = req.status
            job = session.get(UnlearningJob, req.job_id) if req.job_id else None
            if job is not None and on_job is not None:
                seen = (job.status, job.step)
                if seen != last_seen:
                    last_seen = seen
                    on_job(job)
    with session_scope() as session:
        req = session.get(ErasureRequest, request_id)
        assert req is not None and req.job_id is not None
        job = session.get(UnlearningJob, req.job_id)
        assert job is not None
        cert = session.get(Certificate, job.certificate_id) if job.certificate_id else None
        verification = job.metrics.get("verification", {})
        metrics = verification.get("metrics", {})
        error = req.error
    envelope = None
    certificate: dict[str, Any] = {"passed": False}
    if cert is not None:
        keys = public_keys(get_settings().data_dir / "keys")
        envelope = {
            "document": cert.document,
            "signature": cert.signature,
            "key_id": cert.key_id,
            "public_key": keys.get(cert.key_id, ""),
        }
        certificate = {
            "id": cert.id,
            "passed": cert.passed,
            **envelope,
            "statement": json.loads(cert.document),
        }

    def metric(name: str, when: str, key: str = "accuracy") -> float | None:
        value = (metrics.get(name) or {}).get(when) or {}
        return value.get(key)

    return {
        "request_id": request_id,
        "subject": subject,
        "status": status,
        "error": error,
        "job_id": job.id,
        "published_version_id": req.published_version_id,
        "certificate": certificate,
        "forget_accuracy_before": metric("forget", "before"),
        "forget_accuracy_after": metric("forget", "after"),
        "forget_probability_before": metric("forget", "before", "mean_probability"),
        "forget_probability_after": metric("forget", "after", "mean_probability"),
        "retain_accuracy_before": metric("retain", "before"),
        "retain_accuracy_after": metric("retain", "after"),
        "holdout_accuracy": metric("holdout", "after"),
        "holdout_probability": metric("holdout", "after", "mean_probability"),
        "mia_auc": (verification.get("mia_auc") or {}).get("after"),
        "relearn_recovery": (verification.get("relearn") or {}).get("recovery"),
        "attempts": len(job.metrics.get("attempts") or []) or None,
        "unlearning_seconds": job.metrics.get("unlearning", {}).get("seconds"),
        "verification_seconds": job.metrics.get("verification_seconds"),
        "seconds": round(time.perf_counter() - started, 2),
    }
