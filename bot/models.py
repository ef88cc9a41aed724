"""The run record and the values that travel between the core, Slack and storage."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any


class RunKind(StrEnum):
    ASK = "ask"
    TEAM = "team"
    SUBTASK = "subtask"
    SYNTHESIS = "synthesis"
    PIPELINE = "pipeline"
    STAGE = "stage"
    COMPARE = "compare"
    FOLLOWUP = "followup"
    MENTION = "mention"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    # Never started: the request was empty, too long, over the user's rate or not allowed
    # here. Not a failure: the user was answered with the reason.
    REFUSED = "refused"

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return uuid.uuid4().hex


def iso_utc(moment: datetime) -> str:
    """`moment` as ISO-8601 UTC with a `Z`, as every record prints its times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


NOT_PRINTED = frozenset({"messages_json", "tool_calls"})


@dataclass
class RunRecord:
    """One agent run, as stored and as printed by `history --json` (docs/ARCHITECTURE.md §6)."""

    kind: RunKind
    prompt: str
    id: str = field(default_factory=new_run_id)
    parent_id: str | None = None
    command: str | None = None
    agent: str | None = None
    model: str | None = None
    team_id: str | None = None
    channel_id: str | None = None
    user_id: str | None = None
    thread_ts: str | None = None
    message_ts: str | None = None
    output: str = ""
    status: RunStatus = RunStatus.QUEUED
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    # True when the tokens are estimated from the text (a run stopped mid-stream, for which
    # the provider reported no usage), not reported by the provider.
    usage_estimated: bool = False
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    first_token_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    slack_writes: int = 0
    # Kept beside the record, not part of the printed run object (docs/ARCHITECTURE.md §6): the
    # pydantic-ai messages of the run (JSON), for conversations, and the tool calls it made
    # (`ToolCallSummary` dicts), for `history show`.
    messages_json: bytes | None = field(default=None, repr=False)
    tool_calls: list[dict[str, Any]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values: enums as strings, times as ISO-8601 UTC."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in NOT_PRINTED:
                continue
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
            elif isinstance(value, StrEnum):
                value = value.value
            out[f.name] = value
        return out


RECORD_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(RunRecord) if f.name not in NOT_PRINTED
)


class ToolState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class ToolTask:
    """One tool call as a sink shows it: a Slack task card in native streaming."""

    id: str
    title: str
    """The tool and a few words of its arguments: "fetch_url example.com"."""
    state: ToolState
    note: str = ""
    """How it ended: "done in 0.4 s", "failed: …"; empty while it runs."""


@dataclass(frozen=True)
class Progress:
    """How a streaming run is doing, for live footers."""

    output_tokens: int
    elapsed_s: float
    tools: tuple[str, ...] = ()
    """Status lines of the run's tool calls, latest last."""
    tasks: tuple[ToolTask, ...] = ()
    """The run's tool calls so far, in the order they started."""

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class RunQuery:
    """Filters for the run history; every field is optional and they combine with AND."""

    user_id: str | None = None
    channel_id: str | None = None
    team_id: str | None = None
    status: RunStatus | None = None
    kind: RunKind | None = None
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None
    parent_id: str | None = None
    limit: int = 50
    # Keyset paging: only runs strictly older than this one in (created_at, id) order.
    before: RunCursor | None = None


@dataclass(frozen=True)
class RunCursor:
    """Where a page of history ended: the `created_at` and `id` of its last (oldest) run."""

    created_at: datetime
    id: str

    @classmethod
    def after(cls, run: RunRecord) -> RunCursor:
        return cls(created_at=run.created_at, id=run.id)


@dataclass(frozen=True)
class StatsQuery:
    """The runs to summarise: one workspace (or all when `team_id` is None) in a time range."""

    team_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    top_users: int = 10


@dataclass(frozen=True)
class DayCount:
    """Runs created on one UTC day."""

    day: date
    runs: int


@dataclass
class RunStats:
    """A summary of the runs matching a `StatsQuery`.

    Durations are over runs that have one; percentiles are nearest-rank (the smallest stored
    duration with at least p% of durations at or below it), so every store agrees exactly.
    """

    total: int = 0
    by_status: dict[RunStatus, int] = field(default_factory=dict)
    by_kind: dict[RunKind, int] = field(default_factory=dict)
    # The busiest users, most runs first (then by id); `users` counts them all.
    top_users: list[tuple[str | None, int]] = field(default_factory=list)
    users: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    p50_ms: int | None = None
    p95_ms: int | None = None
    # Only days with runs, oldest first (`bot.query.daily_series` fills the gaps).
    per_day: list[DayCount] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: enums as strings, days as ISO dates."""
        return {
            "total": self.total,
            "by_status": {status.value: n for status, n in self.by_status.items()},
            "by_kind": {kind.value: n for kind, n in self.by_kind.items()},
            "top_users": [{"user_id": user, "runs": n} for user, n in self.top_users],
            "users": self.users,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "per_day": [{"day": d.day.isoformat(), "runs": d.runs} for d in self.per_day],
        }


def nearest_rank(sorted_values: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile of ascending `sorted_values` (None when empty)."""
    if not sorted_values:
        return None
    return sorted_values[percentile_index(len(sorted_values), fraction)]


def percentile_index(count: int, fraction: float) -> int:
    """The 0-based position of the nearest-rank percentile among `count` sorted values."""
    rank = -(-round(fraction * count * 1_000_000) // 1_000_000)  # ceil, robust to float noise
    return min(count, max(1, rank)) - 1


class AuditOutcome(StrEnum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    INVALID = "invalid"


@dataclass
class AuditEntry:
    """One use of an admin command: who, what, where, when, and what came of it."""

    user_id: str
    command: str
    text: str
    outcome: AuditOutcome
    team_id: str | None = None
    channel_id: str | None = None
    detail: str | None = None
    at: datetime = field(default_factory=utcnow)
    # Set by the store when recorded.
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["outcome"] = self.outcome.value
        out["at"] = iso_utc(self.at)
        return out


@dataclass(frozen=True)
class AuditQuery:
    """Filters for the audit log, newest first."""

    team_id: str | None = None
    user_id: str | None = None
    outcome: AuditOutcome | None = None
    since: datetime | None = None
    limit: int = 50
