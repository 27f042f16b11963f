"""Structured logs with a correlation id, and Prometheus metrics.

The correlation id is the HTTP request's ``X-Request-ID`` (or a new one); it is stored on
the erasure request and its job, and every stage a worker runs for that job logs under
it, so one id follows an erasure from the API call through every Celery task.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)

HTTP_REQUESTS = Counter("lethe_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "lethe_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STAGE_SECONDS = Histogram(
    "lethe_job_stage_duration_seconds",
    "Job stage wall time",
    ["stage", "outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
WEBHOOK_FAILURES = Counter(
    "lethe_webhook_delivery_failures_total", "Webhook delivery attempts that did not succeed"
)


# -- logs ------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, correlation id, extras."""

    _skip = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            out["correlation_id"] = cid
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: int = logging.INFO, json_logs: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# -- HTTP middleware -------------------------------------------------------------------


class RequestContext:
    """Sets the correlation id (``X-Request-ID`` in, or a new one; echoed back) and counts
    every request by route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")[:64]
        cid = given if given.replace("-", "").isalnum() else uuid.uuid4().hex
        token = correlation_id.set(cid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", cid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            HTTP_REQUESTS.labels(scope["method"], template, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], template).observe(time.perf_counter() - started)
            correlation_id.reset(token)


# -- state gauges read from the database at scrape time --------------------------------


class PipelineCollector(Collector):
    """Requests by status, jobs by state, overdue requests, queue depth and failed webhook
    deliveries, read from the source of truth when Prometheus scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from app.db.base import utcnow
        from app.db.models import (
            ErasureRequest,
            OutboxMessage,
            UnlearningJob,
            WebhookDelivery,
        )
        from app.db.session import session_scope

        requests = GaugeMetricFamily(
            "lethe_erasure_requests", "Erasure requests by status", labels=["status"]
        )
        jobs = GaugeMetricFamily("lethe_jobs", "Unlearning jobs by state", labels=["state"])
        overdue = GaugeMetricFamily(
            "lethe_overdue_requests", "Requests past due_at and not finished"
        )
        due_soon = GaugeMetricFamily(
            "lethe_requests_due_within_7_days", "Open requests due within a week"
        )
        outbox = GaugeMetricFamily("lethe_outbox_unsent", "Tasks waiting for the broker")
        queue = GaugeMetricFamily(
            "lethe_queue_depth", "Tasks waiting in the broker queue", labels=["queue"]
        )
        failed = GaugeMetricFamily(
            "lethe_webhook_deliveries", "Webhook deliveries by status", labels=["status"]
        )
        try:
            with session_scope() as session:
                for status, n in session.execute(
                    select(ErasureRequest.status, func.count()).group_by(ErasureRequest.status)
                ):
                    requests.add_metric([status], n)
                for state, n in session.execute(
                    select(UnlearningJob.status, func.count()).group_by(UnlearningJob.status)
                ):
                    jobs.add_metric([state], n)
                now = utcnow()
                # a failed request is not fulfilled: its deadline still runs
                open_ = ErasureRequest.status.not_in(["completed", "cancelled"])
                overdue.add_metric(
                    [],
                    session.scalar(
                        select(func.count())
                        .select_from(ErasureRequest)
                        .where(open_, ErasureRequest.due_at < now)
                    )
                    or 0,
                )
                due_soon.add_metric(
                    [],
                    session.scalar(
                        select(func.count())
                        .select_from(ErasureRequest)
                        .where(
                            open_,
                            ErasureRequest.due_at >= now,
                            ErasureRequest.due_at < now + timedelta(days=7),
                        )
                    )
                    or 0,
                )
                outbox.add_metric(
                    [],
                    session.scalar(
                        select(func.count())
                        .select_from(OutboxMessage)
                        .where(OutboxMessage.sent_at.is_(None))
                    )
                    or 0,
                )
                for status, n in session.execute(
                    select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
                ):
                    failed.add_metric([status], n)
        except Exception:  # database down: scrape what the process knows
            return
        for name, depth in _broker_queue_depths().items():
            queue.add_metric([name], depth)
        yield from (requests, jobs, overdue, due_soon, outbox, queue, failed)


def _broker_queue_depths() -> dict[str, int]:
    from app.settings import get_settings

    settings = get_settings()
    if settings.embedded_broker:
        return {}
    try:
        import redis

        client = redis.Redis.from_url(
            settings.broker_url, socket_connect_timeout=1, socket_timeout=1
        )
        return {q: int(client.llen(q)) for q in ("gpu", "webhooks")}
    except Exception:
        return {}


_collector_registered = False


def register_pipeline_collector(registry: CollectorRegistry = REGISTRY) -> None:
    global _collector_registered
    if not _collector_registered:
        registry.register(PipelineCollector())
        _collector_registered = True


def metrics_text() -> bytes:
    return generate_latest(REGISTRY)
