"""Integration fixtures: the real Redis broker and real `lethe worker` processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ORIGINAL_BROKER_URL, reset_caches

QUEUE_KEYS = ("gpu", "unacked", "unacked_index", "unacked_mutex", "_kombu.binding.gpu")


@pytest.fixture(scope="module")
def broker_env(lethe_env) -> Iterator[dict[str, str]]:
    """Switch this process to the Redis broker: LETHE_BROKER_URL as the test run was
    started with, else the local Redis."""
    import redis

    url = ORIGINAL_BROKER_URL
    if not url or not url.startswith(("redis://", "rediss://")):
        url = "redis://127.0.0.1:6379/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {url} is required in CI: {exc}")
        pytest.skip(f"no Redis at {url}: {exc}")
    client.delete(*QUEUE_KEYS)  # no stale tasks from earlier runs
    env = {**lethe_env, "LETHE_BROKER_URL": url}
    os.environ["LETHE_BROKER_URL"] = url
    reset_caches()
    yield env
    os.environ["LETHE_BROKER_URL"] = lethe_env["LETHE_BROKER_URL"]
    reset_caches()


# where util-linux's setpriv is at hand, a worker gets SIGKILL when the test process dies:
# a test run stopped by a timeout or ^C then leaves no worker behind to take the next
# run's tasks off the shared queue
_DIE_WITH_PARENT = (["setpriv", "--pdeathsig", "KILL", "--"]
                    if shutil.which("setpriv") else [])


class WorkerProcess:
    """A `lethe worker` in its own process group, so SIGKILL takes all of it at once."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*_DIE_WITH_PARENT, sys.executable, "-m", "app.cli", "worker"],
            env={**os.environ, **env},
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._fh.close()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@pytest.fixture()
def start_worker(broker_env, tmp_path) -> Iterator:
    workers: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        worker = WorkerProcess(broker_env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


# Upper bound on one erasure job end to end (unlearning, verification, one escalation,
# publishing): a few minutes on a quiet 2-core machine, about seven when the machine
# was shared with a benchmark; kept under pytest's 600 s per-test timeout.
JOB_WAIT_S = 540


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
