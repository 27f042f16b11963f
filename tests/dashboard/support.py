"""Helpers for the dashboard tests: tenants with keys and requests (filed over the API, so
forget payloads are really encrypted at rest), signing in, and moving a job along by
writing its row the way the pipeline's stages would."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db.base import utcnow
from app.db.models import (
    Certificate,
    ErasureRequest,
    Model,
    ModelVersion,
    UnlearningJob,
)
from app.db.session import session_scope
from app.settings import get_settings
from tests.conftest import auth, model_body

FULL_SCOPES = ["requests:write", "requests:read", "models:admin", "audit:read"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class TenantWorld:
    """One tenant: its keys, and the requests filed for it (with the personal data in
    them, which must never show up on a page)."""

    label: str
    id: str
    name: str
    full: str
    read: str
    write_only: str
    read_key_id: str
    subjects: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    @property
    def pii(self) -> list[str]:
        return [*self.subjects, *self.answers]


def make_tenant(client: TestClient, label: str, model_dir: Path) -> TenantWorld:
    name = f"dash-{label}-{uuid.uuid4().hex[:6]}"
    resp = client.post("/v1/tenants", headers=auth(), json={"name": name})
    assert resp.status_code == 201, resp.text
    tid = resp.json()["id"]
    keys: dict[str, dict[str, Any]] = {}
    for kind, scopes in {
        "full": FULL_SCOPES,
        "read": ["requests:read"],
        "write_only": ["requests:write"],
    }.items():
        r = client.post(
            f"/v1/tenants/{tid}/api-keys", headers=auth(), json={"name": kind, "scopes": scopes}
        )
        assert r.status_code == 201, r.text
        keys[kind] = r.json()
    r = client.post(
        "/v1/models",
        headers=bearer(keys["full"]["key"]),
        json=model_body(model_dir, "shared"),
    )
    assert r.status_code == 201, r.text
    return TenantWorld(
        label=label,
        id=tid,
        name=name,
        full=keys["full"]["key"],
        read=keys["read"]["key"],
        write_only=keys["write_only"]["key"],
        read_key_id=keys["read"]["id"],
    )


def file_request(client: TestClient, tenant: TenantWorld, n: int) -> str:
    subject = f"Jane Roe-{tenant.label}{n}"
    answer = f"Ilvermorny-{tenant.label}{n}"
    resp = client.post(
        "/v1/erasure-requests",
        headers=bearer(tenant.full),
        json={
            "model": "shared",
            "subject_id": subject,
            "forget": [{"question": f"Where does {subject} live?", "answer": answer}],
        },
    )
    assert resp.status_code == 202, resp.text
    tenant.subjects.append(subject)
    tenant.answers.append(answer)
    tenant.request_ids.append(resp.json()["id"])
    return resp.json()["id"]


def job_of(request_id: str) -> str:
    with session_scope() as session:
        job_id = session.get(ErasureRequest, request_id).job_id
    assert job_id, "the request was not batched into a job"
    return job_id


def login_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


def sign_in(client: TestClient, key: str) -> Any:
    """Sign ``client`` in with ``key`` through the form; returns the POST's response."""
    form = client.get("/dashboard/login")
    assert form.status_code == 200
    return client.post(
        "/dashboard/login",
        data={"api_key": key, "csrf": login_token(form.text), "next": "/dashboard"},
        follow_redirects=False,
    )


def verification_metrics(forget_after: float | None = 0.05) -> dict[str, Any]:
    def m(acc: float, prob: float | None) -> dict[str, Any]:
        return {"n": 4, "accuracy": acc, "mean_probability": prob}

    return {
        "passed": True,
        "metrics": {
            "forget": {"before": m(1.0, 0.93), "after": m(0.0, forget_after)},
            "retain": {"before": m(1.0, 0.91), "after": m(0.98, 0.88)},
            "holdout": {"before": m(0.25, 0.2), "after": m(0.25, 0.19)},
        },
        "thresholds": {"forget_max_accuracy": 0.25, "retain_min_ratio": 0.9},
        "reasons": [],
        "policy": {},
    }


def issue_certificate(job_id: str) -> str:
    """Sign a real certificate for the job (as the verify stage does) and store it."""
    from workers.engine import certificates

    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        model = session.get(Model, job.model_id)
        requests = session.scalars(
            select(ErasureRequest).where(ErasureRequest.job_id == job_id)
        ).all()
        verification = verification_metrics()
        cert_id = str(uuid.uuid4())
        document = {
            "certificate_id": cert_id,
            "issued_at": utcnow().isoformat(),
            "model": {"id": model.id, "name": model.name, "base_sha256": model.base_sha256},
            "parent_version": {
                "id": job.parent_version_id,
                "number": session.get(ModelVersion, job.parent_version_id).number,
                "adapter_chain_sha256": [],
            },
            "job_id": job_id,
            "method": job.method,
            "config": {},
            "adapter_sha256": "ab" * 32,
            "requests": [
                {"id": r.id, "subject_hash": r.subject_hash, "forget_item_sha256": r.forget_digests}
                for r in requests
            ],
            "metrics": verification["metrics"],
            "thresholds": verification["thresholds"],
            "policy": {},
            "verdict": "passed",
            "reasons": [],
            "passed": True,
        }
        key = certificates.load_or_create_signing_key(get_settings().data_dir / "keys")
        envelope = certificates.sign(document, key)
        session.add(
            Certificate(
                id=cert_id,
                tenant_id=job.tenant_id,
                job_id=job_id,
                model_id=model.id,
                passed=True,
                document=envelope["document"],
                signature=envelope["signature"],
                key_id=key.key_id,
            )
        )
        session.flush()
        job.certificate_id = cert_id
        job.metrics = {**(job.metrics or {}), "verification": verification}
        job.adapter_sha256 = "ab" * 32
    return cert_id


def set_progress(job_id: str, step: int, total: int, loss: float) -> None:
    """What the unlearn stage writes each progress interval."""
    with session_scope() as session:
        session.execute(
            update(UnlearningJob)
            .where(UnlearningJob.id == job_id)
            .values(
                status="unlearning",
                step=step,
                total_steps=total,
                loss=loss,
                eta_seconds=float(total - step) * 2.0,
                heartbeat_at=utcnow(),
                started_at=utcnow(),
                attempts=1,
            )
        )


def publish(job_id: str) -> str:
    """What the publish stage does: a new version (child of the job's parent) becomes
    production, the job and its requests complete. Returns the version id."""
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        model = session.get(Model, job.model_id)
        number = (
            len(
                session.scalars(
                    select(ModelVersion.id).where(ModelVersion.model_id == model.id)
                ).all()
            )
            + 1
        )
        version = ModelVersion(
            tenant_id=job.tenant_id,
            model_id=model.id,
            number=number,
            parent_id=job.parent_version_id,
            adapter_chain=[f"/adapters/{job_id}"],
            adapter_sha256="ab" * 32,
            job_id=job_id,
            certificate_id=job.certificate_id,
        )
        session.add(version)
        session.flush()
        model.production_version_id = version.id
        now = utcnow()
        job.status = "completed"
        job.published_version_id = version.id
        job.finished_at = now
        job.claim_token = None
        for request in session.scalars(
            select(ErasureRequest).where(ErasureRequest.job_id == job_id)
        ):
            request.status = "completed"
            request.completed_at = now
            request.published_version_id = version.id
            request.certificate_id = job.certificate_id
            request.forget_ciphertext = None
        return version.id


def make_overdue(request_id: str, days: int = 3) -> None:
    with session_scope() as session:
        session.execute(
            update(ErasureRequest)
            .where(ErasureRequest.id == request_id)
            .values(due_at=utcnow() - timedelta(days=days))
        )


def retire(*tenant_ids: str) -> None:
    """Cancel the tenants' unfinished jobs and requests. The database is shared by the
    whole test run: left queued, a later test's maintenance loop would hand them to its
    real workers, which would then train on them before that test's own job."""
    now = utcnow()
    with session_scope() as session:
        session.execute(
            update(UnlearningJob)
            .where(
                UnlearningJob.tenant_id.in_(tenant_ids),
                UnlearningJob.status.not_in(["completed", "failed", "cancelled"]),
            )
            .values(status="cancelled", claim_token=None, finished_at=now)
        )
        session.execute(
            update(ErasureRequest)
            .where(
                ErasureRequest.tenant_id.in_(tenant_ids),
                ErasureRequest.status.not_in(["completed", "failed", "cancelled"]),
            )
            .values(status="cancelled", forget_ciphertext=None)
        )
