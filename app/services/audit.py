"""Audit trail: one event per state change, written in the same transaction as the change,
append-only and hash-chained per tenant so that any edited, deleted or reordered event is
detected (:func:`verify_chain`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
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


@dataclass(frozen=True)
class Event:
    """An event to append: what happened to which entity, who did it, and ids, statuses
    and counts (never personal data) in ``data``."""

    action: str
    entity_type: str
    entity_id: str
    actor: str = SYSTEM
    data: dict[str, Any] = field(default_factory=dict)


def record(
    session: Session,
    tenant_id: str,
    action: str,
    entity_type: str,
    entity_id: str,
    actor: str = SYSTEM,
    **data: Any,
) -> None:
    """Append an event to the tenant's chain; it commits (or not) with the change it
    describes. ``data`` must never hold personal data: ids, statuses and counts only."""
    record_many(session, tenant_id, [Event(action, entity_type, entity_id, actor, data)])


def record_many(session: Session, tenant_id: str, events: Sequence[Event]) -> None:
    """Append events to the tenant's chain in order, exactly as one :func:`record` each
    would, but advancing the tenant's sequence once: the row lock is taken once and held
    for a few statements however many events there are (group commit of intake)."""
    if not events:
        return
    session.flush()  # the tenant row may be new in this transaction
    # Advancing the tenant's sequence takes its row lock, so concurrent writers of one
    # tenant append one after another and the chain cannot fork. The events are inserted
    # under the lock too, so their ids (the order the verifier reads) follow ``seq``.
    # Statements on the tables rather than the mapped classes: the ORM's bookkeeping
    # would double their CPU, and inserting events without fetching their ids lets the
    # driver send one short statement for all of them rather than one that grows with
    # the batch (and is parsed anew each time). A Tenant loaded in this session is
    # expired instead.
    tenants = cast(Table, Tenant.__table__)
    last, head = session.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(audit_seq=tenants.c.audit_seq + len(events))
        .returning(tenants.c.audit_seq, tenants.c.audit_head)
    ).one()
    at = utcnow()
    rows: list[dict[str, Any]] = []
    for seq, event in enumerate(events, start=last - len(events) + 1):
        digest = event_hash(
            head,
            tenant_id,
            seq,
            at,
            event.actor,
            event.action,
            event.entity_type,
            event.entity_id,
            event.data,
        )
        rows.append(
            {
                "tenant_id": tenant_id,
                "seq": seq,
                "prev_hash": head,
                "hash": digest,
                "at": at,
                "actor": event.actor,
                "action": event.action,
                "entity_type": event.entity_type,
                "entity_id": event.entity_id,
                "data": event.data,
            }
        )
        head = digest
    session.execute(update(tenants).where(tenants.c.id == tenant_id).values(audit_head=head))
    session.execute(insert(cast(Table, AuditEvent.__table__)), rows)
    loaded = session.identity_map.get(session.identity_key(Tenant, tenant_id))
    if loaded is not None:
        session.expire(loaded, ["audit_seq", "audit_head"])
    from app.services import webhooks

    webhooks.on_events(session, tenant_id, rows)


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
