"""The compliance report of one erasure request: what happened when (from the audit log),
how the forgetting was verified, and the signed certificate. No personal data: subject
ids appear only as keyed hashes and forget items only as digests."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import AuditEvent, Certificate, Model, UnlearningJob
from app.services import intake


def compliance_report(session: Session, tenant_id: str, request_id: str) -> dict[str, Any]:
    from app.settings import get_settings
    from workers.engine.certificates import public_keys

    request = intake.get_request(session, tenant_id, request_id)
    model = session.get(Model, request.model_id)
    job = session.get(UnlearningJob, request.job_id) if request.job_id else None
    ids = {request.id}
    if job is not None:
        ids.add(job.id)
        if job.published_version_id:
            ids.add(job.published_version_id)
        if job.certificate_id:
            ids.add(job.certificate_id)
    events = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.tenant_id == tenant_id, AuditEvent.entity_id.in_(ids))
        .order_by(AuditEvent.seq)
    ).all()
    certificate = None
    cert_id = request.certificate_id or (job.certificate_id if job else None)
    if cert_id:
        cert = session.get(Certificate, cert_id)
        if cert is not None and cert.tenant_id == tenant_id:
            keys = public_keys(get_settings().data_dir / "keys")
            certificate = {
                "id": cert.id,
                "passed": cert.passed,
                "key_id": cert.key_id,
                "statement": json.loads(cert.document),
                "envelope": {
                    "document": cert.document,
                    "signature": cert.signature,
                    "key_id": cert.key_id,
                    "public_key": keys.get(cert.key_id, ""),
                },
            }
    verification = (job.metrics or {}).get("verification") if job else None
    return {
        "request": {
            "id": request.id,
            "model": model.name if model else None,
            "subject_hash": request.subject_hash,
            "status": request.status,
            "item_count": request.item_count,
            "forget_item_sha256": request.forget_digests,
            "forget_payload_purged": request.forget_ciphertext is None,
            "received_at": request.received_at.isoformat(),
            "due_at": request.due_at.isoformat(),
            "extension_reason": request.extension_reason,
            "completed_at": request.completed_at.isoformat() if request.completed_at else None,
            "published_version_id": request.published_version_id,
            "error": request.error,
        },
        "job": None
        if job is None
        else {
            "id": job.id,
            "status": job.status,
            "method": job.method,
            "attempts": job.attempts,
            "adapter_sha256": job.adapter_sha256,
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        },
        "timeline": [
            {
                "seq": e.seq,
                "at": e.at.isoformat(),
                "actor": e.actor,
                "action": e.action,
                "entity_type": e.entity_type,
                "entity_id": e.entity_id,
                "data": e.data,
                "hash": e.hash,
            }
            for e in events
        ],
        "verification": None
        if verification is None
        else {
            "passed": verification.get("passed"),
            "metrics": verification.get("metrics"),
            "thresholds": verification.get("thresholds"),
            "reasons": verification.get("reasons"),
        },
        "certificate": certificate,
    }
