"""tenants, api keys, audit chain, idempotency, webhooks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT_ID = "00000000-0000-4000-8000-000000000000"
TENANT_TABLES = ("certificates", "erasure_requests", "model_versions", "models", "unlearning_jobs")


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.Column("audit_head", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    # the tenant the bootstrap admin key acts as; rows from before tenants belong to it
    op.execute(
        sa.text(
            "INSERT INTO tenants (id, name, audit_seq, audit_head, created_at) "
            "VALUES (:id, 'default', 0, '', CURRENT_TIMESTAMP)"
        ).bindparams(id=DEFAULT_TENANT_ID)
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "scopes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_api_keys_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_idempotency_keys_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("tenant_id", "key", name=op.f("uq_idempotency_keys_tenant_id")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column(
            "event_types",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_endpoints_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_endpoints_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("endpoint_id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=60), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_deliveries_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_due", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_webhook_deliveries_endpoint_id"), ["endpoint_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_webhook_deliveries_tenant_id"), ["tenant_id"], unique=False
        )

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant_id", sa.String(length=36), nullable=False, server_default=DEFAULT_TENANT_ID
            )
        )
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("prev_hash", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("hash", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_audit_events_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant_id", sa.String(length=36), nullable=False, server_default=DEFAULT_TENANT_ID
            )
        )
        batch_op.create_index(batch_op.f("ix_certificates_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_certificates_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )

    with op.batch_alter_table("erasure_requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant_id", sa.String(length=36), nullable=False, server_default=DEFAULT_TENANT_ID
            )
        )
        batch_op.add_column(sa.Column("extension_reason", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_erasure_requests_tenant_due", ["tenant_id", "due_at"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_erasure_requests_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant_id", sa.String(length=36), nullable=False, server_default=DEFAULT_TENANT_ID
            )
        )
        batch_op.create_index(
            batch_op.f("ix_model_versions_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_model_versions_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant_id", sa.String(length=36), nullable=False, server_default=DEFAULT_TENANT_ID
            )
        )
        batch_op.drop_constraint(batch_op.f("uq_models_name"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_models_tenant_id"), ["tenant_id", "name"])
        batch_op.create_foreign_key(
            batch_op.f("fk_models_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )

    with op.batch_alter_table("unlearning_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tenant_id", sa.String(length=36), nullable=False, server_default=DEFAULT_TENANT_ID
            )
        )
        batch_op.create_index(
            batch_op.f("ix_unlearning_jobs_tenant_id"), ["tenant_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_unlearning_jobs_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )

    _chain_existing_audit_events()
    for table in (*TENANT_TABLES, "audit_events"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column("tenant_id", server_default=None)
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        for column in ("seq", "prev_hash", "hash"):
            batch_op.alter_column(column, server_default=None)
        batch_op.create_unique_constraint(
            batch_op.f("uq_audit_events_tenant_id"), ["tenant_id", "seq"]
        )


def _chain_existing_audit_events() -> None:
    """Events written before the chain existed join the default tenant's chain, in order."""
    from app.services.audit import event_hash

    bind = op.get_bind()
    rows = (
        bind.execute(
            sa.text(
                "SELECT id, at, actor, action, entity_type, entity_id, data "
                "FROM audit_events ORDER BY id"
            )
        )
        .mappings()
        .all()
    )
    head = ""
    for seq, row in enumerate(rows, 1):
        data = row["data"] if isinstance(row["data"], dict) else json.loads(row["data"])
        at = row["at"] if isinstance(row["at"], datetime) else datetime.fromisoformat(row["at"])
        digest = event_hash(
            head,
            DEFAULT_TENANT_ID,
            seq,
            at,
            row["actor"],
            row["action"],
            row["entity_type"],
            row["entity_id"],
            data,
        )
        bind.execute(
            sa.text(
                "UPDATE audit_events SET seq = :seq, prev_hash = :prev, hash = :hash WHERE id = :id"
            ),
            {"seq": seq, "prev": head, "hash": digest, "id": row["id"]},
        )
        head = digest
    bind.execute(
        sa.text("UPDATE tenants SET audit_seq = :seq, audit_head = :head WHERE id = :id"),
        {"seq": len(rows), "head": head, "id": DEFAULT_TENANT_ID},
    )


def downgrade() -> None:
    with op.batch_alter_table("unlearning_jobs", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_unlearning_jobs_tenant_id_tenants"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_unlearning_jobs_tenant_id"))
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_models_tenant_id_tenants"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_models_tenant_id"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_models_name"), ["name"])
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_model_versions_tenant_id_tenants"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_model_versions_tenant_id"))
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("erasure_requests", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_erasure_requests_tenant_id_tenants"), type_="foreignkey"
        )
        batch_op.drop_index("ix_erasure_requests_tenant_due")
        batch_op.drop_column("extension_reason")
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_certificates_tenant_id_tenants"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_certificates_tenant_id"))
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_audit_events_tenant_id_tenants"), type_="foreignkey"
        )
        batch_op.drop_constraint(batch_op.f("uq_audit_events_tenant_id"), type_="unique")
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
        batch_op.drop_column("seq")
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_endpoint_id"))
        batch_op.drop_index("ix_webhook_deliveries_due")

    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_endpoints_tenant_id"))

    op.drop_table("webhook_endpoints")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_expires_at"))

    op.drop_table("idempotency_keys")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_tenant_id"))

    op.drop_table("api_keys")
    op.drop_table("tenants")
