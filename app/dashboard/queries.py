"""What the dashboard pages show, read from the database. Every function takes the
viewer's tenant id and filters by it; another tenant's row answers like a missing one.

Nothing here decrypts forget payloads or sees raw subject ids: requests appear with their
keyed subject hash, counts and digests only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import (
    ACTIVE_JOB_STATUSES,
    AuditEvent,
    Certificate,
    ErasureRequest,
    JobStatus,
    Model,
    ModelVersion,
    RequestStatus,
    UnlearningJob,
)
from app.services.errors import NotFound
from app.services.pagination import Page, paginate

# A request is finished once completed or cancelled (as in the API's ``overdue`` filter);
# a failed request still owes the data subject an erasure, so it can be overdue.
FINISHED_REQUEST_STATUSES = (RequestStatus.completed.value, RequestStatus.cancelled.value)
TERMINAL_JOB_STATUSES = (
    JobStatus.completed.value,
    JobStatus.failed.value,
    JobStatus.cancelled.value,
)
DUE_SOON_DAYS = 7
THROUGHPUT_DAYS = 30
PAGE_SIZE = 25


def finite(value: Any) -> Any:
    """``value`` with NaN/inf floats (an empty evaluation set) replaced by None, so the
    JSON handed to the browser parses."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


# -- overview --------------------------------------------------------------------------


@dataclass
class Overview:
    by_status: dict[str, int]
    total: int
    overdue: list[ErasureRequest]
    overdue_count: int
    due_soon: list[ErasureRequest]
    due_soon_count: int
    active_jobs: list[UnlearningJob]
    model_names: dict[str, str]
    throughput: list[dict[str, Any]]


def _open_request(tenant_id: str) -> Any:
    return (ErasureRequest.tenant_id == tenant_id) & ErasureRequest.status.not_in(
        FINISHED_REQUEST_STATUSES
    )


def model_names(session: Session, tenant_id: str) -> dict[str, str]:
    """The tenant's models, id → name."""
    rows = session.execute(
        select(Model.id, Model.name).where(Model.tenant_id == tenant_id).order_by(Model.name)
    )
    return {mid: name for mid, name in rows}


def overview(session: Session, tenant_id: str, now: datetime | None = None) -> Overview:
    now = now or utcnow()
    counts = dict.fromkeys((s.value for s in RequestStatus), 0)
    for status, n in session.execute(
        select(ErasureRequest.status, func.count())
        .where(ErasureRequest.tenant_id == tenant_id)
        .group_by(ErasureRequest.status)
    ):
        counts[status] = n
    late = _open_request(tenant_id) & (ErasureRequest.due_at < now)
    soon = (
        _open_request(tenant_id)
        & (ErasureRequest.due_at >= now)
        & (ErasureRequest.due_at < now + timedelta(days=DUE_SOON_DAYS))
    )

    def first(cond: Any) -> list[ErasureRequest]:
        stmt = select(ErasureRequest).where(cond).order_by(ErasureRequest.due_at).limit(10)
        return list(session.scalars(stmt))

    def count(cond: Any) -> int:
        return session.scalar(select(func.count()).select_from(ErasureRequest).where(cond)) or 0

    active = list(
        session.scalars(
            select(UnlearningJob)
            .where(
                UnlearningJob.tenant_id == tenant_id,
                UnlearningJob.status.in_([s.value for s in ACTIVE_JOB_STATUSES]),
            )
            .order_by(UnlearningJob.created_at.desc())
            .limit(20)
        )
    )
    return Overview(
        by_status=counts,
        total=sum(counts.values()),
        overdue=first(late),
        overdue_count=count(late),
        due_soon=first(soon),
        due_soon_count=count(soon),
        active_jobs=active,
        model_names=model_names(session, tenant_id),
        throughput=throughput(session, tenant_id, now),
    )


def throughput(
    session: Session, tenant_id: str, now: datetime | None = None, days: int = THROUGHPUT_DAYS
) -> list[dict[str, Any]]:
    """Completed requests per UTC day, oldest first, the last ``days`` days (zeros too)."""
    now = now or utcnow()
    first_day = (now - timedelta(days=days - 1)).date()
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=now.tzinfo)
    per_day = dict.fromkeys(((first_day + timedelta(days=i)).isoformat() for i in range(days)), 0)
    # grouped here rather than in SQL: date functions differ between SQLite and Postgres,
    # and a month of one tenant's completions is small
    for (completed_at,) in session.execute(
        select(ErasureRequest.completed_at).where(
            ErasureRequest.tenant_id == tenant_id,
            ErasureRequest.status == RequestStatus.completed.value,
            ErasureRequest.completed_at >= start,
        )
    ):
        day = completed_at.date().isoformat() if completed_at else ""
        if day in per_day:
            per_day[day] += 1
    return [{"date": d, "completed": n} for d, n in per_day.items()]


# -- requests --------------------------------------------------------------------------


@dataclass
class RequestFilters:
    status: str = ""
    model: str = ""
    overdue: str = ""  # "", "yes" or "no"

    def query(self) -> dict[str, str]:
        """The non-empty filters, for links that keep them."""
        return {k: v for k, v in vars(self).items() if v}


def list_requests(
    session: Session,
    tenant_id: str,
    filters: RequestFilters,
    cursor: str | None,
    limit: int = PAGE_SIZE,
) -> Page[ErasureRequest]:
    """One page of the tenant's requests, newest first (raises InvalidInput on a bad
    cursor)."""
    stmt = select(ErasureRequest).where(ErasureRequest.tenant_id == tenant_id)
    if filters.status:
        stmt = stmt.where(ErasureRequest.status == filters.status)
    if filters.model:
        stmt = stmt.join(Model, Model.id == ErasureRequest.model_id).where(
            Model.tenant_id == tenant_id, Model.name == filters.model
        )
    if filters.overdue in ("yes", "no"):
        late = ErasureRequest.status.not_in(FINISHED_REQUEST_STATUSES) & (
            ErasureRequest.due_at < utcnow()
        )
        stmt = stmt.where(late if filters.overdue == "yes" else ~late)
    return paginate(session, stmt, ErasureRequest.received_at, ErasureRequest.id, cursor, limit)


def get_request(session: Session, tenant_id: str, request_id: str) -> ErasureRequest:
    request = session.get(ErasureRequest, request_id)
    if request is None or request.tenant_id != tenant_id:
        raise NotFound(f"no erasure request {request_id}")
    return request


def is_overdue(request: ErasureRequest, now: datetime | None = None) -> bool:
    return request.status not in FINISHED_REQUEST_STATUSES and request.due_at < (now or utcnow())


# -- jobs ------------------------------------------------------------------------------


def get_job(session: Session, tenant_id: str, job_id: str) -> UnlearningJob:
    job = session.get(UnlearningJob, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no job {job_id}")
    return job


def list_jobs(
    session: Session, tenant_id: str, status: str, cursor: str | None, limit: int = PAGE_SIZE
) -> Page[UnlearningJob]:
    stmt = select(UnlearningJob).where(UnlearningJob.tenant_id == tenant_id)
    if status:
        stmt = stmt.where(UnlearningJob.status == status)
    return paginate(session, stmt, UnlearningJob.created_at, UnlearningJob.id, cursor, limit)


def job_request_ids(session: Session, tenant_id: str, job_id: str) -> list[str]:
    return list(
        session.scalars(
            select(ErasureRequest.id)
            .where(ErasureRequest.tenant_id == tenant_id, ErasureRequest.job_id == job_id)
            .order_by(ErasureRequest.received_at)
        )
    )


def verification_rows(verification: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``{set: {before, after}}`` as rows ``{set, n, before: {...}, after: {...}}``."""
    metrics = (verification or {}).get("metrics") or {}
    rows = []
    for name, m in metrics.items():
        if not isinstance(m, dict) or not isinstance(m.get("before") or m.get("after"), dict):
            continue  # a set measured on neither model (the parent skips never-seen sets)
        before, after = m.get("before") or {}, m.get("after") or {}
        rows.append(
            {
                "set": str(name),
                "n": before.get("n", after.get("n")),
                "before": {
                    "accuracy": finite(before.get("accuracy")),
                    "mean_probability": finite(before.get("mean_probability")),
                },
                "after": {
                    "accuracy": finite(after.get("accuracy")),
                    "mean_probability": finite(after.get("mean_probability")),
                },
            }
        )
    return rows


def _scalars(data: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """The scalar (or short list) fields of ``data``, for a key/value table."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in skip or isinstance(value, dict):
            continue
        if isinstance(value, list):
            if len(value) > 8 or any(isinstance(v, dict | list) for v in value):
                continue
            value = ", ".join(str(v) for v in value)
        out[str(key)] = finite(value)
    return out


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# fields of an attempt that are shown elsewhere, or are long series
_ATTEMPT_SKIP = {
    "attempt",
    "number",
    "method",
    "config",
    "passed",
    "reasons",
    "verification",
    "unlearning",
    "loss_history",
    "metrics",
}


def attempts(job: UnlearningJob) -> list[dict[str, Any]]:
    """Every unlearning attempt of the job: the ``metrics["attempts"]`` list escalation
    writes when present, else the one attempt the job's own fields describe."""
    metrics = job.metrics or {}
    raw = metrics.get("attempts")
    items = [a for a in raw if isinstance(a, dict)] if isinstance(raw, list) else []
    if not items:
        items = [
            {
                "method": job.method,
                "config": (metrics.get("unlearning") or {}).get("config") or job.config,
                "unlearning": metrics.get("unlearning"),
                "verification": metrics.get("verification"),
            }
        ]
    out = []
    for index, item in enumerate(items, start=1):
        unlearning: dict[str, Any] = _dict(item.get("unlearning"))
        verification: dict[str, Any] | None = _dict(item.get("verification")) or None
        passed = item.get("passed", verification.get("passed") if verification else None)
        reasons = item.get("reasons") or (verification or {}).get("reasons") or []
        config = _dict(item.get("config"))
        out.append(
            {
                "number": item.get("attempt") or item.get("number") or index,
                "method": item.get("method") or job.method,
                "config": _scalars(config, set()),
                "summary": {
                    **_scalars(unlearning, {"config", "loss_history", "adapter_dir"}),
                    # where the unlearning's seconds went (setup, training, checks, ...)
                    **{
                        f"{part}_seconds": finite(value)
                        for part, value in _dict(unlearning.get("timings")).items()
                        if isinstance(value, int | float)
                    },
                    **_scalars(item, _ATTEMPT_SKIP),
                },
                "passed": passed,
                "reasons": [str(r) for r in reasons] if isinstance(reasons, list) else [],
                "verification": verification_rows(verification),
                "loss_history": finite(
                    [
                        v
                        for v in (item.get("loss_history") or unlearning.get("loss_history") or [])
                        if isinstance(v, int | float)
                    ]
                ),
            }
        )
    return out


def job_snapshot(job: UnlearningJob) -> dict[str, Any]:
    """The job's live state as JSON for the browser (page load and every SSE event)."""
    verification = (job.metrics or {}).get("verification")
    verification = verification if isinstance(verification, dict) else None
    return finite(
        {
            "id": job.id,
            "status": job.status,
            "terminal": job.status in TERMINAL_JOB_STATUSES,
            "attempts": job.attempts,
            "step": job.step,
            "total_steps": job.total_steps,
            "loss": job.loss,
            "eta_seconds": job.eta_seconds,
            "error": job.error,
            "cancel_requested": job.cancel_requested,
            "certificate_id": job.certificate_id,
            "published_version_id": job.published_version_id,
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "verification": None
            if verification is None
            else {
                "passed": verification.get("passed"),
                "rows": verification_rows(verification),
                "thresholds": verification.get("thresholds") or {},
                "reasons": verification.get("reasons") or [],
            },
            "attempt_list": attempts(job),
        }
    )


# -- models ----------------------------------------------------------------------------


@dataclass
class VersionNode:
    version: ModelVersion
    production: bool
    job: UnlearningJob | None
    certificate: Certificate | None
    children: list[VersionNode] = field(default_factory=list)


@dataclass
class ModelLineage:
    model: Model
    roots: list[VersionNode]
    version_count: int
    production_number: int | None


def lineages(session: Session, tenant_id: str) -> list[ModelLineage]:
    """Each of the tenant's models with its versions as a tree (parent → children)."""
    out = []
    for model in session.scalars(
        select(Model).where(Model.tenant_id == tenant_id).order_by(Model.name)
    ):
        versions = list(
            session.scalars(
                select(ModelVersion)
                .where(ModelVersion.tenant_id == tenant_id, ModelVersion.model_id == model.id)
                .order_by(ModelVersion.number)
            )
        )
        job_ids = [v.job_id for v in versions if v.job_id]
        cert_ids = [v.certificate_id for v in versions if v.certificate_id]
        jobs = (
            {
                j.id: j
                for j in session.scalars(
                    select(UnlearningJob).where(
                        UnlearningJob.tenant_id == tenant_id, UnlearningJob.id.in_(job_ids)
                    )
                )
            }
            if job_ids
            else {}
        )
        certs = (
            {
                c.id: c
                for c in session.scalars(
                    select(Certificate).where(
                        Certificate.tenant_id == tenant_id, Certificate.id.in_(cert_ids)
                    )
                )
            }
            if cert_ids
            else {}
        )
        nodes = {
            v.id: VersionNode(
                version=v,
                production=v.id == model.production_version_id,
                job=jobs.get(v.job_id) if v.job_id else None,
                certificate=certs.get(v.certificate_id) if v.certificate_id else None,
            )
            for v in versions
        }
        roots: list[VersionNode] = []
        for v in versions:
            parent = nodes.get(v.parent_id) if v.parent_id else None
            (parent.children if parent else roots).append(nodes[v.id])
        production = next((n.version.number for n in nodes.values() if n.production), None)
        out.append(ModelLineage(model, roots, len(versions), production))
    return out


# -- certificates ----------------------------------------------------------------------


def get_certificate(session: Session, tenant_id: str, certificate_id: str) -> Certificate:
    cert = session.get(Certificate, certificate_id)
    if cert is None or cert.tenant_id != tenant_id:
        raise NotFound(f"no certificate {certificate_id}")
    return cert


def list_certificates(
    session: Session, tenant_id: str, cursor: str | None, limit: int = PAGE_SIZE
) -> Page[Certificate]:
    stmt = select(Certificate).where(Certificate.tenant_id == tenant_id)
    return paginate(session, stmt, Certificate.created_at, Certificate.id, cursor, limit)


@dataclass
class CertificateView:
    certificate: Certificate
    document: dict[str, Any] | None
    document_text: str
    envelope: dict[str, str]
    valid: bool
    verdict: str
    checks: list[tuple[str, bool]]
    checked_at: datetime
    version: ModelVersion | None


def certificate_view(session: Session, tenant_id: str, certificate_id: str) -> CertificateView:
    """The certificate, its envelope, and its signature verified now, plus whether the
    signed document agrees with the stored record."""
    from app.settings import get_settings
    from workers.engine.certificates import public_keys, verify

    cert = get_certificate(session, tenant_id, certificate_id)
    keys = public_keys(get_settings().data_dir / "keys")
    envelope = {
        "document": cert.document,
        "signature": cert.signature,
        "key_id": cert.key_id,
        "public_key": keys.get(cert.key_id, ""),
    }
    valid, verdict = verify(envelope)
    try:
        document = json.loads(cert.document)
        document = document if isinstance(document, dict) else None
    except ValueError:
        document = None
    pretty = json.dumps(document, indent=2, sort_keys=True) if document else cert.document
    checks: list[tuple[str, bool]] = [("Ed25519 signature valid", valid)]
    if document is not None:
        checks += [
            ("document names this certificate's id", document.get("certificate_id") == cert.id),
            ("document names this certificate's job", document.get("job_id") == cert.job_id),
            ("document's verdict matches the record", bool(document.get("passed")) == cert.passed),
        ]
    version = session.scalar(
        select(ModelVersion).where(
            ModelVersion.tenant_id == tenant_id, ModelVersion.certificate_id == cert.id
        )
    )
    return CertificateView(
        certificate=cert,
        document=document,
        document_text=pretty,
        envelope=envelope,
        valid=valid,
        verdict=verdict,
        checks=checks,
        checked_at=utcnow(),
        version=version,
    )


def audit_events_for(session: Session, tenant_id: str, entity_ids: set[str]) -> list[AuditEvent]:
    """The tenant's audit events about any of ``entity_ids``, in chain order."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.entity_id.in_(entity_ids))
            .order_by(AuditEvent.seq)
        )
    )
