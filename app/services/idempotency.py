"""``Idempotency-Key`` for POSTs that create something, stored per tenant for 24 h.

The key is claimed in its own committed transaction before the work starts, so a
concurrent duplicate sees it at once: same key and body while the first is running →
409; finished → the original response again; a different body → 422. A request that
fails releases its key so the client can retry with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from app.db.base import utcnow
from app.db.models import IdempotencyKey
from app.db.session import rowcount, session_scope
from app.services.errors import Conflict, InvalidInput

TTL = timedelta(hours=24)


@dataclass
class Outcome:
    status: int
    body: Any
    replayed: bool


def fingerprint(method: str, path: str, body: Any) -> str:
    text = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _claim(tenant_id: str, key: str, print_: str) -> Outcome | None:
    now = utcnow()
    with session_scope() as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id,
                IdempotencyKey.key == key,
                IdempotencyKey.expires_at < now,
            )
        )
    try:
        with session_scope() as session:
            session.add(
                IdempotencyKey(
                    tenant_id=tenant_id,
                    key=key,
                    fingerprint=print_,
                    created_at=now,
                    expires_at=now + TTL,
                )
            )
        return None
    except IntegrityError:
        pass
    with session_scope() as session:
        row = session.scalar(
            select(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
            )
        )
        if row is None:  # expired and removed in between: treat as new
            return _claim(tenant_id, key, print_)
        if row.fingerprint != print_:
            raise InvalidInput(
                "this Idempotency-Key was used with a different request body; "
                "use a new key for a different request"
            )
        if row.response_status is None:
            raise Conflict("the original request with this Idempotency-Key is still in flight")
        return Outcome(row.response_status, json.loads(row.response_body or "null"), True)


def run(
    tenant_id: str,
    key: str | None,
    print_: str,
    status: int,
    produce: Callable[[], Any],
    secret_fields: tuple[str, ...] = (),
) -> Outcome:
    """Run ``produce`` (returning a JSON-able body) at most once per key. Top-level
    ``secret_fields`` of the body are not stored (a replay shows them as null)."""
    if key is None:
        return Outcome(status, produce(), False)
    replay = _claim(tenant_id, key, print_)
    if replay is not None:
        return replay
    try:
        body = produce()
    except BaseException:
        with session_scope() as session:
            session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
                )
            )
        raise
    with session_scope() as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
            .values(
                response_status=status,
                response_body=json.dumps(
                    {k: (None if k in secret_fields else v) for k, v in body.items()}
                    if isinstance(body, dict)
                    else body,
                    default=str,
                ),
            )
        )
    return Outcome(status, body, False)


def purge_expired() -> int:
    with session_scope() as session:
        res = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < utcnow()))
        return rowcount(res)
