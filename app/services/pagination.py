"""Cursor (keyset) pagination: stable under concurrent inserts, no OFFSET scans.

A cursor is the opaque, URL-safe encoding of the last row's sort key; the next page is
every row strictly after it in (sort column, id) order, newest first by default.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.services.errors import InvalidInput

T = TypeVar("T")
MAX_LIMIT = 200


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def _encode(value: Any, row_id: Any) -> str:
    if isinstance(value, datetime):
        value = {"t": value.isoformat()}
    raw = json.dumps([value, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[Any, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, row_id = json.loads(raw)
        if isinstance(value, dict) and set(value) == {"t"}:
            value = datetime.fromisoformat(value["t"])
        return value, row_id
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor is not one this API returned") from exc


def paginate(
    session: Session,
    stmt: Select[T],
    sort: InstrumentedAttribute[Any],
    id_column: InstrumentedAttribute[Any],
    cursor: str | None,
    limit: int,
    descending: bool = True,
) -> Page[T]:
    """One page of ``stmt``'s rows ordered by (``sort``, ``id_column``)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    if cursor:
        value, row_id = _decode(cursor)
        if descending:
            stmt = stmt.where(or_(sort < value, and_(sort == value, id_column < row_id)))
        else:
            stmt = stmt.where(or_(sort > value, and_(sort == value, id_column > row_id)))
    order = (sort.desc(), id_column.desc()) if descending else (sort.asc(), id_column.asc())
    rows = list(session.scalars(stmt.order_by(*order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = _encode(getattr(last, sort.key), getattr(last, id_column.key))
    return Page(rows, next_cursor)
