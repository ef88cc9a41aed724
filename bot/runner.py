"""Runs one agent: streams its text to a sink, retries, times out, cancels, records the run."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

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
)
from pydantic_ai.messages import ModelMessage

from bot.errors import BotError
from bot.metrics import Metrics
from bot.models import Progress, RunRecord, RunStatus, utcnow
from bot.ports import RunStore, Sink

log = logging.getLogger(__name__)

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
    backoff_base: float = 0.5
    backoff_max: float = 8.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter for retry number `attempt` (1-based)."""
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))


@dataclass
class LiveRun:
    run: RunRecord
    task: asyncio.Task[RunRecord]
    stop_reason: tuple[RunStatus, str] | None = None


@dataclass
class LiveRuns:
    """The runs in progress, so that Stop and shutdown can reach them."""

    _runs: dict[str, LiveRun] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run_id: str) -> RunRecord | None:
        live = self._runs.get(run_id)
        return live.run if live else None

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

    def __init__(self, *, store: RunStore, metrics: Metrics, live: LiveRuns) -> None:
        self._store = store
        self._metrics = metrics
        self.live = live

    async def run(
        self,
        agent: Agent[None, str],
        run: RunRecord,
        *,
        sink: Sink,
        policy: RunPolicy,
        history: Sequence[ModelMessage] | None = None,
    ) -> RunRecord:
        """Run `agent` on `run.prompt`, streaming into `sink`; returns the finished record.

        Never raises for a failed run: the failure is in the record and shown by the sink.
        """
        task = asyncio.current_task()
        assert task is not None, "Runner.run must run inside a task"
        run.status = RunStatus.RUNNING
        run.started_at = utcnow()
        await self._store.create(run)
        live = LiveRun(run=run, task=task)
        self.live._runs[run.id] = live
        self._metrics.live_runs.inc()
        started = time.monotonic()
        try:
            try:
                await sink.start(run)
                await self._store.save(run)
                await self._stream_with_retries(agent, run, sink, policy, history)
                run.status = RunStatus.SUCCEEDED
            except asyncio.CancelledError:
                if live.stop_reason is None:
                    raise
                task.uncancel()
                run.status, run.error = live.stop_reason
            except BotError as exc:
                run.status, run.error = RunStatus.FAILED, str(exc)
            except (TimeoutError, AgentRunError) as exc:
                run.status, run.error = RunStatus.FAILED, describe_failure(exc, policy)
            except Exception as exc:  # a bug must still leave an honest record and message
                log.exception("run %s crashed", run.id)
                run.status, run.error = RunStatus.FAILED, f"internal error ({type(exc).__name__})"
            run.finished_at = utcnow()
            run.duration_ms = round((time.monotonic() - started) * 1000)
            await self._deliver(run, sink)
            await self._store.save(run)
        finally:
            del self.live._runs[run.id]
            self._metrics.live_runs.dec()
        self._metrics.runs.labels(run.kind.value, run.status.value).inc()
        self._metrics.run_duration.labels(run.kind.value).observe(run.duration_ms / 1000)
        return run

    async def _deliver(self, run: RunRecord, sink: Sink) -> None:
        """Let the sink show the end; a Slack outage must not lose the record."""
        if run.message_ts is not None or run.status is not RunStatus.FAILED or run.output:
            try:
                await sink.finish(run)
            except Exception:
                log.exception("run %s: could not show the final state", run.id)
        run.slack_writes = sink.writes

    async def _stream_with_retries(
        self,
        agent: Agent[None, str],
        run: RunRecord,
        sink: Sink,
        policy: RunPolicy,
        history: Sequence[ModelMessage] | None,
    ) -> None:
        attempt = 0
        while True:
            try:
                await self._stream(agent, run, sink, policy, history)
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
        agent: Agent[None, str],
        run: RunRecord,
        sink: Sink,
        policy: RunPolicy,
        history: Sequence[ModelMessage] | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        parts: list[str] = []
        try:
            async with (
                asyncio.timeout_at(started + policy.total_timeout) as total,
                asyncio.timeout_at(started + policy.idle_timeout) as idle,
                agent.run_stream(run.prompt, message_history=history) as result,
            ):
                try:
                    async for delta in result.stream_text(delta=True, debounce_by=None):
                        idle.reschedule(loop.time() + policy.idle_timeout)
                        if not delta:
                            continue
                        if run.first_token_at is None:
                            run.first_token_at = utcnow()
                        parts.append(delta)
                        run.output = "".join(parts)
                        progress = Progress(
                            output_tokens=estimate_tokens(run.output),
                            elapsed_s=loop.time() - started,
                        )
                        sink.progress(run.output, progress)
                finally:
                    _copy_usage(result.usage, run)
                run.messages_json = result.all_messages_json()
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


def describe_failure(exc: BaseException, policy: RunPolicy) -> str:
    """One line a person can read, for the message and the record."""
    if isinstance(exc, RunTimeout):
        return f"The model did not answer in time ({exc})"
    if isinstance(exc, UsageLimitExceeded):
        return f"The run hit its token budget ({exc.message})"
    if isinstance(exc, ModelHTTPError):
        return f"The model API failed (HTTP {exc.status_code}: {_short(exc.message)})"
    if isinstance(exc, ModelConnectionError):
        return f"The model API could not be reached ({_short(exc.message)})"
    if isinstance(exc, ModelAPIError):
        return f"The model API failed ({_short(exc.message)})"
    if isinstance(exc, AgentRunError):
        return f"The model's answer could not be used ({_short(exc.message)})"
    return f"The run failed ({type(exc).__name__})"


def estimate_tokens(text: str) -> int:
    """A live estimate (about four characters a token) until the provider reports usage."""
    return max(1, round(len(text) / 4)) if text else 0


def _copy_usage(usage: object, run: RunRecord) -> None:
    run.input_tokens = getattr(usage, "input_tokens", 0) or 0
    run.output_tokens = getattr(usage, "output_tokens", 0) or 0
    run.requests = getattr(usage, "requests", 0) or 0


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
