"""Shared fixtures: one tiny demo model per test run, and an isolated Lethe environment
(its own database — a fresh PostgreSQL database when LETHE_DATABASE_URL points at a
server, else a SQLite file — its own data directory and keys)."""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ADMIN_KEY = "test-admin-key-0123456789"
# the broker the run was started with (CI: the real Redis); service tests use the
# embedded one, integration tests this one
ORIGINAL_BROKER_URL = os.environ.get("LETHE_BROKER_URL")
SECRET_KEY = base64.b64encode(b"k" * 32).decode()


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo model, built once per test run (LETHE_TEST_DEMO_MODEL reuses one)."""
    reuse = os.environ.get("LETHE_TEST_DEMO_MODEL")
    if reuse and (Path(reuse) / "config.json").exists():
        return Path(reuse)
    from workers.engine.demo_model import build_demo_model

    out = tmp_path_factory.mktemp("demo-tiny")
    report = build_demo_model(out, size="tiny")
    assert report.train_accuracy >= 0.9, report
    return out


def _fresh_database(base_url: str) -> tuple[str, str | None]:
    """A new empty database on the server of ``base_url`` (PostgreSQL), or a SQLite file."""
    url = make_url(base_url)
    if url.get_backend_name() != "postgresql":
        return base_url, None
    name = f"lethe_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False
    ), name


def _drop_database(base_url: str, name: str) -> None:
    url = make_url(base_url).set(drivername="postgresql+psycopg")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def reset_caches() -> None:
    from app.db.session import get_engine, get_sessionmaker
    from app.services import dispatch
    from app.settings import get_settings

    get_settings.cache_clear()
    for cached in (get_sessionmaker, get_engine):
        cached.cache_clear()
    dispatch._transport = None


@pytest.fixture(scope="session")
def lethe_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment of an isolated Lethe installation, migrated to head. Sets os.environ
    for this process and returns the variables for worker subprocesses."""
    data_dir = tmp_path_factory.mktemp("lethe-data")
    base = os.environ.get("LETHE_DATABASE_URL") or f"sqlite:///{data_dir / 'lethe.sqlite3'}"
    url, created = _fresh_database(base)
    env = {
        "LETHE_DATABASE_URL": url,
        "LETHE_DATA_DIR": str(data_dir),
        "LETHE_ADMIN_KEY": ADMIN_KEY,
        "LETHE_SECRET_KEY": SECRET_KEY,
        "LETHE_BROKER_URL": "embedded",
        # short, so a killed worker's job is taken over within seconds, with room for a
        # loaded 2-core machine: a claim's first heartbeat comes a quarter lease after it
        # (at 4 s, with the engine then imported between claim and heartbeat, live claims
        # lapsed and stages ran again)
        "LETHE_JOB_LEASE_S": "10",
        "LETHE_MAINTENANCE_INTERVAL_S": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_caches()
    from app.cli import run_migrations

    run_migrations()
    yield env
    reset_caches()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if created:
        _drop_database(base, created)


class RecordingTransport:
    """Stands in for the broker where a test drives the state machine by hand: tasks are
    recorded, never run."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, task: str, job_id: str) -> None:
        self.sent.append((task, job_id))


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


def model_body(model_dir: Path, name: str, **extra: object) -> dict[str, object]:
    """The registration body of the demo model in ``model_dir`` (its own corpora)."""
    return {
        "name": name,
        "path": str(model_dir),
        "retain_path": str(model_dir / "data" / "train.jsonl"),
        "holdout_path": str(model_dir / "data" / "holdout.jsonl"),
        **extra,
    }


def register_model(client: object, model_dir: Path, prefix: str = "m",
                   headers: dict[str, str] | None = None, **extra: object) -> str:
    """Register the demo model under a fresh name ``<prefix>-<hex>``; returns the name."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    resp = client.post("/v1/models", headers=headers or auth(),  # type: ignore[attr-defined]
                       json=model_body(model_dir, name, **extra))
    assert resp.status_code == 201, resp.text
    return name


def wait_for_request(client: object, request_id: str, headers: dict[str, str] | None = None,
                     timeout: float = 300) -> dict[str, object]:
    """Poll an erasure request until it is completed, failed or cancelled (or time runs
    out); returns its last representation."""
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, object] = client.get(  # type: ignore[attr-defined]
            f"/v1/erasure-requests/{request_id}", headers=headers or auth()).json()
        if body["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def share_answered(client: object, model: str, rows: list[dict[str, str]],
                   max_new_tokens: int = 16) -> float:
    """Share of ``rows`` whose question the model's production version answers correctly
    through ``POST /v1/models/{model}/generate``."""
    from workers.engine.qa import answer_correct

    hits = 0
    for row in rows:
        resp = client.post(f"/v1/models/{model}/generate",  # type: ignore[attr-defined]
                           headers=auth(), json={"question": row["question"],
                                                 "max_new_tokens": max_new_tokens})
        assert resp.status_code == 200, resp.text
        hits += answer_correct(resp.json()["text"], row["answer"])
    return hits / len(rows)
