"""The maintenance loop: what keeps the pipeline moving after faults. It sends outbox rows
the broker missed, re-enqueues stages whose worker stopped heartbeating (releasing the
dead claim first), re-sends stages whose message was lost, and starts jobs for models
with pending requests. Every action is idempotent, so any number of processes may run
it at once."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import select, update

from app.db.base import utcnow
from app.db.models import (
    ACTIVE_JOB_STATUSES,
    ErasureRequest,
    JobStatus,
    RequestStatus,
    UnlearningJob,
)
from app.db.session import rowcount, session_scope
from app.services import audit, dispatch, scheduling
from app.services.jobs import STAGE_OF_STATUS
from app.settings import get_settings

log = logging.getLogger("lethe.recovery")


def requeue_stalled_jobs() -> int:
    """Re-enqueue every active job untouched for longer than the lease; returns how many."""
    lease = timedelta(seconds=get_settings().job_lease_s)
    now = utcnow()
    count = 0
    with session_scope() as session:
        stalled = session.scalars(
            select(UnlearningJob).where(
                UnlearningJob.status.in_([s.value for s in ACTIVE_JOB_STATUSES]),
                UnlearningJob.heartbeat_at < now - lease,
            )
        ).all()
        for job in stalled:
            # conditional on what we read: a worker that beats meanwhile keeps its claim
            res = session.execute(
                update(UnlearningJob)
                .where(
                    UnlearningJob.id == job.id,
                    UnlearningJob.status == job.status,
                    UnlearningJob.heartbeat_at == job.heartbeat_at,
                )
                .values(claim_token=None, heartbeat_at=now)
            )
            if rowcount(res) != 1:
                continue
            stage = STAGE_OF_STATUS[JobStatus(job.status)]
            audit.record(
                session,
                job.tenant_id,
                "job.requeued",
                "unlearning_job",
                job.id,
                stage=stage,
                claimed=job.claim_token is not None,
            )
            dispatch.enqueue(session, stage, job.id)
            count += 1
    return count


def schedule_waiting_models() -> int:
    with session_scope() as session:
        model_ids = session.scalars(
            select(ErasureRequest.model_id)
            .where(ErasureRequest.status == RequestStatus.received)
            .distinct()
        ).all()
        started = sum(1 for m in model_ids if scheduling.schedule(session, m) is not None)
    return started


def maintain_once() -> None:
    from app.services import idempotency, webhooks

    for step in (
        requeue_stalled_jobs,
        schedule_waiting_models,
        dispatch.flush_outbox,
        webhooks.dispatch_due,
        idempotency.purge_expired,
    ):
        try:
            step()
        except Exception as exc:  # database or broker down: try again next round
            log.warning("maintenance step %s failed: %s", step.__name__, exc)


def start_maintenance_thread(stop: threading.Event | None = None) -> threading.Event:
    """Run :func:`maintain_once` every ``maintenance_interval_s`` in a daemon thread."""
    stop = stop or threading.Event()
    interval = get_settings().maintenance_interval_s

    def loop() -> None:
        while not stop.wait(interval):
            maintain_once()

    threading.Thread(target=loop, name="lethe-maintenance", daemon=True).start()
    return stop
