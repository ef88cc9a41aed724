"""The SQL of the history queries: filters, keyset paging and the stats of `/history stats`.

Every value from a filter is a bound parameter; nothing a user types is ever spliced into SQL.
The statements work unchanged on SQLite and PostgreSQL, except the day of a timestamp.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from sqlalchemy import Boolean, ColumnElement, Date, Select, bindparam, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import defer
from sqlalchemy.sql import operators
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, SQLColumnExpression, UnaryExpression
from sqlalchemy.sql.visitors import InternalTraversal

from bot.models import (
    DayCount,
    RunKind,
    RunQuery,
    RunStats,
    RunStatus,
    StatsQuery,
    percentile_index,
)
from bot.query import clean_words
from storage.tables import RunRow

LIKE_ESCAPE = "\\"
# Registered on every SQLite connection (storage.db): Python's `str.lower`, for every alphabet.
SQLITE_LOWER = "agentbot_lower"
MAX_LIMIT = 1000
STATS_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STATS_END = datetime(9999, 1, 1, tzinfo=UTC)
PERCENTILES = (0.50, 0.95)
_K = TypeVar("_K", RunStatus, RunKind)


def run_conditions(
    query: RunQuery, *, candidates: Sequence[str] | None = None
) -> list[ColumnElement[bool]]:
    """The WHERE conditions of `query` (every filter, the time range and the page cursor).

    `candidates`, from the search index, narrows a search to those run ids. The other
    columns are then wrapped in SQLite's unary `+`, which keeps their indexes out of the
    plan: looking up a few candidates by primary key beats walking a workspace's runs, but
    without ANALYZE statistics SQLite's planner cannot know that.
    """
    col = _unindexed if candidates is not None else _as_is
    conditions: list[ColumnElement[bool]] = []
    equal = (
        (RunRow.user_id, query.user_id),
        (RunRow.channel_id, query.channel_id),
        (RunRow.team_id, query.team_id),
        (RunRow.parent_id, query.parent_id),
        (RunRow.status, query.status.value if query.status is not None else None),
        (RunRow.kind, query.kind.value if query.kind is not None else None),
    )
    conditions.extend(col(column) == value for column, value in equal if value is not None)
    created = col(RunRow.created_at)
    if query.since is not None:
        conditions.append(created >= query.since)
    if query.until is not None:
        conditions.append(created < query.until)
    if query.search:
        conditions.append(prompt_contains(query.search))
        if candidates is not None:
            conditions.append(RunRow.id.in_(candidates))
    if query.before is not None:
        at, run_id = query.before.created_at, query.before.id
        # The first condition alone bounds the index range; the second breaks ties by id.
        conditions.append(created <= at)
        conditions.append(or_(created < at, RunRow.id < run_id))
    return conditions


def _as_is(column: SQLColumnExpression[Any]) -> SQLColumnExpression[Any]:
    return column


def _unindexed(column: SQLColumnExpression[Any]) -> SQLColumnExpression[Any]:
    """`+column`: the same value, but SQLite will not use an index for it."""
    # An ORM attribute stands in for its column here, as everywhere; the stubs want a column.
    return UnaryExpression(
        column,  # type: ignore[arg-type]
        operator=operators.custom_op("+"),
        type_=column.type,  # type: ignore[attr-defined]
    )


def prompt_contains(text: str) -> ColumnElement[bool]:
    """Case-insensitive substring match on the prompt, with `%`, `_` and `\\` taken literally;
    "café" finds "CAFÉ" on every database. A NUL or a lone surrogate, which no database can
    bind, is left out."""
    text = clean_words(text)
    if text.isascii():  # SQLite's lower() and LIKE fold ASCII letters themselves, in C
        return RunRow.prompt.ilike(f"%{escape_like(text)}%", escape=LIKE_ESCAPE)
    return UnicodeILike(RunRow.prompt, f"%{escape_like(text.lower())}%")


class UnicodeILike(ColumnElement[bool]):
    """`column ILIKE pattern` (a lower-case pattern, escaped with `LIKE_ESCAPE`).

    PostgreSQL's ILIKE folds every alphabet (and its pg_trgm index serves it); SQLite's
    lower() and LIKE fold only ASCII, so there the column is lowered by `SQLITE_LOWER`.
    """

    inherit_cache = True
    type = Boolean()
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy types it per instance, not ClassVar
        ("column", InternalTraversal.dp_clauseelement),
        ("pattern", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: SQLColumnExpression[str], pattern: str) -> None:
        self.column = column
        self.pattern: BindParameter[str] = bindparam(None, pattern, unique=True)


@compiles(UnicodeILike)
def _ilike(element: UnicodeILike, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.ilike(element.pattern, escape=LIKE_ESCAPE), **kw)


@compiles(UnicodeILike, "sqlite")
def _sqlite_ilike(element: UnicodeILike, compiler: SQLCompiler, **kw: Any) -> str:
    lowered = getattr(func, SQLITE_LOWER)(element.column)
    return compiler.process(lowered.like(element.pattern, escape=LIKE_ESCAPE), **kw)


def escape_like(text: str) -> str:
    """`text` with LIKE's wildcards (and the escape character) taken literally."""
    for char in (LIKE_ESCAPE, "%", "_"):
        text = text.replace(char, LIKE_ESCAPE + char)
    return text


def _time_range(since: datetime | None, until: datetime | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if since is not None:
        conditions.append(RunRow.created_at >= since)
    if until is not None:
        conditions.append(RunRow.created_at < until)
    return conditions


def runs_page(query: RunQuery, *, candidates: Sequence[str] | None = None) -> Select[RunRow]:
    """The runs of `query`, newest first (ties by id), at most its limit (clamped to
    1..1000), without `messages_json`."""
    return (
        select(RunRow)
        .options(defer(RunRow.messages_json, raiseload=True))
        .where(*run_conditions(query, candidates=candidates))
        .order_by(RunRow.created_at.desc(), RunRow.id.desc())
        .limit(max(1, min(query.limit, MAX_LIMIT)))
    )


def stats_conditions(query: StatsQuery) -> list[ColumnElement[bool]]:
    """The requests (runs without a parent) in the workspace and time range of the stats.

    A team, pipeline or comparison is one request: its children are not counted again, and
    its tokens already include theirs (`bot.team`). Both time bounds are always given, even
    for "all time": SQLite's planner (without ANALYZE statistics) then reads a covering
    index over the range (migration 0008 added `parent_id` to it), instead of an index that
    orders the GROUP BY but makes it read every row from the table, five to ten times
    slower."""
    where = _time_range(query.since or STATS_EPOCH, query.until or STATS_END)
    # An expression, not `parent_id IS NULL`: SQLite (without ANALYZE statistics) would
    # otherwise walk ix_runs_parent_id over three quarters of all runs, twenty times slower.
    where.append(func.coalesce(RunRow.parent_id, "") == "")
    if query.team_id is not None:
        where.append(RunRow.team_id == query.team_id)
    return where


def stats_statements(query: StatsQuery, *, dialect: str) -> dict[str, Select[*tuple[Any, ...]]]:
    """The grouped scans behind the stats (each over the same team and time range)."""
    where = stats_conditions(query)
    day = _day(dialect)
    user = func.coalesce(RunRow.user_id, "")
    statements: dict[str, Select[*tuple[Any, ...]]] = {
        "status_kind": select(
            RunRow.status,
            RunRow.kind,
            func.count(),
            func.coalesce(func.sum(RunRow.input_tokens), 0),
            func.coalesce(func.sum(RunRow.output_tokens), 0),
        )
        .where(*where)
        .group_by(RunRow.status, RunRow.kind),
        # Grouped by an expression that no index orders, and runs without a user dropped
        # after: otherwise SQLite walks the workspace's whole user index (to skip a sort)
        # instead of the time range.
        "users": select(user, func.count()).where(*where).group_by(user),
        "days": select(day, func.count()).where(*where).group_by(day).order_by(day),
        "timed": select(func.count()).where(*where, RunRow.duration_ms.is_not(None)),
    }
    return statements


def percentile_statement(query: StatsQuery, positions: Sequence[int]) -> Select[int, int]:
    """The durations at the given 1-based positions in ascending order (one sort)."""
    durations = select(
        RunRow.duration_ms.label("ms"),
        func.row_number().over(order_by=RunRow.duration_ms).label("rn"),
    ).where(*stats_conditions(query), RunRow.duration_ms.is_not(None))
    ranked = durations.subquery()
    return select(ranked.c.ms, ranked.c.rn).where(ranked.c.rn.in_(list(positions)))


async def run_stats(session: AsyncSession, query: StatsQuery, *, dialect: str) -> RunStats:
    """Requests by status, kind and user, tokens, p50/p95 duration and requests per UTC day
    (see `stats_conditions`)."""
    statements = stats_statements(query, dialect=dialect)
    stats = RunStats()
    by_status: dict[RunStatus, int] = {}
    by_kind: dict[RunKind, int] = {}
    for status, kind, runs, tokens_in, tokens_out in await session.execute(
        statements["status_kind"]
    ):
        stats.total += runs
        by_status[RunStatus(status)] = by_status.get(RunStatus(status), 0) + runs
        by_kind[RunKind(kind)] = by_kind.get(RunKind(kind), 0) + runs
        stats.input_tokens += int(tokens_in)
        stats.output_tokens += int(tokens_out)
    stats.by_status = _most_first(by_status)
    stats.by_kind = _most_first(by_kind)

    users = sorted(
        ((user, runs) for user, runs in await session.execute(statements["users"]) if user),
        key=lambda pair: (-pair[1], pair[0]),
    )
    stats.users = len(users)
    stats.top_users = users[: max(0, query.top_users)]

    stats.per_day = [
        DayCount(_as_date(day), runs) for day, runs in await session.execute(statements["days"])
    ]

    timed = (await session.execute(statements["timed"])).scalar_one()
    if timed:
        positions = [percentile_index(timed, fraction) + 1 for fraction in PERCENTILES]
        found = {rn: ms for ms, rn in await session.execute(percentile_statement(query, positions))}
        stats.p50_ms, stats.p95_ms = (found[position] for position in positions)
    return stats


def _day(dialect: str) -> ColumnElement[object]:
    """The UTC day of `created_at` (SQLite keeps it as UTC text: its first ten characters)."""
    if dialect == "sqlite":
        return func.substr(RunRow.created_at, 1, 10)
    return cast(func.timezone("UTC", RunRow.created_at), Date)


def _as_date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def _most_first(counts: dict[_K, int]) -> dict[_K, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))
