"""Built-in agent tools (fetch a page, read the thread, tell the time) and the guard every
tool call runs under. Fetching itself is in `bot.fetch`, tool activity in `bot.activity`.

Tools report failures by raising `ToolFailed`: the model sees a failed result and adapts,
the run goes on, and no retry budget is spent (a `ModelRetry` loop that runs out of
retries would end the run). Anything else a tool raises is turned into `ToolFailed` by
`tool_guard()`, so no tool can crash a run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field
from pydantic_ai import RunContext, Tool, ToolFailed
from pydantic_ai.capabilities.hooks import Hooks
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.toolsets import FunctionToolset
from pydantic_ai.usage import UsageLimits

from bot.fetch import FetchError, FetchPolicy, Resolve, fetch_page
from bot.text import cap, one_line

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- configuration and deps


class ToolLimits(BaseModel):
    """Per-run limits on tool use, enforced by `tool_guard()` through `ToolDeps.usage`."""

    model_config = ConfigDict(extra="forbid")

    max_calls: int = Field(default=20, ge=1)
    """Tool calls per run; later calls are refused (the model is told to answer)."""
    call_timeout: float = Field(default=60.0, gt=0)
    total_time: float = Field(default=180.0, gt=0)
    """Seconds of tool execution per run, all calls together."""

    def usage_limits(self, **limits: Any) -> UsageLimits:
        """pydantic-ai's `UsageLimits` plus its hard stop on tool calls: a backstop for runs
        without `ToolDeps` (where `max_calls` cannot be counted); it counts only calls that
        succeeded and ends the run with `UsageLimitExceeded`."""
        return UsageLimits(tool_calls_limit=self.max_calls * 2, **limits)


@dataclass(frozen=True)
class ThreadMessage:
    author: str
    text: str
    ts: str = ""


class ThreadReader(Protocol):
    """Returns the latest `limit` messages, oldest first, of the thread `thread_ts` in
    `channel_id` (or of the channel when `thread_ts` is None), read within the budget of
    workspace `team_id`. Implemented by the Slack side."""

    async def __call__(
        self, channel_id: str, thread_ts: str | None, *, limit: int, team_id: str | None = None
    ) -> Sequence[ThreadMessage]: ...


@dataclass
class ToolUsage:
    """What one run has used so far; mutable, one per `ToolDeps`."""

    calls: int = 0
    seconds: float = 0.0


@dataclass
class ToolDeps:
    """The run's dependencies for tools (pydantic-ai `deps`); make one per run."""

    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    limits: ToolLimits = field(default_factory=ToolLimits)
    thread_reader: ThreadReader | None = None
    team_id: str | None = None
    channel_id: str | None = None
    thread_ts: str | None = None
    message_ts: str | Callable[[], str | None] | None = None
    """The run's own reply, still being written: `read_thread` leaves it out. A function
    when the reply is posted after the run starts (a busy channel): asked at each read."""
    resolve: Resolve | None = None
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    """The clock `current_time` reads (tests pass a fixed one)."""
    usage: ToolUsage = field(default_factory=ToolUsage)


def _deps(ctx: RunContext[Any]) -> ToolDeps:
    return ctx.deps if isinstance(ctx.deps, ToolDeps) else ToolDeps()


# ---------------------------------------------------------------- the tools


async def fetch_url(ctx: RunContext[ToolDeps], url: str) -> str:
    """Fetch a web page over http or https and return its text (HTML reduced to text).

    Args:
        url: The full address, e.g. https://example.com/page.
    """
    deps = _deps(ctx)
    try:
        return await fetch_page(url, deps.fetch, resolve=deps.resolve)
    except FetchError as exc:
        raise ToolFailed(str(exc)) from None


THREAD_MESSAGES = 50
THREAD_CHARS = 12_000
MESSAGE_CHARS = 1_500


async def read_thread(ctx: RunContext[ToolDeps]) -> str:
    """Read the Slack thread (or channel) this conversation takes place in: its latest
    messages, oldest first, one per line as "author: text"."""
    deps = _deps(ctx)
    if deps.thread_reader is None or deps.channel_id is None:
        raise ToolFailed("there is no Slack thread to read for this run")
    messages = await deps.thread_reader(
        deps.channel_id, deps.thread_ts, limit=THREAD_MESSAGES, team_id=deps.team_id
    )
    own = deps.message_ts() if callable(deps.message_ts) else deps.message_ts
    lines = [
        f"{m.author}: {cap(m.text.strip(), MESSAGE_CHARS)}"
        for m in messages
        if not (own and m.ts == own)
    ]
    kept: list[str] = []
    size = 0
    for line in reversed(lines):  # the newest matter most
        if size + len(line) > THREAD_CHARS and kept:
            break
        kept.append(line)
        size += len(line) + 1
    if not kept:
        return "The thread has no messages."
    left_out = len(lines) - len(kept)
    head = f"[{left_out} earlier messages left out]\n" if left_out else ""
    return head + "\n".join(reversed(kept))


async def current_time(ctx: RunContext[ToolDeps], timezone: str = "UTC") -> str:
    """Tell the current date and time.

    Args:
        timezone: An IANA time zone name such as Europe/Paris or America/New_York.
    """
    try:
        zone = ZoneInfo(timezone.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolFailed(
            f"unknown time zone {timezone!r}: use an IANA name such as Europe/Paris or UTC"
        ) from None
    now = _deps(ctx).now().astimezone(zone)
    offset = now.strftime("%z")
    return (
        f"{now:%A %d %B %Y, %H:%M:%S} {now.tzname()} (UTC{offset[:3]}:{offset[3:]}, "
        f"{zone.key}); ISO 8601: {now.isoformat(timespec='seconds')}"
    )


BUILTIN_TOOLS: dict[str, Callable[..., Awaitable[str]]] = {
    "fetch_url": fetch_url,
    "read_thread": read_thread,
    "current_time": current_time,
}


def toolset_for(names: Sequence[str]) -> FunctionToolset[ToolDeps]:
    """A fresh toolset with the named built-in tools; `ValueError` names an unknown one."""
    unknown = [name for name in names if name not in BUILTIN_TOOLS]
    if unknown:
        known = ", ".join(sorted(BUILTIN_TOOLS))
        raise ValueError(f"unknown tool {unknown[0]!r} (built-in tools: {known})")
    tools = [Tool(BUILTIN_TOOLS[name], takes_ctx=True) for name in dict.fromkeys(names)]
    return FunctionToolset(tools, id="builtin")


# ---------------------------------------------------------------- the guard


def tool_guard() -> Hooks[Any]:
    """The capability to give every agent with tools (`Agent(..., capabilities=[...])`):
    applies `ToolDeps.limits` (calls, time per call, time per run) to every tool, MCP ones
    included, and turns an unexpected exception into a failed tool result."""
    return Hooks(tool_execute=_guard_execution, tool_execute_error=_failed_result)


async def _guard_execution(
    ctx: RunContext[Any],
    *,
    call: ToolCallPart,
    tool_def: object,
    args: Any,
    handler: Callable[[Any], Awaitable[Any]],
) -> Any:
    deps = _deps(ctx)
    limits, usage = deps.limits, deps.usage
    if usage.calls >= limits.max_calls:
        raise ToolFailed(
            f"refused: this run already made {limits.max_calls} tool calls, the most allowed; "
            "answer with what you have"
        )
    budget = min(limits.call_timeout, limits.total_time - usage.seconds)
    if budget <= 0:
        raise ToolFailed(
            f"refused: this run used up its {limits.total_time:g} s of tool time; "
            "answer with what you have"
        )
    usage.calls += 1
    started = time.monotonic()
    try:
        async with asyncio.timeout(budget) as scope:
            return await handler(args)
    except TimeoutError:
        if scope.expired():
            raise ToolFailed(f"no result within {budget:.3g} s") from None
        raise
    finally:
        usage.seconds += time.monotonic() - started


async def _failed_result(
    ctx: RunContext[Any], *, call: ToolCallPart, tool_def: object, args: Any, error: Exception
) -> Any:
    log.warning("tool %s raised", call.tool_name, exc_info=error)
    raise ToolFailed(cap(f"{type(error).__name__}: {one_line(str(error))}", 300)) from error
