"""Tool activity while an answer streams: `ToolActivity` turns pydantic-ai run events into
`ToolCallRecord`s and short status lines, and `text_delta()` picks the answer text out of
the same events."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic_ai.messages import (
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPart,
)
from yarl import URL

from bot.models import ToolState, ToolTask
from bot.text import cap, preview


@dataclass
class ToolCallRecord:
    call_id: str
    name: str
    args_summary: str
    started: float
    duration_s: float | None = None
    ok: bool | None = None
    """None while the call runs."""
    error: str | None = None

    @property
    def label(self) -> str:
        return " ".join(part for part in (self.name, self.args_summary) if part)

    def line(self, now: float) -> str:
        if self.ok is None:
            return f"🔧 {self.label} … running ({now - self.started:.0f} s)"
        if self.ok:
            return f"🔧 {self.label} · {self._done()}"
        return f"⚠️ {self.label} · {self.error}"

    def task(self) -> ToolTask:
        if self.ok is None:
            return ToolTask(self.call_id, self.label, ToolState.RUNNING)
        if self.ok:
            return ToolTask(self.call_id, self.label, ToolState.DONE, self._done())
        return ToolTask(self.call_id, self.label, ToolState.FAILED, self.error or "failed")

    def _done(self) -> str:
        return f"done in {self.duration_s or 0:.1f} s"


class ToolActivity:
    """Follows one run's tool calls from its events; `lines()` is a short status to show."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.records: list[ToolCallRecord] = []
        self._by_id: dict[str, ToolCallRecord] = {}
        self._clock = clock
        self._tasks: tuple[ToolTask, ...] | None = ()  # None once a call changed

    def feed(self, event: object) -> bool:
        """Take one run event; True when it changed the activity (time to refresh)."""
        if isinstance(event, FunctionToolCallEvent):
            part = event.part
            if part.tool_call_id in self._by_id:
                return False
            record = ToolCallRecord(
                call_id=part.tool_call_id,
                name=part.tool_name,
                args_summary=summarize_args(part),
                started=self._clock(),
            )
            self.records.append(record)
            self._by_id[record.call_id] = record
            self._tasks = None
            return True
        if isinstance(event, FunctionToolResultEvent):
            done = self._by_id.get(event.part.tool_call_id)
            if done is None:
                return False
            result = event.part
            done.duration_s = self._clock() - done.started
            done.ok = result.outcome == "success"
            if not done.ok:
                verb = "retried" if result.outcome == "retried" else "failed"
                done.error = f"{verb}: {preview(str(result.content), 160)}"
            self._tasks = None
            return True
        return False

    def lines(self, *, last: int = 5) -> list[str]:
        now = self._clock()
        shown = [record.line(now) for record in self.records[-last:]]
        hidden = len(self.records) - len(shown)
        return ([f"… {hidden} earlier tool calls"] if hidden else []) + shown

    def tasks(self) -> tuple[ToolTask, ...]:
        """The calls as task cards; the same tuple until a call starts or ends (the runner
        asks on every token)."""
        if self._tasks is None:
            self._tasks = tuple(record.task() for record in self.records)
        return self._tasks

    @property
    def running(self) -> int:
        """Calls under way (the runner's idle timer should allow for them)."""
        return sum(1 for r in self.records if r.ok is None)


def summarize_args(call: ToolCallPart) -> str:
    """A few words for a status line: the host for a URL, else the argument values."""
    try:
        args = call.args_as_dict()
    except Exception:  # arguments the model garbled: the result will say so
        return ""
    url = args.get("url")
    if isinstance(url, str):
        try:
            return URL(url).host or cap(url, 40)
        except ValueError:
            return cap(url, 40)
    return preview(", ".join(str(v) for v in args.values()), 40)


def text_delta(event: object, so_far: str) -> str:
    """The answer text `event` adds to `so_far` (empty for other events). A text part that
    starts after earlier text, as a new response after tool calls does, starts a paragraph."""
    if isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
        return event.delta.content_delta
    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
        gap = "" if not so_far or so_far.endswith("\n\n") else "\n" * (1 + (so_far[-1] != "\n"))
        return gap + event.part.content
    return ""
