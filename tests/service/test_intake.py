"""Intake at volume: group commit, the API-key cache and its revocation, coalesced
scheduling passes, and the rate limit checked from the event loop."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from app.db.base import utcnow
from app.db.models import ApiKey, AuditEvent, ErasureRequest
from app.db.session import get_engine, session_scope
from app.services import audit, dispatch, ratelimit, scheduling, tenancy
from app.services.errors import NotFound
from app.services.group_commit import commit_batch, committer
from app.services.intake import Submission
from tests.conftest import ORIGINAL_BROKER_URL, RecordingTransport, auth, model_body


@pytest.fixture(scope="module")
def client(lethe_env):
    from app.api.main import create_app

    saved = dispatch._transport
    dispatch._transport = RecordingTransport()  # no job ever runs here
    with TestClient(create_app()) as c:
        yield c
    dispatch._transport = saved


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def new_key(client, tenant_id):
    resp = client.post(
        f"/v1/tenants/{tenant_id}/api-keys",
        headers=auth(),
        json={"name": "k", "scopes": ["requests:write", "requests:read"]},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def tenant(client, demo_model_dir):
    """A tenant of its own with a model named 'm'."""
    resp = client.post("/v1/tenants", headers=auth(), json={"name": f"t-{uuid.uuid4().hex[:8]}"})
    assert resp.status_code == 201, resp.text
    tid = resp.json()["id"]
    admin = client.post(
        f"/v1/tenants/{tid}/api-keys",
        headers=auth(),
        json={"name": "admin", "scopes": ["models:admin"]},
    ).json()["key"]
    resp = client.post(
        "/v1/models",
        headers=bearer(admin),
        json=model_body(demo_model_dir, "m"),
    )
    assert resp.status_code == 201, resp.text
    return tid


def submission(tenant_id, subject, model="m", **extra):
    return Submission(
        tenant_id=tenant_id,
        model_name=model,
        subject_id=subject,
        forget=[{"question": f"Where does {subject} live?", "answer": "Nowhere"}],
        actor="test",
        **extra,
    )


def stored(subjects):
    from app.services import privacy

    hashes = [privacy.subject_hash(s) for s in subjects]
    with session_scope() as session:
        return session.scalar(
            select(func.count())
            .select_from(ErasureRequest)
            .where(ErasureRequest.subject_hash.in_(hashes))
        )


def test_a_batch_stores_its_good_requests_and_fails_only_the_bad_ones(client, tenant):
    if get_engine().dialect.name != "postgresql":
        pytest.skip("needs a database that refuses NUL characters in JSON")
    tag = uuid.uuid4().hex[:6]
    good = [f"good {tag} {i}" for i in range(3)]
    batch = [
        submission(tenant, good[0]),
        submission(tenant, f"lost {tag}", model="no-such-model"),
        submission(tenant, good[1]),
        # refused by the database: breaks the whole transaction, so each is tried alone
        submission(tenant, f"nul {tag}", unlearning_config={"method": "npo", "x": "\x00"}),
        submission(tenant, good[2]),
    ]
    outcomes = commit_batch(batch)
    assert isinstance(outcomes[1], NotFound) and "no-such-model" in outcomes[1].detail
    assert isinstance(outcomes[3], Exception) and not isinstance(outcomes[3], NotFound)
    ids = [outcomes[i].id for i in (0, 2, 4)]
    assert stored(good) == 3 and stored([f"nul {tag}", f"lost {tag}"]) == 0
    with session_scope() as session:
        received = session.scalars(
            select(AuditEvent.entity_id).where(
                AuditEvent.tenant_id == tenant, AuditEvent.action == "request.received"
            )
        ).all()
        assert sorted(i for i in received if i in ids) == sorted(ids)  # each audited once
        assert audit.verify_chain(session, tenant) == []


def test_concurrent_intake_is_stored_once_each_with_an_intact_chain(client, tenant):
    tag = uuid.uuid4().hex[:6]
    subjects = [f"crowd {tag} {i}" for i in range(40)]

    async def file_all():
        return await asyncio.gather(*(committer.submit(submission(tenant, s)) for s in subjects))

    requests = asyncio.run(file_all())
    assert len({r.id for r in requests}) == len(subjects) and stored(subjects) == len(subjects)
    with session_scope() as session:
        assert audit.verify_chain(session, tenant) == []
    # the chain advanced by one event per request, in order, with no gap
    with session_scope() as session:
        seqs = session.scalars(
            select(AuditEvent.seq)
            .where(
                AuditEvent.tenant_id == tenant, AuditEvent.entity_id.in_([r.id for r in requests])
            )
            .order_by(AuditEvent.id)
        ).all()
    assert seqs == list(range(seqs[0], seqs[0] + len(subjects)))


def test_a_revoked_key_is_refused_at_once_here_and_within_the_ttl_elsewhere(
    client, tenant, monkeypatch
):
    first, second = new_key(client, tenant), new_key(client, tenant)
    assert client.get("/v1/erasure-requests", headers=bearer(first["key"])).status_code == 200
    # revoked in this process: its cached entry goes with it
    with session_scope() as session:
        tenancy.revoke_api_key(session, tenant, first["id"], "test")
    assert client.get("/v1/erasure-requests", headers=bearer(first["key"])).status_code == 401

    # revoked behind this process's back (another server process, a script): believed
    # until the cache entry expires, refused after
    monkeypatch.setattr(tenancy, "KEY_CACHE_TTL_S", 1.0)
    assert client.get("/v1/erasure-requests", headers=bearer(second["key"])).status_code == 200
    with session_scope() as session:
        session.execute(update(ApiKey).where(ApiKey.id == second["id"]).values(revoked_at=utcnow()))
    assert client.get("/v1/erasure-requests", headers=bearer(second["key"])).status_code == 200
    time.sleep(1.1)
    assert client.get("/v1/erasure-requests", headers=bearer(second["key"])).status_code == 401


def test_scheduling_passes_coalesce_per_model(monkeypatch):
    monkeypatch.setattr(scheduling, "REPASS_AFTER_S", 0.01)
    passes = []

    def slow_pass(model_id):
        passes.append(model_id)
        time.sleep(0.1)

    monkeypatch.setattr(scheduling, "schedule_soon", slow_pass)

    async def burst():
        first = asyncio.create_task(scheduling.schedule_after_intake("m1"))
        await asyncio.sleep(0.02)  # the first pass is running
        await asyncio.gather(
            first,
            *(scheduling.schedule_after_intake("m1") for _ in range(10)),
            scheduling.schedule_after_intake("m2"),
        )

    asyncio.run(burst())
    # the burst's ten requests share one pass after the running one; another model has its own
    assert sorted(passes) == ["m1", "m1", "m2"]
    assert scheduling._passes == {}

    def failing_pass(model_id):
        raise RuntimeError("database down")

    monkeypatch.setattr(scheduling, "schedule_soon", failing_pass)
    with pytest.raises(RuntimeError):
        asyncio.run(scheduling.schedule_after_intake("m1"))
    assert scheduling._passes == {}  # a failed pass does not block the model's next one


def test_the_event_loop_rate_limit_shares_its_window_with_the_sync_one(monkeypatch):
    if not (ORIGINAL_BROKER_URL or "").startswith("redis"):
        pytest.skip("needs Redis (LETHE_BROKER_URL)")
    from app.settings import get_settings

    monkeypatch.setenv("LETHE_BROKER_URL", ORIGINAL_BROKER_URL)
    monkeypatch.setenv("LETHE_RATE_LIMIT", "3/minute")
    get_settings.cache_clear()
    ratelimit.reset()
    key = f"test-{uuid.uuid4().hex}"
    try:

        async def four():
            return [
                await ratelimit.check_async(key),
                ratelimit.check(key),
                await ratelimit.check_async(key),
                await ratelimit.check_async(key),
            ]

        first, second, third, refused = asyncio.run(four())
        assert first is second is third is None and refused >= 1
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        ratelimit.reset()
