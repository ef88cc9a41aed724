"""What the Slack emulator remembers: messages, calls, users, faults and rate-limit windows.

Nothing here does I/O. `Workspace` is the one owner of the emulated workspace's state; every
change goes through it, so that it can wake `wait_for` callers and feed live subscribers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

TASK_FIELDS = ("id", "title", "status", "details", "output", "sources")
"""The fields of a `task_update` chunk (chat.*Stream), as Slack documents them."""


class SlackError(Exception):
    """A Web API call that Slack answers with `{"ok": false, "error": error}`."""

    def __init__(self, error: str, *, detail: str | None = None) -> None:
        super().__init__(error if detail is None else f"{error}: {detail}")
        self.error = error
        self.detail = detail


@dataclass
class Message:
    """One message as the emulated Slack holds it."""

    channel: str
    ts: str
    user: str | None
    text: str
    blocks: list[Any] = field(default_factory=list)
    thread_ts: str | None = None  # None for a top-level message
    bot_id: str | None = None
    edits: int = 0  # how many chat.update calls were applied
    history: list[str] = field(default_factory=list)  # the text of every version, oldest first
    streaming: bool = False
    ephemeral_for: str | None = None
    reply_count: int = 0
    latest_reply: str | None = None
    stream_started_at: float | None = field(default=None, repr=False)  # time.monotonic()
    updated_at: float = 0.0  # time.time() of the latest text: the page's live footers count from it
    task_display_mode: str | None = None  # "timeline" or "plan", for a streamed message
    tasks: dict[str, JsonDict] = field(default_factory=dict)
    """The latest state of each task card a stream sent (`task_update` chunks), by task id,
    in the order they first came."""
    task_history: list[JsonDict] = field(default_factory=list)
    """Every `task_update` chunk received, oldest first."""

    def update_task(self, chunk: JsonDict) -> None:
        """Apply one `task_update` chunk: a new card, or a new state of one already shown."""
        update = {key: chunk[key] for key in TASK_FIELDS if chunk.get(key) is not None}
        self.tasks[str(chunk["id"])] = {**self.tasks.get(str(chunk["id"]), {}), **update}
        self.task_history.append(update)

    def set_text(self, text: str) -> None:
        """Replace the text and remember the new version."""
        self.text = text
        self.history.append(text)
        self.updated_at = time.time()

    def to_slack(self) -> JsonDict:
        """The message as Slack's Web API returns it (`conversations.history`, `message`)."""
        out: JsonDict = {"type": "message", "ts": self.ts, "user": self.user, "text": self.text}
        if self.blocks:
            out["blocks"] = self.blocks
        if self.bot_id is not None:
            out["bot_id"] = self.bot_id
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        elif self.reply_count:
            out["thread_ts"] = self.ts
            out["reply_count"] = self.reply_count
            out["latest_reply"] = self.latest_reply
        return out

    def to_json(self) -> JsonDict:
        """Every field, for the playground feed and state snapshot."""
        out = dataclasses.asdict(self)
        del out["stream_started_at"]
        return out


@dataclass
class ApiCall:
    """One Web API call as the emulator received and answered it."""

    method: str
    args: JsonDict
    at: float  # time.monotonic() when the request arrived
    status: int  # the HTTP status sent
    ok: bool
    error: str | None = None
    client_port: int | None = None  # the caller's TCP port: tells its connections apart

    def to_json(self) -> JsonDict:
        return dataclasses.asdict(self)


@dataclass
class Fault:
    """A planned misbehaviour for the next calls of one method.

    `status` 200 with `error` None means "answer normally, after `delay`".
    """

    status: int
    retry_after: float
    error: str | None
    delay: float
    times: int | None  # calls left; None = until cleared


class FaultBook:
    """Faults queued per method, taken in the order they were injected."""

    def __init__(self) -> None:
        self._queued: dict[str, deque[Fault]] = {}

    def add(self, method: str, fault: Fault) -> None:
        self._queued.setdefault(method, deque()).append(fault)

    def take(self, method: str) -> Fault | None:
        """The fault that applies to this call of `method`, if any; consumes one use of it."""
        queue = self._queued.get(method)
        if not queue:
            return None
        fault = queue[0]
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                queue.popleft()
        return fault

    def clear(self, method: str | None = None) -> None:
        if method is None:
            self._queued.clear()
        else:
            self._queued.pop(method, None)


@dataclass
class Limit:
    """At most `calls` calls in any sliding `window` seconds (per channel if `per_channel`)."""

    calls: int
    window: float = 60.0
    per_channel: bool = False


def default_limits() -> dict[str, Limit]:
    """Slack's published tiers for the write methods the bot uses (docs/ARCHITECTURE.md §4)."""
    return {
        "chat.update": Limit(50),  # Tier 3
        # "about one a second per channel, short bursts allowed"
        "chat.postMessage": Limit(5, window=5.0, per_channel=True),
        "chat.startStream": Limit(20),  # Tier 2
        "chat.stopStream": Limit(20),  # Tier 2
        "chat.appendStream": Limit(100),  # Tier 4
    }


class RateLimiter:
    """Sliding-window counters for the methods that have a `Limit`."""

    def __init__(self, limits: dict[str, Limit], *, minute: float = 60.0) -> None:
        self.limits = limits
        self.minute = minute  # seconds that count as a minute: a smaller value speeds tests up
        self._seen: dict[tuple[str, str | None], deque[float]] = {}

    def admit(self, method: str, channel: str | None, now: float) -> int | None:
        """Count this call and return None, or return the whole seconds (≥ 1) until a slot
        frees when the call is over the limit (and then do not count it)."""
        limit = self.limits.get(method)
        if limit is None:
            return None
        window = limit.window * self.minute / 60.0
        key = (method, channel if limit.per_channel else None)
        seen = self._seen.setdefault(key, deque())
        while seen and seen[0] <= now - window:
            seen.popleft()
        if len(seen) >= limit.calls:
            frees_at = seen[len(seen) - limit.calls] + window if limit.calls > 0 else now + window
            return max(1, math.ceil(frees_at - now))
        seen.append(now)
        return None

    def reset(self) -> None:
        self._seen.clear()


class Subscription:
    """A bounded feed of state changes; a slow reader loses the oldest events, never blocks
    the emulator. Iterate it with `async for`; it ends when closed."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[JsonDict | None] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.closed = False

    def put(self, event: JsonDict | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.put(None)

    async def get(self) -> JsonDict | None:
        """The next event, or None once the subscription is closed."""
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[JsonDict]:
        return self._events()

    async def _events(self) -> AsyncIterator[JsonDict]:
        while (event := await self.get()) is not None:
            yield event


def describe(predicate: Callable[[], bool]) -> str:
    """A readable name for a predicate, with its source line for lambdas."""
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    code = getattr(predicate, "__code__", None)
    if code is not None:
        name += f" ({code.co_filename}:{code.co_firstlineno})"
    return name


class Workspace:
    """The emulated workspace: messages by channel and thread, ephemerals, response-URL
    posts, API calls, users, channel membership; and the change feed over all of it."""

    def __init__(self, *, team_id: str, bot_user_id: str) -> None:
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.started_at = time.monotonic()  # the origin of the page's API-call times
        self.calls: list[ApiCall] = []
        self.responses: list[JsonDict] = []
        self.acks: list[JsonDict] = []
        self.not_in_channels: set[str] = set()
        self.users: dict[str, JsonDict] = {}
        self._top: dict[str, list[Message]] = {}
        self._replies: dict[tuple[str, str], list[Message]] = {}
        self._index: dict[tuple[str, str], Message] = {}
        self._ephemerals: list[Message] = []
        self._last_ts_us = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._subscriptions: set[Subscription] = set()
        self.add_user("U123", "alice", real_name="Alice Example")
        self.add_user(bot_user_id, "agentbot", real_name="agentbot", is_bot=True)

    # ---- users and channels ------------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        name: str,
        *,
        real_name: str | None = None,
        is_admin: bool = False,
        is_owner: bool = False,
        is_bot: bool = False,
        tz: str = "Europe/London",
    ) -> JsonDict:
        """Add (or replace) a user that `users.info` will know."""
        user = {
            "id": user_id,
            "name": name,
            "real_name": real_name or name,
            "is_admin": is_admin,
            "is_owner": is_owner,
            "is_bot": is_bot,
            "tz": tz,
        }
        self.users[user_id] = user
        return user

    def is_member(self, channel: str) -> bool:
        return channel not in self.not_in_channels

    @property
    def channels(self) -> list[str]:
        """Channels that hold at least one message, in order of first use."""
        return list(self._top)

    # ---- queries ------------------------------------------------------------------------

    def messages(self, channel: str) -> list[Message]:
        """Top-level messages of `channel`, oldest first."""
        return list(self._top.get(channel, ()))

    def message(self, channel: str, ts: str) -> Message | None:
        """The message (top-level, reply or ephemeral) with this `ts`, if it exists."""
        return self._index.get((channel, ts))

    def thread(self, channel: str, ts: str) -> list[Message]:
        """The thread's parent (when known) then its replies, oldest first; `ts` may name
        the parent or any reply."""
        ts, parent = self._thread_root(channel, ts)
        head = [parent] if parent is not None else []
        return head + list(self._replies.get((channel, ts), ()))

    def _thread_root(self, channel: str, ts: str) -> tuple[str, Message | None]:
        """The ts of the thread that `ts` belongs to, and its parent message when known."""
        message = self._index.get((channel, ts))
        if message is not None and message.thread_ts is not None:
            return message.thread_ts, self._index.get((channel, message.thread_ts))
        return ts, message

    def ephemerals(self, channel: str | None = None) -> list[Message]:
        return [m for m in self._ephemerals if channel is None or m.channel == channel]

    def calls_to(self, method: str) -> list[ApiCall]:
        return [call for call in self.calls if call.method == method]

    # ---- changes ------------------------------------------------------------------------

    def new_ts(self) -> str:
        """A Slack-like timestamp ("1732450000.000100"), unique and increasing."""
        self._last_ts_us = max(time.time_ns() // 1000, self._last_ts_us + 1)
        seconds, micros = divmod(self._last_ts_us, 1_000_000)
        return f"{seconds}.{micros:06d}"

    def post(
        self,
        channel: str,
        *,
        user: str | None,
        text: str,
        blocks: list[Any] | None = None,
        thread_ts: str | None = None,
        bot_id: str | None = None,
        ephemeral_for: str | None = None,
        streaming: bool = False,
    ) -> Message:
        """Store a new message (a thread reply when `thread_ts` is set) and announce it.

        A reply to a reply joins the parent's thread, as in Slack."""
        parent = None
        if thread_ts is not None:
            thread_ts, parent = self._thread_root(channel, thread_ts)
        message = Message(
            channel=channel,
            ts=self.new_ts(),
            user=user,
            text="",
            blocks=list(blocks or ()),
            thread_ts=thread_ts,
            bot_id=bot_id,
            streaming=streaming,
            ephemeral_for=ephemeral_for,
            stream_started_at=time.monotonic() if streaming else None,
        )
        message.set_text(text)
        if ephemeral_for is not None:
            self._ephemerals.append(message)
        elif thread_ts is None:
            self._top.setdefault(channel, []).append(message)
        else:
            self._replies.setdefault((channel, thread_ts), []).append(message)
            if parent is not None:
                parent.reply_count += 1
                parent.latest_reply = message.ts
                self.message_changed(parent, "replied")
        self._index[(channel, message.ts)] = message
        self.message_changed(message, "posted")
        return message

    def delete(self, message: Message) -> None:
        """Remove a message; its replies, if any, stay."""
        self._index.pop((message.channel, message.ts), None)
        if message.ephemeral_for is not None:
            self._ephemerals.remove(message)
        elif message.thread_ts is None:
            self._top[message.channel].remove(message)
        else:
            self._replies[(message.channel, message.thread_ts)].remove(message)
            parent = self._index.get((message.channel, message.thread_ts))
            if parent is not None:
                parent.reply_count -= 1
        self.message_changed(message, "deleted")

    def message_changed(self, message: Message, change: str) -> None:
        self.changed(lambda: {"type": "message", "change": change, "message": message.to_json()})

    def record_call(self, call: ApiCall) -> None:
        self.calls.append(call)
        self.changed(lambda: {"type": "call", "call": call.to_json()})

    def record_response(self, response: JsonDict) -> None:
        self.responses.append(response)
        self.changed(lambda: {"type": "response", "response": response})

    def record_ack(self, ack: JsonDict) -> None:
        self.acks.append(ack)
        self.changed(lambda: {"type": "ack", "ack": ack})

    def changed(self, event: Callable[[], JsonDict]) -> None:
        """Announce a change: wake every `wait_for` and feed every subscriber the JSON that
        `event()` describes it with (called only when someone subscribes)."""
        if self._subscriptions:
            described = event()
            for subscription in self._subscriptions:
                subscription.put(described)
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- waiting and subscribing --------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = 10.0,
    ) -> None:
        """Return as soon as `predicate()` is true, checking it after every change.

        Raises TimeoutError naming the predicate when it is still false after `timeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                if predicate():
                    return
                raise TimeoutError(
                    f"timed out after {timeout} s waiting for {describe(predicate)}"
                ) from None
            finally:
                self._waiters.discard(waiter)

    def subscribe(self, *, maxsize: int = 1000) -> Subscription:
        """A new live feed of every change from now on."""
        subscription = Subscription(maxsize)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        subscription.close()

    def close_subscriptions(self) -> None:
        for subscription in list(self._subscriptions):
            self.unsubscribe(subscription)

    # ---- snapshot -----------------------------------------------------------------------

    def snapshot(self, *, recent_calls: int = 200) -> JsonDict:
        """The whole visible state as JSON: channels with messages and their threads."""
        channels: JsonDict = {}
        for channel, top in self._top.items():
            channels[channel] = [
                {**m.to_json(), "replies": [r.to_json() for r in self.thread(channel, m.ts)[1:]]}
                for m in top
            ]
        orphans = {
            f"{channel}/{thread_ts}": [r.to_json() for r in replies]
            for (channel, thread_ts), replies in self._replies.items()
            if (channel, thread_ts) not in self._index and replies
        }
        return {
            "team_id": self.team_id,
            "bot_user_id": self.bot_user_id,
            "started_at": self.started_at,
            "channels": channels,
            "orphan_threads": orphans,
            "ephemerals": [m.to_json() for m in self._ephemerals],
            "responses": self.responses[-recent_calls:],
            "calls": [c.to_json() for c in self.calls[-recent_calls:]],
        }
