"""correlation ids on jobs and requests, job ETA

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("unlearning_jobs", "erasure_requests"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("correlation_id", sa.String(64), nullable=True))
    with op.batch_alter_table("unlearning_jobs") as batch_op:
        batch_op.add_column(sa.Column("eta_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("unlearning_jobs") as batch_op:
        batch_op.drop_column("eta_seconds")
    for table in ("unlearning_jobs", "erasure_requests"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("correlation_id")
