"""Scheduling: pending requests of one model are batched into one job, earliest due first.
One job per model is active at a time, so every job starts from the version the previous
one published; requests that arrive meanwhile wait for the next batch."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import (
    ACTIVE_JOB_STATUSES,
    ErasureRequest,
    Model,
    RequestStatus,
    UnlearningJob,
)
from app.observability import correlation_id
from app.services import audit, dispatch
from app.settings import get_settings


def schedule_soon(model_id: str) -> None:
    """After an intake commits: start a job unless one is already active for the model.
    The unlocked pre-check keeps the common case (a job is running) off the model's row
    lock; a request it misses is picked up by the active job's successor or, at worst, by
    the maintenance loop's next round."""
    from app.db.session import session_scope

    with session_scope() as session:
        active = session.scalar(
            select(UnlearningJob.id)
            .where(
                UnlearningJob.model_id == model_id,
                UnlearningJob.status.in_([s.value for s in ACTIVE_JOB_STATUSES]),
            )
            .limit(1)
        )
        started = schedule(session, model_id) if active is None else None
    if started is not None:
        dispatch.flush_outbox()


# While requests keep coming, a model gets one scheduling pass per this many seconds from
# each process rather than one per request: a job takes minutes, so the wait costs nothing.
REPASS_AFTER_S = 0.1
# model id → whether another pass is due when the running one ends (schedule_after_intake)
_passes: dict[str, bool] = {}
_passes_lock = threading.Lock()


async def schedule_after_intake(model_id: str) -> None:
    """:func:`schedule_soon` after an intake committed, coalesced per model in this
    process. With no pass running, one runs at once. While one runs, the requests that
    commit meanwhile ask for one more, which starts ``REPASS_AFTER_S`` after it and sees
    them all. A pass that fails drops the ones asked for; the maintenance loop's next
    round does their work."""
    with _passes_lock:
        if model_id in _passes:
            _passes[model_id] = True
            return
        _passes[model_id] = False
    try:
        while True:
            await asyncio.to_thread(schedule_soon, model_id)
            with _passes_lock:
                if not _passes[model_id]:
                    del _passes[model_id]
                    return
            await asyncio.sleep(REPASS_AFTER_S)
            with _passes_lock:
                _passes[model_id] = False  # whoever commits from now on asks again
    except BaseException:
        with _passes_lock:
            _passes.pop(model_id, None)
        raise


def schedule(session: Session, model_id: str) -> UnlearningJob | None:
    """Start a job for the model's pending requests unless one is active. Call inside the
    transaction that changed the model's requests or jobs."""
    # Taking the model's row lock (a write on both PostgreSQL and SQLite) serialises
    # concurrent schedulers for the same model.
    session.execute(
        update(Model).where(Model.id == model_id).values(schedule_seq=Model.schedule_seq + 1)
    )
    active = session.scalar(
        select(UnlearningJob.id).where(
            UnlearningJob.model_id == model_id,
            UnlearningJob.status.in_([s.value for s in ACTIVE_JOB_STATUSES]),
        )
    )
    if active:
        return None
    pending = list(
        session.scalars(
            select(ErasureRequest)
            .where(
                ErasureRequest.model_id == model_id,
                ErasureRequest.status == RequestStatus.received,
            )
            .order_by(ErasureRequest.due_at, ErasureRequest.received_at)
            .limit(4 * get_settings().max_batch_size)
        )
    )
    if not pending:
        return None
    # one job, one method: the earliest-due request decides, others with the same
    # settings (or the same default) join it
    chosen = pending[0].unlearning_config
    pending = [r for r in pending if r.unlearning_config == chosen]
    pending = pending[: get_settings().max_batch_size]
    settings = get_settings()
    if len(pending) < settings.max_batch_size and settings.batch_max_wait_s > 0:
        # wait for a fuller batch (cheaper per subject), but never past the oldest
        # request's wait or within a week of the earliest deadline
        now = utcnow()
        oldest = min(r.received_at for r in pending)
        earliest_due = min(r.due_at for r in pending)
        if (now - oldest).total_seconds() < settings.batch_max_wait_s and (
            earliest_due - now
        ).days >= 7:
            return None
    model = session.get(Model, model_id)
    assert model is not None and model.production_version_id is not None
    job = UnlearningJob(
        tenant_id=model.tenant_id,
        model_id=model_id,
        parent_version_id=model.production_version_id,
        method=str((chosen or model.unlearning_config).get("method", "npo")),
        config=dict(chosen or model.unlearning_config),
        heartbeat_at=utcnow(),
        correlation_id=correlation_id.get(),
    )
    session.add(job)
    session.flush()
    for request in pending:
        request.status = RequestStatus.queued
        request.job_id = job.id
        audit.record(
            session,
            model.tenant_id,
            "request.queued",
            "erasure_request",
            request.id,
            job_id=job.id,
        )
    audit.record(
        session,
        model.tenant_id,
        "job.queued",
        "unlearning_job",
        job.id,
        model_id=model_id,
        requests=len(pending),
    )
    dispatch.enqueue(session, "unlearn", job.id)
    return job
