"""The database engine (SQLite or PostgreSQL, async), schema upgrades and the health check."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.errors import ConfigError
from storage.history import SQLITE_LOWER

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SETTING = "AGENTBOT_DATABASE_URL"
BACKENDS = ("sqlite", "postgresql")

log = logging.getLogger(__name__)

# A rollback journal, not WAL, and no memory-mapped I/O: WAL's index is a memory-mapped
# `-shm` file, and when that file stops taking writes (made immutable, its file system shut
# down) the kernel kills the process with SIGBUS. Without a mapping the same fault is an
# SQLite error that the run store reports like any other. busy_timeout comes first: the
# journal mode waits for other connections.
SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA mmap_size=0",
)
SQLITE_JOURNAL = "PRAGMA journal_mode=DELETE"


def create_engine(url: str, *, connect_args: Mapping[str, Any] | None = None) -> AsyncEngine:
    """An async engine for `url` (SQLite with a rollback journal and foreign keys on, or
    PostgreSQL).

    Raises `ConfigError` naming `AGENTBOT_DATABASE_URL` when the URL cannot be used.
    Nothing is connected yet: `upgrade` or `check` opens the first connection.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"{SETTING}: not a database URL ({first_line(exc)})") from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise ConfigError(
            f"{SETTING}: unknown driver {parsed.drivername!r} "
            "(use sqlite+aiosqlite:///PATH or postgresql+asyncpg://...)"
        )
    kwargs: dict[str, Any] = {"connect_args": dict(connect_args or {})}
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # SQLite has one writer at a time: a single connection queues writes in the pool
        # (fair, in order) instead of letting many connections race for the lock and fail
        # with "database is locked" under a burst of runs. Each operation is short.
        kwargs.update(pool_size=1, max_overflow=0, pool_timeout=60)
    if backend != "sqlite":
        kwargs["pool_pre_ping"] = True
        if parsed.get_driver_name() == "asyncpg":
            # asyncpg waits 60 s by default; /healthz and start-up should fail sooner.
            kwargs["connect_args"].setdefault("timeout", 10)
    try:
        engine = create_async_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise ConfigError(f"{SETTING}: unknown driver ({first_line(exc)})") from None
    except ImportError as exc:
        raise ConfigError(f"{SETTING}: driver not installed ({first_line(exc)})") from None
    except (ArgumentError, SQLAlchemyError) as exc:
        # For example a driver that is not async ("postgresql://" means psycopg2).
        raise ConfigError(f"{SETTING}: unusable driver ({first_line(exc)})") from None
    if backend == "sqlite":
        _make_parent_dir(parsed)
        event.listen(engine.sync_engine, "do_connect", _connect_sqlite)
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    return engine


def _make_parent_dir(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    try:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{SETTING}: cannot open {database} ({exc.strerror})") from None


def _connect_sqlite(dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
    """Open an aiosqlite connection as SQLAlchemy would, through `_open_aiosqlite`."""
    return dialect.loaded_dbapi.connect(*cargs, async_creator_fn=_open_aiosqlite, **cparams)


async def _open_aiosqlite(*args: Any, **kwargs: Any) -> Any:
    """`aiosqlite.connect`, but a failed open returns only once aiosqlite's worker is done.

    When the open fails (or is cancelled), aiosqlite (0.22) stops its worker thread with a
    future it never awaits; the worker then hands that future's result to the event loop with
    `call_soon_threadsafe`. If the loop closes first (the error ends an `asyncio.run`, or a
    test), the worker dies with "RuntimeError: Event loop is closed". Waiting for the
    thread here makes that hand-over happen while the loop still runs.
    """
    import aiosqlite

    connection = aiosqlite.connect(*args, **kwargs)
    worker = connection._thread
    worker.daemon = True  # as SQLAlchemy does: an open connection never blocks exit
    try:
        return await connection
    except BaseException:
        if worker.is_alive():
            await asyncio.to_thread(worker.join, 10)
        raise


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.create_function(SQLITE_LOWER, 1, _lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        try:
            cursor.execute(SQLITE_JOURNAL)
        except sqlite3.OperationalError as exc:
            # A WAL database that another process still has open, or a read-only one:
            # readers carry on in WAL; a writer meets the same error on its first write.
            log.warning("SQLite: journal mode left as it is (%s)", exc)
    finally:
        cursor.close()


def _lower(value: object) -> object:
    """SQLite's `agentbot_lower(x)`: `x.lower()` for text in any alphabet, else `x`."""
    return value.lower() if isinstance(value, str) else value


async def upgrade(engine: AsyncEngine, *, writable: bool = True) -> None:
    """Create or upgrade the schema to the latest migration (Alembic, no alembic.ini); with
    `writable` (the default), also make sure that the database takes writes.

    Raises `ConfigError` (one line) when the database cannot be opened, or cannot be
    written: a read-only database stops `serve` at start-up rather than at its first run.
    """
    async with _begin(engine) as conn:
        try:
            await conn.run_sync(_upgrade_sync)
            if writable:  # a write that changes nothing
                await conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        except DBAPIError as exc:
            if not _cannot_write(exc):
                raise
            where = engine.url.render_as_string(hide_password=True)
            raise ConfigError(
                f"{SETTING}: {where} does not take writes (read-only?): {first_line(exc)}"
            ) from None


def _upgrade_sync(connection: Connection) -> None:
    config = Config()  # no file: Alembic then leaves the application's logging alone
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _cannot_write(exc: DBAPIError) -> bool:
    """SQLite's operational errors (read-only, disk I/O, locked, full) and PostgreSQL's
    "read-only transaction" (SQLSTATE 25006, a standby or `default_transaction_read_only`)."""
    return isinstance(exc, OperationalError) or getattr(exc.orig, "sqlstate", None) == "25006"


async def check(engine: AsyncEngine) -> None:
    """Raise if the database does not answer `SELECT 1`."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


@asynccontextmanager
async def _begin(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction; a failure to connect becomes a one-line `ConfigError`."""
    try:
        conn = await engine.connect()
    except (TimeoutError, OSError, SQLAlchemyError) as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise ConfigError(f"{SETTING}: cannot open {where} ({first_line(exc)})") from None
    try:
        async with conn.begin():
            yield conn
    finally:
        await conn.close()


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (SQLAlchemy's run to several)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


async def require_current(engine: AsyncEngine) -> None:
    """Raise `ConfigError` (one line, naming `agentbot db upgrade`) unless the schema is at
    the latest migration. Reads the Alembic revision only: the database is not changed, so
    commands that only read (`history`, `stats`) never migrate a database behind their back.
    """
    async with _begin(engine) as conn:
        current = set(await conn.run_sync(_current_heads))
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    heads = set(script.get_heads())
    if current == heads:
        return
    where = engine.url.render_as_string(hide_password=True)
    if not current:
        raise ConfigError(
            f"{SETTING}: {where} has no agentbot tables: run `agentbot db upgrade` to create them"
        )
    known = {rev.revision for rev in script.walk_revisions()}
    at = ", ".join(sorted(current))
    if current <= known:
        raise ConfigError(
            f"{SETTING}: {where} is at schema {at}, this agentbot needs {', '.join(sorted(heads))}:"
            " run `agentbot db upgrade`"
        )
    raise ConfigError(
        f"{SETTING}: {where} is at schema {at}, which this agentbot does not know "
        "(was it upgraded by a newer agentbot?)"
    )


def _current_heads(connection: Connection) -> tuple[str, ...]:
    return MigrationContext.configure(connection).get_current_heads()
