"""The run record and the values that travel between the core, Slack and storage."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
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

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass
class RunRecord:
    """One agent run as stored and as printed by `agentbot history --json` (DESIGN.md §3)."""

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
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    first_token_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    slack_writes: int = 0
    # The pydantic-ai messages of the run (JSON), kept for conversations; not part of the
    # printed record.
    messages_json: bytes | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values: enums as strings, times as ISO-8601 UTC."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "messages_json":
                continue
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
            elif isinstance(value, StrEnum):
                value = value.value
            out[f.name] = value
        return out


RECORD_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(RunRecord) if f.name != "messages_json"
)


@dataclass(frozen=True)
class Progress:
    """How a streaming run is doing, for live footers."""

    output_tokens: int
    elapsed_s: float

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
