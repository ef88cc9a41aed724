"""The `runs` and `audit` tables and the conversions between their rows and the core's
records; the small `slack_events`, `run_stop_requests` and `run_leases` tables that processes
sharing the database coordinate through."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot.models import AuditEntry, AuditOutcome, RunKind, RunRecord, RunStatus

# Named constraints keep migrations (and SQLite batch mode) deterministic.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as a tz-aware UTC `datetime`.

    Naive values are taken to be UTC already. SQLite keeps them as naive UTC text (which sorts
    correctly); PostgreSQL as `timestamp with time zone`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RunRow(Base):
    """One run; a column for every `RunRecord` field, same names."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    command: Mapped[str | None] = mapped_column(Text, nullable=True)
    agent: Mapped[str | None] = mapped_column(Text, nullable=True)
    model: Mapped[str | None] = mapped_column(Text, nullable=True)
    team_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    channel_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    user_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    thread_ts: Mapped[str | None] = mapped_column(Text, nullable=True)
    message_ts: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    output: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    requests: Mapped[int] = mapped_column(Integer, nullable=False)
    # Migration 0007.
    usage_estimated: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=false(), default=False
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    first_token_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    slack_writes: Mapped[int] = mapped_column(Integer, nullable=False)
    messages_json: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        Index(
            "ix_runs_created_at_stats",
            "created_at",
            "status",
            "kind",
            "user_id",
            "duration_ms",
            "input_tokens",
            "output_tokens",
            "parent_id",  # migration 0008: the stats count runs without a parent
        ),
        Index("ix_runs_user_id_created_at", "user_id", "created_at"),
        Index("ix_runs_channel_id_created_at", "channel_id", "created_at"),
        Index("ix_runs_status_created_at", "status", "created_at"),
        Index("ix_runs_kind_created_at", "kind", "created_at"),
        # Migration 0003: workspace first, for /history's filters and (covering) its stats.
        Index("ix_runs_team_id_user_id_created_at", "team_id", "user_id", "created_at"),
        Index("ix_runs_team_id_channel_id_created_at", "team_id", "channel_id", "created_at"),
        Index("ix_runs_team_id_status_created_at", "team_id", "status", "created_at"),
        Index("ix_runs_team_id_kind_created_at", "team_id", "kind", "created_at"),
        Index(
            "ix_runs_team_id_created_at_stats",
            "team_id",
            "created_at",
            "status",
            "kind",
            "user_id",
            "duration_ms",
            "input_tokens",
            "output_tokens",
            "parent_id",
        ),
        Index("ix_runs_parent_id", "parent_id"),
        Index("ix_runs_channel_id_thread_ts", "channel_id", "thread_ts"),
        Index("ix_runs_channel_id_message_ts", "channel_id", "message_ts"),
    )


# Every column but the primary key and the messages, in RunRecord order.
RECORD_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in RunRow.__table__.columns if c.name not in ("id", "messages_json")
)


def row_values(record: RunRecord) -> dict[str, object]:
    """The column values of `record` (enums as strings), `messages_json` included."""
    values: dict[str, object] = {"id": record.id}
    for name in RECORD_COLUMNS:
        values[name] = getattr(record, name)
    values["kind"] = RunKind(record.kind).value
    values["status"] = RunStatus(record.status).value
    values["messages_json"] = record.messages_json
    return values


def row_from_record(record: RunRecord) -> RunRow:
    return RunRow(**row_values(record))


def record_from_row(row: RunRow, *, with_messages: bool = True) -> RunRecord:
    """The record stored in `row`; `messages_json` is left `None` unless `with_messages`."""
    values = {name: getattr(row, name) for name in RECORD_COLUMNS}
    values["kind"] = RunKind(row.kind)
    values["status"] = RunStatus(row.status)
    return RunRecord(
        id=row.id,
        messages_json=row.messages_json if with_messages else None,
        **values,
    )


class AuditRow(Base):
    """One use of an admin command (`AuditEntry`), same field names."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    team_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    channel_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    command: Mapped[str] = mapped_column(Text, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_team_id_at", "team_id", "at"),
    )


def audit_row(entry: AuditEntry) -> AuditRow:
    return AuditRow(
        at=entry.at,
        team_id=entry.team_id,
        channel_id=entry.channel_id,
        user_id=entry.user_id,
        command=entry.command,
        text=entry.text,
        outcome=AuditOutcome(entry.outcome).value,
        detail=entry.detail,
    )


def audit_entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        team_id=row.team_id,
        channel_id=row.channel_id,
        user_id=row.user_id,
        command=row.command,
        text=row.text,
        outcome=AuditOutcome(row.outcome),
        detail=row.detail,
    )


class SlackEventRow(Base):
    """A Slack `event_id` some process has taken on, so that Slack's retries of it (to this
    process or another sharing the database) are dropped. Pruned after an hour."""

    __tablename__ = "slack_events"

    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)

    __table_args__ = (Index("ix_slack_events_seen_at", "seen_at"),)


class StopRequestRow(Base):
    """A Stop pressed on a process where the run is not live: the process running it polls
    for these and stops the run. At most one per run; kept as a record of who asked."""

    __tablename__ = "run_stop_requests"

    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    requested_by: Mapped[str] = mapped_column(Text, nullable=False)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class RunLeaseRow(Base):
    """The process carrying out a run renews its lease every few seconds while the run is
    live; start-up recovery leaves runs with a fresh lease alone. Kept after the run ends
    (only unfinished runs are looked at); deleted with the run."""

    __tablename__ = "run_leases"

    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
