"""The runs this process carries: the live ones, which Stop and shutdown can reach, and the
ended ones whose final record is not saved yet. Their ids are what the process renews the
leases of and what its own recovery never takes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bot.models import RunRecord, RunStatus

StopReason = tuple[RunStatus, str]


@dataclass
class LiveRun:
    run: RunRecord
    task: asyncio.Task[Any]
    stop_reason: StopReason | None = None
    settled: bool = False  # its outcome is decided: no stop can change it any more

    def absorb_stop(self) -> None:
        """After catching the CancelledError of `LiveRuns.stop`: take the stop's status and
        reason and let the task go on to record and show them."""
        assert self.stop_reason is not None
        self.task.uncancel()
        self.run.status, self.run.error = self.stop_reason

    def settle(self) -> None:
        """The run's outcome is decided (it has its final text, or its failure or stop):
        from now on Stop answers that it has finished and shutdown lets it end on its own."""
        self.settled = True


@dataclass
class LiveRuns:
    """The runs in progress, so that Stop and shutdown can reach them, and the runs whose
    final record is still being saved (`hold`)."""

    _runs: dict[str, LiveRun] = field(default_factory=dict)
    _held: Counter[str] = field(default_factory=Counter)
    _busy: asyncio.Event = field(default_factory=asyncio.Event)  # set while a run is carried
    _closed: StopReason | None = None  # set by `stop_all`: later runs end at once
    _early: dict[str, StopReason] = field(default_factory=dict)  # `stop_soon` before `track`

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run_id: str) -> RunRecord | None:
        """The record of a run in progress here (settled ones included)."""
        live = self._runs.get(run_id)
        return live.run if live else None

    def ids(self) -> list[str]:
        """The ids of the runs this process carries: in progress, or ended with their final
        record not saved yet. Their leases are renewed; recovery here never takes them."""
        return sorted(set(self._runs) | set(self._held))

    def stoppable(self) -> list[str]:
        """The ids of the live runs that no stop has reached yet and that are not settled."""
        return [
            run_id
            for run_id, live in self._runs.items()
            if live.stop_reason is None and not live.settled
        ]

    async def wait_busy(self) -> None:
        """Return once at least one run is carried (at once if one is)."""
        await self._busy.wait()

    def hold(self, run_id: str) -> None:
        """Count `run_id` among the carried runs until as many `release`s."""
        self._held[run_id] += 1
        self._busy.set()

    def release(self, run_id: str) -> None:
        self._held[run_id] -= 1
        if self._held[run_id] <= 0:
            del self._held[run_id]
        self._update_busy()

    @contextmanager
    def track(self, run: RunRecord) -> Iterator[LiveRun]:
        """Make `run`, carried out by the current task, reachable by `stop` while inside."""
        task = asyncio.current_task()
        assert task is not None, "runs are carried out inside tasks"
        live = LiveRun(run=run, task=task)
        self._runs[run.id] = live
        self._busy.set()
        early = self._early.pop(run.id, None) or self._closed
        if early is not None:  # stopped before it started, or after shutdown stopped the rest
            live.stop_reason = early
            task.cancel()
        try:
            yield live
        finally:
            del self._runs[run.id]
            self._update_busy()

    def stop(self, run_id: str, *, status: RunStatus, reason: str) -> bool:
        """Cancel a live run; it ends with `status` (cancelled or interrupted) and `reason`.

        Returns False when the run is not live (not started here, or finished) or settled
        (it has its outcome: a stop no longer changes it).
        """
        live = self._runs.get(run_id)
        if live is None or live.task.done() or live.settled:
            return False
        if live.stop_reason is None:
            live.stop_reason = (status, reason)
            live.task.cancel()
        return True

    def stop_soon(self, run_id: str, *, status: RunStatus, reason: str) -> None:
        """Like `stop`; and a run not tracked yet (its task is starting) ends at once when
        it is."""
        if run_id not in self._runs:
            self._early[run_id] = (status, reason)
        self.stop(run_id, status=status, reason=reason)

    def forget_stops(self, run_ids: Iterable[str]) -> None:
        """Drop `stop_soon` requests for runs that never started (their task is over)."""
        for run_id in run_ids:
            self._early.pop(run_id, None)

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

    def _update_busy(self) -> None:
        if not self._runs and not self._held:
            self._busy.clear()
