"""What processes sharing one database coordinate through: the Slack events already taken
on (so a retry delivered to another process is dropped) and Stop requests for runs live in
another process.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Written out rather than taken from storage.tables, so this migration never changes.
    op.create_table(
        "slack_events",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_slack_events"),
    )
    op.create_index("ix_slack_events_seen_at", "slack_events", ["seen_at"])
    op.create_table(
        "run_stop_requests",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_stop_requests"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name="fk_run_stop_requests_run_id_runs",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("run_stop_requests")
    op.drop_index("ix_slack_events_seen_at", table_name="slack_events")
    op.drop_table("slack_events")
