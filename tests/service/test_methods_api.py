"""Every unlearning method runs through the API and the worker: validated at the door,
batched by settings, trained, verified, and judged like any other."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, register_model, wait_for_request
from workers.engine.methods import METHOD_NAMES
from workers.engine.qa import load_jsonl


@pytest.fixture(scope="module")
def client(lethe_env):
    from app.api.main import create_app

    with TestClient(create_app()) as c:
        yield c


@pytest.fixture(scope="module")
def model(client, demo_model_dir):
    name = register_model(
        client,
        demo_model_dir,
        "methods",
        unlearning={"method": "npo", "beta": 0.2, "lora_rank": 4},
        # one attempt per method: escalation is tested on its own
        verification_policy={"max_escalations": 0},
    )
    resp = client.get(f"/v1/models/{name}", headers=auth())
    assert resp.json()["unlearning"]["beta"] == 0.2
    policy = resp.json()["verification_policy"]
    assert policy["revision"] == 1 and policy["policy"]["max_escalations"] == 0
    return name


def test_bad_method_settings_are_refused_at_the_door(client, model):
    for bad in (
        {"method": "nope"},
        {"method": "npo", "beta": -1},
        {"method": "rmu", "lora_rank": 0},
        {"method": "npo", "unknown": 1},
    ):
        resp = client.post(
            "/v1/erasure-requests",
            headers=auth(),
            json={
                "model": model,
                "subject_id": "s",
                "forget": [{"question": "q?", "answer": "a"}],
                "unlearning": bad,
            },
        )
        assert resp.status_code == 422, bad
        assert resp.headers["content-type"] == "application/problem+json"
    schema = client.get("/openapi.json").json()
    assert "discriminator" in str(schema)  # the union is documented as such


def test_settings_the_stopping_rule_ignores_are_refused_with_the_reason(client, model):
    body = {"model": model, "subject_id": "s", "forget": [{"question": "q?", "answer": "a"}]}
    resp = client.post("/v1/erasure-requests", headers=auth(), json={
        **body, "unlearning": {"method": "npo", "stop_rule": "likelihood",
                               "calibration_margin": 0.5}})
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    detail = resp.json()["detail"]
    assert "calibration_margin has no effect under stop_rule 'likelihood'" in detail
    resp = client.post("/v1/models", headers=auth(), json={
        "name": "inert", "path": "/nowhere", "retain_path": "r", "holdout_path": "h",
        "unlearning": {"method": "grad_ascent", "stop_ratio": 0.5}})
    assert resp.status_code == 422
    assert "stop_ratio has no effect while early_stop is false" in resp.json()["detail"]
    # the model's settings as read back, switched to the likelihood rule, still pass
    config = client.get(f"/v1/models/{model}", headers=auth()).json()["unlearning"]
    resp = client.post("/v1/erasure-requests", headers=auth(), json={
        **body, "subject_id": "inert-roundtrip",
        "unlearning": {**config, "stop_rule": "likelihood"}})
    assert resp.status_code == 202, resp.text
    cancelled = client.delete(f"/v1/erasure-requests/{resp.json()['id']}", headers=auth())
    assert cancelled.status_code in (200, 409)  # 409: a worker took it up first


@pytest.mark.parametrize("method", sorted(METHOD_NAMES))
def test_each_method_runs_through_the_pipeline(client, model, demo_model_dir, method):
    rows = load_jsonl(demo_model_dir / "data" / "train.jsonl")
    subjects = sorted({r["subject"] for r in rows})
    subject = subjects[sorted(METHOD_NAMES).index(method) + 2]
    facts = [r for r in rows if r["subject"] == subject]
    resp = client.post(
        "/v1/erasure-requests",
        headers=auth(),
        json={
            "model": model,
            "subject_id": subject,
            "forget": [{"question": r["question"], "answer": r["answer"]} for r in facts],
            "unlearning": {"method": method, "max_steps": 6},
        },
    )
    assert resp.status_code == 202, resp.text
    request_id = resp.json()["id"]
    body = wait_for_request(client, request_id)
    job = client.get(f"/v1/jobs/{body['job_id']}", headers=auth()).json()
    assert job["method"] == method and job["config"]["max_steps"] == 6
    assert job["metrics"]["unlearning"]["steps"] == 6
    assert len(job["metrics"]["attempts"]) == 1
    # judged like any other: a certificate either way, published only if it passed
    verification = job["metrics"]["verification"]
    assert body["status"] == ("completed" if verification["passed"] else "failed"), body
    cert = client.get(f"/v1/certificates/{job['certificate_id']}", headers=auth()).json()
    assert cert["document"]["method"] == method
