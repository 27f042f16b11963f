"""Audit trail: one event per state change, written in the same transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.db.models import AuditEvent

SYSTEM = "system"


def record(
    session: Session,
    action: str,
    entity_type: str,
    entity_id: str,
    actor: str = SYSTEM,
    **data: Any,
) -> AuditEvent:
    """Add an event to the session; it commits (or not) with the change it describes.
    ``data`` must never hold personal data: ids, statuses and counts only."""
    event = AuditEvent(
        actor=actor, action=action, entity_type=entity_type, entity_id=entity_id, data=data
    )
    session.add(event)
    return event
