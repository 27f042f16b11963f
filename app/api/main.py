"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api import errors
from app.api.middleware import BodySizeLimit
from app.api.routes import admin, erasure, health, jobs, models, webhooks
from app.observability import RequestContext, metrics_text, register_pipeline_collector
from app.settings import get_settings


def create_app() -> FastAPI:
    app = FastAPI(
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

    for module in (health, models, erasure, jobs, admin, webhooks):
        app.include_router(module.router)
    return app
