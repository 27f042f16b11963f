"""Faults on the real services: the broker down while requests arrive, PostgreSQL
restarting during a job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import OutboxMessage, UnlearningJob
from app.db.session import session_scope
from app.services import dispatch
from tests.conftest import auth, model_body, reset_caches
from tests.integration.conftest import JOB_WAIT_S, QUEUE_KEYS, wait_until
from tests.integration.test_pipeline import file_request, finished, register, subjects

pytestmark = pytest.mark.integration


def test_requests_are_kept_while_the_broker_is_down_and_sent_when_it_returns(
    broker_env, demo_model_dir
):
    from app.api.main import create_app

    real = broker_env["LETHE_BROKER_URL"]
    os.environ["LETHE_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    reset_caches()
    try:
        with TestClient(create_app()) as client:
            assert client.get("/readyz").status_code == 503
            name = f"down-{uuid.uuid4().hex[:6]}"
            model_dir = demo_model_dir
            assert (
                client.post(
                    "/v1/models",
                    headers=auth(),
                    json=model_body(model_dir, name),
                ).status_code
                == 201
            )
            resp = client.post(
                "/v1/erasure-requests",
                headers=auth(),
                json={
                    "model": name,
                    "subject_id": "x",
                    "forget": [{"question": "q?", "answer": "a"}],
                },
            )
            assert resp.status_code == 202  # accepted and stored although Redis is down
            request_id = resp.json()["id"]
            job_id = client.get(f"/v1/erasure-requests/{request_id}", headers=auth()).json()[
                "job_id"
            ]
        with session_scope() as session:
            unsent = session.scalars(
                select(OutboxMessage).where(OutboxMessage.job_id == job_id)
            ).all()
            assert [m.sent_at for m in unsent] == [None]
    finally:
        os.environ["LETHE_BROKER_URL"] = real
        reset_caches()
    # Redis is back: the next maintenance round sends what waited
    redis.Redis.from_url(real).delete(*QUEUE_KEYS)
    assert dispatch.flush_outbox() >= 1
    queued = redis.Redis.from_url(real).lrange("gpu", 0, -1)
    bodies = [json.loads(m)["headers"]["argsrepr"] for m in queued]
    assert any(job_id in b for b in bodies)
    redis.Redis.from_url(real).delete(*QUEUE_KEYS)
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        job.status = "cancelled"  # nobody runs it in this test


def _postgres(action: str) -> None:
    """``pg_ctlcluster`` stop/start/restart of the session's PostgreSQL."""
    version = os.listdir("/etc/postgresql")[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_postgres_restart_during_a_job(broker_env, demo_model_dir, start_worker, lethe_env):
    if not lethe_env["LETHE_DATABASE_URL"].startswith("postgresql"):
        pytest.skip("needs PostgreSQL")
    if shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must be able to restart PostgreSQL (pg_ctlcluster as root)")
        pytest.skip("cannot restart PostgreSQL here")
    from app.api.main import create_app

    start_worker()
    with TestClient(create_app()) as client:
        model = register(client, demo_model_dir)
        people = subjects(demo_model_dir)
        name = list(people)[5]
        request_id = file_request(client, model, name, people[name])
        job_id = wait_until(
            lambda: client.get(f"/v1/erasure-requests/{request_id}", headers=auth()).json()[
                "job_id"
            ],
            30,
            "a job",
        )

        def training() -> bool:
            with session_scope() as session:
                job = session.get(UnlearningJob, job_id)
                return job.status == "unlearning" and job.step >= 1

        wait_until(training, 180, "unlearning to make progress", interval=0.1)

        codes: list[int] = []
        errors: list[str] = []  # anything the client raised instead of answering
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                try:
                    codes.append(client.get(f"/v1/jobs/{job_id}", headers=auth()).status_code)
                except Exception as exc:  # reported by the assertion below
                    codes.append(-1)
                    errors.append(repr(exc))
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        # down until the API has said so: a plain restart can fall between two polls
        _postgres("stop")
        try:
            wait_until(lambda: 503 in codes, 30, "a 503 while the database is down",
                       interval=0.05)
        finally:
            _postgres("start")
        # the API recovers by itself
        wait_until(
            lambda: client.get(f"/v1/jobs/{job_id}", headers=auth()).status_code == 200,
            30,
            "the API to answer again",
        )
        done.set()
        poller.join(timeout=10)
        assert set(codes) <= {200, 503}, (sorted(set(codes)), errors[:3])  # never a 500

        result = wait_until(lambda: finished(client, request_id), JOB_WAIT_S, "the job to finish")
        versions = client.get(f"/v1/models/{model}/versions", headers=auth()).json()["items"]
        if result["status"] == "completed":
            assert sorted(v["number"] for v in versions) == [1, 2]
        else:  # failing is acceptable if clean: a reason, and nothing published
            assert result["status"] == "failed" and result["error"]
            assert [v["number"] for v in versions] == [1]
