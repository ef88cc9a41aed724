"""Paced edits (`chat.update`) of a workspace's live messages: one sender task refreshes the
message that is final, else the most stale, at most once per `interval`, within the budget."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from handlers.pacing.calls import (
    INTERNAL_ERROR,
    MAX_RATELIMITED,
    MAX_TRANSIENT_FAILURES,
    PERMANENT_ERRORS,
    RATELIMITED,
    RENDER_FAILED,
    Content,
    DeliveryTimeout,
    RateLimited,
    SlackCallFailed,
    SlackCalls,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LiveMessage:
    """A Slack message being edited: its latest wanted content and what has been sent."""

    channel: str
    ts: str
    _edits: EditScheduler = field(repr=False)
    latest: Content | Callable[[], Content] | None = None
    final: bool = False
    dirty: bool = False
    dirty_since: float = 0.0
    last_sent: float = float("-inf")
    writes: int = 0
    failures: int = 0
    ratelimits: int = 0  # 429s in a row on this message
    error: str | None = None
    delivered: asyncio.Event = field(default_factory=asyncio.Event)

    def set(self, text: str, blocks: list[dict[str, Any]], *, final: bool = False) -> None:
        """Replace the wanted content; cheap, never waits. Sets after a final are ignored."""
        if self.final or self.error is not None:
            return
        self.latest = (text, blocks)
        self.final = final
        if not self.dirty:
            self.dirty_since = self._edits.clock()
        self.dirty = True
        self._edits.wake()

    def set_rendered(self, render: Callable[[], Content]) -> None:
        """Like `set`, but the content is made only when it is sent: a stream calls this per
        token, and only the texts that are sent are ever rendered."""
        if self.final or self.error is not None:
            return
        self.latest = render
        if not self.dirty:
            self.dirty_since = self._edits.clock()
        self.dirty = True
        self._edits.wake()

    async def wait_delivered(self, *, timeout: float | None = None) -> None:
        """Wait until the final content is in Slack, at most `timeout` seconds (default: the
        pacer's `delivery_timeout`).

        Raises `SlackCallFailed` when the message failed for good, and `DeliveryTimeout`
        when the time is up: the final then stays queued, and a later write shows it.
        """
        limit = self._edits.delivery_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self.delivered.wait(), timeout=limit)
        except TimeoutError:
            raise DeliveryTimeout("chat.update", limit) from None
        if self.error is not None:
            raise SlackCallFailed("chat.update", self.error)


class EditScheduler:
    """A workspace's live messages and the one sender task that edits them."""

    def __init__(self, calls: SlackCalls) -> None:
        self._calls = calls
        self._config = calls.config
        self._metrics = calls.metrics
        self.clock = calls.clock
        bucket = calls.bucket("chat.update")
        assert bucket is not None
        self._update_bucket = bucket
        self._messages: set[LiveMessage] = set()
        self._wake = asyncio.Event()
        self.sender: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def delivery_timeout(self) -> float:
        return self._config.delivery_timeout

    def track(self, channel: str, ts: str) -> LiveMessage:
        """Start pacing edits of the message `ts` in `channel`."""
        message = LiveMessage(channel=channel, ts=ts, _edits=self)
        message.last_sent = self.clock()  # it was just posted
        self._messages.add(message)
        self.wake()
        return message

    def wake(self) -> None:
        """Wake the sender, starting it again if it ended (it should not: see `_sender_ended`)."""
        if self._closed:
            return
        if self.sender is None or self.sender.done():
            self.sender = asyncio.create_task(self._send_loop(), name="slack-pacer")
            self.sender.add_done_callback(self._sender_ended)
        self._wake.set()

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the Slack pacer's sender ended", exc_info=task.exception())

    @property
    def queue_depth(self) -> int:
        return sum(1 for message in self._messages if message.dirty)

    async def close(self) -> None:
        self._closed = True
        if self.sender is not None:
            self.sender.cancel()
            try:
                await self.sender
            except asyncio.CancelledError:
                pass

    async def _send_loop(self) -> None:
        while True:
            self._wake.clear()
            message, wait = self._pick()
            if message is None:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    pass
                continue
            self._metrics.pacer_queue_depth.set(self.queue_depth)
            gate = max(self._update_bucket.wait_time(), self._calls.pause_left("chat.update"))
            if gate > 0:
                await asyncio.sleep(gate)
                continue  # re-pick: a final may have arrived meanwhile
            self._update_bucket.take()
            try:
                await self._send(message)
            except Exception:  # a bug in one message's write: that message fails, not all
                log.exception("message %s in %s: the write failed", message.ts, message.channel)
                self._give_up(message, INTERNAL_ERROR)

    def _pick(self) -> tuple[LiveMessage | None, float | None]:
        """The message to send now, else None and how long until one is due."""
        now = self.clock()
        best: LiveMessage | None = None
        soonest: float | None = None
        for message in self._messages:
            if not message.dirty:
                continue
            due = message.last_sent + self._config.interval
            if message.final or due <= now:
                if best is None or (message.final, -message.last_sent) > (
                    best.final,
                    -best.last_sent,
                ):
                    best = message
            else:
                soonest = due - now if soonest is None else min(soonest, due - now)
        return best, (None if best else soonest)

    async def _send(self, message: LiveMessage) -> None:
        assert message.latest is not None
        try:
            text, blocks = message.latest() if callable(message.latest) else message.latest
        except Exception:  # a bug in one message's render must not stop the others
            log.exception(
                "message %s in %s: its content could not be made", message.ts, message.channel
            )
            self._give_up(message, RENDER_FAILED)
            return
        was_final = message.final
        message.dirty = False
        message.writes += 1
        try:
            await self._calls.call_once(
                "chat.update", channel=message.channel, ts=message.ts, text=text, blocks=blocks
            )
        except RateLimited:
            message.ratelimits += 1
            if message.ratelimits >= MAX_RATELIMITED:
                self._give_up(message, RATELIMITED)
                return
            message.dirty = True  # the latest text goes out once the pause is over
            return
        except SlackCallFailed as exc:
            if exc.error in PERMANENT_ERRORS or message.failures >= MAX_TRANSIENT_FAILURES:
                self._give_up(message, exc.error)
                return
            message.failures += 1
            message.dirty = True
            message.last_sent = self.clock()  # back off one interval before the retry
            return
        message.failures = message.ratelimits = 0
        message.last_sent = self.clock()
        self._metrics.update_staleness.observe(message.last_sent - message.dirty_since)
        if was_final and not message.dirty:
            self._retire(message)

    def _give_up(self, message: LiveMessage, error: str) -> None:
        log.warning("giving up on message %s in %s: %s", message.ts, message.channel, error)
        self._metrics.slack_gave_up.labels("chat.update", error).inc()
        message.error = error
        self._retire(message)

    def _retire(self, message: LiveMessage) -> None:
        self._messages.discard(message)
        message.dirty = False
        message.delivered.set()
