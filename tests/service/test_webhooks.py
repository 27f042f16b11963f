"""Webhooks end to end against a local receiver; signatures checked with the independent
`standardwebhooks` implementation."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from standardwebhooks import Webhook, WebhookVerificationError

from app.db.base import utcnow
from app.db.models import WebhookDelivery
from app.db.session import session_scope
from app.services import dispatch, webhooks
from tests.conftest import RecordingTransport, auth, model_body


class Receiver:
    """A local HTTP endpoint that records what it is sent and answers ``status``."""

    def __init__(self):
        self.received: list[tuple[dict, bytes]] = []
        self.status = 204
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def setup(lethe_env, demo_model_dir):
    from app.api.main import create_app

    saved = dispatch._transport
    dispatch._transport = RecordingTransport()
    receiver = Receiver()
    with TestClient(create_app()) as client:
        tenant = client.post(
            "/v1/tenants", headers=auth(), json={"name": f"hooks-{uuid.uuid4().hex[:6]}"}
        ).json()
        key = client.post(
            f"/v1/tenants/{tenant['id']}/api-keys",
            headers=auth(),
            json={"name": "all", "scopes": ["requests:write", "requests:read", "models:admin"]},
        ).json()["key"]
        headers = {"Authorization": f"Bearer {key}"}
        assert (
            client.post(
                "/v1/models",
                headers=headers,
                json=model_body(demo_model_dir, "m"),
            ).status_code
            == 201
        )
        yield client, headers, receiver
    receiver.server.shutdown()
    dispatch._transport = saved


def subscribe(client, headers, url, types=None):
    resp = client.post(
        "/v1/webhooks",
        headers=headers,
        json={"url": url, **({"event_types": types} if types else {})},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


def file_request(client, headers, subject):
    resp = client.post(
        "/v1/erasure-requests",
        headers=headers,
        json={
            "model": "m",
            "subject_id": subject,
            "forget": [{"question": f"Who is {subject}?", "answer": "A secret agent"}],
        },
    )
    assert resp.status_code == 202
    return resp.json()


def test_events_are_delivered_signed_and_thin(setup):
    client, headers, receiver = setup
    hook = subscribe(client, headers, receiver.url, ["request.received", "request.queued"])
    assert hook["secret"].startswith("whsec_")
    req = file_request(client, headers, "Wanda Webhook")
    receiver.received.clear()
    webhooks.dispatch_due()
    mine = [(h, b) for h, b in receiver.received if json.loads(b)["data"]["id"] == req["id"]]
    assert {json.loads(b)["type"] for _, b in mine} == {"request.received", "request.queued"}
    verifier = Webhook(hook["secret"])
    for headers_, body in mine:
        payload = verifier.verify(body, headers_)  # raises on a bad signature
        assert payload["data"]["id"] == req["id"]
        assert "Wanda" not in body.decode() and "secret agent" not in body.decode()
    tampered_headers, body = mine[0]
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body.replace(b"request", b"REQUEST"), tampered_headers)
    log = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=headers).json()
    assert {d["status"] for d in log["items"]} == {"delivered"}


def test_failures_back_off_then_replay_and_410_disables(setup):
    client, headers, receiver = setup
    hook = subscribe(client, headers, receiver.url, ["request.received"])
    receiver.status = 503
    file_request(client, headers, "Retry Rita")
    webhooks.dispatch_due()
    log = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=headers).json()["items"]
    assert log[0]["status"] == "pending" and log[0]["attempts"] == 1
    assert log[0]["last_status_code"] == 503
    first_delay = (datetime.fromisoformat(log[0]["next_attempt_at"]) - utcnow()).total_seconds()
    assert 2 < first_delay < 10  # about 5 s, with jitter
    assert webhooks.backoff_s(6) > 100 and webhooks.backoff_s(40) <= webhooks.MAX_RETRY_S * 1.25

    # due again: still failing → later; past the three-day window → failed for good
    with session_scope() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == log[0]["id"])
            .values(next_attempt_at=utcnow(), created_at=utcnow() - timedelta(days=3, minutes=1))
        )
    webhooks.dispatch_due()
    failed = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=headers).json()["items"]
    assert failed[0]["status"] == "failed" and failed[0]["attempts"] == 2

    # manual replay: same message id, delivered once the receiver is back
    receiver.status = 200
    replay = client.post(f"/v1/webhooks/deliveries/{failed[0]['id']}/replay", headers=headers)
    assert replay.status_code == 202 and replay.json()["message_id"] == failed[0]["message_id"]
    webhooks.dispatch_due()
    log = client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=headers).json()["items"]
    assert any(d["id"] == replay.json()["id"] and d["status"] == "delivered" for d in log)

    # 410 Gone disables the endpoint
    receiver.status = 410
    file_request(client, headers, "Gone Gary")
    webhooks.dispatch_due()
    hooks = {h["id"]: h for h in client.get("/v1/webhooks", headers=headers).json()}
    assert hooks[hook["id"]]["enabled"] is False
    assert "410" in hooks[hook["id"]]["disabled_reason"]
    receiver.status = 204


def test_bad_subscriptions_are_refused(setup):
    client, headers, _ = setup
    assert client.post("/v1/webhooks", headers=headers, json={"url": "ftp://x"}).status_code == 422
    resp = client.post(
        "/v1/webhooks",
        headers=headers,
        json={"url": "http://127.0.0.1:9/x", "event_types": ["no.such"]},
    )
    assert resp.status_code == 422 and "no.such" in resp.json()["detail"]
