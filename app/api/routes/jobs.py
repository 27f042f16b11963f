from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.api.deps import ModelsAdminDep, ReadDep, SessionDep
from app.api.schemas import (
    CertificateOut,
    CertificatePage,
    CertificateSummary,
    JobOut,
    JobPage,
    Progress,
)
from app.db.models import Certificate, ErasureRequest, Model, UnlearningJob
from app.services import dispatch, operations
from app.services.errors import NotFound
from app.services.pagination import paginate
from app.settings import get_settings

router = APIRouter(tags=["jobs and certificates"])


def job_out(session: SessionDep, job: UnlearningJob) -> JobOut:
    model = session.get(Model, job.model_id)
    request_ids = session.scalars(
        select(ErasureRequest.id).where(ErasureRequest.job_id == job.id)
    ).all()
    return JobOut(
        id=job.id,
        model=model.name if model else "",
        status=job.status,
        method=job.method,
        config=job.config,
        attempts=job.attempts,
        progress=Progress(
            step=job.step, total_steps=job.total_steps, loss=job.loss, eta_seconds=job.eta_seconds
        ),
        metrics=job.metrics,
        error=job.error,
        request_ids=list(request_ids),
        certificate_id=job.certificate_id,
        published_version_id=job.published_version_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


@router.get("/v1/jobs", response_model=JobPage, summary="List unlearning jobs, newest first")
def list_jobs(
    session: SessionDep,
    caller: ReadDep,
    status: str | None = None,
    model: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    stmt = select(UnlearningJob).where(UnlearningJob.tenant_id == caller.tenant_id)
    if created_after:
        stmt = stmt.where(UnlearningJob.created_at >= created_after)
    if created_before:
        stmt = stmt.where(UnlearningJob.created_at < created_before)
    if status:
        stmt = stmt.where(UnlearningJob.status == status)
    if model:
        stmt = stmt.join(Model, Model.id == UnlearningJob.model_id).where(Model.name == model)
    page = paginate(session, stmt, UnlearningJob.created_at, UnlearningJob.id, cursor, limit)
    return JobPage(items=[job_out(session, j) for j in page.items], next_cursor=page.next_cursor)


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, caller: ReadDep) -> JobOut:
    job = session.get(UnlearningJob, job_id)
    if job is None or job.tenant_id != caller.tenant_id:
        raise NotFound(f"no job {job_id}")
    return job_out(session, job)


def certificate_envelope(cert: Certificate) -> dict[str, str]:
    from workers.engine.certificates import public_keys

    keys = public_keys(get_settings().data_dir / "keys")
    return {
        "document": cert.document,
        "signature": cert.signature,
        "key_id": cert.key_id,
        "public_key": keys.get(cert.key_id, ""),
    }


@router.get("/v1/certificates/keys", summary="Public keys that sign certificates")
def certificate_keys() -> dict[str, Any]:
    """Every signing key ever used (retired ones too, so old certificates stay checkable),
    PEM-encoded Ed25519 public keys by key id. No authentication: they are public."""
    from workers.engine.certificates import public_keys

    keys = public_keys(get_settings().data_dir / "keys")
    return {
        "keys": [
            {"key_id": k, "algorithm": "Ed25519", "public_key": pem} for k, pem in keys.items()
        ]
    }


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    document: str = Field(description="the signed canonical JSON text, exactly as issued")
    signature: str
    key_id: str


class VerifyOut(BaseModel):
    valid: bool
    reason: str
    certificate_id: str | None = None
    verdict: str | None = None


@router.post(
    "/v1/certificates/verify",
    response_model=VerifyOut,
    summary="Check a certificate against Lethe's signing keys",
)
def verify_certificate(body: VerifyIn) -> VerifyOut:
    """Valid only if signed by one of Lethe's own keys (the envelope's embedded public key
    is ignored). No authentication: anyone holding a certificate may check it."""
    from workers.engine.certificates import public_keys, verify

    trusted = public_keys(get_settings().data_dir / "keys")
    ok, reason = verify(body.model_dump(), trusted)
    doc = json.loads(body.document) if ok else {}
    return VerifyOut(
        valid=ok,
        reason=reason,
        certificate_id=doc.get("certificate_id"),
        verdict=doc.get("verdict"),
    )


@router.get("/v1/certificates", response_model=CertificatePage)
def list_certificates(
    session: SessionDep,
    caller: ReadDep,
    passed: bool | None = None,
    model: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> CertificatePage:
    stmt = select(Certificate).where(Certificate.tenant_id == caller.tenant_id)
    if model:
        stmt = stmt.join(Model, Model.id == Certificate.model_id).where(Model.name == model)
    if created_after:
        stmt = stmt.where(Certificate.created_at >= created_after)
    if created_before:
        stmt = stmt.where(Certificate.created_at < created_before)
    if passed is not None:
        stmt = stmt.where(Certificate.passed == passed)
    page = paginate(session, stmt, Certificate.created_at, Certificate.id, cursor, limit)
    return CertificatePage(
        items=[
            CertificateSummary(
                id=c.id, job_id=c.job_id, passed=c.passed, key_id=c.key_id, created_at=c.created_at
            )
            for c in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.get("/v1/certificates/{certificate_id}", response_model=CertificateOut)
def get_certificate(certificate_id: str, session: SessionDep, caller: ReadDep) -> CertificateOut:
    cert = session.get(Certificate, certificate_id)
    if cert is None or cert.tenant_id != caller.tenant_id:
        raise NotFound(f"no certificate {certificate_id}")
    return CertificateOut(
        id=cert.id,
        job_id=cert.job_id,
        passed=cert.passed,
        key_id=cert.key_id,
        document=json.loads(cert.document),
        envelope=certificate_envelope(cert),
        created_at=cert.created_at,
    )


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued job, or ask a running one to stop (within seconds)",
)
def cancel_job(job_id: str, session: SessionDep, caller: ModelsAdminDep) -> JobOut:
    job = operations.get_job(session, job_id, caller.tenant_id)
    operations.cancel_job(session, job, caller.actor)
    session.commit()
    dispatch.flush_outbox()
    return job_out(session, job)
