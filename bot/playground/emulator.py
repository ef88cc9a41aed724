"""A Slack emulator: a real aiohttp server on loopback that speaks the Web API the bot uses.

Point `AsyncWebClient(base_url=emu.api_url)` at it and it answers like Slack: it keeps
messages and threads, records every call, injects faults, can enforce Slack's rate limits,
serves response URLs and a Socket Mode WebSocket, and sends the bot signed requests as Slack
does (`send_slash_command`, `send_block_action`, `send_event`).

Retry-After: Slack sends whole seconds. An integral `retry_after` is sent as such ("1");
a fractional one, for fast tests, is sent as given ("0.2"). slack_sdk's own parsers use
`int(...)` (its Socket Mode client would fail on "0.2"; its retry handler reads only the first
character), so code meant to meet fractional values must parse the header with `float()`.
An injected 5xx answers a small HTML page, as Slack's edge does: slack_sdk then raises
SlackApiError with that status and an empty `response.data`.

The emulator is built from parts, one module each, that `SlackEmulator` combines: the Web API
(`web_api`), response URLs (`response_urls`), Socket Mode (`socket_mode`) and the requests it
sends the bot (`requests_to_bot`). What it remembers lives in `state`.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping

import aiohttp
from aiohttp import web

from bot.playground import slack_client
from bot.playground.requests_to_bot import RequestsToBot
from bot.playground.response_urls import ResponseTarget, ResponseUrls
from bot.playground.socket_mode import SocketMode
from bot.playground.state import (
    ApiCall,
    Fault,
    FaultBook,
    JsonDict,
    Limit,
    Message,
    RateLimiter,
    Subscription,
    Workspace,
    default_limits,
)
from bot.playground.web_api import Handler, WebApi


class JoinedChannels:
    """The channels the bot is in: every channel except `not_in_channels` (set-like)."""

    def __init__(self, state: Workspace) -> None:
        self._state = state

    def __contains__(self, channel: object) -> bool:
        return isinstance(channel, str) and self._state.is_member(channel)

    def __iter__(self) -> Iterator[str]:
        return (c for c in self._state.channels if self._state.is_member(c))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class SlackEmulator(WebApi, ResponseUrls, SocketMode, RequestsToBot):
    """The emulated Slack. `start()` serves it on its own port; `add_routes()` mounts it on
    another aiohttp application (then set `url` once that application listens)."""

    def __init__(
        self,
        signing_secret: str,
        *,
        bot_token: str = "xoxb-emulator",
        app_token: str = "xapp-emulator",
        team_id: str = "T0001",
        bot_user_id: str = "UBOT",
        bot_id: str = "B0001",
        enforce_limits: bool = False,
        stream_ttl: float = 300.0,
    ) -> None:
        self.signing_secret = signing_secret
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.enforce_limits = enforce_limits
        self.stream_ttl = stream_ttl
        self.state = Workspace(team_id=team_id, bot_user_id=bot_user_id)
        self.joined_channels = JoinedChannels(self.state)
        self.limiter = RateLimiter(default_limits())
        self.rate_limited: Counter[str] = Counter()  # 429s sent, by method
        self._faults = FaultBook()
        self._response_targets: dict[str, ResponseTarget] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._pending_acks: dict[str, asyncio.Future[JsonDict]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._url: str | None = None
        self._methods: dict[str, Handler] = self._web_api_methods()

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port` (0 = any free port); `url` and `api_url` then point at it."""
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self._url = f"http://{bound_host}:{bound_port}"

    async def close(self) -> None:
        """Close live feeds, WebSockets and the server; awaited acks fail (ConnectionError)."""
        self.state.close_subscriptions()
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        self._fail_pending_acks("the emulator closed")
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackEmulator:
        if self._url is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def add_routes(self, app: web.Application) -> None:
        """Mount the emulator's routes (`/api/`, `/response/`, `/link`, `/emulator/`)."""
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_post("/response/{id}", self._handle_response)
        app.router.add_get("/link", self._handle_socket)
        app.router.add_get("/emulator/events", self._handle_feed)
        app.router.add_get("/emulator/state", self._handle_state)

    @property
    def url(self) -> str:
        """The emulator's base URL, e.g. "http://127.0.0.1:PORT"."""
        if self._url is None:
            raise RuntimeError("the emulator is not started (or its host app did not set url)")
        return self._url

    @url.setter
    def url(self, value: str) -> None:
        self._url = value.rstrip("/")

    @property
    def api_url(self) -> str:
        """The Web API base URL to give slack_sdk (`SLACK_API_URL`)."""
        return f"{self.url}/api/"

    # ---- state, as the tests read it ----------------------------------------------------

    @property
    def calls(self) -> list[ApiCall]:
        return self.state.calls

    @property
    def responses(self) -> list[JsonDict]:
        return self.state.responses

    @property
    def acks(self) -> list[JsonDict]:
        """Socket Mode acks received, `{"envelope_id": ..., "payload": ...}`."""
        return self.state.acks

    @property
    def users(self) -> dict[str, JsonDict]:
        return self.state.users

    @property
    def not_in_channels(self) -> set[str]:
        return self.state.not_in_channels

    @property
    def open_connections(self) -> int:
        """Client connections open now to the emulator's own server (`start()`)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    def calls_to(self, method: str) -> list[ApiCall]:
        return self.state.calls_to(method)

    def messages(self, channel: str) -> list[Message]:
        return self.state.messages(channel)

    def message(self, channel: str, ts: str) -> Message | None:
        return self.state.message(channel, ts)

    def thread(self, channel: str, ts: str) -> list[Message]:
        return self.state.thread(channel, ts)

    def ephemerals(self, channel: str | None = None) -> list[Message]:
        return self.state.ephemerals(channel)

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = 10.0,
    ) -> None:
        """Return once `predicate()` holds (checked after every change); TimeoutError else."""
        await self.state.wait_for(predicate, timeout=timeout)

    def subscribe(self, *, maxsize: int = 1000) -> Subscription:
        """A live feed of changes: `{"type": "message"|"call"|"response"|"ack"|"socket", ...}`."""
        return self.state.subscribe(maxsize=maxsize)

    def unsubscribe(self, subscription: Subscription) -> None:
        self.state.unsubscribe(subscription)

    def post_user_message(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> Message:
        """Store a message written by a person (dispatching its event is the caller's job)."""
        return self.state.post(channel, user=user, text=text, thread_ts=thread_ts)

    def message_event(self, message: Message, *, mention: bool = False) -> JsonDict:
        """The `message` (or `app_mention`) event Slack would send for `message`."""
        return slack_client.message_event(message, team_id=self.team_id, mention=mention)

    # ---- faults and limits --------------------------------------------------------------

    def inject(
        self,
        method: str,
        *,
        status: int | None = None,
        retry_after: float = 1,
        error: str | None = None,
        delay: float = 0.0,
        times: int | None = 1,
    ) -> None:
        """Misbehave on the next `times` calls of `method` (None: until `clear_faults`).

        The status defaults to 429 (with `Retry-After: retry_after`), or to 200 when `error`
        (→ `{"ok": false, "error": error}`) or only `delay` is given. A 5xx answers that status
        with a small HTML body. `delay` seconds pass before any answer. The method
        "response_url" targets posts to response URLs.
        """
        if status is None:
            status = 200 if error is not None or delay > 0 else 429
        self._faults.add(method, Fault(status, retry_after, error, delay, times))

    def clear_faults(self, method: str | None = None) -> None:
        self._faults.clear(method)

    @property
    def limits(self) -> dict[str, Limit]:
        """The enforced limits by method; change entries freely."""
        return self.limiter.limits

    def set_limits(
        self,
        enabled: bool = True,
        *,
        limits: Mapping[str, Limit | int] | None = None,
        minute: float | None = None,
    ) -> None:
        """Turn limit enforcement on or off, replace the limits named in `limits` (an int is
        calls per minute), and set how many seconds count as a minute (default 60; e.g. 0.6
        makes every window 100 times shorter). Counting starts afresh."""
        self.enforce_limits = enabled
        for method, limit in (limits or {}).items():
            self.limiter.limits[method] = Limit(limit) if isinstance(limit, int) else limit
        if minute is not None:
            self.limiter.minute = minute
        self.limiter.reset()

    # ---- the playground's live view -----------------------------------------------------

    async def _handle_feed(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one `data: <json>` per change until the client leaves."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        subscription = self.subscribe()
        try:
            await response.write(b": connected\n\n")
            while True:
                try:
                    async with asyncio.timeout(15.0):
                        event = await subscription.get()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
        except ConnectionResetError:
            pass
        finally:
            self.unsubscribe(subscription)
        return response

    async def _handle_state(self, request: web.Request) -> web.StreamResponse:
        snapshot = self.state.snapshot()
        snapshot["rate_limited"] = dict(self.rate_limited)
        snapshot["socket_connected"] = bool(self._sockets)
        return web.json_response(snapshot)
