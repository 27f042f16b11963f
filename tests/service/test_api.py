"""API v1 over HTTP (in-process), with the embedded worker running the real pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, model_body
from workers.engine import certificates
from workers.engine.qa import answer_correct, load_jsonl


@pytest.fixture(scope="module")
def client(lethe_env):
    from app.api.main import create_app

    with TestClient(create_app()) as c:
        yield c


def register(client, demo_model_dir, name=None):
    body = model_body(demo_model_dir, name or f"demo-{uuid.uuid4().hex[:8]}",
                      prompt_template="Question: {question}\nAnswer: {answer}")
    resp = client.post("/v1/models", json=body, headers=auth())
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_every_endpoint_requires_the_api_key(client):
    for method, path in [
        ("get", "/v1/models/x"),
        ("post", "/v1/erasure-requests"),
        ("get", "/v1/jobs/x"),
        ("get", "/v1/certificates/x"),
    ]:
        resp = getattr(client, method)(path)
        assert resp.status_code == 401
        assert resp.headers["content-type"] == "application/problem+json"
        resp = getattr(client, method)(path, headers={"Authorization": "Bearer wrong"})
        assert resp.status_code == 401 and resp.json()["detail"] == "invalid API key"
    assert client.get("/livez").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


def test_errors_are_problem_json_with_a_useful_detail(client, demo_model_dir):
    resp = client.post(
        "/v1/erasure-requests",
        headers=auth(),
        json={"model": "demo", "subject_id": "s", "forget": []},
    )
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert "forget" in resp.json()["detail"]
    resp = client.post(
        "/v1/erasure-requests",
        headers=auth(),
        json={
            "model": "no-such-model",
            "subject_id": "s",
            "forget": [{"question": "q?", "answer": "a"}],
        },
    )
    assert resp.status_code == 404 and "no-such-model" in resp.json()["detail"]
    resp = client.post(
        "/v1/models",
        headers=auth(),
        json={"name": "bad", "path": "/nonexistent", "retain_path": "/x", "holdout_path": "/y"},
    )
    assert resp.status_code == 422 and "config.json" in resp.json()["detail"]
    body = register(client, demo_model_dir)
    resp = client.post(
        "/v1/models",
        headers=auth(),
        json=model_body(demo_model_dir, body["name"]),
    )
    assert resp.status_code == 409
    resp = client.post(
        f"/v1/models/{body['name']}/generate", headers=auth(), json={"prompt": "x", "question": "y"}
    )
    assert resp.status_code == 422 and "exactly one" in resp.json()["detail"]
    assert client.get("/v1/jobs/nope", headers=auth()).status_code == 404


def test_model_registration_and_versions(client, demo_model_dir):
    body = register(client, demo_model_dir)
    assert body["production_version"] == 1 and len(body["base_sha256"]) == 64
    got = client.get(f"/v1/models/{body['name']}", headers=auth()).json()
    assert got["id"] == body["id"]
    versions = sorted(
        client.get(f"/v1/models/{body['name']}/versions", headers=auth()).json()["items"],
        key=lambda v: v["number"],
    )
    assert [(v["number"], v["production"], v["adapter_count"]) for v in versions] == [(1, True, 0)]


def wait_for(client, request_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/erasure-requests/{request_id}", headers=auth()).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"request {request_id} still {body['status']}")


def test_erasure_request_is_unlearned_verified_and_published(client, demo_model_dir, tmp_path):
    model = register(client, demo_model_dir)
    rows = load_jsonl(demo_model_dir / "data" / "train.jsonl")
    subject = rows[0]["subject"]
    facts = [r for r in rows if r["subject"] == subject]
    resp = client.post(
        "/v1/erasure-requests",
        headers=auth(),
        json={
            "model": model["name"],
            "subject_id": subject,
            "forget": [{"question": r["question"], "answer": r["answer"]} for r in facts],
        },
    )
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    assert accepted["status"] in ("received", "queued")
    done = wait_for(client, accepted["id"])
    job = client.get(f"/v1/jobs/{done['job_id']}", headers=auth()).json()
    assert done["status"] == "completed", (done, job["error"], job["metrics"])
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
    assert job["request_ids"] == [accepted["id"]]

    versions = sorted(
        client.get(f"/v1/models/{model['name']}/versions", headers=auth()).json()["items"],
        key=lambda v: v["number"],
    )
    assert [(v["number"], v["production"]) for v in versions] == [(1, False), (2, True)]
    assert versions[1]["id"] == done["published_version_id"]

    cert = client.get(f"/v1/certificates/{done['certificate_id']}", headers=auth()).json()
    assert cert["passed"] and cert["document"]["passed"]
    doc = cert["document"]
    assert doc["requests"][0]["id"] == accepted["id"]
    assert subject not in cert["envelope"]["document"]  # only keyed hashes of subjects
    assert doc["adapter_sha256"] == versions[1]["adapter_sha256"]
    assert certificates.verify(cert["envelope"])[0]
    path = tmp_path / "cert.json"
    path.write_text(json.dumps(cert))
    ok = subprocess.run(
        [sys.executable, "-m", "app.cli", "certificate", "verify", str(path)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    cert["envelope"]["document"] = cert["envelope"]["document"].replace(
        '"passed":true', '"passed":false', 1
    )
    path.write_text(json.dumps(cert))
    bad = subprocess.run(
        [sys.executable, "-m", "app.cli", "certificate", "verify", str(path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "signature" in bad.stderr

    # the production version no longer produces the erased person's facts
    fact = facts[0]
    gen = client.post(
        f"/v1/models/{model['name']}/generate",
        headers=auth(),
        json={"question": fact["question"], "max_new_tokens": 16},
    ).json()
    assert gen["version"] == 2
    assert not answer_correct(gen["text"], fact["answer"])


def test_certificate_keys_and_verification_endpoints(client, lethe_env):
    from pathlib import Path

    keys_dir = Path(lethe_env["LETHE_DATA_DIR"]) / "keys"
    key = certificates.load_or_create_signing_key(keys_dir)
    envelope = certificates.sign({"certificate_id": "c-1", "verdict": "passed"}, key)
    published = client.get("/v1/certificates/keys").json()["keys"]
    assert key.key_id in [k["key_id"] for k in published]
    ok = client.post("/v1/certificates/verify", json=envelope).json()
    assert ok == {"valid": True, "reason": "valid", "certificate_id": "c-1", "verdict": "passed"}
    tampered = dict(envelope, document=envelope["document"].replace("passed", "failed"))
    bad = client.post("/v1/certificates/verify", json=tampered).json()
    assert bad["valid"] is False and "signature" in bad["reason"]
    # a retired key still verifies what it signed
    certificates.rotate_signing_key(keys_dir)
    assert client.post("/v1/certificates/verify", json=envelope).json()["valid"] is True
