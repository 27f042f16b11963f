"""`Idempotency-Key` for every POST that creates something."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.services import idempotency
from app.services.tenancy import Principal

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="retry-safe creation: the same key and body give the original response "
        "(24 h, per tenant); a different body with the same key is refused",
    ),
]


def respond(
    caller: Principal,
    key: str | None,
    path: str,
    body: BaseModel,
    status_code: int,
    produce: Callable[[], BaseModel],
    secret_fields: tuple[str, ...] = (),
) -> JSONResponse:
    """Run ``produce`` once per key and answer with its result (or the stored one).
    ``secret_fields`` are never stored: a replay shows them as null."""
    outcome = idempotency.run(
        caller.tenant_id,
        key,
        idempotency.fingerprint("POST", path, body.model_dump(mode="json")),
        status_code,
        lambda: produce().model_dump(mode="json"),
        secret_fields=secret_fields,
    )
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return JSONResponse(outcome.body, status_code=outcome.status, headers=headers)
