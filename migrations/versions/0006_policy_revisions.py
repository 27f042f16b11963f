"""stored, versioned verification policies per model

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "policy_revisions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("model_id", sa.String(36), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("policy", JSON, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model_id", "revision"),
    )
    op.create_index("ix_policy_revisions_tenant_id", "policy_revisions", ["tenant_id"])
    op.create_index("ix_policy_revisions_model_id", "policy_revisions", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_policy_revisions_model_id", table_name="policy_revisions")
    op.drop_index("ix_policy_revisions_tenant_id", table_name="policy_revisions")
    op.drop_table("policy_revisions")
