"""New messages (`chat.postMessage`), about one a second per channel, in the order asked."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from handlers.pacing.calls import (
    MAX_RATELIMITED,
    MAX_TRANSIENT_FAILURES,
    PERMANENT_ERRORS,
    RATELIMITED,
    Budget,
    Clock,
    Content,
    RateLimited,
    SlackCallFailed,
    SlackCalls,
)


class PostWindow:
    """At most `budget.burst` calls in any window of `burst × 60 / per_minute` seconds (with
    a 2 % margin): a channel's posts go out in bursts yet never above about one a second,
    whether Slack counts them by the second, by a few seconds or by the minute."""

    def __init__(self, budget: Budget, clock: Clock) -> None:
        self._count = budget.burst
        self._window = budget.burst * 60.0 / budget.per_minute * 1.02
        self._clock = clock
        self._sent: deque[float] = deque()

    def wait_time(self) -> float:
        """Seconds until a call is allowed (0 if one is now)."""
        now = self._clock()
        while self._sent and self._sent[0] <= now - self._window:
            self._sent.popleft()
        return 0.0 if len(self._sent) < self._count else self._sent[0] + self._window - now

    def take(self) -> None:
        self._sent.append(self._clock())

    def settle(self) -> None:
        """Count the last call from now, when its answer came: Slack saw it arrive at some
        time in between, and a busy event loop may have sent it late."""
        if self._sent:
            self._sent[-1] = self._clock()


class ChannelPosts:
    """A workspace's posts: a window and an order per channel."""

    def __init__(self, calls: SlackCalls) -> None:
        self._calls = calls
        self._windows: dict[str, PostWindow] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def post(
        self, channel: str, *, render: Callable[[], Content] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """`chat.postMessage`, about one a second per channel, in the order asked; waits out
        429s, each pause capped, `MAX_RATELIMITED` in a row at most.

        With `render`, the text and blocks are made when the post is sent (a post queued
        behind others shows the latest content). Raises `SlackCallFailed` when Slack refuses
        for good or keeps refusing ("ratelimited").
        """
        calls = self._calls
        window = self._windows.setdefault(
            channel, PostWindow(calls.config.post_per_channel, calls.clock)
        )
        lock = self._locks.setdefault(channel, asyncio.Lock())
        failures = ratelimits = 0
        async with lock:  # keeps one channel's posts in order
            while True:
                gate = max(window.wait_time(), calls.pause_left("chat.postMessage"))
                if gate > 0:
                    await asyncio.sleep(gate)
                    continue
                window.take()
                content = kwargs
                if render is not None:
                    text, blocks = render()
                    content = {**kwargs, "text": text, "blocks": blocks}
                try:
                    return await calls.call_once("chat.postMessage", channel=channel, **content)
                except RateLimited as exc:
                    ratelimits += 1
                    if ratelimits >= MAX_RATELIMITED:
                        calls.metrics.slack_gave_up.labels("chat.postMessage", RATELIMITED).inc()
                        raise SlackCallFailed("chat.postMessage", RATELIMITED) from exc
                except SlackCallFailed as exc:
                    failures += 1
                    if exc.error in PERMANENT_ERRORS or failures > MAX_TRANSIENT_FAILURES:
                        raise
                    await asyncio.sleep(min(2.0**failures * 0.25, 4.0))
                finally:
                    window.settle()
