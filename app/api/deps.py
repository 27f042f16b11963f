"""Typed dependencies shared by the routes: the database session and the caller."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db.session import get_sessionmaker
from app.settings import get_settings

_bearer = HTTPBearer(auto_error=False, description="an API key")


def get_session() -> Iterator[Session]:
    """One transaction per HTTP request: committed by the route's service call site,
    rolled back if the route raises."""
    session = get_sessionmaker()()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_caller(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The authenticated caller's name for the audit log."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing Bearer API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = get_settings().resolved_admin_key()
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return "admin"


SessionDep = Annotated[Session, Depends(get_session)]
CallerDep = Annotated[str, Depends(get_caller)]
