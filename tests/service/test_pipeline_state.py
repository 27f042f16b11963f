"""The database state machine: privacy at rest, idempotent stages, recovery after faults.
Runs on the real database of the environment (PostgreSQL in CI)."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import func, select, text

from app.db.base import utcnow
from app.db.models import (
    DEFAULT_TENANT_ID,
    AuditEvent,
    ErasureRequest,
    JobStatus,
    ModelVersion,
    OutboxMessage,
    UnlearningJob,
)
from app.db.session import get_engine, session_scope
from app.services import dispatch, intake, jobs, privacy, recovery, registry, scheduling
from tests.conftest import RecordingTransport


@pytest.fixture(autouse=True)
def no_workers(lethe_env):
    """These tests drive the state machine by hand: tasks are recorded, not run."""
    saved = dispatch._transport
    dispatch._transport = RecordingTransport()
    yield dispatch._transport
    dispatch.flush_outbox()
    dispatch._transport = saved


@pytest.fixture()
def make_model(lethe_env, demo_model_dir):
    def make():
        with session_scope() as session:
            return registry.register_model(
                session,
                DEFAULT_TENANT_ID,
                name=f"m-{uuid.uuid4().hex[:12]}",
                path=str(demo_model_dir),
                retain_path=str(demo_model_dir / "data" / "train.jsonl"),
                holdout_path=str(demo_model_dir / "data" / "holdout.jsonl"),
                prompt_template="Question: {question}\nAnswer: {answer}",
                actor="test",
            )

    return make


@pytest.fixture()
def model(make_model):
    return make_model()


def _submit(model, subject="Subject Zero", answer="Zanzibar"):
    with session_scope() as session:
        req = intake.submit_erasure_request(
            session,
            DEFAULT_TENANT_ID,
            model_name=model.name,
            subject_id=subject,
            forget=[{"question": f"Where was {subject} born?", "answer": answer}],
            actor="test",
        )
    scheduling.schedule_soon(model.id)
    return req


def test_forget_payload_and_subject_id_are_not_stored_in_clear(model):
    req = _submit(model, subject="Hidden Person", answer="Secretville")
    with get_engine().connect() as conn:
        row = (
            conn.execute(text("SELECT * FROM erasure_requests WHERE id = :id"), {"id": req.id})
            .mappings()
            .one()
        )
    dump = " ".join(str(v) for v in row.values())
    assert "Secretville" not in dump and "Hidden Person" not in dump
    assert b"Secretville" not in bytes(row["forget_ciphertext"])
    assert row["subject_hash"] == privacy.subject_hash("Hidden Person")
    items = privacy.decrypt_items(bytes(row["forget_ciphertext"]), req.id)
    assert items[0]["answer"] == "Secretville"
    with pytest.raises(InvalidTag):  # bound to its row: cannot be replayed on another
        privacy.decrypt_items(bytes(row["forget_ciphertext"]), "another-row")


def test_requests_are_batched_one_active_job_per_model(model):
    first = _submit(model, "A One")
    second = _submit(model, "B Two")
    with session_scope() as session:
        r1 = session.get(ErasureRequest, first.id)
        r2 = session.get(ErasureRequest, second.id)
        assert r1.status == "queued" and r1.job_id
        # a job is active: the second waits for the next batch instead of racing it
        assert r2.status == "received" and r2.job_id is None
        outbox = session.scalars(
            select(OutboxMessage).where(OutboxMessage.job_id == r1.job_id)
        ).all()
        assert [m.task for m in outbox] == ["unlearn"]
        assert (r1.due_at - r1.received_at).days in (28, 29, 30, 31)


def _job_in(model, status, **values):
    req = _submit(model, f"Person {status}")
    with session_scope() as session:
        r = session.get(ErasureRequest, req.id)
        job = session.get(UnlearningJob, r.job_id)
        job.status = status
        for k, v in values.items():
            setattr(job, k, v)
        return job.id, req.id


def test_publish_delivered_twice_concurrently_publishes_one_version(model):
    job_id, req_id = _job_in(
        model, JobStatus.publishing, adapter_path="/adapters/x", adapter_sha256="ab" * 32
    )
    threads = [threading.Thread(target=jobs.run_publish, args=(job_id,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs.run_publish(job_id)
    with session_scope() as session:
        versions = session.scalars(
            select(ModelVersion).where(ModelVersion.model_id == model.id)
        ).all()
        assert sorted(v.number for v in versions) == [1, 2]
        m = registry.get_model(session, DEFAULT_TENANT_ID, model.name)
        v2 = next(v for v in versions if v.number == 2)
        assert m.production_version_id == v2.id
        assert v2.adapter_chain == ["/adapters/x"]
        req = session.get(ErasureRequest, req_id)
        assert req.status == "completed" and req.published_version_id == v2.id
        assert req.forget_ciphertext is None and req.forget_digests  # purged, digests kept
        assert session.get(UnlearningJob, job_id).status == "completed"


def test_stage_for_a_job_that_moved_on_does_nothing(model):
    job_id, _ = _job_in(model, JobStatus.completed)
    jobs.run_unlearn(job_id)
    jobs.run_verify(job_id)
    jobs.run_publish(job_id)
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        assert job.status == "completed" and job.attempts == 0
        count = session.scalar(
            select(func.count()).select_from(ModelVersion).where(ModelVersion.model_id == model.id)
        )
        assert count == 1


def test_a_claimed_stage_is_not_run_twice(model):
    job_id, _ = _job_in(
        model, JobStatus.unlearning, claim_token="someone-else", heartbeat_at=utcnow()
    )
    jobs.run_unlearn(job_id)  # the duplicate delivery sees the live claim and returns
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        assert job.claim_token == "someone-else" and job.attempts == 0


def test_stalled_claim_is_released_and_requeued_but_live_one_is_not(make_model):
    stale, _ = _job_in(
        make_model(),
        JobStatus.unlearning,
        claim_token="dead-worker",
        heartbeat_at=utcnow() - timedelta(minutes=10),
    )
    with session_scope() as session:
        session.execute(text("DELETE FROM outbox"))
    live, _ = _job_in(
        make_model(), JobStatus.verifying, claim_token="live-worker", heartbeat_at=utcnow()
    )
    with session_scope() as session:
        session.execute(text("DELETE FROM outbox"))
    recovery.requeue_stalled_jobs()
    with session_scope() as session:
        assert session.get(UnlearningJob, stale).claim_token is None
        assert session.get(UnlearningJob, live).claim_token == "live-worker"
        tasks = session.execute(select(OutboxMessage.task, OutboxMessage.job_id)).all()
        assert ("unlearn", stale) in [tuple(t) for t in tasks]
        assert all(job != live for _, job in tasks)
        events = session.scalars(
            select(AuditEvent.action).where(AuditEvent.entity_id == stale)
        ).all()
        assert "job.requeued" in events


def test_encryption_keys_rotate_without_losing_data(model, monkeypatch):
    import base64

    from app.settings import get_settings

    req = _submit(model, subject="Rotating Rosa", answer="Keyport")
    old = get_settings().secret_key
    new = base64.b64encode(b"n" * 32).decode()
    try:
        monkeypatch.setenv("LETHE_SECRET_KEY", new)
        monkeypatch.setenv("LETHE_PREVIOUS_SECRET_KEYS", old)
        monkeypatch.setenv("LETHE_SUBJECT_HASH_KEY", old)  # keep subject hashes stable
        get_settings.cache_clear()
        with session_scope() as session:
            blob = session.get(ErasureRequest, req.id).forget_ciphertext
        assert not privacy.sealed_with_current_key(blob)
        assert privacy.decrypt_items(blob, req.id)[0]["answer"] == "Keyport"  # old key works
        assert privacy.rotate_ciphertexts() >= 1
        monkeypatch.setenv("LETHE_PREVIOUS_SECRET_KEYS", "")  # the old key is gone now
        get_settings.cache_clear()
        with session_scope() as session:
            row = session.get(ErasureRequest, req.id)
            assert privacy.decrypt_items(row.forget_ciphertext, req.id)[0]["answer"] == "Keyport"
            assert row.subject_hash == privacy.subject_hash("Rotating Rosa")
    finally:  # rotate back, so the rest of the run keeps reading its data
        monkeypatch.setenv("LETHE_SECRET_KEY", old)
        monkeypatch.setenv("LETHE_PREVIOUS_SECRET_KEYS", new)
        get_settings.cache_clear()
        privacy.rotate_ciphertexts()
        monkeypatch.undo()
        get_settings.cache_clear()


def test_partial_batches_wait_up_to_the_maximum_wait(make_model, monkeypatch):
    from app.settings import get_settings

    model = make_model()
    monkeypatch.setenv("LETHE_BATCH_MAX_WAIT_S", "3600")
    get_settings.cache_clear()
    try:
        first = _submit(model, "Waiting One")
        second = _submit(model, "Waiting Two")
        with session_scope() as session:
            assert session.get(ErasureRequest, first.id).status == "received"  # held back
            # once the oldest has waited long enough, both go in one job, earliest due first
            session.get(ErasureRequest, first.id).received_at -= timedelta(hours=2)
        recovery.schedule_waiting_models()
        with session_scope() as session:
            a, b = session.get(ErasureRequest, first.id), session.get(ErasureRequest, second.id)
            assert a.status == b.status == "queued" and a.job_id == b.job_id
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_training_and_verification_use_disjoint_never_seen_people(model, monkeypatch):
    """The stopping rule aims at one half of the holdout people; the certificate's
    never-seen baseline is the other half, so verification does not read the rule's own
    target back."""
    import workers.engine.training as training
    import workers.engine.verifier as verifier
    from workers.engine.qa import load_jsonl

    seen: dict[str, list[set[str]]] = {"train": [], "verify": []}
    real_unlearning, real_measure = training.run_unlearning, verifier.measure_full

    def unlearning(*args, holdout=None, **kwargs):
        seen["train"].append({ex.question for ex in holdout})
        return real_unlearning(*args, holdout=holdout, **kwargs)

    def measure(model_, tok, forget, retain, holdout, *args, **kwargs):
        seen["verify"].append({ex.question for ex in holdout})
        return real_measure(model_, tok, forget, retain, holdout, *args, **kwargs)

    monkeypatch.setattr(training, "run_unlearning", unlearning)
    monkeypatch.setattr(verifier, "measure_full", measure)
    job_id, _ = _job_in(model, JobStatus.queued, config={"max_steps": 2})
    jobs.run_unlearn(job_id)
    jobs.run_verify(job_id)

    rows = load_jsonl(model.holdout_path)
    subject_of = {r["question"]: r["subject"] for r in rows}
    assert len(seen["train"]) == 1 and len(seen["verify"]) == 2  # parent and candidate
    trained, verified = seen["train"][0], seen["verify"][0]
    assert seen["verify"][1] == verified
    assert trained and verified and trained | verified == set(subject_of)
    assert not {subject_of[q] for q in trained} & {subject_of[q] for q in verified}
