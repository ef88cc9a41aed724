"""History at scale: N synthetic runs, then p50/p95 of the queries `/history` and the CLI make.

    python -m bench.history [--runs 1000000] [--db PATH] [--explain]
    python -m bench.history --url postgresql+asyncpg://postgres@127.0.0.1:5432/test

SQLite (the default): the schema comes from the real migrations, the rows go in through the
sync sqlite3 driver with `executemany` (PostgreSQL: asyncpg's COPY, into a schema of its
own), then every query runs through `SqlRunStore`, the code the bot uses. `--db PATH` keeps
the SQLite file and reuses it on the next run when it already holds N runs.

The data: runs spread over the last 365 days in four workspaces (70/20/7/3 %), ~200 people,
~90 channels, team runs with their subtasks and synthesis, pipelines with stages; 91 %
succeeded, 5 % failed; prompts of 6-25 words, outputs of about 600 characters.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import math
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.models import RunCursor, RunKind, RunQuery, RunStatus, StatsQuery
from storage.db import create_engine, upgrade
from storage.history import percentile_statement, runs_page, stats_statements
from storage.repository import SqlRunStore
from storage.tables import RunRow

SEED = 20261124
DAYS = 365
TEAMS = (
    ("T0BIG", 0.70, 150, 60),
    ("T1MID", 0.20, 40, 20),
    ("T2SML", 0.07, 12, 8),
    ("T3TNY", 0.03, 4, 3),
)  # fmt: skip  (id, share of runs, people, channels)
TOP_LEVEL = ((RunKind.ASK, 60), (RunKind.FOLLOWUP, 15), (RunKind.MENTION, 10),
             (RunKind.TEAM, 7), (RunKind.PIPELINE, 3), (RunKind.COMPARE, 5))  # fmt: skip
STATUSES = ((RunStatus.SUCCEEDED, 91), (RunStatus.FAILED, 5), (RunStatus.CANCELLED, 2),
            (RunStatus.INTERRUPTED, 1.5), (RunStatus.RUNNING, 0.5))  # fmt: skip
STATUS_LIST = [status for status, _ in STATUSES]
KIND_LIST = [kind for kind, _ in TOP_LEVEL]
RARE_WORD = "zebracorn"  # in about 1 prompt in 100,000
COMMON_WORD = "report"  # in about 1 prompt in 60
COLUMNS = tuple(c.name for c in RunRow.__table__.columns)
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's SQLite DateTime stores times


# -- data ------------------------------------------------------------------------------------


def vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai")]
    words = {"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(size * 2)}
    words -= {RARE_WORD, COMMON_WORD}
    return sorted(words)[:size]


def synthetic_runs(n: int, *, now: datetime) -> Iterator[dict[str, Any]]:
    """`n` runs as column values, oldest first; children follow their parent by seconds."""
    rng = random.Random(SEED)
    words = vocabulary(rng)
    # Zipf-like word frequencies, as in real text (cumulative: `choices` then needs no sum).
    word_cum = list(itertools.accumulate(1 / (i + 1) for i in range(len(words))))
    outputs = [" ".join(rng.choices(words, k=90)) for _ in range(1000)]
    status_cum = list(itertools.accumulate(w for _, w in STATUSES))
    kind_cum = list(itertools.accumulate(w for _, w in TOP_LEVEL))
    team_cum = list(itertools.accumulate(share for _, share, _, _ in TEAMS))
    teams = []
    for team_id, share, people, channels in TEAMS:
        users = [f"U{team_id[1]}{i:05d}" for i in range(people)]
        user_weights = list(itertools.accumulate(1 / (i + 1) ** 0.8 for i in range(people)))
        rooms = [f"C{team_id[1]}{i:05d}" for i in range(channels)]
        teams.append((team_id, share, users, user_weights, rooms))
    start = now - timedelta(days=DAYS)
    step = DAYS * 86400 / n
    made = 0

    def prompt() -> str:
        chosen = rng.choices(words, cum_weights=word_cum, k=rng.randint(6, 25))
        if rng.random() < 1 / 60:
            chosen[rng.randrange(len(chosen))] = COMMON_WORD
        if rng.random() < 1 / 100_000:
            chosen[rng.randrange(len(chosen))] = RARE_WORD
        return " ".join(chosen).capitalize() + "?"

    def row(kind: RunKind, at: datetime, base: dict[str, Any], parent: str | None):
        status = rng.choices(STATUS_LIST, cum_weights=status_cum)[0]
        ms = int(min(600_000, rng.lognormvariate(math.log(4000), 0.8)))
        finished = status not in (RunStatus.RUNNING, RunStatus.QUEUED)
        return {
            **base,
            "id": f"{rng.getrandbits(128):032x}",
            "parent_id": parent,
            "kind": kind.value,
            "command": "/ask" if kind is RunKind.ASK else None,
            "agent": "assistant",
            "model": "openai-chat:gpt-4o-mini",
            "thread_ts": None,
            "message_ts": f"{at.timestamp():.6f}",
            "prompt": prompt(),
            "output": rng.choice(outputs),
            "status": status.value,
            "error": "the model did not answer (timeout after 60 s)"
            if status is RunStatus.FAILED
            else None,
            "input_tokens": rng.randint(50, 3000),
            "output_tokens": rng.randint(20, 2000),
            "requests": 1,
            "usage_estimated": False,
            "created_at": at,
            "started_at": at,
            "first_token_at": at + timedelta(milliseconds=min(ms, rng.randint(200, 2000))),
            "finished_at": at + timedelta(milliseconds=ms) if finished else None,
            "duration_ms": ms if finished else None,
            "slack_writes": rng.randint(2, 12),
            "messages_json": None,
            "tool_calls": None,
        }

    while made < n:
        at = start + timedelta(seconds=made * step + rng.random() * step)
        team_id, _, users, user_weights, rooms = rng.choices(teams, cum_weights=team_cum)[0]
        base = {
            "team_id": team_id,
            "user_id": rng.choices(users, cum_weights=user_weights)[0],
            "channel_id": rng.choice(rooms),
        }
        kind = rng.choices(KIND_LIST, cum_weights=kind_cum)[0]
        parent = row(kind, at, base, None)
        yield parent
        made += 1
        children = {RunKind.TEAM: [RunKind.SUBTASK] * 3 + [RunKind.SYNTHESIS],
                    RunKind.PIPELINE: [RunKind.STAGE] * 3}.get(kind, [])  # fmt: skip
        for i, child in enumerate(children[: n - made], 1):
            yield row(child, at + timedelta(seconds=i), base, parent["id"])
            made += 1


async def fill_sqlite(path: Path, n: int, *, now: datetime) -> float:
    """Create the schema with the migrations, then insert `n` runs; returns seconds taken.

    The indexes of `runs` are dropped for the insert and re-created after from their own
    SQL (building an index from sorted data is much faster than growing it row by row); the
    search triggers stay, so the FTS index is filled as in production.
    """
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await upgrade(engine)
    await engine.dispose()
    started = time.perf_counter()
    placeholders = ", ".join("?" for _ in COLUMNS)
    sql = f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({placeholders})"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")  # ~1 GB
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master"
            " WHERE type = 'index' AND tbl_name = 'runs' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        batch: list[tuple[Any, ...]] = []
        for values in synthetic_runs(n, now=now):
            for name in ("created_at", "started_at", "first_token_at", "finished_at"):
                if values[name] is not None:
                    values[name] = values[name].astimezone(UTC).strftime(SQLITE_TIME)
            batch.append(tuple(values[c] for c in COLUMNS))
            if len(batch) == 50_000:
                conn.executemany(sql, batch)
                batch.clear()
                _progress(f"{_count(conn):,} runs inserted")
        conn.executemany(sql, batch)
        for i, (_, create) in enumerate(indexes, 1):
            _progress(f"{n:,} runs inserted; index {i}/{len(indexes)}")
            conn.execute(create)
        conn.commit()
    print()
    return time.perf_counter() - started


def _progress(text: str) -> None:
    print(f"\r  {text:<60}", end="", flush=True)


async def fill_postgres(engine: AsyncEngine, n: int, *, now: datetime) -> float:
    """The same runs through asyncpg's COPY (indexes dropped and re-created from their own
    definitions, as for SQLite), then ANALYZE; returns seconds taken."""
    await upgrade(engine)
    started = time.perf_counter()
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        indexes = await driver.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes AS i"
            " WHERE i.tablename = 'runs' AND i.schemaname = current_schema()"
            " AND i.indexname NOT LIKE 'pk_%'"
        )
        for index in indexes:
            await driver.execute(f'DROP INDEX "{index["indexname"]}"')
        batch: list[tuple[Any, ...]] = []
        for values in synthetic_runs(n, now=now):
            batch.append(tuple(values[c] for c in COLUMNS))
            if len(batch) == 50_000:
                await driver.copy_records_to_table("runs", records=batch, columns=COLUMNS)
                batch.clear()
                _progress(f"{len(batch) + (await driver.fetchval('SELECT count(*) FROM runs')):,}"
                          " runs copied")  # fmt: skip
        await driver.copy_records_to_table("runs", records=batch, columns=COLUMNS)
        for i, index in enumerate(indexes, 1):
            _progress(f"{n:,} runs copied; index {i}/{len(indexes)}")
            await driver.execute(index["indexdef"])
        await driver.execute("ANALYZE runs")
    print()
    return time.perf_counter() - started


def _count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


# -- queries ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    run: Callable[[int], Awaitable[Any]]
    explain: list[Any]  # the statements behind it, for --explain


def cases(store: SqlRunStore, *, now: datetime, dialect: str) -> list[Case]:
    big, small = TEAMS[0][0], TEAMS[3][0]
    users = [f"U0{i:05d}" for i in range(0, 150, 7)]
    channels = [f"C0{i:05d}" for i in range(60)]

    def query(**fields: Any) -> RunQuery:
        return RunQuery(limit=21, **fields)  # a /history page of 20 and one to see if more

    def channel_week(i: int) -> RunQuery:
        until = now - timedelta(days=(i * 11) % 300)
        return query(team_id=big, channel_id=channels[i % len(channels)],
                     since=until - timedelta(days=7), until=until)  # fmt: skip

    async def page_two(i: int) -> Any:
        first = await store.query(query(team_id=big, user_id=users[i % len(users)]))
        return await store.query(
            query(team_id=big, user_id=users[i % len(users)], before=RunCursor.after(first[-1]))
        )

    async def show(i: int) -> Any:
        # A team run from some day in the past year (the latest one if that day had none).
        found = await store.query(
            RunQuery(team_id=big, kind=RunKind.TEAM, limit=1, until=now - timedelta(days=i % 300))
        ) or await store.query(RunQuery(team_id=big, kind=RunKind.TEAM, limit=1))
        return await store.get(found[0].id), await store.children(found[0].id)

    stats30 = StatsQuery(team_id=big, since=now - timedelta(days=30))
    stats_all = StatsQuery(team_id=big)
    stats_cli = StatsQuery(since=now - timedelta(days=30))
    listed: list[tuple[str, Callable[[int], RunQuery]]] = [
        ("latest (team)", lambda i: query(team_id=big)),
        ("by user", lambda i: query(team_id=big, user_id=users[i % len(users)])),
        ("by status failed", lambda i: query(team_id=big, status=RunStatus.FAILED)),
        ("by status, small team", lambda i: query(team_id=small, status=RunStatus.CANCELLED)),
        ("by kind team", lambda i: query(team_id=big, kind=RunKind.TEAM)),
        ("channel + 7-day range", channel_week),
        (
            "user + status + 30d",
            lambda i: query(
                team_id=big,
                user_id=users[i % len(users)],
                status=RunStatus.FAILED,
                since=now - timedelta(days=30),
            ),
        ),
        (f"search common ({COMMON_WORD})", lambda i: query(team_id=big, search=COMMON_WORD)),
        (f"search rare ({RARE_WORD})", lambda i: query(team_id=big, search=RARE_WORD)),
        ("search absent word", lambda i: query(team_id=big, search="qqqxyz")),
        # Accents: SQLite lowers each prompt it checks in Python (agentbot_lower); a search
        # too short for the index checks every prompt in range, the worst case.
        ("search accented (café)", lambda i: query(team_id=big, search="café")),
        ("search short, absent (qz)", lambda i: query(team_id=big, search="qz")),
        ("search short accented (é)", lambda i: query(team_id=big, search="é")),
        (
            "search + user",
            lambda i: query(team_id=big, user_id=users[i % len(users)], search=COMMON_WORD),
        ),
        ("CLI: latest, all teams", lambda i: RunQuery(limit=50)),
        ("CLI: by status, all teams", lambda i: RunQuery(status=RunStatus.INTERRUPTED)),
    ]
    found: list[Case] = [
        Case(name, lambda i, make=make: store.query(make(i)), [_page_sql(make(0), dialect)])
        for name, make in listed
    ]
    found += [
        Case("next page (cursor)", page_two, []),
        Case("show run + children", show, []),
        Case("stats, 30 days", lambda i: store.stats(stats30), _stats_sql(stats30, dialect)),
        Case("stats, all time", lambda i: store.stats(stats_all), _stats_sql(stats_all, dialect)),
        Case("CLI: stats 30 days, all teams", lambda i: store.stats(stats_cli),
             _stats_sql(stats_cli, dialect)),
        Case("count (export)", lambda i: store.count(RunQuery(team_id=big,
                                                              status=RunStatus.FAILED)), []),
    ]  # fmt: skip
    return found


def _page_sql(query: RunQuery, dialect: str) -> Any:
    """The statement of one page; for a search on SQLite, as it runs once the search index
    has given a few candidates (3 here)."""
    if query.search and dialect == "sqlite":
        return runs_page(query, candidates=["a" * 32, "b" * 32, "c" * 32])
    return runs_page(query)


def _stats_sql(query: StatsQuery, dialect: str) -> list[Any]:
    return [*stats_statements(query, dialect=dialect).values(), percentile_statement(query, [1])]


async def measure(case: Case, repeat: int) -> list[float]:
    for i in range(2):  # warm the page cache and the statement cache
        await case.run(i)
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        await case.run(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def explain(engine: AsyncEngine, statement: Any) -> str:
    """The plan of `statement` (its values inlined: they are the bench's own, not input)."""
    sql = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql(prefix + sql)).all()
    return "\n".join(f"    {row[-1]}" for row in rows)


# -- main ------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    tmp = tempfile.TemporaryDirectory(prefix="agentbot-bench-")
    if args.url:
        engine, cleanup = await _postgres(args.url)
        print(f"PostgreSQL: generating {args.runs:,} runs…")
        print(f"  {await fill_postgres(engine, args.runs, now=now):.1f} s to generate and COPY")
    else:
        path = Path(args.db) if args.db else Path(tmp.name) / "history.db"
        reuse = path.exists() and _sqlite_count(path) == args.runs
        if reuse:
            print(f"SQLite {path}: reusing {args.runs:,} runs")
            now = _sqlite_latest(path)
        else:
            path.unlink(missing_ok=True)
            print(f"SQLite {path}: generating {args.runs:,} runs…")
            print(f"  {await fill_sqlite(path, args.runs, now=now):.1f} s to generate and insert")
        print(f"  file: {path.stat().st_size / 1e6:,.0f} MB")
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await upgrade(engine)
        cleanup = engine.dispose
    store = SqlRunStore(engine)
    try:
        rows = []
        for case in cases(store, now=now, dialect=engine.dialect.name):
            times = await measure(case, args.repeat)
            p50, p95 = statistics.median(times), _p95(times)
            rows.append((case.name, p50, p95))
            print(f"  {case.name:<28} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms")
            if args.explain:
                for statement in case.explain:
                    print(await explain(engine, statement))
        print()
        print("| query | p50 ms | p95 ms |\n|---|---:|---:|")
        for name, p50, p95 in rows:
            print(f"| {name} | {p50:.1f} | {p95:.1f} |")
    finally:
        await cleanup()
        tmp.cleanup()


def _p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def _sqlite_count(path: Path) -> int:
    try:
        with sqlite3.connect(path) as conn:
            return _count(conn)
    except sqlite3.Error:
        return -1


def _sqlite_latest(path: Path) -> datetime:
    with sqlite3.connect(path) as conn:
        latest = conn.execute("SELECT max(created_at) FROM runs").fetchone()[0]
    return datetime.strptime(latest, SQLITE_TIME).replace(tzinfo=UTC)


async def _postgres(url: str) -> tuple[AsyncEngine, Callable[[], Awaitable[None]]]:
    """An engine working in a fresh schema `agentbot_bench`, dropped afterwards."""
    schema = "agentbot_bench"
    admin = create_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine = create_engine(url, connect_args={"server_settings": {"search_path": schema}})

    async def cleanup() -> None:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        await admin.dispose()

    return engine, cleanup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.history",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs to generate")
    parser.add_argument("--repeat", type=int, default=30, help="timed repetitions per query")
    parser.add_argument("--db", help="SQLite file to keep (reused when it holds --runs runs)")
    parser.add_argument("--url", help="a postgresql+asyncpg:// URL instead of SQLite")
    parser.add_argument("--explain", action="store_true", help="print each query's plan")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
