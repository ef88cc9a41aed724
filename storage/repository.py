"""`SqlRunStore`: the run store (`bot.ports.RunStore`) on SQLite or PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Collection
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, delete, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import defer

from bot.models import (
    AuditEntry,
    AuditQuery,
    RunCursor,
    RunQuery,
    RunRecord,
    RunStats,
    RunStatus,
    StatsQuery,
    utcnow,
)
from bot.ports import EVENT_TTL
from bot.text import clean_text
from storage.db import check, first_line
from storage.history import MAX_LIMIT, run_conditions, run_stats, runs_page
from storage.search import candidate_ids, sqlite_search_ready
from storage.tables import (
    AuditRow,
    RunLeaseRow,
    RunRow,
    SlackEventRow,
    StopRequestRow,
    UTCDateTime,
    audit_entry,
    audit_row,
    record_from_row,
    row_values,
)

UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
PRUNE_EVERY = 600.0  # seconds between two prunings of `slack_events` by one store


class SqlRunStore:
    """Records runs in the `runs` table; one short session per operation.

    Lists (`query`, `children`, `mark_interrupted`) leave `messages_json` out (`None`) to keep
    history queries light; `get` and `find_by_message` include it.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._search_ready: bool | None = None  # SQLite: is the FTS index there and current?
        self._pruned_at: float | None = None  # when `slack_events` was last pruned (monotonic)

    async def create(self, run: RunRecord) -> None:
        """Insert a new run; `ValueError` if its id exists or its parent does not."""
        try:
            async with self._sessions.begin() as session:
                session.add(RunRow(**_clean(row_values(run))))
        except IntegrityError as exc:
            raise ValueError(f"cannot create run {run.id}: {first_line(exc)}") from exc

    async def save(self, run: RunRecord) -> None:
        """Write the whole record (upsert by id); stored messages stay when
        `run.messages_json` is `None`. `ValueError` if its parent does not exist."""
        values = _clean(row_values(run))
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

    async def mark_interrupted(
        self,
        reason: str,
        *,
        stale_before: datetime | None = None,
        carried: Collection[str] = (),
    ) -> list[RunRecord]:
        """Mark every `queued`/`running` run `interrupted` with `reason`; return them, oldest
        first. With `stale_before`, skip runs created or with a lease renewed at or after it.
        Runs in `carried` (the asking process's own) are never taken.

        One `UPDATE … WHERE … RETURNING` takes the runs (a `NOT EXISTS` on `run_leases`
        leaves held ones alone), so of processes recovering at once each run goes to one;
        their durations follow in the same transaction.
        """
        now = utcnow()
        conditions: list[ColumnElement[bool]] = [RunRow.status.in_(UNFINISHED)]
        if stale_before is not None:
            fresh_lease = select(RunLeaseRow.run_id).where(
                RunLeaseRow.run_id == RunRow.id, RunLeaseRow.renewed_at >= stale_before
            )
            conditions += [RunRow.created_at < stale_before, ~fresh_lease.exists()]
        if carried:
            conditions.append(RunRow.id.not_in(list(carried)))
        take = (
            update(RunRow)
            .where(*conditions)
            .values(status=RunStatus.INTERRUPTED.value, error=reason, finished_at=now)
            .returning(RunRow.id)
            .execution_options(synchronize_session=False)
        )
        async with self._sessions.begin() as session:
            taken = list((await session.scalars(take)).all())
            if not taken:
                return []
            rows = (await session.scalars(_without_messages().where(RunRow.id.in_(taken)))).all()
            for row in rows:
                if row.started_at is not None:
                    row.duration_ms = max(0, int((now - row.started_at).total_seconds() * 1000))
        return sorted(
            (record_from_row(row, with_messages=False) for row in rows),
            key=lambda run: (run.created_at, run.id),
        )

    async def renew_leases(self, run_ids: Collection[str], *, now: datetime | None = None) -> None:
        """Renew the leases of `run_ids` as of `now` (default: now): one upsert, from the
        runs that exist (`INSERT … SELECT … ON CONFLICT DO UPDATE`)."""
        if not run_ids:
            return
        at = utcnow() if now is None else now
        runs = select(RunRow.id, literal(at, type_=UTCDateTime())).where(
            RunRow.id.in_(list(run_ids))
        )
        stmt = _insert(self._engine.dialect.name)(RunLeaseRow).from_select(
            ["run_id", "renewed_at"], runs
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[RunLeaseRow.run_id], set_={"renewed_at": stmt.excluded.renewed_at}
        )
        async with self._sessions.begin() as session:
            await session.execute(stmt)

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

    async def conversation_page(
        self, channel_id: str, ts: str | None, *, before: RunCursor, limit: int
    ) -> list[RunRecord]:
        """At most `limit` runs in `channel_id` strictly older than `before`, newest first,
        with their messages: those whose message or thread is `ts`, or all when it is None."""
        stmt = select(RunRow).where(*run_conditions(RunQuery(channel_id=channel_id, before=before)))
        if ts is not None:
            stmt = stmt.where(or_(RunRow.message_ts == ts, RunRow.thread_ts == ts))
        stmt = stmt.order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(limit)
        async with self._sessions() as session:
            return [record_from_row(row) for row in (await session.scalars(stmt)).all()]

    async def children(self, parent_id: str) -> list[RunRecord]:
        """The runs whose parent is `parent_id`, oldest first."""
        stmt = (
            _without_messages()
            .where(RunRow.parent_id == parent_id)
            .order_by(RunRow.created_at, RunRow.id)
        )
        return await self._records(stmt)

    async def ids_starting_with(self, prefix: str, *, limit: int = 3) -> list[str]:
        """Up to `limit` run ids that start with `prefix` (taken literally: `%` and `_` are
        not wildcards), in id order; for `history show` given the first characters of an id."""
        stmt = (
            select(RunRow.id)
            .where(RunRow.id.startswith(prefix, autoescape=True))
            .order_by(RunRow.id)
            .limit(limit)
        )
        async with self._sessions() as session:
            return list((await session.scalars(stmt)).all())

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

    async def first_delivery(self, event_id: str, *, now: datetime | None = None) -> bool:
        """Record that Slack delivered `event_id`; True only for its first delivery within
        `EVENT_TTL`, whichever process sharing the database asks first.

        One atomic upsert decides (the row count), and prunes old entries every few minutes.
        """
        now = utcnow() if now is None else now
        cutoff = now - EVENT_TTL
        stmt = _insert(self._engine.dialect.name)(SlackEventRow).values(
            event_id=event_id, seen_at=now
        )
        # An entry past its time to live is not pruned yet: taking it over counts as new.
        stmt = stmt.on_conflict_do_update(
            index_elements=[SlackEventRow.event_id],
            set_={"seen_at": stmt.excluded.seen_at},
            where=SlackEventRow.seen_at < cutoff,
        )
        async with self._sessions.begin() as session:
            first = _cursor(await session.execute(stmt)).rowcount == 1
        if self._pruned_at is None or time.monotonic() - self._pruned_at > PRUNE_EVERY:
            # Its own transaction: a failed prune must not undo the delivery just recorded.
            async with self._sessions.begin() as session:
                await session.execute(delete(SlackEventRow).where(SlackEventRow.seen_at < cutoff))
            self._pruned_at = time.monotonic()
        return first

    async def request_stop(self, run_id: str, *, by: str) -> bool:
        """Record a stop request for `run_id` by user `by`, if the run is still queued or
        running and none was recorded before; True when recorded now.

        One statement checks the run and inserts (`INSERT … SELECT … ON CONFLICT DO NOTHING`).
        """
        unfinished_run = select(
            RunRow.id, literal(by), literal(utcnow(), type_=UTCDateTime())
        ).where(RunRow.id == run_id, RunRow.status.in_(UNFINISHED))
        stmt = (
            _insert(self._engine.dialect.name)(StopRequestRow)
            .from_select(["run_id", "requested_by", "requested_at"], unfinished_run)
            .on_conflict_do_nothing(index_elements=[StopRequestRow.run_id])
        )
        async with self._sessions.begin() as session:
            return _cursor(await session.execute(stmt)).rowcount == 1

    async def stop_requests(self, run_ids: Collection[str]) -> dict[str, str]:
        """The stop requests among `run_ids`: run id → the user who asked."""
        if not run_ids:
            return {}
        stmt = select(StopRequestRow.run_id, StopRequestRow.requested_by).where(
            StopRequestRow.run_id.in_(list(run_ids))
        )
        async with self._sessions() as session:
            return {run_id: by for run_id, by in (await session.execute(stmt)).all()}

    async def _records(self, stmt: Select[RunRow]) -> list[RunRecord]:
        async with self._sessions() as session:
            rows = (await session.scalars(stmt)).all()
            return [record_from_row(row, with_messages=False) for row in rows]


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """Column values with every text cleaned (`clean_text`). Every run written passes here,
    whoever wrote its text (user, model, tool): PostgreSQL refuses NUL, and neither database
    driver can encode a lone surrogate."""
    return {name: clean_text(v) if isinstance(v, str) else v for name, v in values.items()}


def _without_messages() -> Select[RunRow]:
    return select(RunRow).options(defer(RunRow.messages_json, raiseload=True))


def _cursor(result: Result[*tuple[Any, ...]]) -> CursorResult[*tuple[Any, ...]]:
    """An INSERT's result, which is a `CursorResult` (with `rowcount`): SQLAlchemy's
    `execute()` is typed as returning `Result` for every statement."""
    return cast(CursorResult[*tuple[Any, ...]], result)


def _insert(dialect: str) -> Any:
    """The dialect's `insert`, which has `on_conflict_do_nothing`/`_do_update`."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _upsert(dialect: str, values: dict[str, Any]) -> Any:
    stmt = _insert(dialect)(RunRow).values(values)
    updates = {name: stmt.excluded[name] for name in values if name != "id"}
    if values["messages_json"] is None:
        del updates["messages_json"]
    return stmt.on_conflict_do_update(index_elements=[RunRow.id], set_=updates)
