"""Getting committed work to the workers: an outbox row is written in the transaction that
makes a stage due and sent after commit, so nothing is lost when the broker is down (the
maintenance loop sends what is left). Two transports, one code path: Celery over Redis,
or an in-process worker thread for the embedded default."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import OutboxMessage
from app.db.session import session_scope
from app.settings import get_settings

log = logging.getLogger("lethe.dispatch")

TASKS = ("unlearn", "verify", "publish")
QUEUE = "gpu"
WEBHOOK_QUEUE = "webhooks"


class Transport(Protocol):
    def send(self, task: str, job_id: str) -> None: ...


class CeleryTransport:
    """Publishes stage tasks to the workers' queue over the configured broker."""

    def __init__(self, broker_url: str) -> None:
        from workers.celery_app import make_celery

        self._app = make_celery(broker_url)

    def send(self, task: str, job_id: str) -> None:
        # short connection retries: a down broker must not stall the caller; the outbox
        # row stays unsent and the maintenance loop tries again
        self._app.send_task(
            f"lethe.{task}",
            args=[job_id],
            queue=WEBHOOK_QUEUE if task == "deliver_webhook" else QUEUE,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0.2},
        )


class EmbeddedTransport:
    """A single worker thread in this process runs stages one at a time, as one GPU
    worker process would."""

    def __init__(self, run: Callable[[str, str], None]) -> None:
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._run = run
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.busy = threading.Event()

    def send(self, task: str, job_id: str) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="lethe-embedded-worker", daemon=True
                )
                self._thread.start()
        self._queue.put((task, job_id))

    def _loop(self) -> None:
        while True:
            task, job_id = self._queue.get()
            self.busy.set()
            try:
                self._run(task, job_id)
            except Exception:  # the stage records its own failure; keep the worker alive
                log.exception("embedded task %s failed", task)
            finally:
                self.busy.clear()
                self._queue.task_done()

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0


_transport: Transport | None = None
_transport_lock = threading.Lock()
_embedded_worker_enabled = True


def disable_embedded_worker() -> None:
    """`lethe serve --no-worker` with the embedded broker: tasks stay in the outbox."""
    global _embedded_worker_enabled
    _embedded_worker_enabled = False


def get_transport() -> Transport:
    global _transport
    with _transport_lock:
        if _transport is None:
            if get_settings().embedded_broker:
                if not _embedded_worker_enabled:
                    raise RuntimeError("no worker runs in this process (--no-worker)")
                from workers.tasks import run_stage

                _transport = EmbeddedTransport(run_stage)
            else:
                _transport = CeleryTransport(get_settings().broker_url)
        return _transport


def enqueue(session: Session, task: str, job_id: str) -> None:
    """Schedule ``task`` for ``job_id``; it is sent once the session's transaction commits
    and :func:`flush_outbox` runs."""
    if task not in TASKS:
        raise ValueError(task)
    session.add(OutboxMessage(task=task, job_id=job_id))


def flush_outbox(limit: int = 100) -> int:
    """Send unsent outbox rows; returns how many went out. Broker errors leave rows for
    the next attempt. A row sent twice is harmless: stages are idempotent."""
    sent = 0
    try:
        with session_scope() as session:
            stmt = select(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = session.scalars(stmt.order_by(OutboxMessage.id).limit(limit)).all()
            transport = get_transport()
            for row in rows:
                try:
                    transport.send(row.task, row.job_id)
                except Exception as exc:  # broker down: keep the row, try again later
                    log.warning(
                        "broker unavailable, %d task(s) kept in outbox: %s", len(rows) - sent, exc
                    )
                    break
                session.execute(
                    update(OutboxMessage).where(OutboxMessage.id == row.id).values(sent_at=utcnow())
                )
                sent += 1
    except Exception as exc:  # database down: the rows are still there for later
        log.warning("outbox flush failed: %s", exc)
    return sent
