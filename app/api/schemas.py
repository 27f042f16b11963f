"""Request and response bodies of API v1."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from workers.engine.methods import BaseMethodConfig, MethodConfig

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


def _no_inert_settings(config: BaseMethodConfig | None) -> BaseMethodConfig | None:
    """Refuse a method config that sets something the stopping rule in force ignores
    (:meth:`BaseMethodConfig.inert_settings`): accepted, it would look in use and not be."""
    problems = config.inert_settings() if config is not None else []
    if problems:
        raise ValueError("; ".join(problems))
    return config


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="lower-case identifier, e.g. 'support-bot'")
    path: str = Field(min_length=1, description="Hugging Face model directory on the server")
    retain_path: str = Field(
        min_length=1,
        description="JSON Lines (question/answer or text per line): what must survive",
    )
    holdout_path: str = Field(
        min_length=1,
        description="JSON Lines of comparable data the model never saw (the baseline)",
    )
    prompt_template: str = Field(
        default="Question: {question}\nAnswer: {answer}",
        description="how the model was trained on a pair; {answer} last; or 'chat'",
    )
    unlearning: MethodConfig | None = Field(
        default=None,
        description="the model's default unlearning method and settings (LoRA included); "
        "omitted: Lethe's tuned NPO + retain NLL",
    )
    verification_policy: dict[str, Any] | None = Field(
        default=None,
        description="overrides of the verifier's default thresholds (see GET "
        "/v1/models/{name}/policy for every field); stored as policy revision 1",
    )

    _unlearning_acts = field_validator("unlearning")(_no_inert_settings)


class PolicyOut(BaseModel):
    revision: int = Field(description="0: the built-in defaults (no revision stored)")
    policy: dict[str, Any] = Field(description="every threshold, defaults filled in")
    created_by: str
    created_at: datetime | None


class PolicyPage(BaseModel):
    items: list[PolicyOut]


class PolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: dict[str, Any] = Field(
        description="thresholds to change; the others keep their current values"
    )


class ModelOut(BaseModel):
    id: str
    name: str
    path: str
    base_sha256: str
    retain_path: str
    holdout_path: str
    prompt_template: str
    unlearning: dict[str, Any] = Field(description="default method and settings ({}: NPO)")
    verification_policy: PolicyOut = Field(description="the policy in force")
    production_version: int | None
    created_at: datetime


class VersionOut(BaseModel):
    id: str
    number: int
    parent_id: str | None
    adapter_sha256: str | None
    adapter_count: int
    job_id: str | None
    certificate_id: str | None
    production: bool
    created_at: datetime


class GenerateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: NonEmpty | None = Field(default=None, description="raw text to continue")
    question: NonEmpty | None = Field(
        default=None, description="a question, rendered through the model's prompt template"
    )
    max_new_tokens: int = Field(default=32, ge=1, le=512)

    @model_validator(mode="after")
    def _one_input(self) -> GenerateIn:
        if (self.prompt is None) == (self.question is None):
            raise ValueError("give exactly one of prompt or question")
        return self


class GenerateOut(BaseModel):
    text: str
    model: str
    version: int
    version_id: str


class QAItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: NonEmpty
    answer: NonEmpty
    paraphrased_questions: list[NonEmpty] = Field(
        default_factory=list,
        max_length=20,
        description="other wordings of the question: unlearned and verified as well",
    )
    paraphrased_answer: NonEmpty | None = Field(
        default=None, description="the answer reworded (with perturbed_answers: truth ratio)"
    )
    perturbed_answers: list[NonEmpty] = Field(
        default_factory=list,
        max_length=10,
        description="plausible wrong answers; the verifier reports the TOFU truth ratio",
    )


class TextItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: NonEmpty


class ErasureRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Name
    subject_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="the caller's id of the data subject; stored only as a keyed hash"
    )
    forget: list[QAItem | TextItem] = Field(min_length=1, max_length=1000)
    unlearning: MethodConfig | None = Field(
        default=None,
        description="method and settings for this request (default: the model's); "
        "requests are batched only with others that use the same",
    )

    _unlearning_acts = field_validator("unlearning")(_no_inert_settings)


RequestStatusName = Literal[
    "received", "queued", "unlearning", "verifying", "completed", "failed", "cancelled"
]


class ErasureRequestOut(BaseModel):
    id: str
    model: str
    status: RequestStatusName
    item_count: int
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None
    job_id: str | None
    published_version_id: str | None
    certificate_id: str | None
    error: str | None


class Progress(BaseModel):
    step: int
    total_steps: int
    loss: float | None
    eta_seconds: float | None = Field(default=None, description="estimated seconds left")


class JobOut(BaseModel):
    id: str
    model: str
    status: str
    method: str
    config: dict[str, Any]
    attempts: int
    progress: Progress
    metrics: dict[str, Any]
    error: str | None
    request_ids: list[str]
    certificate_id: str | None
    published_version_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class CertificateOut(BaseModel):
    id: str
    job_id: str
    passed: bool
    key_id: str
    document: dict[str, Any] = Field(description="the signed statement, parsed")
    envelope: dict[str, Any] = Field(
        description="what `lethe certificate verify` checks: document text, signature, key"
    )
    created_at: datetime


class ErasureRequestPage(BaseModel):
    items: list[ErasureRequestOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class VersionPage(BaseModel):
    items: list[VersionOut]
    next_cursor: str | None


class CertificateSummary(BaseModel):
    id: str
    job_id: str
    passed: bool
    key_id: str
    created_at: datetime


class CertificatePage(BaseModel):
    items: list[CertificateSummary]
    next_cursor: str | None


class ExtensionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    months: int = Field(ge=1, le=2, description="further months (at most two in all)")
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: datetime


ScopeName = Literal["requests:write", "requests:read", "models:admin", "audit:read", "admin"]


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    scopes: list[ScopeName] = Field(min_length=1)


class ApiKeyOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    key: str = Field(description="the secret key: shown only in this response")


class AuditEventOut(BaseModel):
    seq: int
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None
