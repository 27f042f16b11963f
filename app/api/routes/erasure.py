from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.api import idempotent
from app.api.deps import ReadDep, SessionDep, WriteDep
from app.api.idempotent import IdempotencyKeyHeader
from app.api.schemas import (
    ErasureRequestCreate,
    ErasureRequestOut,
    ErasureRequestPage,
    ExtensionIn,
    RequestStatusName,
)
from app.db.base import utcnow
from app.db.models import ErasureRequest, Model, RequestStatus
from app.observability import correlation_id
from app.services import dispatch, intake, reports, scheduling
from app.services.group_commit import committer
from app.services.pagination import paginate

router = APIRouter(prefix="/v1/erasure-requests", tags=["erasure requests"])


def request_out(session: SessionDep, request: ErasureRequest) -> ErasureRequestOut:
    model = session.get(Model, request.model_id)
    return _out(request, model.name if model else "")


def _out(request: ErasureRequest, model_name: str) -> ErasureRequestOut:
    return ErasureRequestOut(
        id=request.id,
        model=model_name,
        status=request.status,  # type: ignore[arg-type]
        item_count=request.item_count,
        received_at=request.received_at,
        due_at=request.due_at,
        completed_at=request.completed_at,
        job_id=request.job_id,
        published_version_id=request.published_version_id,
        certificate_id=request.certificate_id,
        error=request.error,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ErasureRequestOut,
    summary="File an erasure request; it is unlearned, verified and published",
)
async def create_request(
    body: ErasureRequestCreate,
    caller: WriteDep,
    tasks: BackgroundTasks,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    # async: the request waits for its group commit without holding a worker thread
    submission = intake.Submission(
        tenant_id=caller.tenant_id,
        model_name=body.model,
        subject_id=body.subject_id,
        forget=[item.model_dump(exclude_defaults=True) for item in body.forget],
        actor=caller.actor,
        unlearning_config=body.unlearning.model_dump(mode="json") if body.unlearning else None,
        correlation_id=correlation_id.get(),
    )
    # batching and sending happen after the response, coalesced per model; a broker outage
    # leaves the task in the outbox for the maintenance loop
    if idempotency_key is None:
        request = await committer.submit(submission)
        tasks.add_task(scheduling.schedule_after_intake, request.model_id)
        return JSONResponse(
            _out(request, body.model).model_dump(mode="json"),
            status_code=status.HTTP_202_ACCEPTED,
        )

    def produce() -> ErasureRequestOut:
        request = committer.submit_blocking(submission)
        tasks.add_task(scheduling.schedule_after_intake, request.model_id)
        return _out(request, body.model)

    return await run_in_threadpool(
        idempotent.respond,
        caller,
        idempotency_key,
        "/v1/erasure-requests",
        body,
        status.HTTP_202_ACCEPTED,
        produce,
    )


@router.get("", response_model=ErasureRequestPage, summary="List requests, newest first")
def list_requests(
    session: SessionDep,
    caller: ReadDep,
    status_: Annotated[RequestStatusName | None, Query(alias="status")] = None,
    model: str | None = None,
    overdue: Annotated[bool | None, Query(description="past due_at and not finished")] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ErasureRequestPage:
    stmt = select(ErasureRequest).where(ErasureRequest.tenant_id == caller.tenant_id)
    if status_:
        stmt = stmt.where(ErasureRequest.status == status_)
    if model:
        stmt = stmt.join(Model, Model.id == ErasureRequest.model_id).where(Model.name == model)
    if overdue is not None:
        open_ = ErasureRequest.status.not_in(
            [RequestStatus.completed.value, RequestStatus.cancelled.value]
        )
        late = ErasureRequest.due_at < utcnow()
        stmt = stmt.where(open_ & late) if overdue else stmt.where(~(open_ & late))
    if created_after:
        stmt = stmt.where(ErasureRequest.received_at >= created_after)
    if created_before:
        stmt = stmt.where(ErasureRequest.received_at < created_before)
    page = paginate(session, stmt, ErasureRequest.received_at, ErasureRequest.id, cursor, limit)
    return ErasureRequestPage(
        items=[request_out(session, r) for r in page.items], next_cursor=page.next_cursor
    )


@router.get("/{request_id}", response_model=ErasureRequestOut)
def get_request(request_id: str, session: SessionDep, caller: ReadDep) -> ErasureRequestOut:
    return request_out(session, intake.get_request(session, caller.tenant_id, request_id))


@router.delete(
    "/{request_id}",
    response_model=ErasureRequestOut,
    summary="Cancel a request that is not being unlearned yet (409 once it is)",
)
def cancel_request(request_id: str, session: SessionDep, caller: WriteDep) -> ErasureRequestOut:
    request = intake.cancel_request(session, caller.tenant_id, request_id, caller.actor)
    session.commit()
    dispatch.flush_outbox()
    return request_out(session, request)


@router.post(
    "/{request_id}/extension",
    response_model=ErasureRequestOut,
    summary="Extend the deadline by up to two further months, with the reason",
)
def extend_request(
    request_id: str, body: ExtensionIn, session: SessionDep, caller: WriteDep
) -> ErasureRequestOut:
    request = intake.extend_deadline(
        session, caller.tenant_id, request_id, body.months, body.reason, caller.actor
    )
    session.commit()
    return request_out(session, request)


@router.get(
    "/{request_id}/report",
    summary="Compliance report: timeline, verification, certificate (JSON or HTML)",
    responses={200: {"content": {"text/html": {}}}},
)
def report(
    request_id: str,
    request: Request,
    session: SessionDep,
    caller: ReadDep,
    format: Annotated[str | None, Query(pattern="^(json|html)$")] = None,
) -> object:
    data = reports.compliance_report(session, caller.tenant_id, request_id)
    wants_html = format == "html" or (
        format is None and "text/html" in request.headers.get("accept", "")
    )
    if wants_html:
        from app.api.templates import templates

        return HTMLResponse(templates.get_template("report.html").render(r=data))
    return data
