from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.db.session import get_engine
from app.settings import get_settings

router = APIRouter(tags=["health"])


@router.get("/livez", summary="The process is up")
def livez() -> dict[str, str]:
    return {"status": "ok"}


def _check_broker() -> str | None:
    settings = get_settings()
    if settings.embedded_broker:
        return None
    import redis

    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2).ping()
    except Exception as exc:
        return f"broker: {type(exc).__name__}"
    return None


@router.get("/readyz", summary="Database and broker are reachable")
def readyz() -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    broker_error = _check_broker()
    checks["broker"] = "ok" if broker_error is None else f"unavailable: {broker_error}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
