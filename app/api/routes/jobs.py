from __future__ import annotations

import json

from fastapi import APIRouter
from sqlalchemy import select

from app.api.deps import ReadDep, SessionDep
from app.api.schemas import CertificateOut, JobOut, Progress
from app.db.models import Certificate, ErasureRequest, Model, UnlearningJob
from app.services.errors import NotFound

router = APIRouter(tags=["jobs and certificates"])


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, caller: ReadDep) -> JobOut:
    job = session.get(UnlearningJob, job_id)
    if job is None or job.tenant_id != caller.tenant_id:
        raise NotFound(f"no job {job_id}")
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
        progress=Progress(step=job.step, total_steps=job.total_steps, loss=job.loss),
        metrics=job.metrics,
        error=job.error,
        request_ids=list(request_ids),
        certificate_id=job.certificate_id,
        published_version_id=job.published_version_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def certificate_envelope(cert: Certificate) -> dict[str, str]:
    from app.settings import get_settings
    from workers.engine.certificates import public_keys

    keys = public_keys(get_settings().data_dir / "keys")
    return {
        "document": cert.document,
        "signature": cert.signature,
        "key_id": cert.key_id,
        "public_key": keys.get(cert.key_id, ""),
    }


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
