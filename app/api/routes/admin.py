from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from sqlalchemy import select

from app.api import idempotent
from app.api.deps import AdminDep, AuditDep, SessionDep
from app.api.idempotent import IdempotencyKeyHeader
from app.api.schemas import (
    ApiKeyIn,
    ApiKeyOut,
    AuditEventOut,
    AuditEventPage,
    TenantIn,
    TenantOut,
)
from app.db.models import AuditEvent
from app.services import tenancy
from app.services.pagination import paginate

router = APIRouter(tags=["tenants, keys and audit"])


@router.post("/v1/tenants", status_code=status.HTTP_201_CREATED, response_model=TenantOut)
def create_tenant(
    body: TenantIn,
    session: SessionDep,
    caller: AdminDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    def produce() -> TenantOut:
        tenant = tenancy.create_tenant(session, body.name, caller.actor)
        session.commit()
        return TenantOut(id=tenant.id, name=tenant.name, created_at=tenant.created_at)

    return idempotent.respond(caller, idempotency_key, "/v1/tenants", body, 201, produce)


@router.post(
    "/v1/tenants/{tenant_id}/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyOut,
    summary="Create an API key; the secret is in this response only",
)
def create_api_key(
    tenant_id: str,
    body: ApiKeyIn,
    session: SessionDep,
    caller: AdminDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    def produce() -> ApiKeyOut:
        key, plaintext = tenancy.create_api_key(
            session, tenant_id, body.name, list(body.scopes), caller.actor
        )
        session.commit()
        return ApiKeyOut(
            id=key.id,
            tenant_id=key.tenant_id,
            name=key.name,
            scopes=key.scopes,
            created_at=key.created_at,
            key=plaintext,
        )

    # the secret is never stored for a replay: a replay shows "key": null
    return idempotent.respond(
        caller,
        idempotency_key,
        f"/v1/tenants/{tenant_id}/api-keys",
        body,
        201,
        produce,
        secret_fields=("key",),
    )


@router.get(
    "/v1/audit-events",
    response_model=AuditEventPage,
    summary="The tenant's hash-chained audit log, newest first",
)
def list_audit_events(
    session: SessionDep,
    caller: AuditDep,
    entity_id: str | None = None,
    action: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AuditEventPage:
    stmt = select(AuditEvent).where(AuditEvent.tenant_id == caller.tenant_id)
    if created_after:
        stmt = stmt.where(AuditEvent.at >= created_after)
    if created_before:
        stmt = stmt.where(AuditEvent.at < created_before)
    if entity_id:
        stmt = stmt.where(AuditEvent.entity_id == entity_id)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    page = paginate(session, stmt, AuditEvent.seq, AuditEvent.id, cursor, limit)
    return AuditEventPage(
        items=[
            AuditEventOut(
                seq=e.seq,
                at=e.at,
                actor=e.actor,
                action=e.action,
                entity_type=e.entity_type,
                entity_id=e.entity_id,
                data=e.data,
                prev_hash=e.prev_hash,
                hash=e.hash,
            )
            for e in page.items
        ],
        next_cursor=page.next_cursor,
    )
