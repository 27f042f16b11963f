"""Webhooks: per-tenant subscriptions to state-change events, signed per the Standard
Webhooks scheme and delivered with exponential backoff and jitter for about three days.

Events come from the audit log (:func:`app.services.audit.record_many` calls
:func:`on_events` in the same transaction), so every state change a webhook reports is one
that committed. The deliveries table is the durable queue; the maintenance loop hands due
deliveries to the workers (Celery queue ``webhooks``) or, embedded, delivers them itself.
Payloads are thin: ids and statuses, never personal data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import WebhookDelivery, WebhookEndpoint
from app.db.session import session_scope
from app.observability import WEBHOOK_FAILURES
from app.services import privacy
from app.services.errors import InvalidInput, NotFound
from app.settings import get_settings

log = logging.getLogger("lethe.webhooks")

EVENT_TYPES = frozenset(
    [
        f"request.{s}"
        for s in (
            "received",
            "queued",
            "unlearning",
            "verifying",
            "completed",
            "failed",
            "cancelled",
            "deadline_extended",
        )
    ]
    + [
        f"job.{s}"
        for s in (
            "queued",
            "unlearning",
            "verifying",
            "publishing",
            "completed",
            "failed",
            "cancelled",
            "requeued",
        )
    ]
    + ["version.published", "certificate.issued"]
)
RETRY_WINDOW = timedelta(days=3)
FIRST_RETRY_S = 5.0
MAX_RETRY_S = 6 * 3600.0
SEND_LEASE = timedelta(seconds=60)
TIMEOUT_S = 10.0


# -- subscriptions ---------------------------------------------------------------------


def _encrypt_secret(secret: str, endpoint_id: str) -> bytes:
    return privacy.encrypt_items([{"secret": secret}], endpoint_id)


def _secret(endpoint: WebhookEndpoint) -> str:
    return str(privacy.decrypt_items(endpoint.secret_ciphertext, endpoint.id)[0]["secret"])


def create_endpoint(
    session: Session, tenant_id: str, url: str, event_types: list[str] | None, actor: str
) -> tuple[WebhookEndpoint, str]:
    """Subscribe ``url``; returns the endpoint and its signing secret (shown once)."""
    from app.db.base import new_id
    from app.services import audit

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidInput("url must be an absolute http(s) URL")
    if parsed.scheme == "http" and get_settings().environment == "production":
        raise InvalidInput("webhook URLs must use https in production")
    types = sorted(set(event_types or EVENT_TYPES))
    unknown = set(types) - EVENT_TYPES
    if unknown:
        raise InvalidInput(f"unknown event types {sorted(unknown)}; known: {sorted(EVENT_TYPES)}")
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    endpoint = WebhookEndpoint(id=new_id(), tenant_id=tenant_id, url=url, event_types=types)
    endpoint.secret_ciphertext = _encrypt_secret(secret, endpoint.id)
    session.add(endpoint)
    session.flush()
    audit.record(
        session,
        tenant_id,
        "webhook.created",
        "webhook_endpoint",
        endpoint.id,
        actor,
        event_types=types,
    )
    return endpoint, secret


def get_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.tenant_id != tenant_id:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return endpoint


def delete_endpoint(session: Session, tenant_id: str, endpoint_id: str, actor: str) -> None:
    from app.services import audit

    endpoint = get_endpoint(session, tenant_id, endpoint_id)
    endpoint.enabled = False
    endpoint.disabled_reason = "deleted by the tenant"
    audit.record(session, tenant_id, "webhook.disabled", "webhook_endpoint", endpoint.id, actor)


def replay(session: Session, tenant_id: str, delivery_id: str, actor: str) -> WebhookDelivery:
    """Queue the same message again (same webhook-id, so receivers can de-duplicate)."""
    from app.services import audit

    original = session.get(WebhookDelivery, delivery_id)
    if original is None or original.tenant_id != tenant_id:
        raise NotFound(f"no webhook delivery {delivery_id}")
    endpoint = session.get(WebhookEndpoint, original.endpoint_id)
    if endpoint is None or not endpoint.enabled:
        raise InvalidInput("the endpoint is disabled; subscribe again to receive events")
    copy = WebhookDelivery(
        tenant_id=tenant_id,
        endpoint_id=original.endpoint_id,
        message_id=original.message_id,
        event_type=original.event_type,
        payload=original.payload,
        next_attempt_at=utcnow(),
    )
    session.add(copy)
    session.flush()
    audit.record(
        session,
        tenant_id,
        "webhook.replayed",
        "webhook_delivery",
        copy.id,
        actor,
        original=original.id,
    )
    return copy


# -- events ----------------------------------------------------------------------------


def on_events(session: Session, tenant_id: str, events: Sequence[Mapping[str, Any]]) -> None:
    """Queue deliveries of state changes that commit with the caller: ``events`` are audit
    event rows just written (one query for the tenant's endpoints, however many)."""
    events = [e for e in events if e["action"] in EVENT_TYPES]
    if not events:
        return
    endpoints = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    for event in events:
        for endpoint in endpoints:
            if event["action"] not in endpoint.event_types:
                continue
            payload = {
                "type": event["action"],
                "timestamp": event["at"].isoformat(),
                "data": {"id": event["entity_id"], "object": event["entity_type"], **event["data"]},
            }
            session.add(
                WebhookDelivery(
                    tenant_id=tenant_id,
                    endpoint_id=endpoint.id,
                    message_id=f"msg_{tenant_id[:8]}{event['seq']:012d}",
                    event_type=event["action"],
                    payload=json.dumps(payload, separators=(",", ":")),
                    next_attempt_at=utcnow(),
                )
            )


# -- signing and delivery --------------------------------------------------------------


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value: ``v1,`` + base64 HMAC-SHA256 of
    ``id.timestamp.body`` keyed with the secret's base64-decoded bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def backoff_s(attempts: int) -> float:
    """Delay before the next try: doubling from 5 s, capped at 6 h, ±25 % jitter."""
    base = min(FIRST_RETRY_S * 2 ** max(0, attempts - 1), MAX_RETRY_S)
    return base * random.uniform(0.75, 1.25)


def due_deliveries(limit: int = 50) -> list[str]:
    """Claim due deliveries (a short lease, so a crashed sender's are retried)."""
    now = utcnow()
    with session_scope() as session:
        stmt = (
            select(WebhookDelivery.id)
            .where(
                or_(WebhookDelivery.status == "pending", WebhookDelivery.status == "sending"),
                WebhookDelivery.next_attempt_at <= now,
            )
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        ids = list(session.scalars(stmt))
        if ids:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(status="sending", next_attempt_at=now + SEND_LEASE)
            )
    return ids


def deliver(delivery_id: str, client: httpx.Client | None = None) -> str:
    """Try one delivery now; returns its new status."""
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status in ("delivered", "failed"):
            return delivery.status if delivery else "missing"
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        assert endpoint is not None
        if not endpoint.enabled:
            delivery.status = "failed"
            delivery.last_error = f"endpoint disabled: {endpoint.disabled_reason}"
            return delivery.status
        url, secret = endpoint.url, _secret(endpoint)
        message_id, body, created = delivery.message_id, delivery.payload, delivery.created_at
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
        "user-agent": "Lethe-Webhooks/1",
    }
    code: int | None = None
    error: str | None = None
    try:
        http = client or httpx.Client(timeout=TIMEOUT_S, follow_redirects=False)
        try:
            code = http.post(url, content=body.encode(), headers=headers).status_code
        finally:
            if client is None:
                http.close()
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    with session_scope() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        delivery.attempts += 1
        delivery.last_status_code = code
        delivery.last_error = error
        if code is not None and 200 <= code < 300:
            delivery.status = "delivered"
            delivery.delivered_at = utcnow()
        elif code == 410:  # the receiver says the endpoint is gone for good
            delivery.status = "failed"
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
            assert endpoint is not None
            endpoint.enabled = False
            endpoint.disabled_reason = "the endpoint answered 410 Gone"
            from app.services import audit

            audit.record(
                session,
                endpoint.tenant_id,
                "webhook.disabled",
                "webhook_endpoint",
                endpoint.id,
                reason="410 Gone",
            )
        elif utcnow() - created > RETRY_WINDOW:
            delivery.status = "failed"
        else:
            delivery.status = "pending"
            delivery.next_attempt_at = utcnow() + timedelta(seconds=backoff_s(delivery.attempts))
        if delivery.status != "delivered":
            WEBHOOK_FAILURES.inc()
            log.info("webhook delivery %s: %s (HTTP %s)", delivery_id, delivery.status, code)
        return delivery.status


def dispatch_due() -> int:
    """Hand due deliveries to the webhook workers, or deliver them here when embedded."""
    ids = due_deliveries()
    if not ids:
        return 0
    if get_settings().embedded_broker:
        for delivery_id in ids:
            deliver(delivery_id)
        return len(ids)
    from app.services.dispatch import get_transport

    transport = get_transport()
    for delivery_id in ids:
        transport.send("deliver_webhook", delivery_id)
    return len(ids)
