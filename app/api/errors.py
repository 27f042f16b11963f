"""RFC 9457 problem+json for every error the API returns."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.services.errors import LetheError

PROBLEM = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(LetheError)
    async def _domain(_: Request, exc: LetheError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        detail = (
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
            or "invalid request"
        )
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {
            401: "Unauthorized",
            403: "Forbidden",
            404: "Not found",
            405: "Method not allowed",
            413: "Content too large",
            429: "Too many requests",
        }
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        resp = problem(exc.status_code, titles.get(exc.status_code, "Error"), detail)
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(DataError)
    async def _bad_data(_: Request, exc: DataError) -> JSONResponse:
        # values the database refuses to store, e.g. NUL characters in text
        return problem(
            422,
            "Invalid input",
            "the request contains a value that cannot be stored (for example a NUL "
            "character in text); nothing was changed",
        )

    # a connection the database dropped (restart, failover) surfaces as either: psycopg
    # raises InterfaceError for a socket it already knows is closed, OperationalError
    # for one it finds closed mid-statement
    @app.exception_handler(InterfaceError)
    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError | InterfaceError) -> JSONResponse:
        return problem(
            503,
            "Service unavailable",
            "the database is unavailable; nothing was changed, retry later",
            headers={"Retry-After": "5"},
        )
