"""One contract for every run store: the dict-backed fake, SQLite and PostgreSQL.

PostgreSQL runs when reachable at `PG_URL` (each test in a schema of its own) and is skipped
otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.memory_store import MemoryRunStore
from bot.models import RunKind, RunQuery, RunRecord, RunStatus, utcnow
from bot.ports import RunStore
from storage.db import create_engine, upgrade
from storage.repository import SqlRunStore

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def postgres_unreachable_reason() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it answers (probed in a thread
    so that it never touches the test's event loop)."""

    async def probe() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN, timeout=3)
        await conn.close()

    def run() -> None:
        asyncio.run(probe())

    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(run).result(timeout=10)
        except Exception as exc:
            return f"PostgreSQL not reachable at {PG_DSN}: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_unreachable() -> str | None:
    return postgres_unreachable_reason()


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
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_unreachable: str | None
) -> AsyncIterator[RunStore]:
    if request.param == "memory":
        yield MemoryRunStore()
        return
    if request.param == "sqlite":
        opened = sqlite_engine(tmp_path)
    else:
        opened = postgres_engine(postgres_unreachable)
    async with opened as engine:
        await upgrade(engine)
        yield SqlRunStore(engine)


def run(name: str, minute: float = 0, **fields: Any) -> RunRecord:
    """A run with id `name`, created `minute` minutes after BASE unless told otherwise."""
    fields.setdefault("kind", RunKind.ASK)
    fields.setdefault("prompt", f"prompt {name}")
    fields.setdefault("created_at", BASE + timedelta(minutes=minute))
    return RunRecord(id=name, **fields)


def full_record() -> RunRecord:
    """A run with a value in every field, none of them the default."""
    plus_two = timezone(timedelta(hours=2))
    return RunRecord(
        id="f" * 32,
        parent_id=None,
        kind=RunKind.FOLLOWUP,
        command="/ask",
        agent="assistant",
        model="openai-chat:gpt-4o-mini",
        team_id="T1",
        channel_id="C1",
        user_id="U1",
        thread_ts="1700000000.000100",
        message_ts="1700000000.000200",
        prompt="Ünïcode prompt — with 'quotes' and \"double\"\nand lines",
        output="the answer 🎉",
        status=RunStatus.SUCCEEDED,
        error="a note",
        input_tokens=11,
        output_tokens=22,
        requests=3,
        created_at=datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC),
        # A different offset: it must come back as the same instant, in UTC.
        started_at=datetime(2026, 3, 1, 12, 0, 1, 654321, tzinfo=plus_two),
        first_token_at=datetime(2026, 3, 1, 10, 0, 2, 1, tzinfo=UTC),
        finished_at=datetime(2026, 3, 1, 10, 0, 5, 999999, tzinfo=UTC),
        duration_ms=4346,
        slack_writes=7,
        messages_json=b'[{"kind": "request"}]',
    )


def ids(records: list[RunRecord]) -> list[str]:
    return [record.id for record in records]


def assert_utc(record: RunRecord) -> None:
    for name in ("created_at", "started_at", "first_token_at", "finished_at"):
        value = getattr(record, name)
        if value is not None:
            assert value.utcoffset() == timedelta(0), name


# --- create, get, save ----------------------------------------------------------------------


async def test_create_get_round_trip_keeps_every_field(store: RunStore) -> None:
    parent = run("parent")
    record = dataclasses.replace(full_record(), parent_id=parent.id)
    await store.create(parent)
    await store.create(record)

    got = await store.get(record.id)

    assert got == record
    assert got is not record
    assert got.messages_json == record.messages_json
    assert isinstance(got.kind, RunKind) and isinstance(got.status, RunStatus)
    assert_utc(got)
    assert got.started_at is not None and got.started_at.tzinfo == UTC
    defaults = RunRecord(kind=RunKind.ASK, prompt="")
    for field in dataclasses.fields(RunRecord):
        assert getattr(got, field.name) != getattr(defaults, field.name), field.name


async def test_get_unknown_is_none(store: RunStore) -> None:
    assert await store.get("nope") is None


async def test_store_keeps_copies(store: RunStore) -> None:
    record = run("a", output="first")
    await store.create(record)
    record.output = "changed after create"
    got = await store.get("a")
    assert got is not None and got.output == "first"
    got.output = "changed after get"
    again = await store.get("a")
    assert again is not None and again.output == "first"


async def test_create_twice_or_with_unknown_parent_raises(store: RunStore) -> None:
    await store.create(run("a"))
    with pytest.raises(ValueError):
        await store.create(run("a"))
    with pytest.raises(ValueError):
        await store.create(run("b", parent_id="missing"))
    assert await store.get("b") is None


async def test_save_updates_the_whole_record(store: RunStore) -> None:
    record = run("a", status=RunStatus.RUNNING, started_at=BASE)
    await store.create(record)
    record.status = RunStatus.SUCCEEDED
    record.output = "done"
    record.input_tokens, record.output_tokens, record.requests = 5, 9, 2
    record.first_token_at = BASE + timedelta(seconds=1)
    record.finished_at = BASE + timedelta(seconds=3)
    record.duration_ms = 3000
    record.message_ts = "1.2"
    record.slack_writes = 4
    await store.save(record)

    assert await store.get("a") == record


async def test_save_inserts_an_unknown_run(store: RunStore) -> None:
    record = run("a", messages_json=b"[]")
    await store.save(record)
    assert await store.get("a") == record


async def test_save_without_messages_keeps_the_stored_ones(store: RunStore) -> None:
    record = run("a", messages_json=b'["first"]')
    await store.create(record)
    record.output = "more"
    record.messages_json = None
    await store.save(record)
    got = await store.get("a")
    assert got is not None
    assert got.output == "more"
    assert got.messages_json == b'["first"]'

    record.messages_json = b'["second"]'
    await store.save(record)
    got = await store.get("a")
    assert got is not None and got.messages_json == b'["second"]'


# --- query ----------------------------------------------------------------------------------


def history() -> list[RunRecord]:
    """Six runs, one minute apart; `b` is the parent of `c`."""
    return [
        run("a", 0, user_id="U1", channel_id="C1", team_id="T1", status=RunStatus.SUCCEEDED,
            prompt="Summarise the Q3 report"),
        run("b", 1, kind=RunKind.TEAM, user_id="U2", channel_id="C1", team_id="T1",
            status=RunStatus.FAILED, prompt="Plan a 100% offsite"),
        run("c", 2, kind=RunKind.SUBTASK, parent_id="b", user_id="U2", channel_id="C1",
            team_id="T1", status=RunStatus.SUCCEEDED, prompt="research venues_list"),
        run("d", 3, user_id="U1", channel_id="C2", team_id="T2", status=RunStatus.RUNNING,
            prompt="what is 5% of 80?"),
        run("e", 4, kind=RunKind.FOLLOWUP, user_id="U3", channel_id="C2", team_id="T1",
            status=RunStatus.CANCELLED, prompt="REPORT: file_name.txt"),
        run("f", 5, user_id="U1", channel_id="C1", team_id="T1", status=RunStatus.FAILED,
            prompt="a back\\slash path"),
    ]  # fmt: skip


async def seeded(store: RunStore) -> None:
    for record in history():
        await store.create(record)


def minutes(n: float) -> datetime:
    return BASE + timedelta(minutes=n)


QUERIES: dict[str, tuple[RunQuery, list[str]]] = {
    "all": (RunQuery(), ["f", "e", "d", "c", "b", "a"]),
    "user": (RunQuery(user_id="U1"), ["f", "d", "a"]),
    "channel": (RunQuery(channel_id="C2"), ["e", "d"]),
    "team": (RunQuery(team_id="T2"), ["d"]),
    "status": (RunQuery(status=RunStatus.FAILED), ["f", "b"]),
    "kind": (RunQuery(kind=RunKind.ASK), ["f", "d", "a"]),
    "parent": (RunQuery(parent_id="b"), ["c"]),
    "search-case-insensitive": (RunQuery(search="rePort"), ["e", "a"]),
    "search-percent": (RunQuery(search="%"), ["d", "b"]),
    "search-percent-in-word": (RunQuery(search="5% o"), ["d"]),
    "search-underscore": (RunQuery(search="_"), ["e", "c"]),
    "search-underscore-not-wildcard": (RunQuery(search="t_is"), []),  # "what is" if wild
    "search-backslash": (RunQuery(search="\\"), ["f"]),
    "search-empty": (RunQuery(search=""), ["f", "e", "d", "c", "b", "a"]),
    "search-none-found": (RunQuery(search="nothing like this"), []),
    "since-inclusive": (RunQuery(since=minutes(2)), ["f", "e", "d", "c"]),
    "until-exclusive": (RunQuery(until=minutes(2)), ["b", "a"]),
    "since-until": (RunQuery(since=minutes(2), until=minutes(4)), ["d", "c"]),
    "since-other-offset": (
        RunQuery(since=minutes(4).astimezone(timezone(timedelta(hours=-5)))),
        ["f", "e"],
    ),
    "between-minutes": (RunQuery(since=minutes(2.5), until=minutes(3.5)), ["d"]),
    "user-status": (RunQuery(user_id="U1", status=RunStatus.FAILED), ["f"]),
    "kind-channel": (RunQuery(kind=RunKind.ASK, channel_id="C1"), ["f", "a"]),
    "team-since-search": (RunQuery(team_id="T1", since=minutes(1), search="re"), ["e", "c"]),
    "all-filters": (
        RunQuery(
            user_id="U2",
            channel_id="C1",
            team_id="T1",
            status=RunStatus.SUCCEEDED,
            kind=RunKind.SUBTASK,
            parent_id="b",
            since=minutes(0),
            until=minutes(5),
            search="VENUES",
        ),
        ["c"],
    ),
    "no-match-combined": (RunQuery(user_id="U3", kind=RunKind.ASK), []),
    "limit": (RunQuery(limit=2), ["f", "e"]),
    "limit-with-filter": (RunQuery(user_id="U1", limit=2), ["f", "d"]),
    "limit-zero-is-one": (RunQuery(limit=0), ["f"]),
    "limit-negative-is-one": (RunQuery(limit=-5), ["f"]),
    "limit-huge": (RunQuery(limit=10**9), ["f", "e", "d", "c", "b", "a"]),
}


@pytest.mark.parametrize("case", list(QUERIES))
async def test_query(store: RunStore, case: str) -> None:
    query, expected = QUERIES[case]
    await seeded(store)
    assert ids(await store.query(query)) == expected


async def test_query_returns_full_records_without_messages(store: RunStore) -> None:
    record = dataclasses.replace(full_record(), messages_json=b"[1, 2]")
    await store.create(record)
    [got] = await store.query(RunQuery())
    assert got == dataclasses.replace(record, messages_json=None)
    assert_utc(got)


async def test_query_orders_equal_times_by_id_descending(store: RunStore) -> None:
    for name in ("m", "z", "a"):
        await store.create(run(name, 1))
    await store.create(run("late", 2))
    assert ids(await store.query(RunQuery())) == ["late", "z", "m", "a"]


async def test_query_limit_is_at_most_1000(store: RunStore) -> None:
    for i in range(1001):
        await store.create(run(f"r{i:04d}", created_at=BASE + timedelta(milliseconds=i)))
    found = await store.query(RunQuery(limit=5000))
    assert len(found) == 1000
    assert found[0].id == "r1000" and found[-1].id == "r0001"


# --- mark_interrupted, children, find_by_message, ping ----------------------------------------


async def test_mark_interrupted(store: RunStore) -> None:
    started = utcnow() - timedelta(seconds=1.5)
    await store.create(run("queued", 0, status=RunStatus.QUEUED))
    await store.create(run("running", 1, status=RunStatus.RUNNING, started_at=started))
    done = run("done", 2, status=RunStatus.SUCCEEDED, started_at=started, duration_ms=10)
    await store.create(done)
    before = utcnow()

    marked = await store.mark_interrupted("agentbot restarted")

    after = utcnow()
    assert ids(marked) == ["queued", "running"]
    for record in marked:
        assert record == await store.get(record.id)
        assert record.status is RunStatus.INTERRUPTED
        assert record.error == "agentbot restarted"
        assert record.finished_at is not None and before <= record.finished_at <= after
        assert_utc(record)
    queued, running = marked
    assert queued.duration_ms is None
    assert running.duration_ms is not None
    assert 1500 <= running.duration_ms <= (after - started).total_seconds() * 1000 + 1
    assert await store.get("done") == done
    assert await store.mark_interrupted("again") == []


async def test_children_oldest_first(store: RunStore) -> None:
    await store.create(run("parent", 0, kind=RunKind.TEAM))
    await store.create(run("other", 0, kind=RunKind.TEAM))
    await store.create(run("s2", 3, kind=RunKind.SUBTASK, parent_id="parent"))
    await store.create(run("s1", 1, kind=RunKind.SUBTASK, parent_id="parent"))
    await store.create(run("syn", 5, kind=RunKind.SYNTHESIS, parent_id="parent"))
    await store.create(run("x", 2, kind=RunKind.SUBTASK, parent_id="other"))

    assert ids(await store.children("parent")) == ["s1", "s2", "syn"]
    assert await store.children("s1") == []
    assert await store.children("missing") == []


async def test_find_by_message(store: RunStore) -> None:
    first = run("first", 0, channel_id="C1", message_ts="100.1", messages_json=b'["one"]')
    reply = run("reply", 1, kind=RunKind.FOLLOWUP, channel_id="C1", thread_ts="100.1",
                message_ts="100.5", messages_json=b'["one", "two"]')  # fmt: skip
    elsewhere = run("elsewhere", 2, channel_id="C2", message_ts="100.1")
    for record in (first, reply, elsewhere):
        await store.create(record)

    assert await store.find_by_message("C1", "100.1") == reply  # latest, with its messages
    assert await store.find_by_message("C1", "100.5") == reply
    assert await store.find_by_message("C2", "100.1") == elsewhere
    assert await store.find_by_message("C1", "999.9") is None
    assert await store.find_by_message("C3", "100.1") is None


async def test_ping(store: RunStore) -> None:
    await store.ping()
