"""One budget of Slack write calls per workspace, shared fairly by every live message.

Live messages never edit per token: each keeps only its latest text, and one sender task
per workspace decides which message to refresh next (docs/ARCHITECTURE.md §5):

- a message is refreshed at most once per `interval` (finals excepted);
- final texts go first, then the message whose visible text is the most stale;
- a token bucket per method keeps the workspace under Slack's tier (50 `chat.update` a
  minute with a small burst by default), and a 429 pauses that method for `Retry-After`
  (at most `max_retry_after`), after which the *latest* text is sent, never a stale one.

`chat.postMessage` is paced separately, about one a second per channel; a post may carry a
render function, so that a post queued behind others shows the text of when it is sent.

Every wait is bounded (docs/ARCHITECTURE.md §8): `Retry-After` is capped, a message or a post
refused with 429 `MAX_RATELIMITED` times in a row fails ("ratelimited"), and `wait_delivered`
returns by `delivery_timeout` (the final stays queued: a later write still shows it). One
message whose content cannot be made fails alone; the workspace's sender goes on.

This module is the façade: Slack calls with their per-method turns and errors live in
`handlers.pacing.calls`, edit scheduling in `handlers.pacing.edits`, per-channel posts in
`handlers.pacing.posts`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import Metrics
from handlers.pacing.calls import (
    MAX_RATELIMITED,
    MAX_TRANSIENT_FAILURES,
    RATELIMITED,
    TIMEOUT,
    Budget,
    Clock,
    Content,
    DeliveryTimeout,
    PacerConfig,
    SlackCallFailed,
    SlackCalls,
    TokenBucket,
)
from handlers.pacing.edits import EditScheduler, LiveMessage
from handlers.pacing.posts import ChannelPosts, PostWindow

__all__ = [
    "MAX_RATELIMITED",
    "MAX_TRANSIENT_FAILURES",
    "RATELIMITED",
    "TIMEOUT",
    "Budget",
    "Content",
    "DeliveryTimeout",
    "LiveMessage",
    "Pacer",
    "PacerConfig",
    "PostWindow",
    "SlackCallFailed",
    "TokenBucket",
    "WorkspacePacer",
]


class WorkspacePacer:
    """The sender for one workspace; owns its write budget and its live messages."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        config: PacerConfig,
        metrics: Metrics,
        clock: Clock = time.monotonic,
    ) -> None:
        self._calls = SlackCalls(client, config=config, metrics=metrics, clock=clock)
        self._edits = EditScheduler(self._calls)
        self._posts = ChannelPosts(self._calls)

    @property
    def config(self) -> PacerConfig:
        return self._calls.config

    @property
    def clock(self) -> Clock:
        return self._calls.clock

    @property
    def metrics(self) -> Metrics:
        return self._calls.metrics

    @property
    def queue_depth(self) -> int:
        return self._edits.queue_depth

    @property
    def _sender(self) -> asyncio.Task[None] | None:
        """The edit sender task (tests check that it restarts)."""
        return self._edits.sender

    def track(self, channel: str, ts: str) -> LiveMessage:
        """Start pacing edits of the message `ts` in `channel`."""
        return self._edits.track(channel, ts)

    async def post(
        self, channel: str, *, render: Callable[[], Content] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """`chat.postMessage` in `channel`'s turn: see `ChannelPosts.post`."""
        return await self._posts.post(channel, render=render, **kwargs)

    async def call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """Any other Slack call, counted and honouring a pause from an earlier 429."""
        return await self._calls.call(method, **kwargs)

    async def wait_turn(self, method: str) -> None:
        """Wait until `method` may be called: see `SlackCalls.wait_turn`."""
        await self._calls.wait_turn(method)

    def turn_free(self, method: str) -> bool:
        """Whether `wait_turn(method)` would return at once."""
        return self._calls.turn_free(method)

    async def paced_call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """`method` once, within its budget and after any 429 pause of that method.

        A 429 pauses only `method` for `Retry-After` and raises `SlackCallFailed` with error
        "ratelimited" (the caller decides what to send once the pause is over); any other
        failure raises `SlackCallFailed` too.
        """
        await self.wait_turn(method)
        return await self.call(method, **kwargs)

    async def close(self) -> None:
        await self._edits.close()


class Pacer:
    """One `WorkspacePacer` per Slack workspace (team id)."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        config: PacerConfig,
        metrics: Metrics,
        clock: Clock = time.monotonic,
    ) -> None:
        self._client = client
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._workspaces: dict[str, WorkspacePacer] = {}

    @property
    def config(self) -> PacerConfig:
        return self._config

    @config.setter
    def config(self, config: PacerConfig) -> None:
        """Tune the pacer (tests); applies to the workspaces first used after."""
        self._config = config

    def workspace(self, team_id: str | None) -> WorkspacePacer:
        key = team_id or "-"
        pacer = self._workspaces.get(key)
        if pacer is None:
            pacer = WorkspacePacer(
                self._client, config=self._config, metrics=self._metrics, clock=self._clock
            )
            self._workspaces[key] = pacer
        return pacer

    async def close(self) -> None:
        for pacer in self._workspaces.values():
            await pacer.close()
