"""Saving a run's record: checkpoints while it streams, and the final record, which is kept
until the store has it.

A checkpoint is best effort (a locked database delays the record, never the answer). A final
record is not: it is saved before the answer is delivered, and when the store fails it is
retried with bounded backoff for as long as the process lives, its run held among the runs
this process carries (`LiveRuns.hold`) so that its lease is renewed and no recovery takes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from bot.live import LiveRuns
from bot.models import RunRecord
from bot.ports import RunStore

log = logging.getLogger(__name__)


class Checkpoints:
    """Saves a live run now and then, in the background and best effort. A save asked for
    while one is under way follows it with the run's latest state (none is dropped, none
    overtakes another); `settled` waits for the last one, so a stale checkpoint can never
    overwrite the final record."""

    def __init__(self, store: RunStore, *, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._last = time.monotonic()
        self._wanted: RunRecord | None = None
        self._message_ts: str | None = None  # as last asked to be saved
        self._pending: asyncio.Task[None] | None = None

    def now(self, run: RunRecord) -> None:
        """Save `run` as it is when its turn comes; never waits."""
        self._last = time.monotonic()
        self._message_ts = run.message_ts
        self._wanted = run
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._save_wanted(), name=f"checkpoint-{run.id}")

    def maybe(self, run: RunRecord) -> None:
        """Save `run` when a checkpoint interval has passed since the last, or at once when
        its message was posted since (a busy channel posts it late: a restart needs its ts)."""
        if run.message_ts != self._message_ts or time.monotonic() - self._last >= self._interval:
            self.now(run)

    async def settled(self) -> None:
        """Return once no checkpoint is under way (none is started after the final record)."""
        self._wanted = None
        if self._pending is not None:
            await asyncio.wait([self._pending])

    async def _save_wanted(self) -> None:
        while self._wanted is not None:
            run, self._wanted = self._wanted, None
            snapshot = dataclasses.replace(run, messages_json=None)
            try:
                await self._store.save(snapshot)
            except Exception as exc:
                log.warning("run %s: checkpoint not saved (%s)", snapshot.id, exc)


@dataclass
class _Unsaved:
    snapshot: RunRecord
    tried: asyncio.Future[bool]  # the first try of this snapshot: True if it was saved


class FinalRecords:
    """Final records saved first and kept until the store has them.

    `keep(run)` saves a copy of `run` now; if the store fails, the copy is saved again after
    a backoff (at most `backoff_max` seconds), again and again until it succeeds or `flush`
    (shutdown) makes the last try. A later `keep` of the same run replaces the copy, and is
    written after, never before, the one under way. While a run's record is unsaved its id
    is held in `live`, so its lease is renewed and recovery leaves it alone.
    """

    def __init__(
        self,
        store: RunStore,
        live: LiveRuns,
        *,
        backoff_base: float = 0.25,
        backoff_max: float = 5.0,
    ) -> None:
        self._store = store
        self._live = live
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._unsaved: dict[str, _Unsaved] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        """How many runs have a final record not saved yet."""
        return len(self._unsaved)

    def keep(self, run: RunRecord, *, after: Awaitable[None] | None = None) -> asyncio.Future[bool]:
        """Save a copy of `run` (as it is now) until the store has it; never waits. The first
        try waits for `after` (the run's last checkpoint), so that nothing older overwrites it.

        Returns a future set after the copy's first try: True if it was saved then.
        """
        if run.id not in self._unsaved:
            self._live.hold(run.id)
        tried = asyncio.get_running_loop().create_future()
        self._unsaved[run.id] = _Unsaved(dataclasses.replace(run), tried)
        writer = self._writers.get(run.id)
        if writer is None or writer.done():
            self._writers[run.id] = asyncio.create_task(
                self._write(run.id, after=after), name=f"final-record-{run.id}"
            )
        elif inspect.iscoroutine(after):
            after.close()  # the writer under way came after it already
        return tried

    async def save(
        self, run: RunRecord, *, wait: float, after: Awaitable[None] | None = None
    ) -> bool:
        """`keep(run, after=after)` and wait for its first try, at most `wait` seconds in
        all; True if saved then."""
        tried = self.keep(run, after=after)
        done, _ = await asyncio.wait([tried], timeout=wait)
        return bool(done) and tried.result()

    async def wait_saved(self) -> None:
        """Return once every record kept so far is saved (tests; the process never waits)."""
        while writers := [w for w in self._writers.values() if not w.done()]:
            await asyncio.wait(writers)

    async def flush(self) -> int:
        """At shutdown: stop the retries and try every unsaved record once more; returns how
        many could still not be saved (each is logged)."""
        writers = list(self._writers.values())
        for writer in writers:
            writer.cancel()
        if writers:
            await asyncio.wait(writers)
        self._writers.clear()
        lost = 0
        for run_id, unsaved in list(self._unsaved.items()):
            saved = True
            try:
                await self._store.save(unsaved.snapshot)
            except Exception as exc:
                saved, lost = False, lost + 1
                log.error("run %s: final record lost at shutdown (%s)", run_id, exc)
            self._done(run_id, unsaved, saved=saved)
        return lost

    async def _write(self, run_id: str, *, after: Awaitable[None] | None) -> None:
        if after is not None:
            await after
        failures = 0
        while (unsaved := self._unsaved.get(run_id)) is not None:
            try:
                await self._store.save(unsaved.snapshot)
            except Exception as exc:
                if not unsaved.tried.done():
                    unsaved.tried.set_result(False)
                failures += 1
                if math.log10(failures).is_integer():  # 1, 10, 100…: visible, never a flood
                    log.warning(
                        "run %s: final record not saved (%d tries), retrying: %s",
                        run_id,
                        failures,
                        exc,
                    )
                await asyncio.sleep(self._backoff(failures))
                continue
            if failures:
                log.info("run %s: final record saved after %d failed tries", run_id, failures)
            failures = 0
            self._done(run_id, unsaved, saved=True)
        self._writers.pop(run_id, None)

    def _done(self, run_id: str, unsaved: _Unsaved, *, saved: bool) -> None:
        if not unsaved.tried.done():
            unsaved.tried.set_result(saved)
        if self._unsaved.get(run_id) is unsaved:  # else a newer copy waits its turn
            del self._unsaved[run_id]
            self._live.release(run_id)

    def _backoff(self, failures: int) -> float:
        # The exponent is capped: an outage of hours must not overflow the float.
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** min(failures - 1, 32))
        return random.uniform(ceiling / 2, ceiling)
