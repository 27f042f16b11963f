"""The FastAPI application."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api import errors
from app.api.middleware import BodySizeLimit
from app.api.routes import admin, erasure, health, jobs, models, webhooks
from app.dashboard import router as dashboard_router
from app.observability import RequestContext, metrics_text, register_pipeline_collector
from app.settings import get_settings


def create_app(lifespan: Any = None) -> FastAPI:
    app = FastAPI(
        lifespan=lifespan,
        title="Lethe",
        version="0.1.0",
        summary="Unlearning as a service: erasure requests in, certified model versions out.",
    )
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=get_settings().max_body_bytes)
    app.add_middleware(RequestContext)
    register_pipeline_collector()

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)

    # routes are matched in order: intake, the hot path, first
    for module in (erasure, health, models, jobs, admin, webhooks):
        app.include_router(module.router)
    app.include_router(dashboard_router)
    return app


@asynccontextmanager
async def _maintained(_: FastAPI) -> AsyncIterator[None]:
    from app.services.recovery import start_maintenance_thread

    # Everything imported by now lives as long as the process: torch alone (pulled in by
    # the unlearning-method schemas) is a quarter of a million objects, which every full
    # garbage collection would walk again (~130 ms on two cores, stalling every request
    # in flight). Frozen, collections only look at what was allocated since.
    gc.collect()
    gc.freeze()
    stop = start_maintenance_thread()
    yield
    stop.set()


def create_served_app() -> FastAPI:
    """The app as `lethe serve` runs it (in each server process): with the maintenance
    loop that sends the outbox, requeues stalled stages and delivers webhooks."""
    import logging

    from app.observability import configure_logging

    configure_logging(logging.INFO, get_settings().json_logs)
    return create_app(lifespan=_maintained)
