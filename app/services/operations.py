"""Operator actions on jobs: inspect, cancel, requeue, and finding stuck ones."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import (
    ACTIVE_JOB_STATUSES,
    ErasureRequest,
    JobStatus,
    RequestStatus,
    UnlearningJob,
)
from app.db.session import rowcount
from app.services import audit, dispatch, scheduling
from app.services.errors import Conflict, NotFound
from app.services.jobs import STAGE_OF_STATUS
from app.settings import get_settings


def get_job(session: Session, job_id: str, tenant_id: str | None = None) -> UnlearningJob:
    job = session.get(UnlearningJob, job_id)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise NotFound(f"no job {job_id}")
    return job


def describe(session: Session, job: UnlearningJob) -> dict[str, Any]:
    """Everything an operator needs about a job; no personal data."""
    requests = session.execute(
        select(ErasureRequest.id, ErasureRequest.status, ErasureRequest.due_at).where(
            ErasureRequest.job_id == job.id
        )
    ).all()
    lease = timedelta(seconds=get_settings().job_lease_s)
    return {
        "id": job.id,
        "tenant_id": job.tenant_id,
        "model_id": job.model_id,
        "status": job.status,
        "method": job.method,
        "attempts": job.attempts,
        "claimed": job.claim_token is not None,
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        "stale": bool(
            job.heartbeat_at
            and utcnow() - job.heartbeat_at > lease
            and job.status in [s.value for s in ACTIVE_JOB_STATUSES]
        ),
        "cancel_requested": job.cancel_requested,
        "progress": {
            "step": job.step,
            "total_steps": job.total_steps,
            "loss": job.loss,
            "eta_seconds": job.eta_seconds,
        },
        "error": job.error,
        "adapter_sha256": job.adapter_sha256,
        "certificate_id": job.certificate_id,
        "published_version_id": job.published_version_id,
        "correlation_id": job.correlation_id,
        "requests": [
            {"id": r.id, "status": r.status, "due_at": r.due_at.isoformat()} for r in requests
        ],
    }


def stuck_jobs(session: Session) -> list[UnlearningJob]:
    """Active jobs nobody has touched for longer than the lease."""
    lease = timedelta(seconds=get_settings().job_lease_s)
    return list(
        session.scalars(
            select(UnlearningJob)
            .where(
                UnlearningJob.status.in_([s.value for s in ACTIVE_JOB_STATUSES]),
                UnlearningJob.heartbeat_at < utcnow() - lease,
            )
            .order_by(UnlearningJob.heartbeat_at)
        )
    )


def cancel_job(session: Session, job: UnlearningJob, actor: str) -> UnlearningJob:
    """A queued job is cancelled at once; a running one is asked to stop (its training
    loop sees the flag within about a second and cancels itself)."""
    if job.status == JobStatus.queued and job.claim_token is None:
        res = session.execute(
            update(UnlearningJob)
            .where(
                UnlearningJob.id == job.id,
                UnlearningJob.status == JobStatus.queued,
                UnlearningJob.claim_token.is_(None),
            )
            .values(status=JobStatus.cancelled, finished_at=utcnow())
        )
        if rowcount(res) == 1:
            for request in session.scalars(
                select(ErasureRequest).where(ErasureRequest.job_id == job.id)
            ):
                request.status = RequestStatus.cancelled
                request.forget_ciphertext = None
                audit.record(
                    session,
                    job.tenant_id,
                    "request.cancelled",
                    "erasure_request",
                    request.id,
                    actor,
                    job_id=job.id,
                )
            audit.record(session, job.tenant_id, "job.cancelled", "unlearning_job", job.id, actor)
            scheduling.schedule(session, job.model_id)
            session.refresh(job)
            return job
    if job.status not in (JobStatus.queued, JobStatus.unlearning, JobStatus.verifying):
        raise Conflict(f"job is {job.status}; only queued or running jobs can be cancelled")
    job.cancel_requested = True
    audit.record(session, job.tenant_id, "job.cancel_requested", "unlearning_job", job.id, actor)
    return job


def requeue_job(session: Session, job: UnlearningJob, actor: str) -> UnlearningJob:
    """Run the job's current stage again now: an active job's claim is released (use it
    for a worker known to be dead); a failed job starts over if its data is still held."""
    if job.status in [s.value for s in ACTIVE_JOB_STATUSES]:
        job.claim_token = None
        job.heartbeat_at = utcnow()
        stage = STAGE_OF_STATUS[JobStatus(job.status)]
    elif job.status == JobStatus.failed:
        requests = list(
            session.scalars(select(ErasureRequest).where(ErasureRequest.job_id == job.id))
        )
        if not requests or any(r.forget_ciphertext is None for r in requests):
            raise Conflict("the job's forget data is no longer held; file the requests again")
        active = session.scalar(
            select(UnlearningJob.id).where(
                UnlearningJob.model_id == job.model_id,
                UnlearningJob.status.in_([s.value for s in ACTIVE_JOB_STATUSES]),
            )
        )
        if active:
            raise Conflict(f"job {active} is active on this model; requeue after it finishes")
        job.status = JobStatus.queued
        job.error = None
        job.attempts = 0
        job.claim_token = None
        job.finished_at = None
        job.heartbeat_at = utcnow()
        for request in requests:
            request.status = RequestStatus.queued
            request.error = None
        stage = "unlearn"
    else:
        raise Conflict(f"job is {job.status}; nothing to requeue")
    audit.record(
        session, job.tenant_id, "job.requeued", "unlearning_job", job.id, actor, stage=stage
    )
    dispatch.enqueue(session, stage, job.id)
    return job
