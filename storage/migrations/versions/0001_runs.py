"""The runs table.

Revision ID: 0001
Revises:
Create Date: 2026-11-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, columns) of the indexes behind the history queries and thread look-ups.
INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ix_runs_created_at", ("created_at",)),
    ("ix_runs_user_id_created_at", ("user_id", "created_at")),
    ("ix_runs_channel_id_created_at", ("channel_id", "created_at")),
    ("ix_runs_status_created_at", ("status", "created_at")),
    ("ix_runs_kind_created_at", ("kind", "created_at")),
    ("ix_runs_team_id_created_at", ("team_id", "created_at")),
    ("ix_runs_parent_id", ("parent_id",)),
    ("ix_runs_channel_id_thread_ts", ("channel_id", "thread_ts")),
    ("ix_runs_channel_id_message_ts", ("channel_id", "message_ts")),
)


def upgrade() -> None:
    # Times are sa.DateTime(timezone=True): the impl of storage.tables.UTCDateTime, written
    # out here so that this migration never changes when the models do.
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("parent_id", sa.String(32), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("command", sa.Text(), nullable=True),
        sa.Column("agent", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("team_id", sa.Text(), nullable=True),
        sa.Column("channel_id", sa.Text(), nullable=True),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("thread_ts", sa.Text(), nullable=True),
        sa.Column("message_ts", sa.Text(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_token_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("slack_writes", sa.Integer(), nullable=False),
        sa.Column("messages_json", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["runs.id"], name="fk_runs_parent_id_runs", ondelete="CASCADE"
        ),
    )
    for name, columns in INDEXES:
        op.create_index(name, "runs", list(columns))


def downgrade() -> None:
    for name, _columns in reversed(INDEXES):
        op.drop_index(name, table_name="runs")
    op.drop_table("runs")
