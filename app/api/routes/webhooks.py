from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.api import idempotent
from app.api.deps import ModelsAdminDep, ReadDep, SessionDep
from app.api.idempotent import IdempotencyKeyHeader
from app.db.models import WebhookDelivery, WebhookEndpoint
from app.services import webhooks
from app.services.pagination import paginate

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000)
    event_types: list[str] | None = Field(
        default=None, description="event types to receive; all when omitted"
    )


class WebhookOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="the signing secret (whsec_…): shown only in this response")


class DeliveryOut(BaseModel):
    id: str
    message_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


def endpoint_out(e: WebhookEndpoint) -> WebhookOut:
    return WebhookOut(
        id=e.id,
        url=e.url,
        event_types=e.event_types,
        enabled=e.enabled,
        disabled_reason=e.disabled_reason,
        created_at=e.created_at,
    )


def delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        message_id=d.message_id,
        event_type=d.event_type,
        status=d.status,
        attempts=d.attempts,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        next_attempt_at=d.next_attempt_at,
        created_at=d.created_at,
        delivered_at=d.delivered_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    summary="Subscribe a URL to state-change events (Standard Webhooks signatures)",
)
def create_webhook(
    body: WebhookIn,
    session: SessionDep,
    caller: ModelsAdminDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    def produce() -> WebhookCreated:
        endpoint, secret = webhooks.create_endpoint(
            session, caller.tenant_id, body.url, body.event_types, caller.actor
        )
        session.commit()
        return WebhookCreated(**endpoint_out(endpoint).model_dump(), secret=secret)

    # the signing secret is never stored for a replay: a replay shows "secret": null
    return idempotent.respond(
        caller, idempotency_key, "/v1/webhooks", body, 201, produce, secret_fields=("secret",)
    )


@router.get("", response_model=list[WebhookOut])
def list_webhooks(session: SessionDep, caller: ReadDep) -> list[WebhookOut]:
    rows = session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == caller.tenant_id)
        .order_by(WebhookEndpoint.created_at)
    )
    return [endpoint_out(e) for e in rows]


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(endpoint_id: str, session: SessionDep, caller: ModelsAdminDep) -> None:
    webhooks.delete_endpoint(session, caller.tenant_id, endpoint_id, caller.actor)
    session.commit()


@router.get(
    "/{endpoint_id}/deliveries", response_model=DeliveryPage, summary="Delivery log, newest first"
)
def list_deliveries(
    endpoint_id: str,
    session: SessionDep,
    caller: ReadDep,
    status_: Annotated[str | None, Query(alias="status")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryPage:
    webhooks.get_endpoint(session, caller.tenant_id, endpoint_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status_:
        stmt = stmt.where(WebhookDelivery.status == status_)
    page = paginate(session, stmt, WebhookDelivery.created_at, WebhookDelivery.id, cursor, limit)
    return DeliveryPage(items=[delivery_out(d) for d in page.items], next_cursor=page.next_cursor)


@router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryOut,
    summary="Send a delivered or failed message again",
)
def replay_delivery(delivery_id: str, session: SessionDep, caller: ModelsAdminDep) -> DeliveryOut:
    copy = webhooks.replay(session, caller.tenant_id, delivery_id, caller.actor)
    session.commit()
    return delivery_out(copy)
