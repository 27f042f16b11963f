"""Jinja2 environment, filters and the HTML response of the dashboard's pages."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.dashboard.auth import SESSION_SECONDS
from app.db.base import utcnow

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"

# Everything the pages load comes from this origin; no inline script or style runs (the
# JSON the charts draw from sits in non-executable <script type="application/json">).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # signed-in pages must not come back from the cache after sign-out
    "Cache-Control": "no-store",
}


def when(value: datetime | str | None) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM UTC``."""
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def span(seconds: float | None) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3 h 5 min``, ``4 days``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 2 * 86400:
        hours, rest = divmod(seconds, 3600)
        return f"{hours:.0f} h {rest // 60:.0f} min"
    return f"{seconds // 86400:.0f} days"


def relative(value: datetime | None, now: datetime | None = None) -> str:
    """``in 3 days`` / ``2 h 5 min ago``."""
    if value is None:
        return "—"
    delta = (value - (now or utcnow())).total_seconds()
    return f"in {span(delta)}" if delta >= 0 else f"{span(delta)} ago"


def number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def short(value: str | None, n: int = 8) -> str:
    return (value or "")[:n]


def query(params: dict[str, Any], **extra: Any) -> str:
    """``?a=1&b=2`` from the non-empty values of ``params`` updated by ``extra``."""
    merged = {k: v for k, v in {**params, **extra}.items() if v not in (None, "")}
    return "?" + urlencode(merged) if merged else ""


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters.update(when=when, span=span, relative=relative, number=number, short=short)
templates.globals.update(query=query, session_hours=SESSION_SECONDS // 3600)


def static_version() -> str:
    """Changes whenever a static file does, so browsers fetch the new one."""
    stamps = [p.stat().st_mtime_ns for p in STATIC_DIR.glob("*") if p.is_file()]
    return format(max(stamps, default=0) % 10**10, "x")


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A dashboard page rendered with ``context``, with the security headers."""
    html = templates.get_template(template).render(
        request=request, path=request.url.path, static_v=static_version(), **context
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
