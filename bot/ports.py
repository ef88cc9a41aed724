"""The two small protocols through which the core talks to the outside world.

A `Sink` receives the progress of one run (Slack messages, the playground, tests); a
`RunStore` records runs (SQL in production, a dictionary in contract tests).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Protocol

from bot.board import BoardView
from bot.models import (
    AuditEntry,
    AuditQuery,
    Progress,
    RunCursor,
    RunQuery,
    RunRecord,
    RunStats,
    StatsQuery,
)

# How long a Slack `event_id` is remembered: Slack retries within minutes.
EVENT_TTL = timedelta(hours=1)


class Sink(Protocol):
    """Where one run's progress goes. Methods are called in order: start, progress*, then one
    of finish / fail."""

    @property
    def writes(self) -> int:
        """How many writes this sink has made to the outside (Slack API calls)."""
        ...

    async def start(self, run: RunRecord) -> None:
        """Show that the run has begun; may set `run.message_ts`/`run.thread_ts`, now or
        later: a busy channel's first post waits for its turn while the run goes on.

        Raises `InputError` when the run cannot be shown at all (for example a channel the bot
        is not in); the user has then been told why. When that is learnt only later, the
        error is raised from the next `progress` or from `finish`.
        """
        ...

    def queued(self, position: int) -> None:
        """The run waits in line for a free place (1 = next). Cheap, never blocks."""
        ...

    def progress(self, text: str, progress: Progress) -> None:
        """The text so far. Cheap and never blocks: the sink decides when to show it.
        Raises a late refusal of `start` (once), which ends the run failed."""
        ...

    async def finish(self, run: RunRecord) -> None:
        """Show the final state of the run (succeeded, cancelled or failed with partial text);
        returns once the whole output is delivered."""
        ...


class Board(Protocol):
    """The parent message of a multi-agent run (team, pipeline, comparison): it shows the plan
    and each part's status, and the parts answer in its thread."""

    @property
    def writes(self) -> int: ...

    async def open(self, run: RunRecord, view: BoardView) -> None:
        """Post the parent message; sets `run.message_ts`. Raises `InputError` like
        `Sink.start` when it cannot be shown at all."""
        ...

    def show(self, view: BoardView) -> None:
        """The latest state; cheap, never blocks."""
        ...

    async def close(self, run: RunRecord, view: BoardView) -> None:
        """Show the final state; returns once delivered."""
        ...

    def reply(self, heading: str) -> Sink:
        """A sink for one part, answering in the parent's thread under `heading`."""
        ...


class RunStore(Protocol):
    """Records runs. `create` is called before the first write to Slack, `save` after.

    It also holds what processes sharing one store coordinate through: the Slack events
    already taken on, Stop requests for runs live in another process, and the leases that
    tell which runs some process is still carrying out.
    """

    async def create(self, run: RunRecord) -> None: ...

    async def save(self, run: RunRecord) -> None:
        """Write the whole record (upsert by id), including `messages_json` when set."""
        ...

    async def get(self, run_id: str) -> RunRecord | None: ...

    async def query(self, query: RunQuery) -> list[RunRecord]:
        """Runs matching the query, newest first, at most `query.limit`."""
        ...

    async def children(self, parent_id: str) -> list[RunRecord]:
        """The runs whose parent is `parent_id`, oldest first."""
        ...

    async def find_by_message(self, channel_id: str, ts: str) -> RunRecord | None:
        """The latest run in `channel_id` whose message or thread is `ts`, with its messages."""
        ...

    async def conversation_page(
        self, channel_id: str, ts: str | None, *, before: RunCursor, limit: int
    ) -> list[RunRecord]:
        """At most `limit` runs in `channel_id` strictly older than `before`, newest first,
        with their messages: those whose message or thread is `ts`, or all when it is None."""
        ...

    async def mark_interrupted(
        self,
        reason: str,
        *,
        stale_before: datetime | None = None,
        carried: Collection[str] = (),
    ) -> list[RunRecord]:
        """Mark every run still `running` or `queued` as `interrupted`; return them, oldest
        first. Atomic: of processes asking at once, each run is returned to one.

        With `stale_before`, only the runs no process is carrying out: a run is skipped when
        its lease was renewed (`renew_leases`) at or after `stale_before`, or when it was
        created at or after it (a run's lease starts with its creation, before its process
        first renews it).

        Runs in `carried` are never taken: the asking process carries them out itself (live,
        or ended with the final record not saved yet), whatever their lease says.
        """
        ...

    async def renew_leases(self, run_ids: Collection[str], *, now: datetime | None = None) -> None:
        """Record that this process is carrying out `run_ids` as of `now` (default: now), in
        one statement. Ids of runs that do not exist are ignored."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot answer."""
        ...

    async def count(self, query: RunQuery) -> int:
        """How many runs match the query's filters (its `limit` is ignored)."""
        ...

    async def stats(self, query: StatsQuery) -> RunStats:
        """Runs by status, kind and user, tokens, p50/p95 duration and runs per UTC day."""
        ...

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        """Append `entry` to the audit log; return it with its `id` set."""
        ...

    async def audit_log(self, query: AuditQuery) -> list[AuditEntry]:
        """Audit entries matching the query, newest first, at most `query.limit`."""
        ...

    async def first_delivery(self, event_id: str, *, now: datetime | None = None) -> bool:
        """Record that Slack delivered `event_id`; True only for its first delivery within
        `EVENT_TTL` (of all processes sharing the store: atomic, never read-then-write).

        Entries older than `EVENT_TTL` are pruned now and then.
        """
        ...

    async def request_stop(self, run_id: str, *, by: str) -> bool:
        """Ask whichever process runs `run_id` to stop it, on behalf of user `by`.

        True when the request is recorded now; False when the run is missing or already
        finished, or a stop was requested before (the first request stands).
        """
        ...

    async def stop_requests(self, run_ids: Collection[str]) -> dict[str, str]:
        """The stop requests among `run_ids`: run id → the user who asked."""
        ...
