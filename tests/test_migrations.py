"""Schema migrations, the engine factory and its SQLite settings."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.errors import ConfigError
from bot.models import AuditEntry, RunKind, RunQuery, RunRecord
from storage.db import check, create_engine, upgrade
from storage.repository import SqlRunStore
from storage.search import is_search_object
from storage.tables import Base, RunRow
from tests.databases import postgres_engine, sqlite_engine

INDEXES = {
    "ix_runs_created_at_stats": [
        "created_at", "status", "kind", "user_id", "duration_ms", "input_tokens", "output_tokens",
        "parent_id",
    ],
    "ix_runs_user_id_created_at": ["user_id", "created_at"],
    "ix_runs_channel_id_created_at": ["channel_id", "created_at"],
    "ix_runs_status_created_at": ["status", "created_at"],
    "ix_runs_kind_created_at": ["kind", "created_at"],
    "ix_runs_team_id_user_id_created_at": ["team_id", "user_id", "created_at"],
    "ix_runs_team_id_channel_id_created_at": ["team_id", "channel_id", "created_at"],
    "ix_runs_team_id_status_created_at": ["team_id", "status", "created_at"],
    "ix_runs_team_id_kind_created_at": ["team_id", "kind", "created_at"],
    "ix_runs_team_id_created_at_stats": [
        "team_id", "created_at", "status", "kind", "user_id", "duration_ms", "input_tokens",
        "output_tokens", "parent_id",
    ],
    "ix_runs_parent_id": ["parent_id"],
    "ix_runs_channel_id_thread_ts": ["channel_id", "thread_ts"],
    "ix_runs_channel_id_message_ts": ["channel_id", "message_ts"],
}  # fmt: skip
AUDIT_INDEXES = {"ix_audit_at": ["at"], "ix_audit_team_id_at": ["team_id", "at"]}
HEAD = "0008"

# An aiosqlite worker thread that outlives its event loop fails here, not as a warning.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_unreachable: str | None
) -> AsyncIterator[AsyncEngine]:
    """A fresh, empty database: a SQLite file in a directory that does not exist yet, or a
    PostgreSQL schema of its own."""
    if request.param == "sqlite":
        opened = sqlite_engine(tmp_path / "new" / "dir" / "agentbot.db")
    else:
        opened = postgres_engine(postgres_unreachable)
    async with opened as created:
        yield created


def schema_facts(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    version = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
    return {
        "tables": sorted(t for t in inspector.get_table_names() if not is_search_object(t)),
        "search": sorted(t for t in inspector.get_table_names() if is_search_object(t)),
        "columns": {column["name"] for column in inspector.get_columns("runs")},
        "indexes": _indexes(inspector, "runs"),
        "audit_columns": {column["name"] for column in inspector.get_columns("audit")},
        "audit_indexes": _indexes(inspector, "audit"),
        "versions": list(version),
    }


def _indexes(inspector: Any, table: str) -> dict[str, list[str]]:
    return {
        index["name"]: index["column_names"]
        for index in inspector.get_indexes(table)
        if not is_search_object(index["name"])
    }


def schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "include_name": lambda name, _type, _parents: not is_search_object(name),
        },
    )
    return compare_metadata(context, Base.metadata)


async def test_upgrade_creates_the_schema(engine: AsyncEngine) -> None:
    await upgrade(engine)
    async with engine.connect() as conn:
        facts = await conn.run_sync(schema_facts)
    assert facts["tables"] == [
        "alembic_version",
        "audit",
        "run_leases",
        "run_stop_requests",
        "runs",
        "slack_events",
    ]
    record_fields = {field.name for field in dataclasses.fields(RunRecord)}
    assert facts["columns"] == record_fields
    assert facts["indexes"] == INDEXES
    assert facts["audit_columns"] == {field.name for field in dataclasses.fields(AuditEntry)}
    assert facts["audit_indexes"] == AUDIT_INDEXES
    assert facts["versions"] == [HEAD]
    if engine.dialect.name == "sqlite":
        assert facts["search"][:2] == ["run_search_keys", "runs_search"]


async def test_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    await upgrade(engine)
    async with engine.connect() as conn:
        assert await conn.run_sync(schema_diff) == []


async def test_upgrade_twice_changes_nothing(engine: AsyncEngine) -> None:
    await upgrade(engine)
    store = SqlRunStore(engine)
    record = RunRecord(kind=RunKind.ASK, prompt="kept", messages_json=b"[]")
    await store.create(record)
    async with engine.connect() as conn:
        before = await conn.run_sync(schema_facts)

    await upgrade(engine)

    async with engine.connect() as conn:
        assert await conn.run_sync(schema_facts) == before
    assert await store.get(record.id) == record


async def test_check_answers(engine: AsyncEngine) -> None:
    await check(engine)


def test_models_have_a_column_for_every_record_field() -> None:
    columns = {column.name for column in RunRow.__table__.columns}
    assert columns == {field.name for field in dataclasses.fields(RunRecord)}


PRAGMAS = ("journal_mode", "foreign_keys", "busy_timeout", "synchronous", "mmap_size")


async def test_sqlite_pragmas_on_every_new_connection(tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path / "agentbot.db") as engine:
        await upgrade(engine)
        await engine.dispose()  # the next connection is a new one
        async with engine.connect() as conn:
            pragmas = {
                name: (await conn.execute(text(f"PRAGMA {name}"))).scalar_one() for name in PRAGMAS
            }
            lowered = (await conn.execute(text("SELECT agentbot_lower('ÉTÉ Σ')"))).scalar_one()
    # No WAL and no mmap: nothing of the database is memory-mapped (a mapped file that stops
    # taking writes is a SIGBUS: tests/test_read_only_database.py).
    assert pragmas == {"journal_mode": "delete", "foreign_keys": 1, "busy_timeout": 5000,
                       "synchronous": 1, "mmap_size": 0}  # fmt: skip
    assert lowered == "été σ"


async def test_sqlite_enforces_foreign_keys(tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path / "agentbot.db") as engine:
        await upgrade(engine)
        with pytest.raises(ValueError):
            await SqlRunStore(engine).create(
                RunRecord(kind=RunKind.SUBTASK, prompt="orphan", parent_id="missing")
            )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("not a url", "not a database URL"),
        ("", "not a database URL"),
        ("mysql+aiomysql://u:p@localhost/db", "unknown driver"),
        ("sqlite+nosuchdriver:///x.db", "unknown driver"),
        ("postgresql+nosuchdriver://localhost/db", "unknown driver"),
        ("sqlite:///x.db", "driver"),  # pysqlite is not async
        ("postgresql+psycopg2://localhost/db", "driver"),  # not installed, nor async
    ],
)
def test_bad_url_is_one_line_config_error(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_engine(url)
    message = str(caught.value)
    assert message.startswith("AGENTBOT_DATABASE_URL: ")
    assert reason in message
    assert "\n" not in message


def test_sqlite_path_under_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"^AGENTBOT_DATABASE_URL: cannot open") as caught:
        create_engine(f"sqlite+aiosqlite:///{tmp_path / 'file' / 'agentbot.db'}")
    assert "\n" not in str(caught.value)


async def test_unreachable_database_is_a_config_error_on_upgrade(tmp_path: Path) -> None:
    # A directory where the database file should be: SQLite cannot open it.
    (tmp_path / "agentbot.db").mkdir()
    before = set(threading.enumerate())
    async with sqlite_engine(tmp_path / "agentbot.db") as engine:
        with pytest.raises(ConfigError, match=r"^AGENTBOT_DATABASE_URL: cannot open") as caught:
            await upgrade(engine)
    assert "\n" not in str(caught.value)
    # The failed open's aiosqlite worker has finished: it cannot call back into this test's
    # event loop once that is closed ("RuntimeError: Event loop is closed" in its thread).
    workers = [t for t in set(threading.enumerate()) - before if "_connection_worker" in t.name]
    assert [t for t in workers if t.is_alive()] == []


async def test_postgres_refusing_connections_is_a_config_error_on_upgrade() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    engine = create_engine("postgresql+asyncpg://agentbot:secret@127.0.0.1:1/agentbot")
    try:
        with pytest.raises(ConfigError, match=r"^AGENTBOT_DATABASE_URL: cannot open") as caught:
            await upgrade(engine)
    finally:
        await engine.dispose()
    message = str(caught.value)
    assert "\n" not in message
    assert "secret" not in message


def _alembic(connection: Connection, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from storage.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    getattr(command, action)(config, revision)


async def test_downgrade_to_0001_and_back_keeps_runs(engine: AsyncEngine) -> None:
    """Every migration after the first undoes cleanly, and redoing it indexes the runs that
    are there (the search index is filled from existing prompts)."""
    await upgrade(engine)
    store = SqlRunStore(engine)
    record = RunRecord(kind=RunKind.ASK, prompt="kept across downgrades", team_id="T1")
    await store.create(record)
    async with engine.begin() as conn:
        await conn.run_sync(_alembic, "downgrade", "0001")
    async with engine.connect() as conn:
        facts = await conn.run_sync(inspect_tables)
    assert facts == ["alembic_version", "runs"]

    await upgrade(engine)
    store = SqlRunStore(engine)
    assert await store.get(record.id) == record
    [found] = await store.query(RunQuery(team_id="T1", search="ACROSS down"))
    assert found.id == record.id
    async with engine.connect() as conn:
        assert await conn.run_sync(schema_diff) == []


def inspect_tables(connection: Connection) -> list[str]:
    return sorted(inspect(connection).get_table_names())
