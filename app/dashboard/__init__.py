"""The job status dashboard: server-rendered pages under ``/dashboard`` (see
:mod:`app.dashboard.routes`), signed in with an API key, scoped to its tenant."""

from app.dashboard.routes import router

__all__ = ["router"]
