"""`SqlRunStore`: the run store (`bot.ports.RunStore`) on SQLite or PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import defer

from bot.models import (
    AuditEntry,
    AuditQuery,
    RunQuery,
    RunRecord,
    RunStats,
    RunStatus,
    StatsQuery,
    utcnow,
)
from storage.db import check, first_line
from storage.history import MAX_LIMIT, run_conditions, run_stats, runs_page
from storage.search import candidate_ids, sqlite_search_ready
from storage.tables import (
    AuditRow,
    RunRow,
    audit_entry,
    audit_row,
    record_from_row,
    row_from_record,
    row_values,
)

UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


class SqlRunStore:
    """Records runs in the `runs` table; one short session per operation.

    Lists (`query`, `children`, `mark_interrupted`) leave `messages_json` out (`None`) to keep
    history queries light; `get` and `find_by_message` include it.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._search_ready: bool | None = None  # SQLite: is the FTS index there and current?

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
        async with self._sessions() as session:
            candidates = await self._search_candidates(session, query)
            if candidates == []:
                return []
            rows = (await session.scalars(runs_page(query, candidates=candidates))).all()
            return [record_from_row(row, with_messages=False) for row in rows]

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

    async def count(self, query: RunQuery) -> int:
        """How many runs match the query's filters (its `limit` is ignored)."""
        async with self._sessions() as session:
            candidates = await self._search_candidates(session, query)
            if candidates == []:
                return 0
            where = run_conditions(query, candidates=candidates)
            stmt = select(func.count()).select_from(RunRow).where(*where)
            return (await session.execute(stmt)).scalar_one()

    async def _search_candidates(self, session: AsyncSession, query: RunQuery) -> list[str] | None:
        """The ids the search index allows for `query.search`, or None: no narrowing."""
        if not query.search or self._engine.dialect.name != "sqlite":
            return None
        if self._search_ready is None:
            self._search_ready = await sqlite_search_ready(await session.connection())
        if not self._search_ready:
            return None
        return await candidate_ids(session, query.search)

    async def stats(self, query: StatsQuery) -> RunStats:
        """Runs by status, kind and user, tokens, p50/p95 duration and runs per UTC day."""
        async with self._sessions() as session:
            return await run_stats(session, query, dialect=self._engine.dialect.name)

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        """Append `entry` to the audit log; return a copy with its `id` set."""
        row = audit_row(entry)
        async with self._sessions.begin() as session:
            session.add(row)
            await session.flush()
            return audit_entry(row)

    async def audit_log(self, query: AuditQuery) -> list[AuditEntry]:
        """Audit entries matching the query, newest first, at most `query.limit` (1..1000)."""
        equal = (
            (AuditRow.team_id, query.team_id),
            (AuditRow.user_id, query.user_id),
            (AuditRow.outcome, query.outcome.value if query.outcome is not None else None),
        )
        conditions = [column == value for column, value in equal if value is not None]
        if query.since is not None:
            conditions.append(AuditRow.at >= query.since)
        stmt = (
            select(AuditRow)
            .where(*conditions)
            .order_by(AuditRow.at.desc(), AuditRow.id.desc())
            .limit(max(1, min(query.limit, MAX_LIMIT)))
        )
        async with self._sessions() as session:
            return [audit_entry(row) for row in (await session.scalars(stmt)).all()]

    async def _records(self, stmt: Select[tuple[RunRow]]) -> list[RunRecord]:
        async with self._sessions() as session:
            rows = (await session.scalars(stmt)).all()
            return [record_from_row(row, with_messages=False) for row in rows]


def _without_messages() -> Select[tuple[RunRow]]:
    return select(RunRow).options(defer(RunRow.messages_json, raiseload=True))


def _upsert(dialect: str, values: dict[str, Any]) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(RunRow).values(values)
    updates = {name: stmt.excluded[name] for name in values if name != "id"}
    if values["messages_json"] is None:
        del updates["messages_json"]
    return stmt.on_conflict_do_update(index_elements=[RunRow.id], set_=updates)
