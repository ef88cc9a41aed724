"""One contract for the run store on every database it supports: SQLite and PostgreSQL.

PostgreSQL runs when reachable at `PG_URL` (each test in a schema of its own) and is skipped
otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bot.models import (
    AuditEntry,
    AuditOutcome,
    AuditQuery,
    DayCount,
    RunCursor,
    RunKind,
    RunQuery,
    RunRecord,
    RunStats,
    RunStatus,
    StatsQuery,
    utcnow,
)
from bot.ports import RunStore
from storage.db import upgrade
from storage.repository import SqlRunStore
from tests.databases import sqlite_engine

BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(store_on_each_database: SqlRunStore) -> RunStore:
    return store_on_each_database


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
        usage_estimated=True,
        created_at=datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC),
        # A different offset: it must come back as the same instant, in UTC.
        started_at=datetime(2026, 3, 1, 12, 0, 1, 654321, tzinfo=plus_two),
        first_token_at=datetime(2026, 3, 1, 10, 0, 2, 1, tzinfo=UTC),
        finished_at=datetime(2026, 3, 1, 10, 0, 5, 999999, tzinfo=UTC),
        duration_ms=4346,
        slack_writes=7,
        messages_json=b'[{"kind": "request"}]',
        tool_calls=[{"name": "fetch_url", "args": "example.com", "duration_ms": 412, "ok": True}],
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


async def test_mark_interrupted_leaves_runs_some_process_holds(store: RunStore) -> None:
    cutoff = BASE + timedelta(minutes=30)
    started = utcnow() - timedelta(seconds=2)
    await store.create(run("renewed", 0, status=RunStatus.RUNNING, started_at=started))
    await store.create(run("lapsed", 1, status=RunStatus.RUNNING))
    await store.create(run("unleased", 2, status=RunStatus.QUEUED))
    await store.create(run("young", 40, status=RunStatus.QUEUED))  # not renewed yet
    await store.create(run("done", 3, status=RunStatus.SUCCEEDED))
    await store.renew_leases(["renewed", "lapsed", "done", "missing"], now=BASE)
    await store.renew_leases(["renewed"], now=cutoff)  # renewed again: at the cut-off, held
    await store.renew_leases([])
    before = utcnow()

    marked = await store.mark_interrupted("gone", stale_before=cutoff)

    assert ids(marked) == ["lapsed", "unleased"]
    for record in marked:
        assert record == await store.get(record.id)
        assert record.status is RunStatus.INTERRUPTED and record.error == "gone"
        assert record.finished_at is not None and record.finished_at >= before
    assert (await store.get("renewed")).status is RunStatus.RUNNING
    assert (await store.get("young")).status is RunStatus.QUEUED
    assert await store.mark_interrupted("again", stale_before=cutoff) == []

    later = await store.mark_interrupted("later", stale_before=cutoff + timedelta(minutes=11))
    assert ids(later) == ["renewed", "young"]
    assert later[0].duration_ms is not None and later[0].duration_ms >= 2000
    assert (await store.get("done")).status is RunStatus.SUCCEEDED


async def test_mark_interrupted_at_once_gives_each_run_to_one(store: RunStore) -> None:
    for i in range(10):
        await store.create(run(f"r{i}", i, status=RunStatus.RUNNING))
    cutoff = BASE + timedelta(hours=1)
    answers = await asyncio.gather(
        *(store.mark_interrupted(f"pass {i}", stale_before=cutoff) for i in range(4))
    )
    taken = sorted(run_id for answer in answers for run_id in ids(answer))
    assert taken == [f"r{i}" for i in range(10)]


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


async def test_conversation_page(store: RunStore) -> None:
    root = run("root", 0, channel_id="D1", message_ts="100.1", messages_json=b'["one"]')
    dm = run("dm", 1, kind=RunKind.MENTION, channel_id="D1", message_ts="100.3")
    reply = run("reply", 2, kind=RunKind.FOLLOWUP, channel_id="D1", thread_ts="100.1",
                message_ts="100.5", messages_json=b'["two"]')  # fmt: skip
    later = run("later", 3, kind=RunKind.FOLLOWUP, channel_id="D1", thread_ts="100.1")
    for record in (root, dm, reply, later, run("elsewhere", 4, channel_id="D2")):
        await store.create(record)

    page = await store.conversation_page("D1", "100.1", before=RunCursor.after(later), limit=5)
    assert page == [reply, root]  # newest first, older only, with their messages
    assert await store.conversation_page("D1", None, before=RunCursor.after(later), limit=2) == [
        reply,
        dm,
    ]
    assert await store.conversation_page("D1", "100.1", before=RunCursor.after(root), limit=5) == []


async def test_ping(store: RunStore) -> None:
    await store.ping()


# --- what processes sharing the store coordinate through --------------------------------------


async def test_first_delivery_is_true_once(store: RunStore) -> None:
    assert await store.first_delivery("Ev1") is True
    assert await store.first_delivery("Ev1") is False
    assert await store.first_delivery("Ev2") is True
    assert await store.first_delivery("Ev1") is False


async def test_first_delivery_forgets_after_an_hour(store: RunStore) -> None:
    assert await store.first_delivery("Ev1", now=BASE) is True
    assert await store.first_delivery("Ev1", now=BASE + timedelta(minutes=59)) is False
    assert await store.first_delivery("Ev1", now=BASE + timedelta(minutes=61)) is True
    assert await store.first_delivery("Ev1", now=BASE + timedelta(minutes=62)) is False


async def test_first_delivery_of_concurrent_deliveries_is_one(store: RunStore) -> None:
    answers = await asyncio.gather(*(store.first_delivery("Ev1") for _ in range(20)))
    assert answers.count(True) == 1


async def test_request_stop_once_for_an_unfinished_run(store: RunStore) -> None:
    await store.create(run("queued", 0, status=RunStatus.QUEUED))
    await store.create(run("running", 1, status=RunStatus.RUNNING))
    await store.create(run("done", 2, status=RunStatus.SUCCEEDED))
    before = await store.get("running")

    assert await store.request_stop("running", by="U1") is True
    assert await store.request_stop("running", by="U2") is False  # the first request stands
    assert await store.request_stop("queued", by="U2") is True
    assert await store.request_stop("done", by="U1") is False
    assert await store.request_stop("missing", by="U1") is False

    found = await store.stop_requests(["running", "queued", "done", "missing", "other"])
    assert found == {"running": "U1", "queued": "U2"}
    assert await store.stop_requests(["running"]) == {"running": "U1"}
    assert await store.stop_requests([]) == {}
    assert await store.get("running") == before, "the run record is left alone"


async def test_request_stop_of_concurrent_requests_is_one(store: RunStore) -> None:
    await store.create(run("running", 0, status=RunStatus.RUNNING))
    users = [f"U{i}" for i in range(10)]
    answers = await asyncio.gather(*(store.request_stop("running", by=u) for u in users))
    assert answers.count(True) == 1
    assert await store.stop_requests(["running"]) == {"running": users[answers.index(True)]}


# --- history at scale: paging, count, stats, audit, search (issue 4) --------------------------


async def test_before_cursor_pages_through_equal_times(store: RunStore) -> None:
    for name in ("m", "z", "a", "q"):
        await store.create(run(name, 1))
    await store.create(run("late", 2))
    await store.create(run("early", 0))
    seen: list[str] = []
    query = RunQuery(limit=2)
    while page := await store.query(query):
        seen += ids(page)
        query = dataclasses.replace(query, before=RunCursor.after(page[-1]))
    assert seen == ["late", "z", "q", "m", "a", "early"]


async def test_before_cursor_combines_with_filters(store: RunStore) -> None:
    await seeded(store)
    cursor = RunCursor(created_at=minutes(3), id="d")
    assert ids(await store.query(RunQuery(before=cursor))) == ["c", "b", "a"]
    assert ids(await store.query(RunQuery(before=cursor, team_id="T1", limit=1))) == ["c"]
    assert ids(await store.query(RunQuery(before=cursor, search="report"))) == ["a"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (RunQuery(), 6),
        (RunQuery(user_id="U1", limit=1), 3),
        (RunQuery(team_id="T1", search="re"), 3),
        (RunQuery(search="nothing like this"), 0),
        (RunQuery(before=RunCursor(minutes(3), "d")), 3),
    ],
)
async def test_count_ignores_the_limit(store: RunStore, query: RunQuery, expected: int) -> None:
    await seeded(store)
    assert await store.count(query) == expected


def stats_runs() -> list[RunRecord]:
    """Six runs over three UTC days in T1 (one given in another time zone) and one in T2."""
    late_evening = datetime(2026, 1, 1, 23, 59, 59, 900000, tzinfo=UTC)
    next_day_utc = datetime(2026, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=2)))  # 23:00Z!
    return [
        run("s1", 0, team_id="T1", user_id="U1", status=RunStatus.SUCCEEDED, duration_ms=1000,
            input_tokens=10, output_tokens=20),
        run("s2", created_at=late_evening, team_id="T1", user_id="U2", status=RunStatus.FAILED,
            duration_ms=3000, input_tokens=5),
        run("s3", created_at=next_day_utc, kind=RunKind.TEAM, team_id="T1", user_id="U1",
            status=RunStatus.SUCCEEDED, duration_ms=2000, input_tokens=1, output_tokens=2),
        run("s4", 60 * 24 + 1, kind=RunKind.SUBTASK, parent_id="s3", team_id="T1", user_id="U1",
            status=RunStatus.SUCCEEDED),
        run("s5", 60 * 24 + 2, team_id="T1", status=RunStatus.CANCELLED, duration_ms=5000),
        run("s6", 60 * 48, team_id="T1", user_id="U2", status=RunStatus.RUNNING),
        run("x1", 60 * 24, team_id="T2", user_id="U9", duration_ms=9999, input_tokens=100),
    ]  # fmt: skip


async def test_stats(store: RunStore) -> None:
    for record in stats_runs():
        await store.create(record)
    day = BASE.date()

    got = await store.stats(StatsQuery(team_id="T1"))

    # Requests only: the team s3 counts once, its subtask s4 not at all.
    assert got == RunStats(
        total=5,
        by_status={RunStatus.SUCCEEDED: 2, RunStatus.CANCELLED: 1, RunStatus.FAILED: 1,
                   RunStatus.RUNNING: 1},
        by_kind={RunKind.ASK: 4, RunKind.TEAM: 1},
        top_users=[("U1", 2), ("U2", 2)],
        users=2,
        input_tokens=16,
        output_tokens=22,
        p50_ms=2000,  # durations 1000, 2000, 3000, 5000: the 2nd of 4
        p95_ms=5000,  # ceil(0.95 * 4) = the 4th
        per_day=[DayCount(day, 3), DayCount(day + timedelta(days=1), 1),
                 DayCount(day + timedelta(days=2), 1)],
    )  # fmt: skip
    assert list(got.by_status) == [
        RunStatus.SUCCEEDED,
        RunStatus.CANCELLED,
        RunStatus.FAILED,
        RunStatus.RUNNING,
    ]  # fmt: skip  (most first, then by name)


@pytest.mark.parametrize(
    ("query", "total", "p50", "p95", "users"),
    [
        (StatsQuery(), 6, 3000, 9999, [("U1", 2), ("U2", 2), ("U9", 1)]),
        (StatsQuery(team_id="T1", top_users=1), 5, 2000, 5000, [("U1", 2)]),
        (StatsQuery(team_id="T1", since=BASE + timedelta(days=1)), 2, 5000, 5000, [("U2", 1)]),
        (StatsQuery(team_id="T1", until=BASE + timedelta(hours=1)), 1, 1000, 1000, [("U1", 1)]),
        (StatsQuery(team_id="T2"), 1, 9999, 9999, [("U9", 1)]),
    ],
)  # fmt: skip
async def test_stats_scopes(
    store: RunStore, query: StatsQuery, total: int, p50: int, p95: int, users: list
) -> None:
    for record in stats_runs():
        await store.create(record)
    got = await store.stats(query)
    assert (got.total, got.p50_ms, got.p95_ms) == (total, p50, p95)
    assert got.top_users == sorted(users, key=lambda pair: (-pair[1], pair[0]))
    assert sum(entry.runs for entry in got.per_day) == total


async def test_stats_of_nothing(store: RunStore) -> None:
    await store.create(run("a", 0, team_id="T1"))
    assert await store.stats(StatsQuery(team_id="nobody")) == RunStats()
    one = await store.stats(StatsQuery(team_id="T1"))
    assert (one.total, one.p50_ms, one.p95_ms, one.users) == (1, None, None, 0)


async def test_audit_log(store: RunStore) -> None:
    def entry(user: str, minute: int, **fields: Any) -> AuditEntry:
        fields.setdefault("team_id", "T1")
        fields.setdefault("outcome", AuditOutcome.ALLOWED)
        return AuditEntry(user_id=user, command="/history", text=f"q{minute}",
                          at=BASE + timedelta(minutes=minute), **fields)  # fmt: skip

    plus_two = timezone(timedelta(hours=2))
    first = await store.record_audit(entry("U1", 0, channel_id="C1", detail="page after x"))
    assert first.id is not None
    await store.record_audit(entry("U2", 1, outcome=AuditOutcome.REFUSED))
    await store.record_audit(entry("U1", 2, team_id="T2", outcome=AuditOutcome.INVALID))
    late = entry("U3", 3)
    late.at = late.at.astimezone(plus_two)
    await store.record_audit(late)

    everything = await store.audit_log(AuditQuery())
    assert [e.text for e in everything] == ["q3", "q2", "q1", "q0"]
    assert len({e.id for e in everything}) == 4
    assert everything[-1] == first and first.channel_id == "C1"
    assert first.detail == "page after x" and first.outcome is AuditOutcome.ALLOWED
    assert everything[0].at == BASE + timedelta(minutes=3) and everything[0].at.tzinfo == UTC
    queries = {
        "team": (AuditQuery(team_id="T1"), ["q3", "q1", "q0"]),
        "user": (AuditQuery(user_id="U1"), ["q2", "q0"]),
        "outcome": (AuditQuery(outcome=AuditOutcome.REFUSED), ["q1"]),
        "since": (AuditQuery(since=BASE + timedelta(minutes=2)), ["q3", "q2"]),
        "limit": (AuditQuery(limit=1), ["q3"]),
    }
    for name, (query, expected) in queries.items():
        assert [e.text for e in await store.audit_log(query)] == expected, name


SEARCH_PROMPTS = {
    "q1": 'say "hi there" twice',
    "q2": "a*b NEAR(x y) AND NOT z ^start",
    "q3": "column:value and (parens)",
    "q4": "nothing special here",
    "q5": "HI THERE in capitals",
}


@pytest.mark.parametrize(
    "words",
    ['"hi', 'hi th', "a*b", "NEAR(x", "AND NOT", "^st", "column:va", "(parens)", "hi", "ere",
     "there twice", '"', "zzz", "e "],
)  # fmt: skip
async def test_search_takes_every_character_literally(store: RunStore, words: str) -> None:
    for name, prompt in SEARCH_PROMPTS.items():
        await store.create(run(name, int(name[1]), prompt=prompt))
    expected = sorted(
        (name for name, prompt in SEARCH_PROMPTS.items() if words.lower() in prompt.lower()),
        reverse=True,
    )
    assert ids(await store.query(RunQuery(search=words))) == expected
    assert await store.count(RunQuery(search=words)) == len(expected)


# --- the SQLite search index ------------------------------------------------------------------


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_engine(tmp_path / "runs.db") as engine:
        await upgrade(engine)
        yield engine


async def search_keys(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:  # the index's own table, to see it is kept
        rows = await conn.execute(text("SELECT run_id FROM run_search_keys ORDER BY key"))
        return [row[0] for row in rows]


async def test_search_index_follows_prompt_changes_and_deletes(sqlite_db: AsyncEngine) -> None:
    sqlite_store = SqlRunStore(sqlite_db)
    parent = run("p", 0, prompt="plan the offsite")
    await sqlite_store.create(parent)
    await sqlite_store.create(run("c", 1, prompt="research venues", parent_id="p"))
    assert await search_keys(sqlite_db) == ["p", "c"]

    parent.prompt = "plan the launch"
    await sqlite_store.save(parent)
    assert ids(await sqlite_store.query(RunQuery(search="offsite"))) == []
    assert ids(await sqlite_store.query(RunQuery(search="launch"))) == ["p"]

    async with sqlite_db.begin() as conn:
        await conn.execute(text("DELETE FROM runs WHERE id = 'p'"))  # cascades to "c"
    assert await search_keys(sqlite_db) == []
    assert await sqlite_store.query(RunQuery(search="venues")) == []
    await sqlite_store.create(run("n", 2, prompt="research venues again"))
    assert ids(await sqlite_store.query(RunQuery(search="venues"))) == ["n"]


async def test_search_too_common_for_the_index_still_finds_everything(
    sqlite_db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import storage.search

    sqlite_store = SqlRunStore(sqlite_db)
    for i in range(5):
        await sqlite_store.create(run(f"r{i}", i, prompt=f"weekly report {i}"))
    async with AsyncSession(sqlite_db) as session:
        assert await storage.search.candidate_ids(session, "report") == [f"r{i}" for i in range(5)]
        assert await storage.search.candidate_ids(session, "re") is None  # too short
        monkeypatch.setattr(storage.search, "MAX_CANDIDATES", 2)
        assert await storage.search.candidate_ids(session, "report") is None  # too common
    assert ids(await sqlite_store.query(RunQuery(search="report", limit=3))) == ["r4", "r3", "r2"]
    assert await sqlite_store.count(RunQuery(search="report")) == 5
    assert ids(await sqlite_store.query(RunQuery(search="t 3"))) == ["r3"]


async def test_search_without_its_triggers_scans_instead(tmp_path: Path) -> None:
    async with sqlite_engine(tmp_path / "runs.db") as engine:
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER runs_search_insert"))
        store = SqlRunStore(engine)
        await store.create(run("a", 0, prompt="not in the index"))
        assert ids(await store.query(RunQuery(search="in the index"))) == ["a"]


async def test_two_stores_on_one_file_agree_on_first_deliveries(tmp_path: Path) -> None:
    """Two processes (here two engines) on one SQLite file: each event is first once."""
    async with (
        sqlite_engine(tmp_path / "runs.db") as one,
        sqlite_engine(tmp_path / "runs.db") as two,
    ):
        await upgrade(one)
        stores = [SqlRunStore(one), SqlRunStore(two)]
        answers = await asyncio.gather(
            *(stores[i % 2].first_delivery(f"Ev{i // 4}") for i in range(40))
        )
    assert [answers[i : i + 4].count(True) for i in range(0, 40, 4)] == [1] * 10


async def test_first_delivery_prunes_old_events(sqlite_db: AsyncEngine) -> None:
    await SqlRunStore(sqlite_db).first_delivery("old", now=BASE)
    await SqlRunStore(sqlite_db).first_delivery("recent", now=BASE + timedelta(minutes=90))
    # A new store prunes on its first delivery, then only every few minutes.
    await SqlRunStore(sqlite_db).first_delivery("new", now=BASE + timedelta(minutes=121))
    async with sqlite_db.connect() as conn:
        rows = await conn.execute(text("SELECT event_id FROM slack_events ORDER BY event_id"))
        assert [row[0] for row in rows] == ["new", "recent"]
