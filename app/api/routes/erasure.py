from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, status

from app.api.deps import ReadDep, SessionDep, WriteDep
from app.api.schemas import ErasureRequestCreate, ErasureRequestOut
from app.db.models import ErasureRequest, Model
from app.services import dispatch, intake

router = APIRouter(prefix="/v1/erasure-requests", tags=["erasure requests"])


def request_out(session: SessionDep, request: ErasureRequest) -> ErasureRequestOut:
    model = session.get(Model, request.model_id)
    return ErasureRequestOut(
        id=request.id,
        model=model.name if model else "",
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
def create_request(
    body: ErasureRequestCreate, session: SessionDep, caller: WriteDep, tasks: BackgroundTasks
) -> ErasureRequestOut:
    request = intake.submit_erasure_request(
        session,
        caller.tenant_id,
        model_name=body.model,
        subject_id=body.subject_id,
        forget=[item.model_dump() for item in body.forget],
        actor=caller.actor,
    )
    session.commit()
    # sent after the response; if the broker is down the outbox keeps it for later
    tasks.add_task(dispatch.flush_outbox)
    return request_out(session, request)


@router.get("/{request_id}", response_model=ErasureRequestOut)
def get_request(request_id: str, session: SessionDep, caller: ReadDep) -> ErasureRequestOut:
    return request_out(session, intake.get_request(session, caller.tenant_id, request_id))
