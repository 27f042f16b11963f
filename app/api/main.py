"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import errors
from app.api.middleware import BodySizeLimit
from app.api.routes import admin, erasure, health, jobs, models, webhooks
from app.settings import get_settings


def create_app() -> FastAPI:
    app = FastAPI(
        title="Lethe",
        version="0.1.0",
        summary="Unlearning as a service: erasure requests in, certified model versions out.",
    )
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=get_settings().max_body_bytes)
    for module in (health, models, erasure, jobs, admin, webhooks):
        app.include_router(module.router)
    return app
