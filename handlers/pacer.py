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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(eq=False)
class LiveMessage:
    """A Slack message being edited: its latest wanted content and what has been sent."""

    channel: str
    ts: str
    _pacer: WorkspacePacer = field(repr=False)
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
            self.dirty_since = self._pacer._clock()
        self.dirty = True
        self._pacer._wake_sender()

    def set_rendered(self, render: Callable[[], Content]) -> None:
        """Like `set`, but the content is made only when it is sent: a stream calls this per
        token, and only the texts that are sent are ever rendered."""
        if self.final or self.error is not None:
            return
        self.latest = render
        if not self.dirty:
            self.dirty_since = self._pacer._clock()
        self.dirty = True
        self._pacer._wake_sender()

    async def wait_delivered(self, *, timeout: float | None = None) -> None:
        """Wait until the final content is in Slack, at most `timeout` seconds (default: the
        pacer's `delivery_timeout`).

        Raises `SlackCallFailed` when the message failed for good, and `DeliveryTimeout`
        when the time is up: the final then stays queued, and a later write shows it.
        """
        limit = self._pacer.config.delivery_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self.delivered.wait(), timeout=limit)
        except TimeoutError:
            raise DeliveryTimeout("chat.update", limit) from None
        if self.error is not None:
            raise SlackCallFailed("chat.update", self.error)


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
        self._client = client
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._update_bucket = TokenBucket(config.chat_update, clock)
        self._paused_until: dict[str, float] = {}
        self._channel_windows: dict[str, PostWindow] = {}
        self._channel_locks: dict[str, asyncio.Lock] = {}
        self._messages: set[LiveMessage] = set()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self._method_buckets: dict[str, TokenBucket] = {"chat.update": self._update_bucket}
        self._turn_locks: dict[str, asyncio.Lock] = {}

    @property
    def config(self) -> PacerConfig:
        return self._config

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    # -- live messages (chat.update) -------------------------------------------------------

    def track(self, channel: str, ts: str) -> LiveMessage:
        """Start pacing edits of the message `ts` in `channel`."""
        message = LiveMessage(channel=channel, ts=ts, _pacer=self)
        message.last_sent = self._clock()  # it was just posted
        self._messages.add(message)
        self._wake_sender()
        return message

    def _wake_sender(self) -> None:
        """Wake the sender, starting it again if it ended (it should not: see `_sender_ended`)."""
        if self._closed:
            return
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_loop(), name="slack-pacer")
            self._sender.add_done_callback(self._sender_ended)
        self._wake.set()

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the Slack pacer's sender ended", exc_info=task.exception())

    @property
    def queue_depth(self) -> int:
        return sum(1 for message in self._messages if message.dirty)

    async def close(self) -> None:
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
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
            gate = max(self._update_bucket.wait_time(), self._pause_left("chat.update"))
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
        now = self._clock()
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
            await self._call(
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
            message.last_sent = self._clock()  # back off one interval before the retry
            return
        message.failures = message.ratelimits = 0
        message.last_sent = self._clock()
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

    # -- new messages (chat.postMessage) ---------------------------------------------------

    async def post(
        self, channel: str, *, render: Callable[[], Content] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """`chat.postMessage`, about one a second per channel, in the order asked; waits out
        429s, each pause capped, `MAX_RATELIMITED` in a row at most.

        With `render`, the text and blocks are made when the post is sent (a post queued
        behind others shows the latest content). Raises `SlackCallFailed` when Slack refuses
        for good or keeps refusing ("ratelimited").
        """
        window = self._channel_windows.setdefault(
            channel, PostWindow(self._config.post_per_channel, self._clock)
        )
        lock = self._channel_locks.setdefault(channel, asyncio.Lock())
        failures = ratelimits = 0
        async with lock:  # keeps one channel's posts in order
            while True:
                gate = max(window.wait_time(), self._pause_left("chat.postMessage"))
                if gate > 0:
                    await asyncio.sleep(gate)
                    continue
                window.take()
                content = kwargs
                if render is not None:
                    text, blocks = render()
                    content = {**kwargs, "text": text, "blocks": blocks}
                try:
                    return await self._call("chat.postMessage", channel=channel, **content)
                except RateLimited as exc:
                    ratelimits += 1
                    if ratelimits >= MAX_RATELIMITED:
                        self._metrics.slack_gave_up.labels("chat.postMessage", RATELIMITED).inc()
                        raise SlackCallFailed("chat.postMessage", RATELIMITED) from exc
                except SlackCallFailed as exc:
                    failures += 1
                    if exc.error in PERMANENT_ERRORS or failures > MAX_TRANSIENT_FAILURES:
                        raise
                    await asyncio.sleep(min(2.0**failures * 0.25, 4.0))
                finally:
                    window.settle()

    async def call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """Any other Slack call, counted and honouring a pause from an earlier 429."""
        pause = self._pause_left(method)
        if pause > 0:
            await asyncio.sleep(pause)
        try:
            return await self._call(method, **kwargs)
        except RateLimited as exc:
            raise SlackCallFailed(method, RATELIMITED) from exc

    # -- paced calls (chat.*Stream) -------------------------------------------------------

    async def wait_turn(self, method: str) -> None:
        """Wait until `method` may be called: a token in its budget (if it has one) and no
        pause from an earlier 429; the token is taken. Waiters are served in order."""
        bucket = self._method_bucket(method)
        lock = self._turn_locks.setdefault(method, asyncio.Lock())
        async with lock:
            while True:
                gate = max(bucket.wait_time() if bucket else 0.0, self._pause_left(method))
                if gate <= 0:
                    break
                await asyncio.sleep(gate)
            if bucket is not None:
                bucket.take()

    def turn_free(self, method: str) -> bool:
        """Whether `wait_turn(method)` would return at once (nobody waiting, budget left, no
        pause)."""
        bucket = self._method_bucket(method)
        lock = self._turn_locks.get(method)
        return (
            not (lock is not None and lock.locked())
            and (bucket is None or bucket.wait_time() == 0)
            and self._pause_left(method) == 0
        )

    async def paced_call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """`method` once, within its budget and after any 429 pause of that method.

        A 429 pauses only `method` for `Retry-After` and raises `SlackCallFailed` with error
        "ratelimited" (the caller decides what to send once the pause is over); any other
        failure raises `SlackCallFailed` too.
        """
        await self.wait_turn(method)
        return await self.call(method, **kwargs)

    def _method_bucket(self, method: str) -> TokenBucket | None:
        bucket = self._method_buckets.get(method)
        if bucket is None:
            budget = self._config.budget_for(method)
            if budget is None:
                return None
            bucket = self._method_buckets[method] = TokenBucket(budget, self._clock)
        return bucket

    # -- the one place that talks to Slack ------------------------------------------------

    def _pause_left(self, method: str) -> float:
        return max(0.0, self._paused_until.get(method, 0.0) - self._clock())

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._client.api_call(method, json=_drop_none(kwargs))
        except SlackApiError as exc:
            status = exc.response.status_code
            if status == 429:
                retry_after = min(_retry_after(exc.response.headers), self._config.max_retry_after)
                self._paused_until[method] = self._clock() + retry_after
                self._metrics.slack_call(method, "ratelimited")
                log.info("%s rate limited; pausing it %.1f s", method, retry_after)
                raise RateLimited(retry_after) from exc
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            self._metrics.slack_call(method, "error" if error else "unreachable")
            raise SlackCallFailed(method, error or f"HTTP {status}") from exc
        except (SlackClientError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._metrics.slack_call(method, "unreachable")
            raise SlackCallFailed(method, f"unreachable ({type(exc).__name__})") from exc
        self._metrics.slack_call(method, "ok")
        return dict(response.data) if isinstance(response.data, dict) else {}


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after} s")
        self.retry_after = retry_after


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
