"""Audit trail: one event per state change, written in the same transaction as the change,
append-only and hash-chained per tenant so that any edited, deleted or reordered event is
detected (:func:`verify_chain`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import AuditEvent, Tenant

SYSTEM = "system"


def event_hash(
    prev_hash: str,
    tenant_id: str,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    data: dict[str, Any],
) -> str:
    """SHA-256 (hex) over the previous hash and the event's canonical JSON."""
    body = {
        "tenant_id": tenant_id,
        "seq": seq,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "data": data,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + "\n" + text).encode()).hexdigest()


def record(
    session: Session,
    tenant_id: str,
    action: str,
    entity_type: str,
    entity_id: str,
    actor: str = SYSTEM,
    **data: Any,
) -> AuditEvent:
    """Append an event to the tenant's chain; it commits (or not) with the change it
    describes. ``data`` must never hold personal data: ids, statuses and counts only."""
    # Advancing the tenant's sequence takes its row lock, so concurrent writers of one
    # tenant append one after another and the chain cannot fork.
    seq, head = session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(audit_seq=Tenant.audit_seq + 1)
        .returning(Tenant.audit_seq, Tenant.audit_head)
    ).one()
    at = utcnow()
    digest = event_hash(head, tenant_id, seq, at, actor, action, entity_type, entity_id, data)
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(audit_head=digest))
    event = AuditEvent(
        tenant_id=tenant_id,
        seq=seq,
        prev_hash=head,
        hash=digest,
        at=at,
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        data=data,
    )
    session.add(event)
    from app.services import webhooks

    webhooks.on_event(session, tenant_id, seq, action, entity_type, entity_id, at.isoformat(), data)
    return event


@dataclass
class ChainProblem:
    seq: int | None
    event_id: int | None
    problem: str


def verify_chain(session: Session, tenant_id: str) -> list[ChainProblem]:
    """Recompute the tenant's chain; returns every problem found (empty = intact).

    An edited event fails its own hash; a deleted one leaves a gap in ``seq`` and a broken
    link; reordering breaks the links; deleting the newest events no longer reaches the
    head kept on the tenant row.
    """
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return [ChainProblem(None, None, f"no tenant {tenant_id}")]
    problems: list[ChainProblem] = []
    expected_seq, head = 1, ""
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.id)
    )
    for event in events:
        if event.seq != expected_seq:
            problems.append(
                ChainProblem(
                    event.seq,
                    event.id,
                    f"event {event.id} has sequence {event.seq} where {expected_seq} was due: "
                    "events were deleted or reordered",
                )
            )
        if event.prev_hash != head:
            problems.append(
                ChainProblem(
                    event.seq,
                    event.id,
                    f"event {event.id} (seq {event.seq}) does not link to the event before it",
                )
            )
        recomputed = event_hash(
            event.prev_hash,
            tenant_id,
            event.seq,
            event.at,
            event.actor,
            event.action,
            event.entity_type,
            event.entity_id,
            event.data,
        )
        if recomputed != event.hash:
            problems.append(
                ChainProblem(
                    event.seq,
                    event.id,
                    f"event {event.id} (seq {event.seq}, {event.action}) was edited: "
                    "its content no longer matches its hash",
                )
            )
        head = event.hash
        expected_seq = event.seq + 1
    if tenant.audit_seq != expected_seq - 1 or tenant.audit_head != head:
        problems.append(
            ChainProblem(
                tenant.audit_seq,
                None,
                f"the chain ends at sequence {expected_seq - 1} but the tenant's head is at "
                f"{tenant.audit_seq}: the newest events were deleted or replaced",
            )
        )
    return problems
