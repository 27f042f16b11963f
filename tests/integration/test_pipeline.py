"""The pipeline on the real services: PostgreSQL (CI), Redis and `lethe worker` processes."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import AuditEvent, UnlearningJob
from app.db.session import session_scope
from tests.conftest import auth, register_model, share_answered
from tests.integration.conftest import JOB_WAIT_S, wait_until
from workers.engine.qa import load_jsonl

pytestmark = pytest.mark.integration


@pytest.fixture()
def client(broker_env):
    from app.api.main import create_app

    with TestClient(create_app()) as c:
        yield c


# The 20-person test model has five facts per person, so one fact is already 0.2 of a
# person's extraction share (the default margin, 0.1, is finer than one fact). Its policy
# says so (the product's per-model knob); the verifier's rules and defaults are tested in
# tests/engine/test_verifier.py, and this test checks the published model's behaviour
# itself below.
TINY_MODEL_POLICY = {"forget_extraction_margin": 0.25}


def register(client, demo_model_dir):
    return register_model(client, demo_model_dir, "it",
                          prompt_template="Question: {question}\nAnswer: {answer}",
                          verification_policy=TINY_MODEL_POLICY)


def subjects(demo_model_dir):
    out: dict[str, list[dict]] = {}
    for row in load_jsonl(demo_model_dir / "data" / "train.jsonl"):
        out.setdefault(row["subject"], []).append(row)
    return out


def file_request(client, model, subject, facts):
    resp = client.post(
        "/v1/erasure-requests",
        headers=auth(),
        json={
            "model": model,
            "subject_id": subject,
            "forget": [{"question": r["question"], "answer": r["answer"]} for r in facts],
        },
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def finished(client, request_id):
    body = client.get(f"/v1/erasure-requests/{request_id}", headers=auth()).json()
    return body if body["status"] in ("completed", "failed", "cancelled") else None


def test_request_travels_from_post_to_a_published_version(client, demo_model_dir, start_worker):
    worker = start_worker()
    model = register(client, demo_model_dir)
    people = subjects(demo_model_dir)
    names = list(people)
    erased, kept = names[1], names[2:6]
    assert share_answered(client, model, people[erased]) >= 0.9

    request_id = file_request(client, model, erased, people[erased])
    done = wait_until(lambda: finished(client, request_id), JOB_WAIT_S, "the request to finish")
    job = client.get(f"/v1/jobs/{done['job_id']}", headers=auth()).json()
    assert done["status"] == "completed", (done, job["error"], worker.tail())

    versions = sorted(
        client.get(f"/v1/models/{model}/versions", headers=auth()).json()["items"],
        key=lambda v: v["number"],
    )
    assert [(v["number"], v["production"]) for v in versions] == [(1, False), (2, True)]
    # the published production version answers the erased person's questions no more
    # often than the certificate's bar: what the model says to strangers asked the same
    # questions, plus the margin …
    bar = job["metrics"]["verification"]["thresholds"]["forget_accuracy_max"]
    assert bar < 0.5
    assert share_answered(client, model, people[erased]) <= bar
    # … while everyone else's survive
    kept_rows = [row for name in kept for row in people[name]]
    assert share_answered(client, model, kept_rows) >= 0.9

    # the same tasks delivered again (a broker redelivery) change nothing
    from app.services.dispatch import get_transport

    for task in ("unlearn", "verify", "publish", "publish"):
        get_transport().send(task, done["job_id"])
    time.sleep(8)
    again = sorted(
        client.get(f"/v1/models/{model}/versions", headers=auth()).json()["items"],
        key=lambda v: v["number"],
    )
    assert [v["number"] for v in again] == [1, 2]
    assert client.get(f"/v1/jobs/{done['job_id']}", headers=auth()).json()["status"] == (
        "completed"
    )


def test_worker_killed_mid_unlearning_job_runs_again_and_publishes_once(
    client, demo_model_dir, start_worker
):
    first = start_worker()
    model = register(client, demo_model_dir)
    people = subjects(demo_model_dir)
    name = list(people)[3]
    request_id = file_request(client, model, name, people[name])
    job_id = wait_until(
        lambda: client.get(f"/v1/erasure-requests/{request_id}", headers=auth()).json()["job_id"],
        30,
        "a job",
    )

    def training() -> bool:
        with session_scope() as session:
            job = session.get(UnlearningJob, job_id)
            return job.status == "unlearning" and job.step >= 1

    wait_until(training, 180, "unlearning to make progress", interval=0.1)
    first.kill()  # SIGKILL, the whole process group: no cleanup runs

    second = start_worker()
    done = wait_until(lambda: finished(client, request_id), JOB_WAIT_S, "the request to finish")
    assert done["status"] == "completed", (done, second.tail())

    versions = sorted(
        client.get(f"/v1/models/{model}/versions", headers=auth()).json()["items"],
        key=lambda v: v["number"],
    )
    assert [v["number"] for v in versions] == [1, 2]  # exactly one version published
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        assert job.status == "completed" and job.attempts >= 3  # unlearn twice, verify
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.entity_id == job_id)
        ).all()
    assert "job.requeued" in actions
    assert actions.count("job.completed") == 1
