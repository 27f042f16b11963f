"""Intake: validate an erasure request, encrypt its forget payload, store it, and let the
scheduler batch it into a job — all in one transaction."""

from __future__ import annotations

import calendar
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.db.base import new_id, utcnow
from app.db.models import ErasureRequest, RequestStatus
from app.services import audit, privacy, registry, scheduling
from app.services.errors import InvalidInput, NotFound


def add_months(moment: datetime, months: int) -> datetime:
    """Same day ``months`` later, clamped to the month's last day (31 Jan + 1 → 28/29 Feb),
    as GDPR Art. 12(3)'s "one month" is read."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def submit_erasure_request(
    session: Session,
    tenant_id: str,
    *,
    model_name: str,
    subject_id: str,
    forget: list[dict[str, Any]],
    actor: str,
) -> ErasureRequest:
    if not forget:
        raise InvalidInput("forget must list at least one item")
    model = registry.get_model(session, tenant_id, model_name)
    received = utcnow()
    request = ErasureRequest(
        id=new_id(),
        tenant_id=tenant_id,
        model_id=model.id,
        subject_hash=privacy.subject_hash(subject_id),
        item_count=len(forget),
        forget_digests=[privacy.item_digest(item) for item in forget],
        status=RequestStatus.received,
        received_at=received,
        due_at=add_months(received, 1),
    )
    request.forget_ciphertext = privacy.encrypt_items(forget, request.id)
    session.add(request)
    session.flush()
    audit.record(
        session,
        tenant_id,
        "request.received",
        "erasure_request",
        request.id,
        actor,
        model_id=model.id,
        items=len(forget),
    )
    scheduling.schedule(session, model.id)
    return request


def get_request(session: Session, tenant_id: str, request_id: str) -> ErasureRequest:
    request = session.get(ErasureRequest, request_id)
    # another tenant's request answers exactly like a missing one
    if request is None or request.tenant_id != tenant_id:
        raise NotFound(f"no erasure request {request_id}")
    return request
