"""Live job progress for the dashboard: one server-sent-event stream per open job page.

The stream polls the job row server-side (about once a second, a primary-key read) and
pushes an event only when something the page shows changed, so a browser never polls.
The job row holds only the latest loss, so each (attempt, step, loss) seen is also kept
in a short per-job history in this process: a page opened mid-run draws the curve
observed so far, and every event carries its new point.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from app.dashboard import queries
from app.dashboard.render import templates
from app.db.models import UnlearningJob
from app.db.session import get_sessionmaker

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
REAUTH_SECONDS = 15.0
# a stream ends after this long and the browser's EventSource reconnects: no connection
# (or revoked session) lives forever
MAX_STREAM_SECONDS = 30 * 60
RECONNECT_MS = 3000
HISTORY_POINTS = 2000
HISTORY_JOBS = 256


class LossHistory:
    """Bounded, thread-safe (attempt, step, loss) points per job, newest jobs kept."""

    def __init__(self, max_jobs: int = HISTORY_JOBS, max_points: int = HISTORY_POINTS) -> None:
        self._jobs: OrderedDict[str, deque[tuple[int, int, float]]] = OrderedDict()
        self._lock = threading.Lock()
        self._max_jobs = max_jobs
        self._max_points = max_points

    def add(self, job_id: str, attempt: int, step: int, loss: float) -> tuple[int, int, float]:
        """Record a point unless it is the job's latest one already; returns the point."""
        point = (attempt, step, loss)
        with self._lock:
            points = self._jobs.get(job_id)
            if points is None:
                points = self._jobs[job_id] = deque(maxlen=self._max_points)
                while len(self._jobs) > self._max_jobs:
                    self._jobs.popitem(last=False)
            self._jobs.move_to_end(job_id)
            if not points or points[-1][:2] != point[:2]:
                points.append(point)
        return point

    def get(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            points = list(self._jobs.get(job_id, ()))
        return [{"attempt": a, "step": s, "loss": v} for a, s, v in points]

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()


history = LossHistory()


def observe(job: UnlearningJob) -> dict[str, Any] | None:
    """Record the row's current loss as a history point; the point, or None."""
    if job.loss is None or job.step <= 0 or job.status != "unlearning":
        return None
    attempt, step, loss = history.add(job.id, job.attempts, job.step, float(job.loss))
    return {"attempt": attempt, "step": step, "loss": loss}


def page_history(job_id: str, snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """The loss points a job page starts with: those this process observed, else any
    per-attempt loss history the job's metrics carry (a finished job, a fresh process)."""
    seen = history.get(job_id)
    if seen:
        return seen
    return [
        {"attempt": attempt["number"], "step": step, "loss": loss}
        for attempt in snapshot.get("attempt_list", [])
        for step, loss in enumerate(attempt.get("loss_history") or [], start=1)
        if loss is not None
    ]


def read_snapshot(tenant_id: str, job_id: str) -> dict[str, Any] | None:
    """The job's snapshot (None once it is gone or not the tenant's), recording its loss."""
    with get_sessionmaker()() as session:
        job = session.get(UnlearningJob, job_id)
        if job is None or job.tenant_id != tenant_id:
            return None
        snapshot = queries.job_snapshot(job)
        snapshot["point"] = queries.finite(observe(job))
        snapshot["html"] = render_parts(snapshot)
        return snapshot


def render_parts(snapshot: dict[str, Any]) -> dict[str, str]:
    """The job page's verification and attempts sections as HTML, rendered by the same
    (autoescaping) macros as the page, so the browser swaps them in instead of
    duplicating the markup in JavaScript."""
    parts = templates.get_template("_job_parts.html").module
    return {
        "verification": str(parts.verification_section(snapshot["verification"])),  # type: ignore[attr-defined]
        "attempts": str(parts.attempts_section(snapshot["attempt_list"])),  # type: ignore[attr-defined]
    }


def _event(name: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head + f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_events(
    tenant_id: str,
    job_id: str,
    still_allowed: Callable[[], bool],
    is_disconnected: Callable[[], Any],
) -> AsyncIterator[str]:
    """The SSE text of one job page's stream: a ``progress`` event whenever the shown
    state changes, comments to keep proxies from closing it, ``done`` at a final state
    (the page then closes the stream), ``gone`` if the job disappears or the session
    ends."""
    yield f"retry: {RECONNECT_MS}\n\n"
    began = last_sent = last_auth = time.monotonic()
    seen: str | None = None
    sent = 0
    while True:
        if await is_disconnected():
            return
        now = time.monotonic()
        if now - last_auth >= REAUTH_SECONDS:
            last_auth = now
            if not await anyio.to_thread.run_sync(still_allowed):
                yield _event("gone", {"reason": "signed out"})
                return
        snapshot = await anyio.to_thread.run_sync(read_snapshot, tenant_id, job_id)
        if snapshot is None:
            yield _event("gone", {"reason": "no such job"})
            return
        shown = json.dumps({k: v for k, v in snapshot.items() if k != "point"}, sort_keys=True)
        if shown != seen:
            seen = shown
            sent += 1
            last_sent = now
            yield _event("progress", snapshot, sent)
        elif now - last_sent >= KEEPALIVE_SECONDS:
            last_sent = now
            yield ": keepalive\n\n"
        if snapshot["terminal"]:
            yield _event("done", {"status": snapshot["status"]})
            return
        if now - began >= MAX_STREAM_SECONDS:
            return
        await anyio.sleep(POLL_SECONDS)
