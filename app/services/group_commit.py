"""Group commit of intake: the erasure requests that arrive together are stored in one
transaction.

Every request is stored with its audit event in one transaction, and appending to a
tenant's audit chain holds the tenant's row lock until the commit is durable (an fsync).
One transaction per request would cap each tenant at one request per fsync, however many
processes serve it. Here one thread per process stores whatever requests are waiting in
one transaction, so a burst pays for one lock and one fsync. Nothing is weakened: a caller
is answered only after the transaction holding its request and audit event committed,
and a batch that fails before its commit is retried one request at a time, so only the
request at fault fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from app.db.models import ErasureRequest
from app.db.session import get_sessionmaker
from app.services import intake
from app.services.intake import Submission

log = logging.getLogger("lethe.intake")

# Requests per transaction at most: bounds how long one transaction holds the chain lock.
MAX_BATCH = 64

Outcome = ErasureRequest | Exception
_Settled = list[tuple[asyncio.Future[ErasureRequest], Outcome]]


@dataclass
class _Waiting:
    submission: Submission
    # an awaiting coroutine's loop and future, or (loop None) a blocked thread's future
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[ErasureRequest] | concurrent.futures.Future[ErasureRequest]


class GroupCommitter:
    """Callers hand their request to :meth:`submit` and wait; one thread commits whatever
    is waiting with :func:`commit_batch` and hands each caller its outcome."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def submit(self, submission: Submission) -> ErasureRequest:
        """Store the request; returns once it is committed (or raises its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ErasureRequest] = loop.create_future()
        self._put(_Waiting(submission, loop, future))
        return await future

    def submit_blocking(self, submission: Submission) -> ErasureRequest:
        """:meth:`submit` for a thread that is not an event loop's."""
        future: concurrent.futures.Future[ErasureRequest] = concurrent.futures.Future()
        self._put(_Waiting(submission, None, future))
        return future.result()

    def _put(self, waiting: _Waiting) -> None:
        with self._lock:
            # started on first use, and again in a forked child (threads do not survive)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="lethe-intake-commit", daemon=True
                )
                self._thread.start()
        self._queue.put(waiting)

    def _loop(self) -> None:
        while True:
            # no waiting for stragglers: whatever queued while the last commit ran is the
            # next batch, so a lone request is stored at once
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                outcomes = commit_batch([w.submission for w in batch])
            except Exception as exc:  # never strand a caller, whatever went wrong
                log.exception("intake batch failed")
                outcomes = [exc] * len(batch)
            _settle(batch, outcomes)


def commit_batch(submissions: Sequence[Submission]) -> list[Outcome]:
    """Store the requests in one transaction; each one's stored row or error, in order.
    A request that cannot be filed (unknown model) gets its error and the others are
    stored; if the transaction itself breaks (a value the database refuses, say), nothing
    of it was stored and each request is tried alone, so that only the one at fault fails."""
    session = get_sessionmaker()()
    try:
        try:
            outcomes: list[Outcome] = list(intake.submit_erasure_requests(session, submissions))
            session.flush()
        except Exception as exc:
            session.rollback()
            if len(submissions) == 1:
                return [exc]
            return [commit_batch([s])[0] for s in submissions]
        try:
            session.commit()
        except Exception as exc:
            # not retried: a commit that failed on the way back may have been stored
            return [exc] * len(submissions)
        return outcomes
    finally:
        session.close()


def _settle(batch: Sequence[_Waiting], outcomes: Sequence[Outcome]) -> None:
    """Hand each caller its outcome: threads directly, each event loop in one wake-up."""
    by_loop: dict[asyncio.AbstractEventLoop, _Settled] = {}
    for waiting, outcome in zip(batch, outcomes, strict=True):
        if waiting.loop is None:
            assert isinstance(waiting.future, concurrent.futures.Future)
            _resolve(waiting.future, outcome)
        else:
            assert isinstance(waiting.future, asyncio.Future)
            by_loop.setdefault(waiting.loop, []).append((waiting.future, outcome))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_resolve_all, items)


def _resolve_all(items: _Settled) -> None:
    for future, outcome in items:
        _resolve(future, outcome)


def _resolve(
    future: asyncio.Future[ErasureRequest] | concurrent.futures.Future[ErasureRequest],
    outcome: Outcome,
) -> None:
    if future.done():  # the caller went away (cancelled); its request is stored all the same
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


committer = GroupCommitter()
