"""Registering models and reading their versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Model, ModelVersion, PolicyRevision
from app.services import audit
from app.services.errors import Conflict, InvalidInput, NotFound


def _check_corpus(path: str, what: str) -> int:
    from workers.engine.qa import load_jsonl

    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"{what} corpus {path!r} is not a readable file on the server")
    try:
        rows = load_jsonl(p)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{what} corpus {path!r} is not JSON Lines: {exc}") from exc
    if not rows:
        raise InvalidInput(f"{what} corpus {path!r} is empty")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not (
            ("question" in row and "answer" in row) or "text" in row
        ):
            raise InvalidInput(f"{what} corpus line {i}: needs question and answer, or text")
    return len(rows)


def register_model(
    session: Session,
    tenant_id: str,
    *,
    name: str,
    path: str,
    retain_path: str,
    holdout_path: str,
    prompt_template: str,
    unlearning_config: dict[str, Any] | None = None,
    verification_policy: dict[str, Any] | None = None,
    actor: str,
) -> Model:
    """Register a Hugging Face causal-LM directory; its base weights become version 1,
    the ``production`` version. ``verification_policy`` (overrides of the verifier's
    defaults) becomes policy revision 1."""
    from workers.engine.qa import validate_template
    from workers.engine.versions import model_fingerprint

    if session.scalar(select(Model.id).where(Model.tenant_id == tenant_id, Model.name == name)):
        raise Conflict(f"a model named {name!r} already exists")
    full_policy(verification_policy or {})  # a bad threshold fails before anything is stored
    base = Path(path)
    if not (base / "config.json").is_file():
        raise InvalidInput(f"{path!r} is not a Hugging Face model directory (no config.json)")
    try:
        validate_template(prompt_template)
    except ValueError as exc:
        raise InvalidInput(f"prompt_template: {exc}") from exc
    _check_corpus(retain_path, "retain")
    _check_corpus(holdout_path, "holdout")
    try:
        fingerprint = model_fingerprint(base)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the model weights in {path!r}: {exc}") from exc
    model = Model(
        tenant_id=tenant_id,
        name=name,
        base_path=str(base.resolve()),
        base_sha256=fingerprint,
        retain_path=str(Path(retain_path).resolve()),
        holdout_path=str(Path(holdout_path).resolve()),
        prompt_template=prompt_template,
        unlearning_config=unlearning_config or {},
    )
    session.add(model)
    session.flush()
    version = ModelVersion(tenant_id=tenant_id, model_id=model.id, number=1, adapter_chain=[])
    session.add(version)
    session.flush()
    model.production_version_id = version.id
    audit.record(session, tenant_id, "model.registered", "model", model.id, actor, name=name)
    set_policy(session, model, verification_policy or {}, actor)
    audit.record(
        session,
        tenant_id,
        "version.published",
        "model_version",
        version.id,
        actor,
        model_id=model.id,
        number=1,
    )
    return model


def get_model(session: Session, tenant_id: str, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.tenant_id == tenant_id, Model.name == name))
    if model is None:
        raise NotFound(f"no model named {name!r}")
    return model


def list_versions(session: Session, model: Model) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id)
            .order_by(ModelVersion.number)
        )
    )


def production_version(session: Session, model: Model) -> ModelVersion:
    version = session.get(ModelVersion, model.production_version_id)
    if version is None:
        raise NotFound(f"model {model.name!r} has no production version")
    return version


def full_policy(overrides: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (default: the verifier's defaults) with ``overrides`` applied, checked:
    :class:`InvalidInput` names the bad field."""
    from workers.engine.verifier import VerifierPolicy

    try:
        return VerifierPolicy.from_dict({**(base or {}), **overrides}).to_dict()
    except ValueError as exc:
        raise InvalidInput(f"verification_policy: {exc}") from exc


def _latest_policy(session: Session, model: Model, lock: bool = False) -> PolicyRevision | None:
    query = (
        select(PolicyRevision)
        .where(PolicyRevision.model_id == model.id)
        .order_by(PolicyRevision.revision.desc())
        .limit(1)
    )
    return session.scalar(query.with_for_update() if lock else query)


def current_policy(session: Session, model: Model) -> PolicyRevision:
    """The model's policy in force: its highest revision."""
    rev = _latest_policy(session, model)
    if rev is None:  # registered before policies were stored: the defaults, revision 0
        rev = PolicyRevision(tenant_id=model.tenant_id, model_id=model.id, revision=0,
                             policy=full_policy({}), created_by="lethe")
    return rev


def set_policy(
    session: Session, model: Model, overrides: dict[str, Any], actor: str
) -> PolicyRevision:
    """A new revision of the model's verification policy: the current one with
    ``overrides`` applied (the first revision starts from the defaults). Audited with the
    full policy, so the audit log alone tells what every certificate was judged by."""
    latest = _latest_policy(session, model, lock=True)
    policy = full_policy(overrides, latest.policy if latest else None)
    rev = PolicyRevision(
        tenant_id=model.tenant_id,
        model_id=model.id,
        revision=(latest.revision if latest else 0) + 1,
        policy=policy,
        created_by=actor,
    )
    session.add(rev)
    session.flush()
    audit.record(session, model.tenant_id, "model.policy_revised", "model", model.id, actor,
                 revision=rev.revision, policy=policy)
    return rev


def list_policies(session: Session, model: Model) -> list[PolicyRevision]:
    return list(
        session.scalars(
            select(PolicyRevision)
            .where(PolicyRevision.model_id == model.id)
            .order_by(PolicyRevision.revision.desc())
        )
    )
