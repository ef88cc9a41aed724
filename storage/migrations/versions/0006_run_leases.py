"""Run leases: each process renews the leases of the runs it carries out, so that another
process starting up recovers only the runs nobody carries out any more.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Written out rather than taken from storage.tables, so this migration never changes.
    op.create_table(
        "run_leases",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_leases"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name="fk_run_leases_run_id_runs",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("run_leases")
