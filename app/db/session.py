"""Engine and session factory, one per process and database URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from app.settings import get_settings


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for ``url`` (default: the configured database). Keyed by
    process id too: a forked worker child must never use its parent's pooled sockets
    (two processes on one connection corrupt the protocol), so it builds its own."""
    return _engine(url or get_settings().resolved_database_url, os.getpid())


def _clear_engines() -> None:
    _engine.cache_clear()
    _sessionmaker.cache_clear()


get_engine.cache_clear = _clear_engines  # type: ignore[attr-defined]


@lru_cache
def _engine(url: str, pid: int) -> Engine:
    # No pre-ping: it costs a round trip per checkout. After a database restart the first
    # statement fails (the API answers 503), SQLAlchemy invalidates the whole pool, and
    # the next request reconnects.
    kwargs: dict[str, Any] = {"pool_pre_ping": False}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif get_settings().db_null_pool:
        # worker processes fork children: keep no idle connection that a child could
        # inherit (and reset or reuse under the parent); a connect costs milliseconds
        kwargs["poolclass"] = NullPool
    else:
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 20
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return _sessionmaker(url or get_settings().resolved_database_url, os.getpid())


get_sessionmaker.cache_clear = _clear_engines  # type: ignore[attr-defined]


@lru_cache
def _sessionmaker(url: str, pid: int) -> sessionmaker[Session]:
    return sessionmaker(_engine(url, pid), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched: its result is a cursor result, which the
    session's ``execute`` does not say in its type."""
    return cast(CursorResult[Any], result).rowcount or 0
