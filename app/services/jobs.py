"""The pipeline's stages for one unlearning job: unlearn → verify → publish.

Each stage is idempotent: it claims the job row (a conditional update that succeeds for
one caller only), works, and finishes with a conditional transition that also enqueues
the next stage. A duplicate delivery finds the job claimed or moved on and does nothing.
A claim holder writes heartbeats; when they stop (the worker died), the maintenance loop
releases the claim and re-enqueues the stage (see :mod:`app.services.recovery`).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import (
    Certificate,
    ErasureRequest,
    JobStatus,
    Model,
    ModelVersion,
    RequestStatus,
    UnlearningJob,
)
from app.db.session import rowcount, session_scope
from app.observability import STAGE_SECONDS, correlation_id
from app.services import audit, dispatch, privacy, registry, scheduling, versions
from app.settings import get_settings

log = logging.getLogger("lethe.jobs")

# stage claims per job (a normal job takes two: unlearn, verify); restarts count too
MAX_ATTEMPTS = 6
PROGRESS_INTERVAL_S = 1.0


class ClaimLost(Exception):  # noqa: N818 - a state, not an error of ours
    """Another worker took this job's stage over (ours was presumed dead)."""


@dataclass
class Claim:
    """A stage held by this process; heartbeats keep it alive while the stage runs."""

    job_id: str
    token: str
    tenant_id: str
    lost: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _beat(self) -> None:
        interval = max(0.5, get_settings().job_lease_s / 4)
        while not self._stop.wait(interval):
            try:
                with session_scope() as session:
                    res = session.execute(
                        update(UnlearningJob)
                        .where(
                            UnlearningJob.id == self.job_id, UnlearningJob.claim_token == self.token
                        )
                        .values(heartbeat_at=utcnow())
                        .returning(UnlearningJob.cancel_requested)
                    ).first()
                if res is None:
                    self.lost.set()
                    return
                if res[0]:
                    self.cancel.set()
            except Exception as exc:  # database blip: the next beat tries again
                log.warning("heartbeat for job %s failed: %s", self.job_id, exc)

    def __enter__(self) -> Claim:
        self._thread = threading.Thread(target=self._beat, name="lethe-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _claim(job_id: str, statuses: tuple[JobStatus, ...], becomes: JobStatus) -> Claim | None:
    """Take the unclaimed job if it is in one of ``statuses``; None if it is not ours."""
    token = str(uuid.uuid4())
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        if job is None or job.status not in statuses or job.claim_token is not None:
            return None
        if job.attempts >= MAX_ATTEMPTS and job.status == becomes:
            _fail(session, job, f"gave up after {job.attempts} attempts at {becomes.value}")
            return None
        now = utcnow()
        res = session.execute(
            update(UnlearningJob)
            .where(
                UnlearningJob.id == job_id,
                UnlearningJob.status == job.status,
                UnlearningJob.claim_token.is_(None),
            )
            .values(
                status=becomes,
                claim_token=token,
                heartbeat_at=now,
                attempts=UnlearningJob.attempts + 1,
                started_at=job.started_at or now,
            )
        )
        if rowcount(res) != 1:
            return None
        if job.status != becomes:
            _set_requests(session, job_id, RequestStatus(becomes.value))
            audit.record(session, job.tenant_id, f"job.{becomes.value}", "unlearning_job", job_id)
    return Claim(job_id, token, job.tenant_id)


def _set_requests(session: Session, job_id: str, status: RequestStatus, **values: Any) -> None:
    requests = session.scalars(select(ErasureRequest).where(ErasureRequest.job_id == job_id))
    for request in requests:
        request.status = status
        for key, value in values.items():
            setattr(request, key, value)
        audit.record(
            session,
            request.tenant_id,
            f"request.{status.value}",
            "erasure_request",
            request.id,
            job_id=job_id,
        )


def _transition(session: Session, claim: Claim, becomes: JobStatus, **values: Any) -> None:
    """Finish the claimed stage: move to ``becomes`` and release the claim, or raise
    :class:`ClaimLost` when the claim is no longer ours."""
    res = session.execute(
        update(UnlearningJob)
        .where(UnlearningJob.id == claim.job_id, UnlearningJob.claim_token == claim.token)
        .values(status=becomes, claim_token=None, heartbeat_at=utcnow(), **values)
    )
    if rowcount(res) != 1:
        raise ClaimLost(claim.job_id)
    audit.record(session, claim.tenant_id, f"job.{becomes.value}", "unlearning_job", claim.job_id)


def _fail(session: Session, job: UnlearningJob, reason: str) -> None:
    job.status = JobStatus.failed
    job.error = reason
    job.claim_token = None
    job.finished_at = utcnow()
    _set_requests(session, job.id, RequestStatus.failed, error=reason)
    audit.record(
        session, job.tenant_id, "job.failed", "unlearning_job", job.id, reason=reason[:500]
    )
    scheduling.schedule(session, job.model_id)


def _fail_claimed(claim: Claim, reason: str) -> None:
    def fail() -> None:
        with session_scope() as session:
            job = session.get(UnlearningJob, claim.job_id)
            if job is not None and job.claim_token == claim.token:
                _fail(session, job, reason)

    _db_retry(fail, f"failing job {claim.job_id}")
    dispatch.flush_outbox()


@dataclass
class JobInputs:
    model: Model
    parent: ModelVersion
    job: UnlearningJob
    forget_rows: list[dict[str, Any]]
    # everything ever erased from this model (this batch included), so that no retain
    # set re-teaches it: item digests and keyed subject hashes
    erased_digests: set[str]
    erased_subjects: set[str]


def _inputs(job_id: str) -> JobInputs:
    with session_scope() as session:
        job = session.get(UnlearningJob, job_id)
        assert job is not None
        model = session.get(Model, job.model_id)
        parent = session.get(ModelVersion, job.parent_version_id)
        assert model is not None and parent is not None
        rows: list[dict[str, Any]] = []
        for request in session.scalars(
            select(ErasureRequest).where(ErasureRequest.job_id == job_id)
        ):
            if request.forget_ciphertext is None:
                raise RuntimeError(f"forget payload of request {request.id} is gone")
            rows.extend(privacy.decrypt_items(request.forget_ciphertext, request.id))
        digests: set[str] = set()
        subjects: set[str] = set()
        for item_digests, subject in session.execute(
            select(ErasureRequest.forget_digests, ErasureRequest.subject_hash).where(
                ErasureRequest.model_id == model.id,
                (ErasureRequest.job_id == job_id)
                | (ErasureRequest.status == RequestStatus.completed),
            )
        ):
            digests.update(item_digests)
            subjects.add(subject)
        session.expunge_all()
    return JobInputs(model, parent, job, rows, digests, subjects)


@dataclass
class JobSets:
    """The examples of one job. ``forget`` is this batch (what is trained on); ``replay``
    the items of earlier erasures the corpus still holds, verified but not trained on:
    the parent already has them at a stranger's level, and pushing them further would
    make those people stand out the other way. ``retain`` trains the retain term;
    ``retain_check`` is kept out of training for verification (``qa.split_retain``).
    Likewise the never-seen people: ``holdout_stop`` is what training's stopping rule
    aims at, ``holdout`` the disjoint people verification measures against
    (``qa.split_holdout``)."""

    forget: list[Any]
    retain: list[Any]
    holdout: list[Any]
    retain_check: list[Any]
    replay: list[Any]
    holdout_stop: list[Any]

    @property
    def verify_forget(self) -> list[Any]:
        """What verification checks is forgotten: this batch and every earlier erasure
        the corpus still holds (a new adapter must not bring anyone back)."""
        return self.forget + self.replay


def _examples(inputs: JobInputs) -> JobSets:
    """Forget, retain and holdout examples (training and check parts). Retain = the
    model's retain corpus less everything erased from the model so far, this batch
    included: the same item (by digest, or the same question or text) or the same data
    subject (by keyed hash).

    Items erased by earlier jobs that the corpus still holds are replayed into
    verification: unlearning a new subject must not bring an earlier one back."""
    from workers.engine.qa import (
        PromptTemplate,
        examples_from_rows,
        load_jsonl,
        split_holdout,
        split_retain,
    )

    template = PromptTemplate(inputs.model.prompt_template)
    forget = examples_from_rows(inputs.forget_rows, template)
    erased = {r.get("question") or r.get("text") for r in inputs.forget_rows}

    def still_kept(row: dict[str, Any]) -> bool:
        item = (
            {"question": row["question"], "answer": row["answer"]}
            if row.get("question") is not None
            else {"text": row.get("text")}
        )
        return (
            (row.get("question") or row.get("text")) not in erased
            and privacy.item_digest(item) not in inputs.erased_digests
            and not (
                row.get("subject")
                and privacy.subject_hash(str(row["subject"])) in inputs.erased_subjects
            )
        )

    corpus = load_jsonl(inputs.model.retain_path)
    retain_rows = [r for r in corpus if still_kept(r)]
    replay = [
        {"question": r["question"], "answer": r["answer"]}
        for r in corpus
        if not still_kept(r) and r.get("question") is not None and r["question"] not in erased
    ]
    train, check = split_retain(retain_rows)
    holdout_stop, holdout_check = split_holdout(load_jsonl(inputs.model.holdout_path))
    return JobSets(
        forget=forget,
        retain=examples_from_rows(train, template),
        holdout=examples_from_rows(holdout_check, template),
        retain_check=examples_from_rows(check, template),
        replay=examples_from_rows(replay, template),
        holdout_stop=examples_from_rows(holdout_stop, template),
    )


def requested_config(job: UnlearningJob) -> dict[str, Any]:
    """The method settings the job was created with (``npo`` when none was named)."""
    return {"method": job.method or "npo", **job.config}


def attempt_config(job: UnlearningJob) -> dict[str, Any]:
    """The method settings of the job's next unlearning attempt: the requested ones, or
    the escalated ones a failed verification left."""
    retry = (job.metrics or {}).get("retry_config")
    return dict(retry) if retry else requested_config(job)


DB_ERRORS = (OperationalError, InterfaceError)


def json_safe(value: Any) -> Any:
    """NaN and infinities become null: JSON (and PostgreSQL's JSONB) has no such numbers,
    and an empty evaluation set yields NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


T = TypeVar("T")


def _db_retry(fn: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Run a transaction, retrying while the database is unreachable (a restart or
    fail-over takes seconds); about 30 s in all before giving up."""
    delay = 0.5
    for attempt in range(attempts):
        try:
            return fn()
        except DB_ERRORS as exc:
            if attempt == attempts - 1:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def _write_progress(
    job_id: str, claim: Claim, step: int, total: int, loss: float, eta: float | None
) -> Any:
    with session_scope() as session:
        return session.execute(
            update(UnlearningJob)
            .where(UnlearningJob.id == job_id, UnlearningJob.claim_token == claim.token)
            .values(
                step=step,
                total_steps=total,
                loss=float(loss),
                eta_seconds=eta,
                heartbeat_at=utcnow(),
            )
            .returning(UnlearningJob.cancel_requested)
        ).first()


def stage(name: str) -> Callable[[Callable[[str], None]], Callable[[str], None]]:
    """Run a stage under its job's correlation id, timed into the stage histogram."""

    def wrap(fn: Callable[[str], None]) -> Callable[[str], None]:
        @functools.wraps(fn)
        def run(job_id: str) -> None:
            try:
                with session_scope() as session:
                    cid = session.scalar(
                        select(UnlearningJob.correlation_id).where(UnlearningJob.id == job_id)
                    )
            except Exception:
                cid = None
            token = correlation_id.set(cid or f"job-{job_id}")
            started = time.perf_counter()
            outcome = "error"
            try:
                log.info("stage %s of job %s starts", name, job_id)
                fn(job_id)
                outcome = "done"
            finally:
                STAGE_SECONDS.labels(name, outcome).observe(time.perf_counter() - started)
                correlation_id.reset(token)

        return run

    return wrap


@stage("unlearn")
def run_unlearn(job_id: str) -> None:
    """Stage 1: train the LoRA adapter that forgets the batch; then enqueue verify."""
    # imported before claiming: a fresh worker's first import of the engine (torch,
    # transformers) takes seconds, and a claim is only kept alive once its heartbeat runs
    from workers.engine.methods import parse_method_config
    from workers.engine.training import run_unlearning
    from workers.engine.unlearn import Cancelled

    claim = _claim(job_id, (JobStatus.queued, JobStatus.unlearning), JobStatus.unlearning)
    if claim is None:
        return
    settings = get_settings()
    with claim:
        try:
            inputs = _inputs(job_id)
            sets = _examples(inputs)
            config = parse_method_config(attempt_config(inputs.job))
            model, tokenizer = versions.load(inputs.model, inputs.parent)
            # a long chain is merged into a checkpoint now, while the parent is loaded
            versions.compact_if_long(inputs.model, inputs.parent, model, tokenizer)
            out_dir = (
                settings.data_dir
                / "adapters"
                / inputs.model.name
                / job_id
                / f"attempt-{inputs.job.attempts}"
            ).resolve()
            last = [0.0]

            began = time.monotonic()

            def on_progress(step: int, total: int, loss: float) -> bool:
                if claim.lost.is_set() or claim.cancel.is_set():
                    return False
                now = time.monotonic()
                if now - last[0] >= PROGRESS_INTERVAL_S or step == total:
                    last[0] = now
                    eta = (time.monotonic() - began) / step * (total - step) if step else None
                    try:
                        row = _write_progress(job_id, claim, step, total, loss, eta)
                    except DB_ERRORS as exc:  # a database blip must not cost the training
                        log.warning("progress of job %s not saved: %s", job_id, exc)
                        return True
                    if row is None:  # our claim was released: someone else runs this now
                        claim.lost.set()
                        return False
                    if row[0]:  # cancel requested: stop within a progress interval
                        claim.cancel.set()
                        return False
                return True

            result = run_unlearning(
                model,
                tokenizer,
                sets.forget,
                sets.retain,
                config,
                out_dir,
                on_progress,
                holdout=sets.holdout_stop,
            )
        except Cancelled:
            if claim.lost.is_set():
                return
            with session_scope() as session:
                job = session.get(UnlearningJob, job_id)
                if job is not None and job.claim_token == claim.token:
                    job.status = JobStatus.cancelled
                    job.claim_token = None
                    job.finished_at = utcnow()
                    _set_requests(session, job_id, RequestStatus.cancelled, forget_ciphertext=None)
                    audit.record(session, job.tenant_id, "job.cancelled", "unlearning_job", job_id)
                    scheduling.schedule(session, job.model_id)
            dispatch.flush_outbox()
            return
        except DB_ERRORS:
            raise  # transient: the claim lapses and the maintenance loop runs the stage again
        except Exception as exc:
            log.exception("unlearning job %s failed", job_id)
            _fail_claimed(claim, f"unlearning failed: {type(exc).__name__}: {exc}")
            return

        def finish() -> None:
            with session_scope() as session:
                summary = result.to_dict()
                # the loss per step, for the dashboard's curve (long runs are thinned)
                history = summary.pop("loss_history", None) or []
                every = max(1, -(-len(history) // 500))
                summary["loss_history"] = [float(v) for v in history[::every]]
                _transition(
                    session,
                    claim,
                    JobStatus.verifying,
                    adapter_path=result.adapter_dir,
                    adapter_sha256=result.adapter_sha256,
                    step=result.steps,
                    total_steps=result.steps,
                    loss=result.final_loss,
                    metrics={**inputs.job.metrics, "unlearning": json_safe(summary)},
                )
                dispatch.enqueue(session, "verify", job_id)

        try:
            _db_retry(finish, f"job {job_id} to verifying")
        except ClaimLost:
            return
    dispatch.flush_outbox()


def _attempt_summary(job: UnlearningJob, evidence: dict[str, Any]) -> dict[str, Any]:
    """One entry of ``metrics["attempts"]``: what was tried and what the verifier found."""
    unlearning = (job.metrics or {}).get("unlearning") or {}
    return {
        "attempt": len((job.metrics or {}).get("attempts") or []) + 1,
        "method": job.method,
        "config": unlearning.get("config") or attempt_config(job),
        "adapter_sha256": job.adapter_sha256,
        "unlearning": unlearning,
        "verification": evidence,
        "passed": evidence["passed"],
        "reasons": evidence["reasons"],
    }


@stage("verify")
def run_verify(job_id: str) -> None:
    """Stage 2: measure parent and candidate with the full verifier under the model's
    policy (relearning attack included), then: pass → sign the certificate and enqueue
    publish; fail with escalations left → record the attempt and unlearn again with
    stronger or gentler settings; fail otherwise → sign a failed certificate and fail
    the job with every attempt's evidence."""
    from workers.engine import certificates  # before claiming, as in run_unlearn
    from workers.engine.unlearn import ADAPTER_WEIGHTS
    from workers.engine.verifier import (
        VerifierPolicy,
        judge_full,
        measure_full,
        next_attempt,
        run_relearn,
    )
    from workers.engine.versions import load_version, sha256_file

    claim = _claim(job_id, (JobStatus.verifying,), JobStatus.verifying)
    if claim is None:
        return
    settings = get_settings()
    with claim:
        try:
            inputs = _inputs(job_id)
            job = inputs.job
            assert job.adapter_path and job.adapter_sha256
            on_disk = sha256_file(Path(job.adapter_path) / ADAPTER_WEIGHTS)
            if on_disk != job.adapter_sha256:
                _fail_claimed(
                    claim,
                    f"adapter on disk ({on_disk}) is not the one trained ({job.adapter_sha256})",
                )
                return
            with session_scope() as session:
                model_row = session.get(Model, inputs.model.id)
                assert model_row is not None
                rev = registry.current_policy(session, model_row)
                policy_revision, policy_dict = rev.revision, dict(rev.policy)
            policy = VerifierPolicy.from_dict(policy_dict)
            sets = _examples(inputs)
            started = time.perf_counter()
            weights = versions.weights_of(inputs.model, inputs.parent)
            chain = list(inputs.parent.adapter_chain)
            cached = (job.metrics or {}).get("parent_measurement") or {}
            if cached.get("policy_revision") == policy_revision and cached.get("measurement"):
                before = cached["measurement"]  # an earlier attempt measured the same parent
            else:
                parent_model, tokenizer = load_version(weights, chain, device=settings.device)
                before = measure_full(parent_model, tokenizer, sets.verify_forget,
                                      sets.retain_check, sets.holdout, None, policy,
                                      parent=True, attacked=sets.forget)
                del parent_model
            # the candidate exactly as it will be published, from the files on disk
            candidate, tokenizer = load_version(
                weights, [*chain, job.adapter_path], device=settings.device
            )
            after = measure_full(candidate, tokenizer, sets.verify_forget, sets.retain_check,
                                 sets.holdout, None, policy)
            attack = (run_relearn(before, candidate, tokenizer, sets.forget, policy)
                      if policy.relearn else None)
            # the attack targets this batch: earlier erasures were forgotten by the parent
            # already, so "how much comes back relative to the parent" is not defined for
            # them; the forgetting rules above check that they stay forgotten
            verdict = judge_full(before, after, attack, policy)
            del candidate
            evidence = verdict.evidence()
            evidence["policy_revision"] = policy_revision
            seconds = time.perf_counter() - started
            this_attempt = _attempt_summary(job, evidence)
            attempts = [*((job.metrics or {}).get("attempts") or []), this_attempt]
            retry = next_attempt(verdict, requested_config(job), len(attempts), policy)

            def escalate(direction: str, config: dict[str, Any]) -> None:
                with session_scope() as session:
                    cancelled = session.scalar(
                        select(UnlearningJob.cancel_requested).where(UnlearningJob.id == job_id)
                    )
                    if cancelled:
                        raise _CancelledWhileVerifying
                    metrics = {
                        **job.metrics,
                        "attempts": attempts,
                        "retry_config": config,
                        "parent_measurement": {"policy_revision": policy_revision,
                                               "measurement": before},
                        "verification": evidence,
                        "verification_seconds": seconds,
                    }
                    _transition(session, claim, JobStatus.queued, metrics=metrics,
                                adapter_path=None, adapter_sha256=None, step=0, loss=None,
                                eta_seconds=None)
                    audit.record(session, job.tenant_id, "job.escalated", "unlearning_job",
                                 job_id, attempt=len(attempts) + 1, direction=direction,
                                 failures=verdict.failures)
                    dispatch.enqueue(session, "unlearn", job_id)

            def record_verdict() -> None:
                with session_scope() as session:
                    requests = list(
                        session.scalars(
                            select(ErasureRequest).where(ErasureRequest.job_id == job_id)
                        )
                    )
                    document = {
                        "certificate_id": str(uuid.uuid4()),
                        "issued_at": utcnow().isoformat(),
                        "model": {
                            "id": inputs.model.id,
                            "name": inputs.model.name,
                            "base_sha256": inputs.model.base_sha256,
                        },
                        "parent_version": {
                            "id": inputs.parent.id,
                            "number": inputs.parent.number,
                            "adapter_chain_sha256": _chain_digests(session, inputs.parent),
                        },
                        # the version publishing this job creates: the parent's chain plus
                        # this adapter (its id exists only once published)
                        "new_version": {
                            "number": inputs.parent.number + 1,
                            "adapter_chain_sha256": [
                                *_chain_digests(session, inputs.parent),
                                job.adapter_sha256,
                            ],
                        },
                        "job_id": job_id,
                        "method": job.method,
                        "config": job.metrics.get("unlearning", {}).get("config", {}),
                        "adapter_sha256": job.adapter_sha256,
                        "requests": [
                            {
                                "id": r.id,
                                "subject_hash": r.subject_hash,
                                "forget_item_sha256": r.forget_digests,
                            }
                            for r in requests
                        ],
                        "verifier": evidence["verifier"],
                        "metrics": evidence["metrics"],
                        "mia_auc": evidence["mia_auc"],
                        "relearn": evidence["relearn"],
                        "thresholds": evidence["thresholds"],
                        "policy": evidence["policy"],
                        "policy_revision": policy_revision,
                        # every attempt this job made, the failed ones included
                        "attempts": [
                            {k: a.get(k) for k in ("attempt", "method", "config",
                                                   "adapter_sha256", "passed", "reasons")}
                            for a in attempts
                        ],
                        "verdict": "passed" if verdict.passed else "failed",
                        "reasons": verdict.reasons,
                        "passed": verdict.passed,
                    }
                    key = certificates.load_or_create_signing_key(settings.data_dir / "keys")
                    envelope = certificates.sign(document, key)
                    cert = Certificate(
                        id=document["certificate_id"],
                        tenant_id=inputs.model.tenant_id,
                        job_id=job_id,
                        model_id=inputs.model.id,
                        passed=verdict.passed,
                        document=envelope["document"],
                        signature=envelope["signature"],
                        key_id=key.key_id,
                    )
                    session.add(cert)
                    session.flush()
                    audit.record(
                        session,
                        inputs.model.tenant_id,
                        "certificate.issued",
                        "certificate",
                        cert.id,
                        job_id=job_id,
                        passed=verdict.passed,
                    )
                    metrics = {
                        **job.metrics,
                        "attempts": attempts,
                        "verification": evidence,
                        "verification_seconds": seconds,
                    }
                    metrics.pop("retry_config", None)
                    metrics.pop("parent_measurement", None)
                    cancelled = session.scalar(
                        select(UnlearningJob.cancel_requested).where(UnlearningJob.id == job_id)
                    )
                    if cancelled:  # asked to stop while verifying: publish nothing
                        _transition(
                            session,
                            claim,
                            JobStatus.cancelled,
                            certificate_id=cert.id,
                            metrics=metrics,
                            finished_at=utcnow(),
                        )
                        _set_requests(
                            session, job_id, RequestStatus.cancelled, forget_ciphertext=None
                        )
                        scheduling.schedule(session, inputs.model.id)
                    elif verdict.passed:
                        _transition(
                            session,
                            claim,
                            JobStatus.publishing,
                            certificate_id=cert.id,
                            metrics=metrics,
                        )
                        dispatch.enqueue(session, "publish", job_id)
                    else:
                        tries = f" after {len(attempts)} attempts" if len(attempts) > 1 else ""
                        why = "; ".join(verdict.reasons)
                        _transition(
                            session,
                            claim,
                            JobStatus.failed,
                            certificate_id=cert.id,
                            metrics=metrics,
                            error=f"verification failed{tries}: {why}",
                            finished_at=utcnow(),
                        )
                        _set_requests(
                            session,
                            job_id,
                            RequestStatus.failed,
                            error=f"verification failed{tries}: {why}",
                            certificate_id=cert.id,
                        )
                        scheduling.schedule(session, inputs.model.id)

            if retry is not None:
                try:
                    _db_retry(lambda: escalate(*retry), f"escalating job {job_id}")
                except _CancelledWhileVerifying:
                    _db_retry(record_verdict, f"verdict of job {job_id}")
            else:
                _db_retry(record_verdict, f"verdict of job {job_id}")
        except ClaimLost:
            return
        except DB_ERRORS:
            raise  # transient: the claim lapses and the maintenance loop runs the stage again
        except Exception as exc:
            log.exception("verification of job %s failed", job_id)
            _fail_claimed(claim, f"verification failed: {type(exc).__name__}: {exc}")
            return
    dispatch.flush_outbox()


class _CancelledWhileVerifying(Exception):  # noqa: N818 - a state
    """Cancel was asked while a failed attempt was being judged: no retry."""


def _chain_digests(session: Session, version: ModelVersion) -> list[str]:
    """sha256 of each adapter in ``version``'s chain, oldest first, from its lineage."""
    digests: list[str] = []
    current: ModelVersion | None = version
    while current is not None and current.adapter_sha256:
        digests.append(current.adapter_sha256)
        current = session.get(ModelVersion, current.parent_id) if current.parent_id else None
    return digests[::-1]


@stage("publish")
def run_publish(job_id: str) -> None:
    """Stage 3, one transaction: new version, ``production`` moves, requests complete,
    forget payloads purged (their digests stay for the certificate)."""

    def publish() -> None:
        with session_scope() as session:
            res = session.execute(
                update(UnlearningJob)
                .where(UnlearningJob.id == job_id, UnlearningJob.status == JobStatus.publishing)
                .values(
                    status=JobStatus.completed,
                    claim_token=None,
                    finished_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
            )
            if rowcount(res) != 1:
                return
            job = session.get(UnlearningJob, job_id)
            assert job is not None
            model = session.get(Model, job.model_id)
            parent = session.get(ModelVersion, job.parent_version_id)
            assert model is not None and parent is not None and job.adapter_path
            number = (
                session.scalar(
                    select(ModelVersion.number)
                    .where(ModelVersion.model_id == model.id)
                    .order_by(ModelVersion.number.desc())
                    .limit(1)
                )
                or 0
            ) + 1
            version = ModelVersion(
                tenant_id=model.tenant_id,
                model_id=model.id,
                number=number,
                parent_id=parent.id,
                weights_path=parent.weights_path,
                adapter_chain=[*parent.adapter_chain, job.adapter_path],
                adapter_sha256=job.adapter_sha256,
                job_id=job.id,
                certificate_id=job.certificate_id,
            )
            session.add(version)
            session.flush()
            model.production_version_id = version.id
            job.published_version_id = version.id
            _set_requests(
                session,
                job_id,
                RequestStatus.completed,
                completed_at=utcnow(),
                published_version_id=version.id,
                certificate_id=job.certificate_id,
                forget_ciphertext=None,
            )
            audit.record(session, job.tenant_id, "job.completed", "unlearning_job", job_id)
            audit.record(
                session,
                job.tenant_id,
                "version.published",
                "model_version",
                version.id,
                model_id=model.id,
                number=number,
                job_id=job_id,
            )
            scheduling.schedule(session, model.id)

    _db_retry(publish, f"publishing job {job_id}")
    dispatch.flush_outbox()


STAGES = {"unlearn": run_unlearn, "verify": run_verify, "publish": run_publish}
STAGE_OF_STATUS = {
    JobStatus.queued: "unlearn",
    JobStatus.unlearning: "unlearn",
    JobStatus.verifying: "verify",
    JobStatus.publishing: "publish",
}
