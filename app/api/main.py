"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import errors
from app.api.routes import erasure, health, jobs, models


def create_app() -> FastAPI:
    app = FastAPI(
        title="Lethe",
        version="0.1.0",
        summary="Unlearning as a service: erasure requests in, certified model versions out.",
    )
    errors.install(app)
    for module in (health, models, erasure, jobs):
        app.include_router(module.router)
    return app
