"""Tenants, scoped keys, idempotency, limits, deadlines, cancellation, lists, audit chain and
the compliance report — over HTTP against the environment's real database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update

from app.db.base import utcnow
from app.db.models import ApiKey, AuditEvent, Certificate, ErasureRequest, UnlearningJob
from app.db.session import get_engine, session_scope
from app.services import audit, dispatch, privacy, ratelimit
from tests.conftest import RecordingTransport, auth, model_body


@pytest.fixture(scope="module")
def client(lethe_env):
    from app.api.main import create_app

    saved = dispatch._transport
    dispatch._transport = RecordingTransport()  # the state machine is driven by hand here
    with TestClient(create_app()) as c:
        yield c
    dispatch.flush_outbox()
    dispatch._transport = saved


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def tenants(client, demo_model_dir):
    """Two tenants, each with a full-access key, a read-only key and a model named 'shared'."""
    out = {}
    for label in ("a", "b"):
        resp = client.post(
            "/v1/tenants", headers=auth(), json={"name": f"t-{label}-{uuid.uuid4().hex[:6]}"}
        )
        assert resp.status_code == 201, resp.text
        tid = resp.json()["id"]
        keys = {}
        for kind, scopes in {
            "full": ["requests:write", "requests:read", "models:admin", "audit:read"],
            "read": ["requests:read"],
        }.items():
            r = client.post(
                f"/v1/tenants/{tid}/api-keys", headers=auth(), json={"name": kind, "scopes": scopes}
            )
            assert r.status_code == 201, r.text
            keys[kind] = r.json()["key"]
        r = client.post(
            "/v1/models",
            headers=bearer(keys["full"]),
            json=model_body(demo_model_dir, "shared"),
        )
        assert r.status_code == 201, r.text
        out[label] = {"id": tid, **keys}
    return out


def file_request(client, key, subject="Jane Roe", headers=None, model="shared"):
    return client.post(
        "/v1/erasure-requests",
        headers={**bearer(key), **(headers or {})},
        json={
            "model": model,
            "subject_id": subject,
            "forget": [{"question": f"Where does {subject} live?", "answer": "Ilvermorny"}],
        },
    )


def test_keys_are_stored_only_as_hashes(client, tenants):
    key = tenants["a"]["full"]
    with session_scope() as session:
        rows = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenants["a"]["id"])).all()
        assert rows and all(key not in (r.key_sha256 + r.prefix) for r in rows)
    with get_engine().connect() as conn:
        dump = str(conn.execute(text("SELECT * FROM api_keys")).all())
    assert key not in dump and key.split("_", 2)[2] not in dump


def test_tenants_cannot_see_each_other(client, tenants):
    a, b = tenants["a"], tenants["b"]
    req = file_request(client, a["full"]).json()
    with session_scope() as session:
        row = session.get(ErasureRequest, req["id"])
        job_id = row.job_id
        cert = Certificate(
            tenant_id=a["id"],
            job_id=job_id,
            model_id=row.model_id,
            passed=False,
            document="{}",
            signature="",
            key_id="k",
        )
        session.add(cert)
        session.flush()
        cert_id = cert.id
    for path in (
        f"/v1/erasure-requests/{req['id']}",
        f"/v1/jobs/{job_id}",
        f"/v1/certificates/{cert_id}",
        f"/v1/erasure-requests/{req['id']}/report",
    ):
        assert client.get(path, headers=bearer(a["full"])).status_code == 200, path
        resp = client.get(path, headers=bearer(b["full"]))
        assert resp.status_code == 404, path
        assert resp.headers["content-type"] == "application/problem+json"
    assert (
        client.delete(f"/v1/erasure-requests/{req['id']}", headers=bearer(b["full"])).status_code
        == 404
    )
    assert (
        client.post(
            f"/v1/erasure-requests/{req['id']}/extension",
            headers=bearer(b["full"]),
            json={"months": 1, "reason": "x"},
        ).status_code
        == 404
    )
    # lists only ever show the caller's own rows
    for path, ident in (
        ("/v1/erasure-requests", req["id"]),
        ("/v1/jobs", job_id),
        ("/v1/certificates", cert_id),
    ):
        mine = [i["id"] for i in client.get(path, headers=bearer(a["full"])).json()["items"]]
        theirs = [i["id"] for i in client.get(path, headers=bearer(b["full"])).json()["items"]]
        assert ident in mine and ident not in theirs, path
    a_events = client.get("/v1/audit-events", headers=bearer(a["full"])).json()["items"]
    b_events = client.get("/v1/audit-events", headers=bearer(b["full"])).json()["items"]
    assert any(e["entity_id"] == req["id"] for e in a_events)
    assert not any(e["entity_id"] == req["id"] for e in b_events)
    # same model name, two tenants, two models
    ma = client.get("/v1/models/shared", headers=bearer(a["full"])).json()
    mb = client.get("/v1/models/shared", headers=bearer(b["full"])).json()
    assert ma["id"] != mb["id"]
    versions_a = client.get("/v1/models/shared/versions", headers=bearer(a["full"])).json()
    assert all(v["id"] != mb["id"] for v in versions_a["items"])


def test_scopes_are_enforced(client, tenants):
    read = tenants["a"]["read"]
    assert client.get("/v1/erasure-requests", headers=bearer(read)).status_code == 200
    resp = file_request(client, read)
    assert resp.status_code == 403 and "requests:write" in resp.json()["detail"]
    assert client.get("/v1/audit-events", headers=bearer(read)).status_code == 403
    assert (
        client.post(
            "/v1/tenants", headers=bearer(tenants["a"]["full"]), json={"name": "nope"}
        ).status_code
        == 403
    )


def test_idempotency_key_replays_rejects_changed_bodies(client, tenants):
    key = tenants["a"]["full"]
    idem = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = file_request(client, key, "Idem Potent", idem)
    again = file_request(client, key, "Idem Potent", idem)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    changed = file_request(client, key, "Someone Else", idem)
    assert changed.status_code == 422 and "different request body" in changed.json()["detail"]
    # the same key in another tenant is another key
    other = file_request(client, tenants["b"]["full"], "Idem Potent", idem)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


@pytest.fixture(scope="module")
def live_server(client, lethe_env):
    """The app on a real socket, for concurrent clients."""
    from app.api.main import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_concurrent_duplicate_posts_store_exactly_one_request(live_server, tenants):
    key = tenants["a"]["full"]
    subject = f"Racer {uuid.uuid4().hex[:6]}"
    idem = f"race-{uuid.uuid4()}"
    body = {
        "model": "shared",
        "subject_id": subject,
        "forget": [{"question": "Who?", "answer": "Them"}],
    }

    def post(_):
        with httpx.Client(timeout=30) as http:
            return http.post(
                f"{live_server}/v1/erasure-requests",
                json=body,
                headers={**bearer(key), "Idempotency-Key": idem},
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(16)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {202, 409}, codes
    ids = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(ids) == 1
    with session_scope() as session:
        stored = session.scalar(
            select(func.count())
            .select_from(ErasureRequest)
            .where(ErasureRequest.subject_hash == privacy.subject_hash(subject))
        )
    assert stored == 1


def test_oversized_bodies_are_refused_with_413(client, tenants):
    huge = {"model": "shared", "subject_id": "x", "forget": [{"text": "y" * 20_000}] * 80}
    resp = client.post("/v1/erasure-requests", headers=bearer(tenants["a"]["full"]), json=huge)
    assert resp.status_code == 413
    assert resp.headers["content-type"] == "application/problem+json"


def test_rate_limit_answers_429_with_retry_after(client, tenants, monkeypatch):
    from app.settings import get_settings

    monkeypatch.setenv("LETHE_RATE_LIMIT", "3/minute")
    get_settings.cache_clear()
    ratelimit.reset()
    try:
        key = tenants["b"]["read"]
        codes = [client.get("/v1/jobs", headers=bearer(key)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        resp = client.get("/v1/jobs", headers=bearer(key))
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    finally:
        monkeypatch.delenv("LETHE_RATE_LIMIT")
        get_settings.cache_clear()
        ratelimit.reset()


def test_deadline_extension_is_bounded_and_recorded(client, tenants):
    key = tenants["a"]["full"]
    req = file_request(client, key, "Late Larry").json()
    resp = client.post(
        f"/v1/erasure-requests/{req['id']}/extension",
        headers=bearer(key),
        json={"months": 3, "reason": "complex"},
    )
    assert resp.status_code == 422
    resp = client.post(
        f"/v1/erasure-requests/{req['id']}/extension",
        headers=bearer(key),
        json={"months": 2, "reason": "request covers many systems"},
    )
    assert resp.status_code == 200
    extended = resp.json()
    assert extended["due_at"] > req["due_at"]
    again = client.post(
        f"/v1/erasure-requests/{req['id']}/extension",
        headers=bearer(key),
        json={"months": 1, "reason": "more"},
    )
    assert again.status_code == 409
    report = client.get(f"/v1/erasure-requests/{req['id']}/report", headers=bearer(key)).json()
    assert report["request"]["extension_reason"] == "request covers many systems"
    assert "request.deadline_extended" in [e["action"] for e in report["timeline"]]


def test_overdue_filter(client, tenants):
    key = tenants["b"]["full"]
    req = file_request(client, key, "Overdue Olga").json()
    with session_scope() as session:
        session.execute(
            update(ErasureRequest)
            .where(ErasureRequest.id == req["id"])
            .values(due_at=utcnow() - timedelta(days=1))
        )
    overdue = client.get("/v1/erasure-requests?overdue=true", headers=bearer(key)).json()
    assert req["id"] in [r["id"] for r in overdue["items"]]
    on_time = client.get("/v1/erasure-requests?overdue=false", headers=bearer(key)).json()
    assert req["id"] not in [r["id"] for r in on_time["items"]]


def test_cursor_pagination_walks_every_row_once(client, tenants):
    key = tenants["b"]["full"]
    for i in range(5):
        file_request(client, key, f"Paged {i}")
    seen, cursor = [], None
    while True:
        url = "/v1/erasure-requests?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=bearer(key)).json()
        assert len(page["items"]) <= 2
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    everything = client.get("/v1/erasure-requests?limit=200", headers=bearer(key)).json()
    assert seen == [r["id"] for r in everything["items"]] and len(seen) == len(set(seen))
    received = client.get("/v1/erasure-requests?status=received", headers=bearer(key)).json()
    assert received["items"] and all(r["status"] == "received" for r in received["items"])
    bad = client.get("/v1/erasure-requests?cursor=garbage", headers=bearer(key))
    assert bad.status_code == 422


def test_cancellation_before_and_after_unlearning_starts(client, tenants):
    key = tenants["a"]["full"]
    active = client.get("/v1/jobs?status=queued", headers=bearer(key)).json()["items"]
    queued = file_request(client, key, "Queue Quinn").json()
    if queued["status"] == "received":  # a job is active: this one waits
        resp = client.delete(f"/v1/erasure-requests/{queued['id']}", headers=bearer(key))
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert active or queued
    # a queued request whose job has not started: cancelled, and the job with it
    with session_scope() as session:
        pending = session.scalars(
            select(ErasureRequest).where(
                ErasureRequest.tenant_id == tenants["a"]["id"], ErasureRequest.status == "queued"
            )
        ).all()
        assert pending
        target = pending[0]
        job_id = target.job_id
    resp = client.delete(f"/v1/erasure-requests/{target.id}", headers=bearer(key))
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    with session_scope() as session:
        assert session.get(ErasureRequest, target.id).forget_ciphertext is None
        job = session.get(UnlearningJob, job_id)
        others = session.scalar(
            select(func.count()).select_from(ErasureRequest).where(ErasureRequest.job_id == job_id)
        )
        assert job.status == ("cancelled" if not others else "queued")
        # the next batch started from what was waiting
        nxt = session.scalar(
            select(UnlearningJob).where(
                UnlearningJob.tenant_id == tenants["a"]["id"], UnlearningJob.status == "queued"
            )
        )
        nxt_id = nxt.id if nxt else None
    # once a worker has claimed the job, it is too late
    if nxt_id:
        with session_scope() as session:
            session.execute(
                update(UnlearningJob)
                .where(UnlearningJob.id == nxt_id)
                .values(status="unlearning", claim_token="w")
            )
            busy = session.scalar(select(ErasureRequest.id).where(ErasureRequest.job_id == nxt_id))
        resp = client.delete(f"/v1/erasure-requests/{busy}", headers=bearer(key))
        assert resp.status_code == 409 and "started" in resp.json()["detail"]


def test_compliance_report_json_and_html(client, tenants):
    key = tenants["b"]["full"]
    req = file_request(client, key, "Reported Rita").json()
    data = client.get(f"/v1/erasure-requests/{req['id']}/report", headers=bearer(key)).json()
    assert data["request"]["id"] == req["id"]
    assert data["timeline"][0]["action"] == "request.received"
    assert "Reported Rita" not in str(data) and "Ilvermorny" not in str(data)
    html = client.get(f"/v1/erasure-requests/{req['id']}/report?format=html", headers=bearer(key))
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert req["id"] in html.text and "request.received" in html.text


def test_audit_chain_detects_edits_deletions_and_reordering(client, tenants):
    tid = tenants["b"]["id"]
    with session_scope() as session:
        assert audit.verify_chain(session, tid) == []
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == tid).order_by(AuditEvent.seq)
        ).all()
        assert len(events) >= 4
        third, fourth = events[2], events[3]
    env = {**os.environ}
    cli = [sys.executable, "-m", "app.cli", "audit", "verify", "--tenant", tid]
    assert subprocess.run(cli, env=env, capture_output=True).returncode == 0

    def problems():
        with session_scope() as session:
            return [p.problem for p in audit.verify_chain(session, tid)]

    with get_engine().begin() as conn:  # edit one event's data
        conn.execute(
            text("UPDATE audit_events SET actor = 'mallory' WHERE id = :id"), {"id": third.id}
        )
    found = problems()
    assert any(f"event {third.id}" in p and "edited" in p for p in found)
    result = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "edited" in result.stderr
    with get_engine().begin() as conn:  # restore, then delete one
        conn.execute(
            text("UPDATE audit_events SET actor = :a WHERE id = :id"),
            {"a": third.actor, "id": third.id},
        )
    assert problems() == []
    with get_engine().begin() as conn:  # reorder: swap two events' sequence numbers
        conn.execute(text("UPDATE audit_events SET seq = -1 WHERE id = :id"), {"id": third.id})
        conn.execute(
            text("UPDATE audit_events SET seq = :s WHERE id = :id"),
            {"s": third.seq, "id": fourth.id},
        )
        conn.execute(
            text("UPDATE audit_events SET seq = :s WHERE id = :id"),
            {"s": fourth.seq, "id": third.id},
        )
    assert any("reordered" in p or "edited" in p for p in problems())
    with get_engine().begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": third.id})
    assert any("deleted" in p for p in problems())


def test_every_create_is_idempotent_and_secrets_are_not_replayed(client, tenants):
    key = tenants["a"]["full"]
    idem = {"Idempotency-Key": f"hook-{uuid.uuid4()}"}
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["request.completed"]}
    first = client.post("/v1/webhooks", headers={**bearer(key), **idem}, json=body)
    again = client.post("/v1/webhooks", headers={**bearer(key), **idem}, json=body)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and first.json()["secret"]
    assert again.json()["secret"] is None  # the signing secret is shown once, never stored
    hooks_b = client.get("/v1/webhooks", headers=bearer(tenants["b"]["full"])).json()
    assert first.json()["id"] not in [h["id"] for h in hooks_b]  # tenant-scoped
    assert (
        client.get(
            f"/v1/webhooks/{first.json()['id']}/deliveries", headers=bearer(tenants["b"]["full"])
        ).status_code
        == 404
    )

    idem = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    body = {"name": "ci", "scopes": ["requests:read"]}
    made = client.post(
        f"/v1/tenants/{tenants['a']['id']}/api-keys", headers={**auth(), **idem}, json=body
    )
    replay = client.post(
        f"/v1/tenants/{tenants['a']['id']}/api-keys", headers={**auth(), **idem}, json=body
    )
    assert made.json()["key"] and replay.json()["key"] is None
    assert replay.json()["id"] == made.json()["id"]
    with get_engine().connect() as conn:
        stored = str(conn.execute(text("SELECT response_body FROM idempotency_keys")).all())
    assert made.json()["key"] not in stored and first.json()["secret"] not in stored

    idem = {"Idempotency-Key": f"tenant-{uuid.uuid4()}"}
    name = {"name": f"idem-{uuid.uuid4().hex[:6]}"}
    t1 = client.post("/v1/tenants", headers={**auth(), **idem}, json=name)
    t2 = client.post("/v1/tenants", headers={**auth(), **idem}, json=name)
    assert t1.status_code == t2.status_code == 201 and t1.json()["id"] == t2.json()["id"]


def test_verification_policy_is_stored_versioned_audited_and_tenant_scoped(client, tenants):
    a, b = tenants["a"], tenants["b"]
    first = client.get("/v1/models/shared/policy", headers=bearer(a["read"])).json()
    assert first["revision"] == 1 and first["policy"]["relearn"] is True
    resp = client.put("/v1/models/shared/policy", headers=bearer(a["full"]),
                      json={"policy": {"retain_accuracy_ratio": 0.95, "max_escalations": 1}})
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["revision"] == 2 and second["policy"]["retain_accuracy_ratio"] == 0.95
    # the rest carried over from revision 1, and revision 1 is kept
    assert {k: v for k, v in second["policy"].items()
            if k not in ("retain_accuracy_ratio", "max_escalations")} == {
        k: v for k, v in first["policy"].items()
        if k not in ("retain_accuracy_ratio", "max_escalations")}
    history = client.get("/v1/models/shared/policies", headers=bearer(a["read"])).json()
    assert [p["revision"] for p in history["items"]] == [2, 1]
    model = client.get("/v1/models/shared", headers=bearer(a["read"])).json()
    assert model["verification_policy"]["revision"] == 2
    # tenant b's model of the same name is untouched
    assert client.get("/v1/models/shared/policy", headers=bearer(b["read"])).json()[
        "revision"] == 1
    # a typo or a bad value is refused with the field named; nothing is stored
    for bad, fragment in (({"retain_acuracy_ratio": 0.9}, "unknown policy fields"),
                          ({"mia_auc_max": "high"}, "mia_auc_max"),
                          ({"mia_auc_min": 0.9, "mia_auc_max": 0.8}, "mia_auc_min")):
        resp = client.put("/v1/models/shared/policy", headers=bearer(a["full"]),
                          json={"policy": bad})
        assert resp.status_code == 422, bad
        assert resp.headers["content-type"] == "application/problem+json"
        assert fragment in resp.json()["detail"]
    assert client.get("/v1/models/shared/policy", headers=bearer(a["read"])).json()[
        "revision"] == 2
    # revising needs models:admin
    resp = client.put("/v1/models/shared/policy", headers=bearer(a["read"]),
                      json={"policy": {"max_escalations": 0}})
    assert resp.status_code == 403
    events = client.get("/v1/audit-events", headers=bearer(a["full"])).json()["items"]
    revised = [e for e in events if e["action"] == "model.policy_revised"]
    assert sorted(e["data"]["revision"] for e in revised) == [1, 2]


def test_paraphrases_and_truth_ratio_evidence_travel_with_the_request(client, tenants):
    a = tenants["a"]
    item = {"question": "Where does Ann Roe live?", "answer": "Oslo",
            "paraphrased_questions": ["Ann Roe lives in which city?"],
            "paraphrased_answer": "In Oslo", "perturbed_answers": ["Rome", "Lima"]}
    resp = client.post("/v1/erasure-requests", headers=bearer(a["full"]),
                       json={"model": "shared", "subject_id": "Ann Roe", "forget": [item]})
    assert resp.status_code == 202, resp.text
    with session_scope() as session:
        stored = session.get(ErasureRequest, resp.json()["id"])
        rows = privacy.decrypt_items(bytes(stored.forget_ciphertext), stored.id)
        # the fact's digest is the same as without the evidence
        assert stored.forget_digests == [privacy.item_digest(
            {"question": item["question"], "answer": item["answer"]})]
    assert rows == [item]  # kept (encrypted) for unlearning and verification
    too_many = {**item, "paraphrased_questions": [f"q{i}?" for i in range(21)]}
    resp = client.post("/v1/erasure-requests", headers=bearer(a["full"]),
                       json={"model": "shared", "subject_id": "Ann Roe", "forget": [too_many]})
    assert resp.status_code == 422
