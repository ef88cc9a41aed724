"""Runs one agent: streams its text to a sink, retries, times out, cancels, records the run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.exceptions import (
    AgentRunError,
    ModelAPIError,
    ModelConnectionError,
    ModelHTTPError,
    UsageLimitExceeded,
    UserError,
)
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from pydantic_core import PydanticSerializationError

from bot.activity import ToolActivity, ToolCallRecord, text_delta
from bot.errors import BotError
from bot.fetch import FetchPolicy
from bot.limits import Admission
from bot.live import LiveRun, LiveRuns
from bot.metrics import Metrics
from bot.models import Progress, RunRecord, RunStatus, utcnow
from bot.ports import RunStore, Sink
from bot.retries import SDK_RETRIES_OFF, TransientRetries
from bot.saving import Checkpoints, FinalRecords
from bot.text import clean_strings, clean_text, preview
from bot.tools import ThreadReader, ToolDeps, ToolLimits

log = logging.getLogger(__name__)

CREATE_TRIES = 4
# Seconds a run waits for its final record's first save before delivering its end anyway
# (the save goes on being retried): a database outage delays the answer a little, never
# loses it. SQLite's busy timeout is as long, so a lock shorter than that still saves first.
FINAL_SAVE_WAIT = 5.0


@dataclass(frozen=True)
class RunPolicy:
    """Time limits and retries for one run (`retries`: per model request, see bot/retries.py)."""

    idle_timeout: float = 60.0
    total_timeout: float = 600.0
    retries: int = 2
    token_budget: int | None = None
    tool_limits: ToolLimits = field(default_factory=ToolLimits)
    backoff_base: float = 0.5
    backoff_max: float = 8.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter for retry number `attempt` (1-based)."""
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))


class Runner:
    """Runs agents and records each run in the store."""

    def __init__(
        self,
        *,
        store: RunStore,
        metrics: Metrics,
        live: LiveRuns,
        admission: Admission | None = None,
        checkpoint_interval: float = 5.0,
        fetch_policy: FetchPolicy | None = None,
        thread_reader: ThreadReader | None = None,
        records: FinalRecords | None = None,
    ) -> None:
        """`checkpoint_interval`: how often a streaming run's text so far is saved, so that
        after a crash the restart can show it. `records` keeps final records until saved."""
        self._store = store
        self._metrics = metrics
        self.live = live
        self.records = records if records is not None else FinalRecords(store, live)
        self._checkpoint_interval = checkpoint_interval
        self._admission = admission or Admission(capacity=1_000_000)
        self._fetch_policy = fetch_policy or FetchPolicy()
        self._thread_reader = thread_reader

    async def run(
        self,
        agent: Agent[ToolDeps, str],
        run: RunRecord,
        *,
        sink: Sink,
        policy: RunPolicy,
        history: Sequence[ModelMessage] | None = None,
        on_settled: Callable[[RunRecord], None] | None = None,
    ) -> RunRecord:
        """Run `agent` on `run.prompt`, streaming into `sink`; returns the finished record.

        Never raises for a failed run: the failure is in the record and shown by the sink.
        Once its outcome is decided (`on_settled` is then called) no Stop changes it; its
        record is saved before the end is delivered, and kept until the store has it.
        """
        run.status = RunStatus.QUEUED
        if not await self._create(run, sink):
            return run
        self._metrics.live_runs.inc()
        started = time.monotonic()
        checkpoints = Checkpoints(self._store, interval=self._checkpoint_interval)
        try:
            with self.live.track(run) as live:
                shown = await self._carry_out(agent, run, sink, policy, history, checkpoints, live)
                run.finished_at = utcnow()
                run.duration_ms = round((time.monotonic() - started) * 1000)
                if on_settled is not None:
                    on_settled(run)
                # Saved first: a Slack that is slow, or a shutdown meanwhile, loses nothing.
                await self.save_final(run, after=checkpoints.settled())
                await self._deliver(run, sink, started=shown)
                await self.save_final(run)  # with `slack_writes`, known only now
        finally:
            self._metrics.live_runs.dec()
        self._metrics.runs.labels(run.kind.value, run.status.value).inc()
        self._metrics.run_duration.labels(run.kind.value).observe(run.duration_ms / 1000)
        return run

    async def save_final(self, run: RunRecord, *, after: Awaitable[None] | None = None) -> bool:
        """Save `run`'s final record (after `after`), and keep saving it until the store has
        it (`records`); waits for the first try, at most `FINAL_SAVE_WAIT` seconds in all.
        True if saved now."""
        return await self.records.save(run, wait=FINAL_SAVE_WAIT, after=after)

    async def _carry_out(
        self,
        agent: Agent[ToolDeps, str],
        run: RunRecord,
        sink: Sink,
        policy: RunPolicy,
        history: Sequence[ModelMessage] | None,
        checkpoints: Checkpoints,
        live: LiveRun,
    ) -> bool:
        """Show the start, wait for a place, stream; on return `run.status` is final and the
        run settled. True if the sink started (it must then be told the end)."""
        started = False
        try:
            await sink.start(run)
            started = True
            checkpoints.now(run)  # the message's ts, for a restart to find it
            async with self._admission.slot(on_position=sink.queued):
                run.status = RunStatus.RUNNING
                run.started_at = utcnow()
                checkpoints.now(run)  # recorded running now, not at the first checkpoint
                await self._stream(agent, run, sink, policy, history, checkpoints)
                live.settle()  # the model is done: the answer stands whatever is clicked now
                run.status = RunStatus.SUCCEEDED
        except asyncio.CancelledError:
            if live.stop_reason is None:
                raise
            live.absorb_stop()
        except BotError as exc:
            run.status, run.error = RunStatus.FAILED, str(exc)
        except (TimeoutError, AgentRunError) as exc:
            run.status, run.error = RunStatus.FAILED, describe_failure(exc)
        except Exception as exc:  # a bug must still leave an honest record and message
            if live.stop_reason is not None and live.task.cancelling():
                # A stop that landed inside the library can surface as its own error.
                live.absorb_stop()
            else:
                log.exception("run %s crashed", run.id)
                crash = f"internal error ({type(exc).__name__})"
                run.status, run.error = RunStatus.FAILED, crash
        live.settle()
        return started

    async def _create(self, run: RunRecord, sink: Sink) -> bool:
        """Record the run before anything is shown; retried while the database is busy.
        When it cannot be recorded the user is still told, and False is returned."""
        for attempt in range(1, CREATE_TRIES + 1):
            try:
                await self._store.create(run)
                return True
            except Exception as exc:
                if attempt == CREATE_TRIES:
                    log.error("run %s: could not be recorded: %s", run.id, exc)
                    break
                await asyncio.sleep(0.25 * 2**attempt)
        run.status, run.error = RunStatus.FAILED, "the run could not be recorded (database busy)"
        try:
            await sink.start(run)
            await sink.finish(run)
        except Exception:
            log.exception("run %s: could not say so in Slack either", run.id)
        return False

    async def _deliver(self, run: RunRecord, sink: Sink, *, started: bool) -> None:
        """Let the sink show the end; a Slack outage must not lose the record. A sink that
        started is always told (its first post may still be on its way)."""
        if (
            started
            or run.message_ts is not None
            or run.status is not RunStatus.FAILED
            or run.output
        ):
            try:
                await sink.finish(run)
            except BotError as exc:  # a deferred first post was refused: never shown at all
                run.status, run.error = RunStatus.FAILED, str(exc)
            except Exception:
                log.exception("run %s: could not show the final state", run.id)
        run.slack_writes = sink.writes

    async def _stream(
        self,
        agent: Agent[ToolDeps, str],
        run: RunRecord,
        sink: Sink,
        policy: RunPolicy,
        history: Sequence[ModelMessage] | None,
        checkpoints: Checkpoints,
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        activity = ToolActivity()
        limits = policy.tool_limits
        deps = ToolDeps(
            fetch=self._fetch_policy,
            limits=limits,
            thread_reader=self._thread_reader,
            team_id=run.team_id,
            channel_id=run.channel_id,
            thread_ts=run.thread_ts,
            message_ts=lambda: run.message_ts,  # posted when the channel's turn comes
        )
        try:
            # run_stream_events, not run_stream: text a model writes before a tool call must
            # not end the run, and tool calls show while they happen.
            async with (
                asyncio.timeout_at(started + policy.total_timeout) as total,
                asyncio.timeout_at(started + policy.idle_timeout) as idle,
                agent.run_stream_events(
                    run.prompt,
                    message_history=history,
                    deps=deps,
                    usage_limits=limits.usage_limits(total_tokens_limit=policy.token_budget),
                    # One retry policy, per model request: ours (bot/retries.py), not the SDK's.
                    model_settings=SDK_RETRIES_OFF,
                    capabilities=[TransientRetries(retries=policy.retries, backoff=policy.backoff)],
                ) as events,
            ):
                try:
                    async for event in events:
                        changed = activity.feed(event)
                        # A tool call under way is not silence: allow for its own time limit.
                        grace = limits.call_timeout if activity.running else 0.0
                        idle.reschedule(loop.time() + policy.idle_timeout + grace)
                        delta = text_delta(event, run.output)
                        if not (delta or changed):
                            continue
                        if delta:
                            if run.first_token_at is None:
                                run.first_token_at = utcnow()
                            run.output += clean_text(delta)  # shown and stored as is
                        progress = Progress(
                            output_tokens=estimate_tokens(run.output),
                            elapsed_s=loop.time() - started,
                            tools=tuple(activity.lines()),
                            tasks=activity.tasks(),
                        )
                        sink.progress(run.output, progress)
                        checkpoints.maybe(run)
                finally:
                    with contextlib.suppress(UserError):  # no usage if the run never started
                        _copy_usage(events.usage, run, history)
                    run.tool_calls = [summary(record) for record in activity.records] or None
                # Only this turn: a conversation joins the turns of its runs (handlers/events.py).
                result = events.result
                if result is None:  # the events ran to their end, so the run has its result
                    raise RuntimeError("the run ended without a result")
                run.messages_json = messages_json(result.new_messages())
        except TimeoutError as exc:
            if total.expired():
                limit = f"the model did not finish within {policy.total_timeout:g} s"
            elif idle.expired():
                limit = f"the model sent nothing for {policy.idle_timeout:g} s"
            else:
                raise
            raise RunTimeout(limit) from exc


class RunTimeout(TimeoutError):
    """An idle or total time limit ran out; the message says which."""


def describe_failure(exc: BaseException) -> str:
    """One line a person can read, for the message and the record."""
    if isinstance(exc, RunTimeout):
        return f"The model did not answer in time ({exc})"
    if isinstance(exc, UsageLimitExceeded):
        what = "its token budget" if "token" in exc.message else "a usage limit"
        return f"The run hit {what} ({exc.message})"
    if isinstance(exc, ModelHTTPError):
        return f"The model API failed (HTTP {exc.status_code}: {preview(exc.message, 200)})"
    if isinstance(exc, ModelConnectionError):
        return f"The model API could not be reached ({preview(exc.message, 200)})"
    if isinstance(exc, ModelAPIError):
        return f"The model API failed ({preview(exc.message, 200)})"
    if isinstance(exc, AgentRunError):
        return f"The model's answer could not be used ({preview(exc.message, 200)})"
    return f"The run failed ({type(exc).__name__})"


def summary(record: ToolCallRecord) -> dict[str, Any]:
    """What the run record keeps of one tool call."""
    return {
        "name": record.name,
        "args": record.args_summary,
        "duration_ms": round((record.duration_s or 0) * 1000),
        "ok": bool(record.ok),
        "error": record.error,
    }


def messages_json(messages: list[ModelMessage]) -> bytes:
    """The run's messages as pydantic-ai stores them, with NUL and lone surrogates cleaned
    out: the model's text is untrusted and no UTF-8 encoder takes a lone surrogate."""
    try:
        return ModelMessagesTypeAdapter.dump_json(messages)
    except PydanticSerializationError:
        plain = ModelMessagesTypeAdapter.dump_python(messages, mode="json")
        return json.dumps(clean_strings(plain), ensure_ascii=False).encode()


def estimate_tokens(text: str) -> int:
    """A live estimate (about four characters a token) until the provider reports usage."""
    return max(1, round(len(text) / 4)) if text else 0


def _copy_usage(usage: object, run: RunRecord, history: Sequence[ModelMessage] | None) -> None:
    """The usage the provider reported; for text it streamed without reporting any (a run
    stopped or timed out mid-stream), an estimate, marked as such."""
    run.input_tokens = getattr(usage, "input_tokens", 0) or 0
    run.output_tokens = getattr(usage, "output_tokens", 0) or 0
    run.requests = getattr(usage, "requests", 0) or 0
    run.usage_estimated = bool(run.output) and not run.output_tokens
    if run.usage_estimated:
        run.output_tokens = estimate_tokens(run.output)
        run.input_tokens = run.input_tokens or estimate_tokens(prompt_text(run.prompt, history))
        run.requests = max(run.requests, 1)


def prompt_text(prompt: str, history: Sequence[ModelMessage] | None) -> str:
    """The text a request sent: the earlier turns' text parts and the prompt."""
    texts = [
        content
        for message in history or ()
        for part in message.parts
        if isinstance(content := getattr(part, "content", None), str)
    ]
    return "".join([*texts, prompt])
