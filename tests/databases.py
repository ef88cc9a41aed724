"""The databases tests run on: SQLite files always, PostgreSQL where one answers on
127.0.0.1:5432 (each test in a schema of its own), skipped cleanly where none does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_engine

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_unreachable_reason() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it answers (probed in a thread
    so that it never touches the test's event loop)."""

    async def probe() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN, timeout=3)
        await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result(timeout=10)
        except Exception as exc:
            return f"PostgreSQL not reachable at {PG_DSN}: {type(exc).__name__}: {exc}"
    return None


@asynccontextmanager
async def postgres_engine(unreachable: str | None) -> AsyncIterator[AsyncEngine]:
    """An engine whose connections work in a fresh schema, dropped afterwards."""
    if unreachable:
        pytest.skip(unreachable)
    import asyncpg

    schema = f"agentbot_t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        engine = create_engine(PG_URL, connect_args={"server_settings": {"search_path": schema}})
        try:
            yield engine
        finally:
            await engine.dispose()
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await admin.close()


@asynccontextmanager
async def sqlite_engine(path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        yield engine
    finally:
        await engine.dispose()
