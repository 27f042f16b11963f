"""A failed verification escalates: the job unlearns again with stronger settings, every
attempt and its evidence are kept, and after the policy's escalations it fails with the
reason, a signed certificate listing every attempt, and an audit trail."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, register_model, wait_for_request
from workers.engine.qa import load_jsonl


@pytest.fixture(scope="module")
def client(lethe_env):
    from app.api.main import create_app

    with TestClient(create_app()) as c:
        yield c


def test_a_job_that_cannot_forget_escalates_then_fails_with_every_attempt(client,
                                                                         demo_model_dir):
    name = register_model(client, demo_model_dir, "esc",
                          verification_policy={"max_escalations": 2, "relearn": False})
    rows = load_jsonl(demo_model_dir / "data" / "train.jsonl")
    subject = sorted({r["subject"] for r in rows})[1]
    # one optimiser step cannot forget a memorised person; neither can two or four
    resp = client.post(
        "/v1/erasure-requests",
        headers=auth(),
        json={
            "model": name,
            "subject_id": subject,
            "forget": [{"question": r["question"], "answer": r["answer"]}
                       for r in rows if r["subject"] == subject],
            "unlearning": {"method": "npo", "max_steps": 1, "early_stop": False},
        },
    )
    assert resp.status_code == 202, resp.text
    request_id = resp.json()["id"]
    body = wait_for_request(client, request_id)
    assert body["status"] == "failed", body
    job = client.get(f"/v1/jobs/{body['job_id']}", headers=auth()).json()
    attempts = job["metrics"]["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    # stronger each time: the step budget doubles, the rate and forget weight grow
    assert [a["config"]["max_steps"] for a in attempts] == [1, 2, 4]
    rates = [a["config"]["learning_rate"] for a in attempts]
    assert rates[0] < rates[1] < rates[2]
    for a in attempts:
        assert a["passed"] is False and a["reasons"]
        assert "remembers" in a["verification"]["failures"]
        assert a["adapter_sha256"] and a["unlearning"]["steps"] == a["config"]["max_steps"]
    assert len({a["adapter_sha256"] for a in attempts}) == 3
    assert job["error"].startswith("verification failed after 3 attempts: forget")
    assert "retry_config" not in job["metrics"]
    cert = client.get(f"/v1/certificates/{job['certificate_id']}", headers=auth()).json()
    document = cert["document"]
    assert document["passed"] is False and document["policy_revision"] == 1
    assert [a["attempt"] for a in document["attempts"]] == [1, 2, 3]
    assert document["policy"]["max_escalations"] == 2
    ok = client.post("/v1/certificates/verify", json=cert["envelope"])
    assert ok.status_code == 200 and ok.json()["valid"] is True, ok.text
    events = client.get("/v1/audit-events", headers=auth(), params={"limit": 200}).json()
    escalated = [e for e in events["items"]
                 if e["action"] == "job.escalated" and e["entity_id"] == job["id"]]
    assert sorted(e["data"]["attempt"] for e in escalated) == [2, 3]
    assert {e["data"]["direction"] for e in escalated} == {"stronger"}
