"""The one place that talks to Slack for the pacer: each call counted, its errors sorted,
a 429 pausing that method for `Retry-After` (capped), and per-method turns (token buckets)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Content = tuple[str, list[dict[str, Any]]]
"""What chat.update sends: the notification text and the blocks."""

# ok:false answers that no retry can fix: the message or channel is gone or not ours.
PERMANENT_ERRORS = frozenset(
    {
        "message_not_found",
        "channel_not_found",
        "cant_update_message",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "missing_scope",
        "invalid_blocks",
        "msg_too_long",
    }
)
MAX_TRANSIENT_FAILURES = 5
# 429s in a row after which one message or post gives up: with Retry-After capped at a
# minute, Slack has refused it for about five minutes.
MAX_RATELIMITED = 5
RATELIMITED = "ratelimited"
TIMEOUT = "timeout"
RENDER_FAILED = "render_failed"
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Budget:
    """A Slack rate tier: `per_minute` calls on average with bursts of `burst`."""

    per_minute: float
    burst: int


@dataclass(frozen=True)
class PacerConfig:
    interval: float = 1.0
    chat_update: Budget = Budget(per_minute=50, burst=5)
    # About one a second per channel, with a burst that lets a team post its replies at once.
    post_per_channel: Budget = Budget(per_minute=60, burst=5)
    # Slack's native streaming (docs/ARCHITECTURE.md §4): start/stop are Tier 2, append is Tier 4.
    chat_start_stream: Budget = Budget(per_minute=20, burst=3)
    chat_append_stream: Budget = Budget(per_minute=100, burst=5)
    chat_stop_stream: Budget = Budget(per_minute=20, burst=3)
    # Slack ends a stream after about 5 minutes; stop appending a little before that.
    stream_max_age: float = 270.0
    # Slack's windows are a minute long: a longer Retry-After (an outage, a bug) is cut to
    # this, and the method is tried again; a message refused again counts towards failing.
    max_retry_after: float = 60.0
    # How long `wait_delivered` waits for a final (finals go first, so only a 429 pause or
    # a storm of finals makes one wait): two capped pauses.
    delivery_timeout: float = 120.0

    def budget_for(self, method: str) -> Budget | None:
        """The budget of a paced method other than chat.update, or None if it has none."""
        return {
            "chat.startStream": self.chat_start_stream,
            "chat.appendStream": self.chat_append_stream,
            "chat.stopStream": self.chat_stop_stream,
        }.get(method)


class SlackCallFailed(Exception):
    """A Slack write that failed for good; `error` is Slack's error code or a short reason
    ("ratelimited", "timeout", "render_failed", "unreachable (…)", "HTTP 5xx")."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"{method}: {error}")
        self.method = method
        self.error = error


class DeliveryTimeout(SlackCallFailed):
    """A final was not in Slack within the bound; it stays queued and may still arrive."""

    def __init__(self, method: str, waited: float) -> None:
        super().__init__(method, TIMEOUT)
        self.waited = waited


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after} s")
        self.retry_after = retry_after


class TokenBucket:
    """Bursts of `burst`, refilled so that no 60 s window ever holds more than `per_minute`
    calls (a full burst plus a minute of refill must still fit Slack's window)."""

    def __init__(self, budget: Budget, clock: Clock) -> None:
        self._rate = max(budget.per_minute - budget.burst, 1) / 60.0
        self._capacity = float(budget.burst)
        self._tokens = float(budget.burst)
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 if one is now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate

    def take(self) -> None:
        self._refill()
        self._tokens -= 1


class SlackCalls:
    """A workspace's Slack calls: 429 pauses per method, and a budget per paced method."""

    def __init__(
        self, client: AsyncWebClient, *, config: PacerConfig, metrics: Metrics, clock: Clock
    ) -> None:
        self._client = client
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._paused_until: dict[str, float] = {}
        self._buckets: dict[str, TokenBucket] = {
            "chat.update": TokenBucket(config.chat_update, clock)
        }
        self._turn_locks: dict[str, asyncio.Lock] = {}

    def bucket(self, method: str) -> TokenBucket | None:
        """The budget of `method` (made on first use), or None if it has none."""
        bucket = self._buckets.get(method)
        if bucket is None:
            budget = self.config.budget_for(method)
            if budget is None:
                return None
            bucket = self._buckets[method] = TokenBucket(budget, self.clock)
        return bucket

    def pause_left(self, method: str) -> float:
        """Seconds left of the pause an earlier 429 put on `method` (0 if none)."""
        return max(0.0, self._paused_until.get(method, 0.0) - self.clock())

    async def call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """Any other Slack call, counted and honouring a pause from an earlier 429."""
        pause = self.pause_left(method)
        if pause > 0:
            await asyncio.sleep(pause)
        try:
            return await self.call_once(method, **kwargs)
        except RateLimited as exc:
            raise SlackCallFailed(method, RATELIMITED) from exc

    async def wait_turn(self, method: str) -> None:
        """Wait until `method` may be called: a token in its budget (if it has one) and no
        pause from an earlier 429; the token is taken. Waiters are served in order."""
        bucket = self.bucket(method)
        lock = self._turn_locks.setdefault(method, asyncio.Lock())
        async with lock:
            while True:
                gate = max(bucket.wait_time() if bucket else 0.0, self.pause_left(method))
                if gate <= 0:
                    break
                await asyncio.sleep(gate)
            if bucket is not None:
                bucket.take()

    def turn_free(self, method: str) -> bool:
        """Whether `wait_turn(method)` would return at once (nobody waiting, budget left, no
        pause)."""
        bucket = self.bucket(method)
        lock = self._turn_locks.get(method)
        return (
            not (lock is not None and lock.locked())
            and (bucket is None or bucket.wait_time() == 0)
            and self.pause_left(method) == 0
        )

    async def call_once(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """`method` once, counted. A 429 pauses `method` and raises `RateLimited`; any other
        failure raises `SlackCallFailed`."""
        try:
            response = await self._client.api_call(method, json=_drop_none(kwargs))
        except SlackApiError as exc:
            status = exc.response.status_code
            if status == 429:
                retry_after = min(_retry_after(exc.response.headers), self.config.max_retry_after)
                self._paused_until[method] = self.clock() + retry_after
                self.metrics.slack_call(method, "ratelimited")
                log.info("%s rate limited; pausing it %.1f s", method, retry_after)
                raise RateLimited(retry_after) from exc
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            self.metrics.slack_call(method, "error" if error else "unreachable")
            raise SlackCallFailed(method, error or f"HTTP {status}") from exc
        except (SlackClientError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.metrics.slack_call(method, "unreachable")
            raise SlackCallFailed(method, f"unreachable ({type(exc).__name__})") from exc
        self.metrics.slack_call(method, "ok")
        return dict(response.data) if isinstance(response.data, dict) else {}


def _retry_after(headers: Any) -> float:
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return max(0.0, float(raw))
            except (TypeError, ValueError):
                break
    return 1.0


def _drop_none(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in kwargs.items() if value is not None}
