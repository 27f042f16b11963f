"""Typed dependencies shared by the routes: the database session and the caller."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.db.models import Scope
from app.db.session import get_sessionmaker, session_scope
from app.services import ratelimit
from app.services.tenancy import Principal, authenticate, authenticate_cached
from app.settings import get_settings

_bearer = HTTPBearer(auto_error=False, description="an API key")
log = logging.getLogger(__name__)


def get_session() -> Iterator[Session]:
    """One session per HTTP request; the route commits, anything else rolls back."""
    session = get_sessionmaker()()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        try:
            session.close()
        except DBAPIError as exc:
            # the connection died after the route had answered (the database restarted,
            # say): what the route committed is committed, the rest is gone with the
            # connection, which SQLAlchemy has invalidated. Raising here could only turn
            # an answer already on its way into a broken response.
            log.warning("closing a request's database session failed: %s", exc.orig or exc)


SessionDep = Annotated[Session, Depends(get_session)]


def _authenticate(presented: str) -> Principal | None:
    with session_scope() as session:
        return authenticate(session, presented)


async def get_principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    # async, as it runs on every request: the admin key and recently seen keys need no
    # worker thread (a hop costs more CPU than the rest), nor does the rate limit check
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing Bearer API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = authenticate_cached(credentials.credentials)
    if principal is None:
        principal = await run_in_threadpool(_authenticate, credentials.credentials)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )
    retry_after = await ratelimit.check_async(principal.actor)
    if retry_after is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit of {get_settings().rate_limit} per API key exceeded; retry later",
            headers={"Retry-After": str(retry_after)},
        )
    return principal


def require(scope: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.allows(scope.value):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this API key lacks the {scope.value!r} scope"
            )
        return principal

    return check


ReadDep = Annotated[Principal, Depends(require(Scope.requests_read))]
WriteDep = Annotated[Principal, Depends(require(Scope.requests_write))]
ModelsAdminDep = Annotated[Principal, Depends(require(Scope.models_admin))]
AuditDep = Annotated[Principal, Depends(require(Scope.audit_read))]
AdminDep = Annotated[Principal, Depends(require(Scope.admin))]
