"""The Celery application: Redis transport, queue ``gpu``, one task at a time per process.

Celery only wakes workers; the database holds every state. Late acks plus
reject-on-worker-lost return a task to the queue if its worker dies, and the visibility
timeout is above the task time limit so a long job is not handed out twice while alive.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from app.settings import get_settings


def make_celery(broker_url: str | None) -> Celery:
    settings = get_settings()
    app = Celery("lethe", broker=broker_url)
    app.conf.update(
        task_default_queue="gpu",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.task_time_limit_s - 60,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        include=["workers.tasks"],
    )
    return app


_settings = get_settings()
celery_app = make_celery(None if _settings.embedded_broker else _settings.broker_url)

_maintenance_stop = None


@worker_ready.connect
def _start_maintenance(**_: object) -> None:
    global _maintenance_stop
    from app.services.recovery import start_maintenance_thread

    _maintenance_stop = start_maintenance_thread()
    port = get_settings().worker_metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port)


@worker_process_init.connect
def _own_connections(**_: object) -> None:
    # A forked child must not reuse the parent's pooled database connections: two
    # processes on one socket corrupt the protocol. Forget them (without closing them
    # under the parent) and let the child open its own.
    from app.db.session import get_engine

    get_engine().dispose(close=False)


@worker_shutting_down.connect
def _stop_maintenance(**_: object) -> None:
    if _maintenance_stop is not None:
        _maintenance_stop.set()
