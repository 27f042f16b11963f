"""Intake: validate an erasure request, encrypt its forget payload and store it with its
audit event in one transaction; the scheduler then batches it into a job."""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.base import new_id, utcnow
from app.db.models import ErasureRequest, JobStatus, Model, RequestStatus, UnlearningJob
from app.db.session import rowcount
from app.observability import correlation_id
from app.services import audit, privacy, scheduling
from app.services.errors import Conflict, InvalidInput, LetheError, NotFound


def add_months(moment: datetime, months: int) -> datetime:
    """Same day ``months`` later, clamped to the month's last day (31 Jan + 1 → 28/29 Feb),
    as GDPR Art. 12(3)'s "one month" is read."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


@dataclass(frozen=True)
class Submission:
    """An erasure request as the caller filed it, not yet stored."""

    tenant_id: str
    model_name: str
    subject_id: str
    forget: list[dict[str, Any]]
    actor: str
    unlearning_config: dict[str, Any] | None = None
    correlation_id: str | None = None


def submit_erasure_request(
    session: Session,
    tenant_id: str,
    *,
    model_name: str,
    subject_id: str,
    forget: list[dict[str, Any]],
    actor: str,
    unlearning_config: dict[str, Any] | None = None,
) -> ErasureRequest:
    submission = Submission(
        tenant_id=tenant_id,
        model_name=model_name,
        subject_id=subject_id,
        forget=forget,
        actor=actor,
        unlearning_config=unlearning_config,
        correlation_id=correlation_id.get(),
    )
    (result,) = submit_erasure_requests(session, [submission])
    if isinstance(result, LetheError):
        raise result
    return result


def submit_erasure_requests(
    session: Session, submissions: Sequence[Submission]
) -> list[ErasureRequest | LetheError]:
    """Store requests in the caller's transaction, each with its encrypted payload and its
    ``request.received`` audit event. A request that cannot be filed (unknown model,
    nothing to forget) gets its error in its place; the others are stored. Each tenant's
    audit chain is advanced once for all of its requests (see :func:`audit.record_many`)."""
    model_ids: dict[tuple[str, str], str | None] = {}
    results: list[ErasureRequest | LetheError] = []
    events: dict[str, list[audit.Event]] = {}
    for sub in submissions:
        if not sub.forget:
            results.append(InvalidInput("forget must list at least one item"))
            continue
        key = (sub.tenant_id, sub.model_name)
        if key not in model_ids:
            # only the id is needed: cheaper than loading the model
            model_ids[key] = session.scalar(
                select(Model.id).where(
                    Model.tenant_id == sub.tenant_id, Model.name == sub.model_name
                )
            )
        model_id = model_ids[key]
        if model_id is None:
            results.append(NotFound(f"no model named {sub.model_name!r}"))
            continue
        received = utcnow()
        request = ErasureRequest(
            id=new_id(),
            tenant_id=sub.tenant_id,
            model_id=model_id,
            subject_hash=privacy.subject_hash(sub.subject_id),
            item_count=len(sub.forget),
            forget_digests=[privacy.item_digest(item) for item in sub.forget],
            status=RequestStatus.received,
            received_at=received,
            due_at=add_months(received, 1),
            correlation_id=sub.correlation_id,
            unlearning_config=sub.unlearning_config,
        )
        request.forget_ciphertext = privacy.encrypt_items(sub.forget, request.id)
        session.add(request)
        results.append(request)
        events.setdefault(sub.tenant_id, []).append(
            audit.Event(
                "request.received",
                "erasure_request",
                request.id,
                sub.actor,
                {"model_id": model_id, "items": len(sub.forget)},
            )
        )
    # the rows go in before any audit chain is locked, so the locks are held briefly;
    # tenants in a fixed order, so two batches that share tenants cannot deadlock
    session.flush()
    for tenant_id in sorted(events):
        audit.record_many(session, tenant_id, events[tenant_id])
    # Scheduling is left out of this transaction (callers run scheduling.schedule_soon after
    # commit): it takes the model's row lock, which would serialise all intake of a model.
    return results


def get_request(session: Session, tenant_id: str, request_id: str) -> ErasureRequest:
    request = session.get(ErasureRequest, request_id)
    # another tenant's request answers exactly like a missing one
    if request is None or request.tenant_id != tenant_id:
        raise NotFound(f"no erasure request {request_id}")
    return request


MAX_EXTENSION_MONTHS = 2


def extend_deadline(
    session: Session, tenant_id: str, request_id: str, months: int, reason: str, actor: str
) -> ErasureRequest:
    """GDPR Art. 12(3): the one-month deadline may be extended by up to two further
    months where necessary, with the reason recorded."""
    request = get_request(session, tenant_id, request_id)
    if request.status in (RequestStatus.completed, RequestStatus.cancelled):
        raise Conflict(f"request is {request.status}; its deadline no longer runs")
    if not 1 <= months <= MAX_EXTENSION_MONTHS:
        raise InvalidInput(f"months must be 1 or {MAX_EXTENSION_MONTHS}")
    if not reason.strip():
        raise InvalidInput("an extension needs its reason")
    due = add_months(request.received_at, 1 + months)
    if due <= request.due_at:
        raise Conflict(
            f"the deadline is already {request.due_at.isoformat()}; at most "
            f"{MAX_EXTENSION_MONTHS} further months may be added in all"
        )
    request.due_at = due
    request.extension_reason = reason.strip()
    audit.record(
        session,
        tenant_id,
        "request.deadline_extended",
        "erasure_request",
        request.id,
        actor,
        due_at=due.isoformat(),
        months=months,
    )
    return request


def cancel_request(session: Session, tenant_id: str, request_id: str, actor: str) -> ErasureRequest:
    """Cancel a request that is not being unlearned yet (received, or queued in a job that
    has not started); later it is too late: 409 with the reason."""
    request = get_request(session, tenant_id, request_id)
    if request.status == RequestStatus.received:
        pass
    elif request.status == RequestStatus.queued and request.job_id is not None:
        # touching the job row while it is still queued takes its lock: a worker's claim
        # (a conditional update on the same row) waits for this transaction
        touched = session.execute(
            update(UnlearningJob)
            .where(
                UnlearningJob.id == request.job_id,
                UnlearningJob.status == JobStatus.queued,
                UnlearningJob.claim_token.is_(None),
            )
            .values(heartbeat_at=utcnow())
        )
        if rowcount(touched) != 1:
            session.refresh(request)
            raise Conflict(
                "the request's unlearning job has already started; it can no longer be "
                "cancelled and will complete (or fail) on its own"
            )
        job_id = request.job_id
        request.job_id = None
        others = session.scalar(
            select(func.count())
            .select_from(ErasureRequest)
            .where(ErasureRequest.job_id == job_id, ErasureRequest.id != request.id)
        )
        if not others:
            job = session.get(UnlearningJob, job_id)
            assert job is not None
            job.status = JobStatus.cancelled
            job.finished_at = utcnow()
            audit.record(session, tenant_id, "job.cancelled", "unlearning_job", job_id, actor)
    else:
        raise Conflict(
            f"the request is {request.status}: "
            + (
                "it is already being unlearned and can no longer be cancelled"
                if request.status in (RequestStatus.unlearning, RequestStatus.verifying)
                else "it has finished"
            )
        )
    request.status = RequestStatus.cancelled
    request.forget_ciphertext = None  # nothing left to do with the personal data
    audit.record(session, tenant_id, "request.cancelled", "erasure_request", request.id, actor)
    scheduling.schedule(session, request.model_id)
    return request
