"""Runs one agent: streams its text to a sink, retries, times out, cancels, records the run."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.exceptions import (
    AgentRunError,
    ModelAPIError,
    ModelConnectionError,
    ModelHTTPError,
    ModelRateLimitError,
    ModelServerError,
    ModelUnavailableError,
    UsageLimitExceeded,
    UserError,
)
from pydantic_ai.messages import ModelMessage

from bot.activity import ToolActivity, ToolCallRecord, text_delta
from bot.errors import BotError
from bot.fetch import FetchPolicy
from bot.limits import Admission
from bot.metrics import Metrics
from bot.models import Progress, RunRecord, RunStatus, utcnow
from bot.ports import RunStore, Sink
from bot.text import preview
from bot.tools import ThreadReader, ToolDeps, ToolLimits

log = logging.getLogger(__name__)

CREATE_TRIES = 4
TRANSIENT_ERRORS = (
    ModelRateLimitError,
    ModelUnavailableError,
    ModelServerError,
    ModelConnectionError,
)


@dataclass(frozen=True)
class RunPolicy:
    """Time limits and retries for one run."""

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


@dataclass
class LiveRun:
    run: RunRecord
    task: asyncio.Task[Any]
    stop_reason: tuple[RunStatus, str] | None = None

    def absorb_stop(self) -> None:
        """After catching the CancelledError of `LiveRuns.stop`: take the stop's status and
        reason and let the task go on to record and show them."""
        assert self.stop_reason is not None
        self.task.uncancel()
        self.run.status, self.run.error = self.stop_reason


@dataclass
class LiveRuns:
    """The runs in progress, so that Stop and shutdown can reach them."""

    _runs: dict[str, LiveRun] = field(default_factory=dict)
    _busy: asyncio.Event = field(default_factory=asyncio.Event)  # set while a run is live
    _closed: tuple[RunStatus, str] | None = None  # set by `stop_all`: later runs end at once

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run_id: str) -> RunRecord | None:
        live = self._runs.get(run_id)
        return live.run if live else None

    def ids(self) -> list[str]:
        """The ids of the runs in progress."""
        return list(self._runs)

    def stoppable(self) -> list[str]:
        """The ids of the live runs that no stop has reached yet."""
        return [run_id for run_id, live in self._runs.items() if live.stop_reason is None]

    async def wait_busy(self) -> None:
        """Return once at least one run is live (at once if one is)."""
        await self._busy.wait()

    @contextmanager
    def track(self, run: RunRecord) -> Iterator[LiveRun]:
        """Make `run`, carried out by the current task, reachable by `stop` while inside."""
        task = asyncio.current_task()
        assert task is not None, "runs are carried out inside tasks"
        live = LiveRun(run=run, task=task)
        self._runs[run.id] = live
        self._busy.set()
        if self._closed is not None:  # started after shutdown interrupted the rest
            live.stop_reason = self._closed
            task.cancel()
        try:
            yield live
        finally:
            del self._runs[run.id]
            if not self._runs:
                self._busy.clear()

    def stop(self, run_id: str, *, status: RunStatus, reason: str) -> bool:
        """Cancel a live run; it ends with `status` (cancelled or interrupted) and `reason`.

        Returns False when the run is not live (finished, or never started here).
        """
        live = self._runs.get(run_id)
        if live is None or live.task.done():
            return False
        if live.stop_reason is None:
            live.stop_reason = (status, reason)
            live.task.cancel()
        return True

    def stop_all(self, *, status: RunStatus, reason: str) -> int:
        """Stop every live run, and every run that starts from now on (shutdown)."""
        self._closed = (status, reason)
        return sum(self.stop(run_id, status=status, reason=reason) for run_id in list(self._runs))

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is live, at most `timeout` seconds; True if all finished."""
        tasks = [live.task for live in self._runs.values()]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending


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
    ) -> None:
        """`checkpoint_interval`: how often a streaming run's text so far is saved, so that
        after a crash the restart can show it."""
        self._store = store
        self._metrics = metrics
        self.live = live
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
    ) -> RunRecord:
        """Run `agent` on `run.prompt`, streaming into `sink`; returns the finished record.

        Never raises for a failed run: the failure is in the record and shown by the sink.
        """
        run.status = RunStatus.QUEUED
        if not await self._create(run, sink):
            return run
        self._metrics.live_runs.inc()
        started = time.monotonic()
        checkpoints = Checkpoints(self._store, interval=self._checkpoint_interval)
        try:
            with self.live.track(run) as live:
                sink_started = False
                try:
                    await sink.start(run)
                    sink_started = True
                    checkpoints.now(run)  # the message's ts, for a restart to find it
                    async with self._admission.slot(on_position=sink.queued):
                        run.status = RunStatus.RUNNING
                        run.started_at = utcnow()
                        await self._stream_with_retries(
                            agent, run, sink, policy, history, checkpoints
                        )
                    run.status = RunStatus.SUCCEEDED
                except asyncio.CancelledError:
                    if live.stop_reason is None:
                        raise
                    live.absorb_stop()
                except BotError as exc:
                    run.status, run.error = RunStatus.FAILED, str(exc)
                except (TimeoutError, AgentRunError) as exc:
                    run.status, run.error = RunStatus.FAILED, describe_failure(exc, policy)
                except Exception as exc:  # a bug must still leave an honest record and message
                    if live.stop_reason is not None and live.task.cancelling():
                        # A stop that landed inside the library can surface as its own error.
                        live.absorb_stop()
                    else:
                        log.exception("run %s crashed", run.id)
                        crash = f"internal error ({type(exc).__name__})"
                        run.status, run.error = RunStatus.FAILED, crash
                run.finished_at = utcnow()
                run.duration_ms = round((time.monotonic() - started) * 1000)
                await self._deliver(run, sink, started=sink_started)
                await checkpoints.final(run)
        finally:
            self._metrics.live_runs.dec()
        self._metrics.runs.labels(run.kind.value, run.status.value).inc()
        self._metrics.run_duration.labels(run.kind.value).observe(run.duration_ms / 1000)
        return run

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

    async def _stream_with_retries(
        self,
        agent: Agent[ToolDeps, str],
        run: RunRecord,
        sink: Sink,
        policy: RunPolicy,
        history: Sequence[ModelMessage] | None,
        checkpoints: Checkpoints,
    ) -> None:
        attempt = 0
        while True:
            try:
                await self._stream(agent, run, sink, policy, history, checkpoints)
                return
            except TRANSIENT_ERRORS as exc:
                # Once text is visible a retry would rewrite it; keep the partial answer instead.
                if run.output or attempt >= policy.retries:
                    raise
                attempt += 1
                delay = max(policy.backoff(attempt), exc.retry_after or 0.0)
                log.info("run %s: %s; retry %d in %.2fs", run.id, exc, attempt, delay)
                await asyncio.sleep(delay)

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
                            run.output += delta
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
                        _copy_usage(events.usage, run)
                    run.tool_calls = [summary(record) for record in activity.records] or None
                run.messages_json = events.result.all_messages_json()
        except TimeoutError as exc:
            if total.expired():
                limit = f"the model did not finish within {policy.total_timeout:g} s"
            elif idle.expired():
                limit = f"the model sent nothing for {policy.idle_timeout:g} s"
            else:
                raise
            raise RunTimeout(limit) from exc


class Checkpoints:
    """Saves a live run now and then, in the background and best effort: a locked or slow
    database delays the record, never the answer. The final save waits for any checkpoint
    still under way (so a stale one cannot overwrite it) and is retried."""

    FINAL_TRIES = 4

    def __init__(self, store: RunStore, *, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._last = time.monotonic()
        self._message_ts: str | None = None  # as last saved
        self._pending: asyncio.Task[None] | None = None

    def now(self, run: RunRecord) -> None:
        if self._pending is None or self._pending.done():
            self._last = time.monotonic()
            self._message_ts = run.message_ts
            snapshot = dataclasses.replace(run, messages_json=None)
            self._pending = asyncio.create_task(self._save(snapshot), name=f"checkpoint-{run.id}")

    def maybe(self, run: RunRecord) -> None:
        # A message posted since the last save (a busy channel posts it late) is saved at
        # once: a restart needs its ts to say what became of the run.
        if run.message_ts != self._message_ts or time.monotonic() - self._last >= self._interval:
            self.now(run)

    async def final(self, run: RunRecord) -> None:
        if self._pending is not None:
            await asyncio.wait([self._pending])
        for attempt in range(1, self.FINAL_TRIES + 1):
            try:
                await self._store.save(run)
                return
            except Exception:
                if attempt == self.FINAL_TRIES:
                    log.exception("run %s: could not save the final record", run.id)
                    return
                await asyncio.sleep(0.5 * 2**attempt)

    async def _save(self, snapshot: RunRecord) -> None:
        try:
            await self._store.save(snapshot)
        except Exception as exc:
            log.warning("run %s: checkpoint not saved (%s)", snapshot.id, exc)


class RunTimeout(TimeoutError):
    """An idle or total time limit ran out; the message says which."""


def describe_failure(exc: BaseException, policy: RunPolicy) -> str:
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


def estimate_tokens(text: str) -> int:
    """A live estimate (about four characters a token) until the provider reports usage."""
    return max(1, round(len(text) / 4)) if text else 0


def _copy_usage(usage: object, run: RunRecord) -> None:
    run.input_tokens = getattr(usage, "input_tokens", 0) or 0
    run.output_tokens = getattr(usage, "output_tokens", 0) or 0
    run.requests = getattr(usage, "requests", 0) or 0
