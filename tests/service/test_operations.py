"""Operator actions: inspect, cancel, requeue, stuck jobs (API and CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.base import utcnow
from app.db.models import ErasureRequest, OutboxMessage, UnlearningJob
from app.db.session import session_scope
from app.services import dispatch, operations
from tests.conftest import RecordingTransport, auth, register_model


@pytest.fixture(scope="module")
def client(lethe_env):
    from app.api.main import create_app

    saved = dispatch._transport
    dispatch._transport = RecordingTransport()
    with TestClient(create_app()) as c:
        yield c
    dispatch._transport = saved


def new_job(client, demo_model_dir):
    name = register_model(client, demo_model_dir, "ops")
    req = client.post(
        "/v1/erasure-requests",
        headers=auth(),
        json={"model": name, "subject_id": "s", "forget": [{"question": "q?", "answer": "a"}]},
    ).json()
    return req["job_id"] or client.get(f"/v1/erasure-requests/{req['id']}", headers=auth()).json()[
        "job_id"
    ], req["id"]


def test_cancelling_a_queued_job_cancels_its_requests(client, demo_model_dir):
    job_id, req_id = new_job(client, demo_model_dir)
    resp = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth())
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    req = client.get(f"/v1/erasure-requests/{req_id}", headers=auth()).json()
    assert req["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth())
    assert again.status_code == 409


def test_cancelling_a_running_job_sets_the_flag_its_loop_checks(client, demo_model_dir):
    job_id, _ = new_job(client, demo_model_dir)
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        job.status, job.claim_token = "unlearning", "worker-1"
    resp = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth())
    assert resp.status_code == 200 and resp.json()["status"] == "unlearning"
    with session_scope() as session:
        assert session.get(UnlearningJob, job_id).cancel_requested


def test_stuck_jobs_are_listed_and_requeued(client, demo_model_dir, lethe_env):
    job_id, _ = new_job(client, demo_model_dir)
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        job.status, job.claim_token = "unlearning", "dead-worker"
        job.heartbeat_at = utcnow() - timedelta(hours=1)
    with session_scope() as session:
        assert job_id in [j.id for j in operations.stuck_jobs(session)]
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "stuck"], capture_output=True, text=True
    )
    assert out.returncode == 0 and job_id in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "requeue", job_id], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    described = json.loads(out.stdout)
    assert described["claimed"] is False and described["status"] == "unlearning"
    with session_scope() as session:
        tasks = session.scalars(
            select(OutboxMessage.task).where(OutboxMessage.job_id == job_id)
        ).all()
        assert tasks.count("unlearn") == 2  # the original and the requeue
        assert job_id not in [j.id for j in operations.stuck_jobs(session)]


def test_failed_job_can_be_requeued_while_its_data_is_held(client, demo_model_dir):
    job_id, req_id = new_job(client, demo_model_dir)
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        job.status, job.error = "failed", "verification failed"
        session.get(ErasureRequest, req_id).status = "failed"
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "requeue", job_id], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    with session_scope() as session:
        assert session.get(UnlearningJob, job_id).status == "queued"
        assert session.get(ErasureRequest, req_id).status == "queued"
    missing = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "inspect", "nope"], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "no job" in missing.stderr
