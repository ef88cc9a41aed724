"""Indexes for /history at a million runs, and a substring index on prompts.

- Workspace-first indexes for the filters `/history` combines with its workspace (user,
  channel, status, kind), newest first.
- The workspace/time and time indexes become covering for the stats (status, kind, user,
  duration, tokens), so `/history stats` and `agentbot stats` read an index alone.
- Prompt search: on SQLite an FTS5 trigram index (`runs_search`, contentless, no positions)
  keyed through `run_search_keys` (an INTEGER PRIMARY KEY survives VACUUM; the implicit rowid
  of `runs` may not), kept current by triggers; on PostgreSQL a pg_trgm GIN index, when the
  extension can be installed. Both only narrow the candidates: the query still checks
  `prompt ILIKE`, so the answers are the same with or without them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from alembic import op
from sqlalchemy.exc import DBAPIError, OperationalError

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger(__name__)

INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ix_runs_team_id_user_id_created_at", ("team_id", "user_id", "created_at")),
    ("ix_runs_team_id_channel_id_created_at", ("team_id", "channel_id", "created_at")),
    ("ix_runs_team_id_status_created_at", ("team_id", "status", "created_at")),
    ("ix_runs_team_id_kind_created_at", ("team_id", "kind", "created_at")),
    (
        "ix_runs_team_id_created_at_stats",
        ("team_id", "created_at", "status", "kind", "user_id", "duration_ms",
         "input_tokens", "output_tokens"),
    ),
    (
        "ix_runs_created_at_stats",
        ("created_at", "status", "kind", "user_id", "duration_ms", "input_tokens",
         "output_tokens"),
    ),
)  # fmt: skip
# Superseded by the covering indexes above, which start with the same columns.
REPLACED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ix_runs_team_id_created_at", ("team_id", "created_at")),
    ("ix_runs_created_at", ("created_at",)),
)

SQLITE_SEARCH = (
    "CREATE TABLE run_search_keys ( key INTEGER PRIMARY KEY, run_id VARCHAR(32) NOT NULL UNIQUE)",
    "CREATE VIRTUAL TABLE runs_search USING fts5("
    " prompt, content='', detail=none, tokenize='trigram')",
    "CREATE TRIGGER runs_search_insert AFTER INSERT ON runs BEGIN"
    " INSERT INTO run_search_keys (run_id) VALUES (new.id);"
    " INSERT INTO runs_search (rowid, prompt)"
    "  VALUES ((SELECT key FROM run_search_keys WHERE run_id = new.id), new.prompt);"
    " END",
    "CREATE TRIGGER runs_search_update AFTER UPDATE OF prompt ON runs"
    " WHEN old.prompt IS NOT new.prompt BEGIN"
    " INSERT INTO runs_search (runs_search, rowid, prompt)"
    "  VALUES ('delete', (SELECT key FROM run_search_keys WHERE run_id = old.id), old.prompt);"
    " INSERT INTO runs_search (rowid, prompt)"
    "  VALUES ((SELECT key FROM run_search_keys WHERE run_id = new.id), new.prompt);"
    " END",
    "CREATE TRIGGER runs_search_delete AFTER DELETE ON runs BEGIN"
    " INSERT INTO runs_search (runs_search, rowid, prompt)"
    "  VALUES ('delete', (SELECT key FROM run_search_keys WHERE run_id = old.id), old.prompt);"
    " DELETE FROM run_search_keys WHERE run_id = old.id;"
    " END",
    # The runs already there, oldest first.
    "INSERT INTO run_search_keys (run_id) SELECT id FROM runs ORDER BY created_at, id",
    "INSERT INTO runs_search (rowid, prompt)"
    " SELECT k.key, r.prompt FROM run_search_keys AS k JOIN runs AS r ON r.id = k.run_id",
)
SQLITE_SEARCH_DROP = (
    "DROP TRIGGER IF EXISTS runs_search_delete",
    "DROP TRIGGER IF EXISTS runs_search_update",
    "DROP TRIGGER IF EXISTS runs_search_insert",
    "DROP TABLE IF EXISTS runs_search",
    "DROP TABLE IF EXISTS run_search_keys",
)
PG_TRIGRAM_INDEX = "ix_runs_prompt_trgm"


def upgrade() -> None:
    for name, columns in INDEXES:
        op.create_index(name, "runs", list(columns))
    for name, _columns in REPLACED:
        op.drop_index(name, table_name="runs")
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _sqlite_search()
    elif dialect == "postgresql":
        _postgres_trigram_index()


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in SQLITE_SEARCH_DROP:
            bind.exec_driver_sql(statement)
    elif bind.dialect.name == "postgresql":
        bind.exec_driver_sql(f"DROP INDEX IF EXISTS {PG_TRIGRAM_INDEX}")
    for name, columns in REPLACED:
        op.create_index(name, "runs", list(columns))
    for name, _columns in reversed(INDEXES):
        op.drop_index(name, table_name="runs")


def _sqlite_search() -> None:
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            for statement in SQLITE_SEARCH:
                bind.exec_driver_sql(statement)
    except OperationalError as exc:  # an SQLite built without FTS5 or its trigram tokenizer
        log.warning("no prompt search index (searches scan the runs): %s", exc)


def _postgres_trigram_index() -> None:
    """A pg_trgm GIN index on prompts, if the extension is there or may be installed."""
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            schema = bind.exec_driver_sql(
                "SELECT n.nspname FROM pg_extension AS e"
                " JOIN pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
            ).scalar()
            if schema is None:
                bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
                schema = "public"
            opclass = f'"{schema}".gin_trgm_ops'
            bind.exec_driver_sql(
                f"CREATE INDEX {PG_TRIGRAM_INDEX} ON runs USING gin (prompt {opclass})"
            )
    except DBAPIError as exc:
        log.warning("no pg_trgm index on prompts (searches scan the runs): %s", exc)
