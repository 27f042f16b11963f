from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from sqlalchemy import select

from app.api import idempotent
from app.api.deps import ModelsAdminDep, ReadDep, SessionDep
from app.api.idempotent import IdempotencyKeyHeader
from app.api.schemas import (
    GenerateIn,
    GenerateOut,
    ModelCreate,
    ModelOut,
    PolicyOut,
    PolicyPage,
    PolicyUpdate,
    VersionOut,
    VersionPage,
)
from app.db.models import Model, ModelVersion, PolicyRevision
from app.services import generation, registry
from app.services.pagination import paginate

router = APIRouter(prefix="/v1/models", tags=["models"])


def policy_out(rev: PolicyRevision) -> PolicyOut:
    return PolicyOut(revision=rev.revision, policy=rev.policy, created_by=rev.created_by,
                     created_at=rev.created_at)


def model_out(session: SessionDep, model: Model) -> ModelOut:
    version = session.get(ModelVersion, model.production_version_id)
    return ModelOut(
        id=model.id,
        name=model.name,
        path=model.base_path,
        base_sha256=model.base_sha256,
        retain_path=model.retain_path,
        holdout_path=model.holdout_path,
        prompt_template=model.prompt_template,
        unlearning=model.unlearning_config,
        verification_policy=policy_out(registry.current_policy(session, model)),
        production_version=version.number if version else None,
        created_at=model.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    summary="Register a model; its base weights become version 1 (production)",
)
def create_model(
    body: ModelCreate,
    session: SessionDep,
    caller: ModelsAdminDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    def produce() -> ModelOut:
        model = registry.register_model(
            session,
            caller.tenant_id,
            name=body.name,
            path=body.path,
            retain_path=body.retain_path,
            holdout_path=body.holdout_path,
            prompt_template=body.prompt_template,
            unlearning_config=body.unlearning.model_dump(mode="json") if body.unlearning else None,
            verification_policy=body.verification_policy,
            actor=caller.actor,
        )
        session.commit()
        return model_out(session, model)

    return idempotent.respond(caller, idempotency_key, "/v1/models", body, 201, produce)


@router.get("/{name}", response_model=ModelOut)
def get_model(name: str, session: SessionDep, caller: ReadDep) -> ModelOut:
    return model_out(session, registry.get_model(session, caller.tenant_id, name))


@router.get("/{name}/policy", response_model=PolicyOut, summary="The verification policy in force")
def get_policy(name: str, session: SessionDep, caller: ReadDep) -> PolicyOut:
    model = registry.get_model(session, caller.tenant_id, name)
    return policy_out(registry.current_policy(session, model))


@router.get(
    "/{name}/policies", response_model=PolicyPage, summary="Every policy revision, newest first"
)
def list_policies(name: str, session: SessionDep, caller: ReadDep) -> PolicyPage:
    model = registry.get_model(session, caller.tenant_id, name)
    return PolicyPage(items=[policy_out(r) for r in registry.list_policies(session, model)])


@router.put(
    "/{name}/policy",
    response_model=PolicyOut,
    summary="Revise the verification policy (a new revision; earlier ones are kept)",
)
def revise_policy(
    name: str, body: PolicyUpdate, session: SessionDep, caller: ModelsAdminDep
) -> PolicyOut:
    model = registry.get_model(session, caller.tenant_id, name)
    rev = registry.set_policy(session, model, body.policy, caller.actor)
    session.commit()
    return policy_out(rev)


@router.get("/{name}/versions", response_model=VersionPage, summary="Versions, newest first")
def list_versions(
    name: str,
    session: SessionDep,
    caller: ReadDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> VersionPage:
    model = registry.get_model(session, caller.tenant_id, name)
    stmt = select(ModelVersion).where(ModelVersion.model_id == model.id)
    page = paginate(session, stmt, ModelVersion.number, ModelVersion.id, cursor, limit)
    return VersionPage(
        items=[
            VersionOut(
                id=v.id,
                number=v.number,
                parent_id=v.parent_id,
                adapter_sha256=v.adapter_sha256,
                adapter_count=len(v.adapter_chain),
                job_id=v.job_id,
                certificate_id=v.certificate_id,
                production=v.id == model.production_version_id,
                created_at=v.created_at,
            )
            for v in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.post(
    "/{name}/generate",
    response_model=GenerateOut,
    summary="Greedy generation from the production version",
)
def generate(name: str, body: GenerateIn, session: SessionDep, caller: ReadDep) -> GenerateOut:
    out = generation.generate(
        session,
        caller.tenant_id,
        name,
        prompt=body.prompt,
        question=body.question,
        max_new_tokens=body.max_new_tokens,
    )
    return GenerateOut(
        text=out.text, model=name, version=out.version_number, version_id=out.version_id
    )
