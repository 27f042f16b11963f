"""Lethe's persistent state. Postgres (or SQLite when embedded) is the source of truth
for every status, progress figure and claim; Celery only wakes workers."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, JSONType, UTCDateTime, new_id, utcnow


class RequestStatus(enum.StrEnum):
    received = "received"
    queued = "queued"
    unlearning = "unlearning"
    verifying = "verifying"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class JobStatus(enum.StrEnum):
    queued = "queued"
    unlearning = "unlearning"
    verifying = "verifying"
    publishing = "publishing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


# the tenant the bootstrap admin key acts as; created by the initial migration
DEFAULT_TENANT_ID = "00000000-0000-4000-8000-000000000000"


class Scope(enum.StrEnum):
    requests_write = "requests:write"
    requests_read = "requests:read"
    models_admin = "models:admin"
    audit_read = "audit:read"
    admin = "admin"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # head of the tenant's audit hash chain, advanced under this row's lock
    audit_seq: Mapped[int] = mapped_column(Integer, default=0)
    audit_head: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key: ``lethe_<prefix>_<secret>``. Only the SHA-256 of the whole key is kept
    (the key is 256 bits of randomness, so a fast hash is enough); ``prefix`` finds it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


ACTIVE_JOB_STATUSES = (
    JobStatus.queued,
    JobStatus.unlearning,
    JobStatus.verifying,
    JobStatus.publishing,
)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(100))
    base_path: Mapped[str] = mapped_column(Text)
    base_sha256: Mapped[str] = mapped_column(String(64))
    retain_path: Mapped[str] = mapped_column(Text)
    holdout_path: Mapped[str] = mapped_column(Text)
    prompt_template: Mapped[str] = mapped_column(Text)
    unlearning_config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # bumped by the scheduler under the row lock, so two intakes cannot both start a job
    schedule_seq: Mapped[int] = mapped_column(Integer, default=0)
    production_version_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("model_versions.id", use_alter=True), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PolicyRevision(Base):
    """One revision of a model's verification policy (the full policy, defaults filled
    in, so a later change of Lethe's defaults never changes what a model is judged by).
    Revisions are only ever added; the model's current policy is its highest revision."""

    __tablename__ = "policy_revisions"
    __table_args__ = (UniqueConstraint("model_id", "revision"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(36), ForeignKey("models.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    policy: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(36), ForeignKey("models.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("model_versions.id"), nullable=True
    )
    # how to load this version: start from ``weights_path`` (NULL: the model's base
    # weights; else a compacted checkpoint of an ancestor) and apply ``adapter_chain``,
    # oldest first. Compaction rewrites the storage form, never the content.
    weights_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    adapter_chain: Mapped[list[str]] = mapped_column(JSONType, default=list)
    adapter_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # one version per job at most: a duplicate publish cannot create a second one
    job_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("unlearning_jobs.id", use_alter=True), unique=True, nullable=True
    )
    certificate_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("certificates.id", use_alter=True), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UnlearningJob(Base):
    __tablename__ = "unlearning_jobs"
    __table_args__ = (Index("ix_unlearning_jobs_model_status", "model_id", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(36), ForeignKey("models.id"))
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued)
    method: Mapped[str] = mapped_column(String(40), default="npo")
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    parent_version_id: Mapped[str] = mapped_column(String(36), ForeignKey("model_versions.id"))
    # the worker that holds the current stage; NULL = unclaimed. Writes by a worker are
    # conditional on its token, so a worker that lost its claim cannot overwrite anything.
    # heartbeat_at: last sign of life of the claim holder, or the time of the last
    # transition while unclaimed; the maintenance loop acts on stale values.
    claim_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    adapter_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    adapter_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # the X-Request-ID of the HTTP request that caused the job, carried into worker logs
    correlation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    certificate_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("certificates.id", use_alter=True), nullable=True
    )
    published_version_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("model_versions.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ErasureRequest(Base):
    __tablename__ = "erasure_requests"
    __table_args__ = (
        Index("ix_erasure_requests_model_status", "model_id", "status"),
        Index("ix_erasure_requests_tenant_due", "tenant_id", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"))
    model_id: Mapped[str] = mapped_column(String(36), ForeignKey("models.id"))
    # keyed hash (HMAC-SHA256) of the caller's subject id; the raw id is never stored
    subject_hash: Mapped[str] = mapped_column(String(64))
    # AES-GCM ciphertext of the forget items; NULL once purged after publishing
    forget_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # sha256 of each forget item's canonical JSON, kept for the certificate
    forget_digests: Mapped[list[str]] = mapped_column(JSONType, default=list)
    item_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=RequestStatus.received)
    job_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("unlearning_jobs.id"), nullable=True, index=True
    )
    published_version_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("model_versions.id"), nullable=True
    )
    certificate_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("certificates.id"), nullable=True
    )
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the request's own unlearning method and settings; NULL: the model's default
    unlearning_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # received + 1 month; an extension (up to two further months) records its reason
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    extension_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Certificate(Base):
    __tablename__ = "certificates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"), index=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("unlearning_jobs.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(36), ForeignKey("models.id"))
    passed: Mapped[bool] = mapped_column(Boolean)
    # the statement exactly as signed (canonical JSON text) and its Ed25519 signature
    document: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """Append-only and hash-chained per tenant: ``hash`` = SHA-256 over ``prev_hash`` and
    the event's canonical JSON, ``seq`` counts from 1 without gaps."""

    __tablename__ = "audit_events"
    __table_args__ = (UniqueConstraint("tenant_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"))
    seq: Mapped[int] = mapped_column(Integer)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    entity_type: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str] = mapped_column(String(36), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class OutboxMessage(Base):
    """A task to send to the workers, written in the transaction that made it due and
    sent after commit; unsent rows are retried, so no committed work is lost when the
    broker is down."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)


class IdempotencyKey(Base):
    """A POST's ``Idempotency-Key``, per tenant: the fingerprint of the first request and,
    once it finished, its response. Expires after 24 h."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    # the signing secret, AES-GCM encrypted (it must be recoverable to sign)
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    event_types: Mapped[list[str]] = mapped_column(JSONType, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"), index=True)
    endpoint_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("webhook_endpoints.id"), index=True
    )
    # the Standard Webhooks message id: the same for retries and manual replays
    message_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(60))
    # thin payload: ids and statuses only, never personal data
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
