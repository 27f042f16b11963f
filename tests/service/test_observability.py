"""Metrics, correlation ids and structured logs."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from fastapi.testclient import TestClient

from app.db.models import ErasureRequest, UnlearningJob
from app.db.session import session_scope
from app.observability import JsonFormatter, correlation_id
from app.services import dispatch
from tests.conftest import RecordingTransport, auth, register_model


@pytest.fixture(scope="module")
def client(lethe_env):
    from app.api.main import create_app

    saved = dispatch._transport
    dispatch._transport = RecordingTransport()
    with TestClient(create_app()) as c:
        yield c
    dispatch._transport = saved


def test_correlation_id_follows_a_request_into_its_job(client, demo_model_dir):
    name = register_model(client, demo_model_dir, "obs")
    cid = uuid.uuid4().hex
    resp = client.post(
        "/v1/erasure-requests",
        headers={**auth(), "X-Request-ID": cid},
        json={"model": name, "subject_id": "s", "forget": [{"question": "q?", "answer": "a"}]},
    )
    assert resp.status_code == 202 and resp.headers["x-request-id"] == cid
    with session_scope() as session:
        request = session.get(ErasureRequest, resp.json()["id"])
        job = session.get(UnlearningJob, request.job_id)
        assert request.correlation_id == cid and job.correlation_id == cid
    generated = client.get("/livez").headers["x-request-id"]
    assert generated and generated != cid


def test_metrics_expose_http_and_pipeline_state(client):
    client.get("/v1/jobs", headers=auth())
    text = client.get("/metrics").text
    assert 'lethe_http_requests_total{method="GET",route="/v1/jobs",status="200"}' in text
    for family in (
        "lethe_http_request_duration_seconds_bucket",
        "lethe_erasure_requests{",
        "lethe_jobs{",
        "lethe_overdue_requests",
        "lethe_outbox_unsent",
        "lethe_requests_due_within_7_days",
    ):
        assert family in text, family


def test_json_logs_carry_the_correlation_id():
    token = correlation_id.set("abc123")
    try:
        record = logging.LogRecord(
            "lethe.jobs", logging.INFO, __file__, 1, "stage %s", ("x",), None
        )
        line = json.loads(JsonFormatter().format(record))
    finally:
        correlation_id.reset(token)
    assert line["message"] == "stage x" and line["correlation_id"] == "abc123"
    assert line["level"] == "info" and line["logger"] == "lethe.jobs"
