"""`SqlRunStore`: the run store (`bot.ports.RunStore`) on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import defer

from bot.models import RunQuery, RunRecord, RunStatus, utcnow
from storage.db import check, first_line
from storage.tables import RunRow, record_from_row, row_from_record, row_values

MAX_LIMIT = 1000
LIKE_ESCAPE = "\\"
UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


class SqlRunStore:
    """Records runs in the `runs` table; one short session per operation.

    Lists (`query`, `children`, `mark_interrupted`) leave `messages_json` out (`None`) to keep
    history queries light; `get` and `find_by_message` include it.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def create(self, run: RunRecord) -> None:
        """Insert a new run; `ValueError` if its id exists or its parent does not."""
        try:
            async with self._sessions.begin() as session:
                session.add(row_from_record(run))
        except IntegrityError as exc:
            raise ValueError(f"cannot create run {run.id}: {first_line(exc)}") from exc

    async def save(self, run: RunRecord) -> None:
        """Write the whole record (upsert by id); stored messages stay when
        `run.messages_json` is `None`. `ValueError` if its parent does not exist."""
        values = row_values(run)
        try:
            async with self._sessions.begin() as session:
                await session.execute(_upsert(self._engine.dialect.name, values))
        except IntegrityError as exc:
            raise ValueError(f"cannot save run {run.id}: {first_line(exc)}") from exc

    async def get(self, run_id: str) -> RunRecord | None:
        async with self._sessions() as session:
            row = await session.get(RunRow, run_id)
            return record_from_row(row) if row is not None else None

    async def query(self, query: RunQuery) -> list[RunRecord]:
        """Runs matching every filter of `query`, newest first, at most `query.limit`
        (clamped to 1..1000)."""
        stmt = (
            _without_messages()
            .where(*_conditions(query))
            .order_by(RunRow.created_at.desc(), RunRow.id.desc())
            .limit(max(1, min(query.limit, MAX_LIMIT)))
        )
        return await self._records(stmt)

    async def mark_interrupted(self, reason: str) -> list[RunRecord]:
        """Mark every `queued`/`running` run `interrupted` with `reason`; return them."""
        stmt = (
            _without_messages()
            .where(RunRow.status.in_(UNFINISHED))
            .order_by(RunRow.created_at, RunRow.id)
            .with_for_update()
        )
        now = utcnow()
        async with self._sessions.begin() as session:
            rows = (await session.scalars(stmt)).all()
            for row in rows:
                row.status = RunStatus.INTERRUPTED.value
                row.error = reason
                row.finished_at = now
                if row.started_at is not None:
                    row.duration_ms = max(0, int((now - row.started_at).total_seconds() * 1000))
        return [record_from_row(row, with_messages=False) for row in rows]

    async def find_by_message(self, channel_id: str, ts: str) -> RunRecord | None:
        """The latest run in `channel_id` whose message or thread is `ts`, with its messages."""
        stmt = (
            select(RunRow)
            .where(
                RunRow.channel_id == channel_id,
                or_(RunRow.message_ts == ts, RunRow.thread_ts == ts),
            )
            .order_by(RunRow.created_at.desc(), RunRow.id.desc())
            .limit(1)
        )
        async with self._sessions() as session:
            row = (await session.scalars(stmt)).first()
            return record_from_row(row) if row is not None else None

    async def children(self, parent_id: str) -> list[RunRecord]:
        """The runs whose parent is `parent_id`, oldest first."""
        stmt = (
            _without_messages()
            .where(RunRow.parent_id == parent_id)
            .order_by(RunRow.created_at, RunRow.id)
        )
        return await self._records(stmt)

    async def ping(self) -> None:
        await check(self._engine)

    async def _records(self, stmt: Select[tuple[RunRow]]) -> list[RunRecord]:
        async with self._sessions() as session:
            rows = (await session.scalars(stmt)).all()
            return [record_from_row(row, with_messages=False) for row in rows]


def _without_messages() -> Select[tuple[RunRow]]:
    return select(RunRow).options(defer(RunRow.messages_json, raiseload=True))


def _conditions(query: RunQuery) -> Sequence[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    equal = (
        (RunRow.user_id, query.user_id),
        (RunRow.channel_id, query.channel_id),
        (RunRow.team_id, query.team_id),
        (RunRow.parent_id, query.parent_id),
        (RunRow.status, query.status.value if query.status is not None else None),
        (RunRow.kind, query.kind.value if query.kind is not None else None),
    )
    conditions.extend(column == value for column, value in equal if value is not None)
    if query.since is not None:
        conditions.append(RunRow.created_at >= query.since)
    if query.until is not None:
        conditions.append(RunRow.created_at < query.until)
    if query.search:
        pattern = f"%{escape_like(query.search)}%"
        conditions.append(RunRow.prompt.ilike(pattern, escape=LIKE_ESCAPE))
    return conditions


def escape_like(text: str) -> str:
    """`text` with LIKE's wildcards (and the escape character) taken literally."""
    for char in (LIKE_ESCAPE, "%", "_"):
        text = text.replace(char, LIKE_ESCAPE + char)
    return text


def _upsert(dialect: str, values: dict[str, Any]) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(RunRow).values(values)
    updates = {name: stmt.excluded[name] for name in values if name != "id"}
    if values["messages_json"] is None:
        del updates["messages_json"]
    return stmt.on_conflict_do_update(index_elements=[RunRow.id], set_=updates)
