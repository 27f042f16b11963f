"""initial schema: models, versions, erasure requests, jobs, certificates, audit, outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = sa.DateTime(timezone=True)

# Foreign keys that close a cycle between tables. SQLite accepts forward references in
# CREATE TABLE but cannot add constraints later; PostgreSQL needs the target table first.
CYCLIC = [
    ("models", "production_version_id", "model_versions"),
    ("model_versions", "job_id", "unlearning_jobs"),
    ("model_versions", "certificate_id", "certificates"),
    ("unlearning_jobs", "certificate_id", "certificates"),
]


def _fk_name(table: str, column: str, target: str) -> str:
    return f"fk_{table}_{column}_{target}"


def _inline_cyclic(table: str, sqlite: bool) -> list[sa.ForeignKeyConstraint]:
    if not sqlite:
        return []
    return [
        sa.ForeignKeyConstraint([c], [f"{t}.id"], name=_fk_name(table, c, t))
        for tb, c, t in CYCLIC
        if tb == table
    ]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "models",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("base_path", sa.Text(), nullable=False),
        sa.Column("base_sha256", sa.String(64), nullable=False),
        sa.Column("retain_path", sa.Text(), nullable=False),
        sa.Column("holdout_path", sa.Text(), nullable=False),
        sa.Column("prompt_template", sa.Text(), nullable=False),
        sa.Column("unlearning_config", JSON, nullable=False),
        sa.Column("schedule_seq", sa.Integer(), nullable=False),
        sa.Column("production_version_id", sa.String(36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", name="uq_models_name"),
        *_inline_cyclic("models", sqlite),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("model_id", sa.String(36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.String(36), nullable=True),
        sa.Column("adapter_chain", JSON, nullable=False),
        sa.Column("adapter_sha256", sa.String(64), nullable=True),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("certificate_id", sa.String(36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_model_versions_model_id_models"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["model_versions.id"], name="fk_model_versions_parent_id_model_versions"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("job_id", name="uq_model_versions_job_id"),
        sa.UniqueConstraint("model_id", "number", name="uq_model_versions_model_id"),
        *_inline_cyclic("model_versions", sqlite),
    )
    op.create_index("ix_model_versions_model_id", "model_versions", ["model_id"])
    op.create_table(
        "unlearning_jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("model_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("method", sa.String(40), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("parent_version_id", sa.String(36), nullable=False),
        sa.Column("claim_token", sa.String(36), nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("adapter_path", sa.Text(), nullable=True),
        sa.Column("adapter_sha256", sa.String(64), nullable=True),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("certificate_id", sa.String(36), nullable=True),
        sa.Column("published_version_id", sa.String(36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_unlearning_jobs_model_id_models"
        ),
        sa.ForeignKeyConstraint(
            ["parent_version_id"],
            ["model_versions.id"],
            name="fk_unlearning_jobs_parent_version_id_model_versions",
        ),
        sa.ForeignKeyConstraint(
            ["published_version_id"],
            ["model_versions.id"],
            name="fk_unlearning_jobs_published_version_id_model_versions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_unlearning_jobs"),
        *_inline_cyclic("unlearning_jobs", sqlite),
    )
    op.create_index("ix_unlearning_jobs_model_status", "unlearning_jobs", ["model_id", "status"])
    op.create_table(
        "certificates",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("model_id", sa.String(36), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["unlearning_jobs.id"], name="fk_certificates_job_id_unlearning_jobs"
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_certificates_model_id_models"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_certificates"),
    )
    op.create_index("ix_certificates_job_id", "certificates", ["job_id"])
    op.create_table(
        "erasure_requests",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("model_id", sa.String(36), nullable=False),
        sa.Column("subject_hash", sa.String(64), nullable=False),
        sa.Column("forget_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("forget_digests", JSON, nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("published_version_id", sa.String(36), nullable=True),
        sa.Column("certificate_id", sa.String(36), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name="fk_erasure_requests_certificate_id_certificates",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["unlearning_jobs.id"], name="fk_erasure_requests_job_id_unlearning_jobs"
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_erasure_requests_model_id_models"
        ),
        sa.ForeignKeyConstraint(
            ["published_version_id"],
            ["model_versions.id"],
            name="fk_erasure_requests_published_version_id_model_versions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_erasure_requests"),
    )
    op.create_index("ix_erasure_requests_job_id", "erasure_requests", ["job_id"])
    op.create_index("ix_erasure_requests_model_status", "erasure_requests", ["model_id", "status"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("entity_type", sa.String(40), nullable=False),
        sa.Column("entity_id", sa.String(36), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_entity_id", "audit_events", ["entity_id"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_sent_at", "outbox", ["sent_at"])
    if not sqlite:
        for table, column, target in CYCLIC:
            op.create_foreign_key(_fk_name(table, column, target), table, target, [column], ["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for table, column, target in CYCLIC:
            op.drop_constraint(_fk_name(table, column, target), table, type_="foreignkey")
    for table in (
        "outbox",
        "audit_events",
        "erasure_requests",
        "certificates",
        "unlearning_jobs",
        "model_versions",
        "models",
    ):
        op.drop_table(table)
