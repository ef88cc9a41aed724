"""`MemoryRunStore`: a dictionary-backed run store for tests and the playground.

It keeps the same contract as the SQL store (tests/test_store_contract.py runs one suite
against both): copies in and out, the same filters and order, the same missing-parent and
duplicate-id errors, and lists without `messages_json`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection
from datetime import UTC, datetime

from bot.models import (
    AuditEntry,
    AuditQuery,
    DayCount,
    RunCursor,
    RunQuery,
    RunRecord,
    RunStats,
    RunStatus,
    StatsQuery,
    nearest_rank,
    utcnow,
)
from bot.ports import EVENT_TTL

MAX_LIMIT = 1000
UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)
TIME_FIELDS = ("created_at", "started_at", "first_token_at", "finished_at")


class MemoryRunStore:
    """Runs kept in a dict by id; every record goes in and comes out as a copy."""

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        self._audit: list[AuditEntry] = []
        self._events: dict[str, datetime] = {}  # event id → first delivery, oldest first
        self._stop_requests: dict[str, str] = {}  # run id → who asked
        self._leases: dict[str, datetime] = {}  # run id → lease last renewed

    async def create(self, run: RunRecord) -> None:
        """Insert a new run; `ValueError` if its id exists or its parent does not."""
        if run.id in self._runs:
            raise ValueError(f"cannot create run {run.id}: the id exists")
        self._check_parent(run)
        self._runs[run.id] = _stored(run)

    async def save(self, run: RunRecord) -> None:
        """Write the whole record (upsert by id); stored messages stay when
        `run.messages_json` is `None`. `ValueError` if its parent does not exist."""
        self._check_parent(run)
        stored = _stored(run)
        previous = self._runs.get(run.id)
        if stored.messages_json is None and previous is not None:
            stored.messages_json = previous.messages_json
        self._runs[run.id] = stored

    async def get(self, run_id: str) -> RunRecord | None:
        run = self._runs.get(run_id)
        return _copy(run) if run is not None else None

    async def query(self, query: RunQuery) -> list[RunRecord]:
        """Runs matching every filter of `query`, newest first, at most `query.limit`
        (clamped to 1..1000)."""
        found = sorted(
            (run for run in self._runs.values() if _matches(run, query)),
            key=lambda run: (run.created_at, run.id),
            reverse=True,
        )
        limit = max(1, min(query.limit, MAX_LIMIT))
        return [_copy(run, with_messages=False) for run in found[:limit]]

    async def mark_interrupted(
        self,
        reason: str,
        *,
        stale_before: datetime | None = None,
        carried: Collection[str] = (),
    ) -> list[RunRecord]:
        """Mark every `queued`/`running` run `interrupted` with `reason`; return them, oldest
        first. With `stale_before`, skip runs created or with a lease renewed at or after it;
        never take runs in `carried`."""
        now = utcnow()
        cutoff = _utc(stale_before)
        marked: list[RunRecord] = []
        for run in sorted(self._runs.values(), key=lambda run: (run.created_at, run.id)):
            if run.status not in UNFINISHED or run.id in carried:
                continue
            if cutoff is not None and self._held(run, cutoff):
                continue
            run.status = RunStatus.INTERRUPTED
            run.error = reason
            run.finished_at = now
            if run.started_at is not None:
                run.duration_ms = max(0, int((now - run.started_at).total_seconds() * 1000))
            marked.append(_copy(run, with_messages=False))
        return marked

    async def renew_leases(self, run_ids: Collection[str], *, now: datetime | None = None) -> None:
        """Renew the leases of `run_ids` as of `now` (default: now); unknown ids are ignored."""
        at = utcnow() if now is None else _utc(now)
        assert at is not None
        for run_id in run_ids:
            if run_id in self._runs:
                self._leases[run_id] = at

    def _held(self, run: RunRecord, cutoff: datetime) -> bool:
        """Whether some process may still carry out `run`: created or its lease renewed at or
        after `cutoff`."""
        renewed = self._leases.get(run.id)
        return run.created_at >= cutoff or (renewed is not None and renewed >= cutoff)

    async def find_by_message(self, channel_id: str, ts: str) -> RunRecord | None:
        """The latest run in `channel_id` whose message or thread is `ts`, with its messages."""
        found = [
            run
            for run in self._runs.values()
            if run.channel_id == channel_id and ts in (run.message_ts, run.thread_ts)
        ]
        if not found:
            return None
        return _copy(max(found, key=lambda run: (run.created_at, run.id)))

    async def conversation_page(
        self, channel_id: str, ts: str | None, *, before: RunCursor, limit: int
    ) -> list[RunRecord]:
        """At most `limit` runs in `channel_id` strictly older than `before`, newest first,
        with their messages: those whose message or thread is `ts`, or all when it is None."""
        found = [
            run
            for run in self._runs.values()
            if run.channel_id == channel_id
            and (ts is None or ts in (run.message_ts, run.thread_ts))
            and (run.created_at, run.id) < (before.created_at, before.id)
        ]
        found.sort(key=lambda run: (run.created_at, run.id), reverse=True)
        return [_copy(run) for run in found[:limit]]

    async def children(self, parent_id: str) -> list[RunRecord]:
        """The runs whose parent is `parent_id`, oldest first."""
        found = sorted(
            (run for run in self._runs.values() if run.parent_id == parent_id),
            key=lambda run: (run.created_at, run.id),
        )
        return [_copy(run, with_messages=False) for run in found]

    async def ping(self) -> None:
        return None

    async def count(self, query: RunQuery) -> int:
        """How many runs match the query's filters (its `limit` is ignored)."""
        return sum(1 for run in self._runs.values() if _matches(run, query))

    async def stats(self, query: StatsQuery) -> RunStats:
        """Runs by status, kind and user, tokens, p50/p95 duration and runs per UTC day."""
        since, until = _utc(query.since), _utc(query.until)
        runs = [
            run
            for run in self._runs.values()
            if run.parent_id is None  # requests: a team and its children count once
            and (query.team_id is None or run.team_id == query.team_id)
            and (since is None or run.created_at >= since)
            and (until is None or run.created_at < until)
        ]
        users = Counter(run.user_id for run in runs if run.user_id)
        days = Counter(run.created_at.date() for run in runs)
        durations = sorted(run.duration_ms for run in runs if run.duration_ms is not None)
        return RunStats(
            total=len(runs),
            by_status=_most_first(Counter(run.status for run in runs)),
            by_kind=_most_first(Counter(run.kind for run in runs)),
            top_users=sorted(users.items(), key=lambda pair: (-pair[1], pair[0]))[
                : max(0, query.top_users)
            ],
            users=len(users),
            input_tokens=sum(run.input_tokens for run in runs),
            output_tokens=sum(run.output_tokens for run in runs),
            p50_ms=nearest_rank(durations, 0.50),
            p95_ms=nearest_rank(durations, 0.95),
            per_day=[DayCount(day, n) for day, n in sorted(days.items())],
        )

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        """Append `entry` to the audit log; return a copy with its `id` set."""
        stored = dataclasses.replace(entry, id=len(self._audit) + 1, at=_utc(entry.at))
        self._audit.append(stored)
        return dataclasses.replace(stored)

    async def audit_log(self, query: AuditQuery) -> list[AuditEntry]:
        """Audit entries matching the query, newest first, at most `query.limit` (1..1000)."""
        since = _utc(query.since)
        found = [
            entry
            for entry in self._audit
            if (query.team_id is None or entry.team_id == query.team_id)
            and (query.user_id is None or entry.user_id == query.user_id)
            and (query.outcome is None or entry.outcome == query.outcome)
            and (since is None or entry.at >= since)
        ]
        found.sort(key=lambda entry: (entry.at, entry.id), reverse=True)
        limit = max(1, min(query.limit, MAX_LIMIT))
        return [dataclasses.replace(entry) for entry in found[:limit]]

    async def first_delivery(self, event_id: str, *, now: datetime | None = None) -> bool:
        """Record that Slack delivered `event_id`; True only for its first delivery within
        `EVENT_TTL`. Entries older than that are pruned."""
        now = utcnow() if now is None else _utc(now)
        cutoff = now - EVENT_TTL
        seen = self._events.get(event_id)
        if seen is not None and seen >= cutoff:
            return False
        self._events.pop(event_id, None)  # re-inserted last, to keep the oldest first
        self._events[event_id] = now
        while True:  # ends at the latest on the entry just made
            old_id, at = next(iter(self._events.items()))
            if at >= cutoff:
                return True
            del self._events[old_id]

    async def request_stop(self, run_id: str, *, by: str) -> bool:
        """Record a stop request for `run_id` by user `by`, if the run is still queued or
        running and none was recorded before; True when recorded now."""
        run = self._runs.get(run_id)
        if run is None or run.status not in UNFINISHED or run_id in self._stop_requests:
            return False
        self._stop_requests[run_id] = by
        return True

    async def stop_requests(self, run_ids: Collection[str]) -> dict[str, str]:
        """The stop requests among `run_ids`: run id → the user who asked."""
        return {i: self._stop_requests[i] for i in run_ids if i in self._stop_requests}

    def _check_parent(self, run: RunRecord) -> None:
        if run.parent_id is not None and run.parent_id not in self._runs:
            raise ValueError(f"cannot save run {run.id}: no parent run {run.parent_id}")


def _stored(run: RunRecord) -> RunRecord:
    """A copy of `run` with its times in UTC (naive ones taken as UTC), as SQL keeps them."""
    return dataclasses.replace(run, **{name: _utc(getattr(run, name)) for name in TIME_FIELDS})


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _copy(run: RunRecord, *, with_messages: bool = True) -> RunRecord:
    # Every field is immutable (str, bytes, int, datetime, enum): a shallow copy is enough.
    return dataclasses.replace(run, messages_json=run.messages_json if with_messages else None)


def _matches(run: RunRecord, query: RunQuery) -> bool:
    equal = (
        (run.user_id, query.user_id),
        (run.channel_id, query.channel_id),
        (run.team_id, query.team_id),
        (run.parent_id, query.parent_id),
        (run.status, query.status),
        (run.kind, query.kind),
    )
    if any(wanted is not None and value != wanted for value, wanted in equal):
        return False
    since, until = _utc(query.since), _utc(query.until)
    if since is not None and run.created_at < since:
        return False
    if until is not None and run.created_at >= until:
        return False
    before = query.before
    if before is not None and (run.created_at, run.id) >= (_utc(before.created_at), before.id):
        return False
    return not query.search or query.search.lower() in run.prompt.lower()


def _most_first(counts: Counter) -> dict:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))
