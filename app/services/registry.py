"""Registering models and reading their versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Model, ModelVersion
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
    actor: str,
) -> Model:
    """Register a Hugging Face causal-LM directory; its base weights become version 1,
    the ``production`` version."""
    from workers.engine.qa import validate_template
    from workers.engine.versions import model_fingerprint

    if session.scalar(select(Model.id).where(Model.tenant_id == tenant_id, Model.name == name)):
        raise Conflict(f"a model named {name!r} already exists")
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
