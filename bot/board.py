"""What the parent message of a multi-agent run shows: a title, a phase and one line per part."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from bot.models import RunStatus


class ItemStatus(StrEnum):
    """The state of one piece of a multi-agent run (a subtask, a stage, a model)."""

    PLANNED = "planned"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @classmethod
    def of(cls, status: RunStatus) -> ItemStatus:
        match status:
            case RunStatus.SUCCEEDED:
                return cls.DONE
            case RunStatus.CANCELLED | RunStatus.INTERRUPTED:
                return cls.CANCELLED
            case RunStatus.FAILED:
                return cls.FAILED
            case RunStatus.REFUSED:  # turned away before it ran: not run, not failed
                return cls.SKIPPED
            case RunStatus.QUEUED:
                return cls.PLANNED
            case RunStatus.RUNNING:
                return cls.RUNNING


@dataclass
class BoardItem:
    label: str
    status: ItemStatus = ItemStatus.PLANNED
    detail: str = ""


@dataclass
class BoardView:
    """What the parent message of a team, pipeline or comparison shows."""

    title: str
    phase: str
    items: list[BoardItem] = field(default_factory=list)
    summary: str | None = None
