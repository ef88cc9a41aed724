"""The stats count requests (runs without a parent): `parent_id` joins the covering indexes
of the stats, so that `/history stats` and `agentbot stats` still read an index alone.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATS = ("status", "kind", "user_id", "duration_ms", "input_tokens", "output_tokens")
INDEXES = (
    ("ix_runs_team_id_created_at_stats", ("team_id", "created_at", *STATS)),
    ("ix_runs_created_at_stats", ("created_at", *STATS)),
)


def upgrade() -> None:
    for name, columns in INDEXES:
        op.drop_index(name, table_name="runs")
        op.create_index(name, "runs", [*columns, "parent_id"])


def downgrade() -> None:
    for name, columns in INDEXES:
        op.drop_index(name, table_name="runs")
        op.create_index(name, "runs", list(columns))
