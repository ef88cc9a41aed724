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
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from bot.playground import slack_client
from bot.playground.slack_client import Delivery
from bot.playground.state import (
    ApiCall,
    Fault,
    FaultBook,
    JsonDict,
    Limit,
    Message,
    RateLimiter,
    SlackError,
    Subscription,
    Workspace,
    default_limits,
)

Handler = Callable[[JsonDict], JsonDict]
Answer = tuple[int, JsonDict | str, dict[str, str]]

_JSON_ARGS = ("blocks", "attachments", "chunks", "metadata")
TASK_STATUSES = ("pending", "in_progress", "complete", "error")
TASK_TEXT_LIMIT = 256
_BOT_SCOPES = (
    "app_mentions:read,channels:history,chat:write,commands,groups:history,im:history,users:read"
)
_ERROR_PAGE = "<html><body><h1>{status}</h1><p>emulated server error</p></body></html>"


@dataclass(frozen=True)
class _ResponseTarget:
    """Where a response URL's messages go: the channel, the user, the clicked message."""

    channel: str
    user: str
    message_ts: str | None = None


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


class SlackEmulator:
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
        self._response_targets: dict[str, _ResponseTarget] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._pending_acks: dict[str, asyncio.Future[JsonDict]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._url: str | None = None
        self._methods: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
            "chat.getPermalink": self._permalink,
            "conversations.replies": self._replies,
            "conversations.history": self._history,
            "users.info": self._users_info,
            "assistant.threads.setStatus": self._set_status,
            "apps.connections.open": self._connections_open,
        }

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

    # ---- Web API ------------------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        method = request.match_info["method"]
        try:
            args, token = await _read_args(request)
        except SlackError as exc:  # a body Slack could not read
            args, answer = {}, (200, _error_body(exc), {})
        else:
            answer = await self._answer(method, args, token)
        status, body, headers = answer
        if status == 429:
            self.rate_limited[method] += 1
        if isinstance(body, dict):
            ok, error = bool(body.get("ok")), body.get("error")
            response = web.json_response(body, status=status, headers=headers)
        else:
            ok, error = False, f"http_{status}"
            response = web.Response(status=status, text=body, content_type="text/html")
        self.state.record_call(ApiCall(method, args, arrived, status, ok, error))
        return response

    async def _answer(self, method: str, args: JsonDict, token: str | None) -> Answer:
        fault = self._faults.take(method)
        if fault is not None:
            faulted = await _apply_fault(fault)
            if faulted is not None:
                return faulted
        handler = self._methods.get(method)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        auth_error = self._token_error(method, token)
        if auth_error is not None:
            return 200, {"ok": False, "error": auth_error}, {}
        if self.enforce_limits:
            wait = self.limiter.admit(method, args.get("channel"), time.monotonic())
            if wait is not None:
                return _ratelimited(wait)
        try:
            body = handler(args)
        except SlackError as exc:
            body = _error_body(exc)
        return 200, body, {"X-OAuth-Scopes": _BOT_SCOPES}

    def _token_error(self, method: str, token: str | None) -> str | None:
        """Slack's error for a missing or wrong token, or None when it is the right one."""
        if not token:
            return "not_authed"
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token == expected:
            return None
        if token in (self.app_token, self.bot_token):
            return "not_allowed_token_type"
        return "invalid_auth"

    def _auth_test(self, args: JsonDict) -> JsonDict:
        return {
            "ok": True,
            "url": "https://emulator.slack.com/",
            "team": "Emulator",
            "user": "agentbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _post_message(self, args: JsonDict) -> JsonDict:
        channel = self._writable_channel(args)
        text, blocks = _content(args)
        message = self.state.post(
            channel,
            user=self.bot_user_id,
            bot_id=self.bot_id,
            text=text or "",
            blocks=blocks,
            thread_ts=args.get("thread_ts") or None,
        )
        return {"ok": True, "channel": channel, "ts": message.ts, "message": message.to_slack()}

    def _post_ephemeral(self, args: JsonDict) -> JsonDict:
        channel = self._writable_channel(args)
        user = _required(args, "user")
        text, blocks = _content(args)
        message = self.state.post(
            channel,
            user=self.bot_user_id,
            bot_id=self.bot_id,
            text=text or "",
            blocks=blocks,
            thread_ts=args.get("thread_ts") or None,
            ephemeral_for=user,
        )
        return {"ok": True, "message_ts": message.ts}

    def _update(self, args: JsonDict) -> JsonDict:
        channel = self._writable_channel(args)
        message = self._own_message(channel, args, "cant_update_message")
        text, blocks = _content(args)
        if blocks is not None:
            message.blocks = blocks
        message.edits += 1
        message.streaming = False
        message.set_text(message.text if text is None else text)
        self.state.message_changed(message, "updated")
        return {
            "ok": True,
            "channel": channel,
            "ts": message.ts,
            "text": message.text,
            "message": message.to_slack(),
        }

    def _delete(self, args: JsonDict) -> JsonDict:
        channel = _required(args, "channel")
        message = self._own_message(channel, args, "cant_delete_message")
        self.state.delete(message)
        return {"ok": True, "channel": channel, "ts": message.ts}

    def _start_stream(self, args: JsonDict) -> JsonDict:
        channel = self._writable_channel(args)
        thread_ts = _required(args, "thread_ts")
        mode = args.get("task_display_mode")
        if mode not in (None, "timeline", "plan"):
            raise SlackError("invalid_arguments", detail="task_display_mode: timeline or plan")
        tasks = _task_updates(args)
        message = self.state.post(
            channel,
            user=self.bot_user_id,
            bot_id=self.bot_id,
            text=_stream_text(args) or "",
            thread_ts=thread_ts,
            streaming=True,
        )
        message.task_display_mode = mode or "timeline"
        for chunk in tasks:
            message.update_task(chunk)
        return {"ok": True, "channel": channel, "ts": message.ts}

    def _append_stream(self, args: JsonDict) -> JsonDict:
        channel, message = self._streaming_message(args)
        text = _stream_text(args)
        tasks = _task_updates(args)
        if text is None:
            raise SlackError("invalid_arguments", detail="missing required field: markdown_text")
        for chunk in tasks:
            message.update_task(chunk)
        if text or not tasks:
            message.set_text(message.text + text)
        self.state.message_changed(message, "streamed")
        return {"ok": True, "channel": channel, "ts": message.ts}

    def _stop_stream(self, args: JsonDict) -> JsonDict:
        channel, message = self._streaming_message(args)
        text = _stream_text(args)
        tasks = _task_updates(args)
        if isinstance(args.get("blocks"), list):
            message.blocks = args["blocks"]
        message.streaming = False
        for chunk in tasks:
            message.update_task(chunk)
        if text:
            message.set_text(message.text + text)
        self.state.message_changed(message, "stopped")
        return {"ok": True, "channel": channel, "ts": message.ts, "message": message.to_slack()}

    def _permalink(self, args: JsonDict) -> JsonDict:
        channel = _required(args, "channel")
        ts = _required(args, "message_ts")
        link = f"https://emulator.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        return {"ok": True, "channel": channel, "permalink": link}

    def _replies(self, args: JsonDict) -> JsonDict:
        thread = self.state.thread(_required(args, "channel"), _required(args, "ts"))
        if not thread:
            raise SlackError("thread_not_found")
        return {"ok": True, "messages": [m.to_slack() for m in thread], "has_more": False}

    def _history(self, args: JsonDict) -> JsonDict:
        newest_first = self.state.messages(_required(args, "channel"))[::-1]
        limit = int(args.get("limit") or 100)
        return {
            "ok": True,
            "messages": [m.to_slack() for m in newest_first[:limit]],
            "has_more": len(newest_first) > limit,
            "pin_count": 0,
        }

    def _users_info(self, args: JsonDict) -> JsonDict:
        user = self.state.users.get(_required(args, "user"))
        if user is None:
            raise SlackError("user_not_found")
        profile = {"real_name": user.get("real_name", ""), "display_name": user.get("name", "")}
        return {
            "ok": True,
            "user": {**user, "team_id": self.team_id, "deleted": False, "profile": profile},
        }

    def _set_status(self, args: JsonDict) -> JsonDict:
        _required(args, "channel_id")
        _required(args, "thread_ts")
        return {"ok": True}

    def _connections_open(self, args: JsonDict) -> JsonDict:
        return {"ok": True, "url": "ws" + self.url.removeprefix("http") + "/link"}

    def _writable_channel(self, args: JsonDict) -> str:
        """The call's channel, which the bot must be in."""
        channel = args.get("channel")
        if not channel:
            raise SlackError("channel_not_found")
        if not self.state.is_member(channel):
            raise SlackError("not_in_channel")
        return str(channel)

    def _own_message(self, channel: str, args: JsonDict, refusal: str) -> Message:
        """The bot's own, non-ephemeral message named by `ts`."""
        message = self.state.message(channel, _required(args, "ts"))
        if message is None or message.ephemeral_for is not None:
            raise SlackError("message_not_found")
        if message.bot_id != self.bot_id:
            raise SlackError(refusal)
        return message

    def _streaming_message(self, args: JsonDict) -> tuple[str, Message]:
        """The message named by `channel`/`ts`, if it is still streaming (ends expired ones)."""
        channel = _required(args, "channel")
        message = self.state.message(channel, _required(args, "ts"))
        if message is None:
            raise SlackError("message_not_found")
        started = message.stream_started_at
        if message.streaming and started is not None:
            if time.monotonic() - started >= self.stream_ttl:
                message.streaming = False
                self.state.message_changed(message, "expired")
        if not message.streaming:
            raise SlackError("message_not_in_streaming_state")
        return channel, message

    # ---- response URLs ------------------------------------------------------------------

    def new_response_url(self, channel: str, user: str, *, message_ts: str | None = None) -> str:
        """A response URL served by this emulator, for an interaction in `channel`."""
        response_id = uuid.uuid4().hex
        self._response_targets[response_id] = _ResponseTarget(channel, user, message_ts)
        return f"{self.url}/response/{response_id}"

    async def _handle_response(self, request: web.Request) -> web.StreamResponse:
        response_id = request.match_info["id"]
        target = self._response_targets.get(response_id)
        if target is None:
            return web.Response(status=404, text="no_service")
        fault = self._faults.take("response_url")
        if fault is not None:
            faulted = await _apply_fault(fault)
            if faulted is not None:
                status, body, headers = faulted
                text = body if isinstance(body, str) else str(body.get("error"))
                return web.Response(status=status, text=text, headers=headers)
        try:
            if request.content_type == "application/json":
                body = await request.json()
            else:
                body = json.loads(str((await request.post()).get("payload", "")))
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(body, dict):
            return web.Response(status=400, text="invalid_payload")
        if not body.get("delete_original") and not body.get("text") and not body.get("blocks"):
            return web.Response(status=400, text="no_text")
        self._apply_response(target, body)
        self.state.record_response({**body, "response_url_id": response_id})
        return web.Response(text="ok")

    def _apply_response(self, target: _ResponseTarget, body: JsonDict) -> None:
        """Do what Slack does with a response: replace or delete the original message, or
        post a new one (in the channel, or ephemeral for the user by default)."""
        original = None
        if target.message_ts is not None:
            original = self.state.message(target.channel, target.message_ts)
        if original is not None and body.get("delete_original"):
            self.state.delete(original)
        elif original is not None and body.get("replace_original"):
            original.blocks = list(body.get("blocks") or [])
            original.set_text(str(body.get("text") or ""))
            self.state.message_changed(original, "replaced")
        elif not body.get("delete_original"):
            in_channel = body.get("response_type") == "in_channel"
            self.state.post(
                target.channel,
                user=self.bot_user_id,
                bot_id=self.bot_id,
                text=str(body.get("text") or ""),
                blocks=body.get("blocks"),
                thread_ts=body.get("thread_ts"),
                ephemeral_for=None if in_channel else target.user,
            )

    # ---- Socket Mode --------------------------------------------------------------------

    @property
    def socket_count(self) -> int:
        """How many Socket Mode clients are connected."""
        return len(self._sockets)

    async def socket_connected(self, *, timeout: float = 10.0) -> None:
        """Wait until a Socket Mode client is connected."""

        def socket_client_connected() -> bool:
            return bool(self._sockets)

        await self.wait_for(socket_client_connected, timeout=timeout)

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()  # answers the client's pings (autoping)
        await ws.prepare(request)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets) + 1,
                "debug_info": {"host": "applink-emulator", "approximate_connection_time": 18060},
                "connection_info": {"app_id": slack_client.API_APP_ID},
            }
        )
        self._sockets.append(ws)
        self.state.changed(lambda: {"type": "socket", "connected": True})
        try:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    self._receive_ack(frame.data)
        finally:
            self._sockets.remove(ws)
            if not self._sockets:
                self._fail_pending_acks("the Socket Mode client left before acking")
            self.state.changed(lambda: {"type": "socket", "connected": False})
        return ws

    def _fail_pending_acks(self, reason: str) -> None:
        for pending in self._pending_acks.values():
            if not pending.done():
                pending.set_exception(ConnectionError(reason))

    def _receive_ack(self, raw: str) -> None:
        try:
            ack = json.loads(raw)
        except ValueError:
            return
        if not isinstance(ack, dict) or "envelope_id" not in ack:
            return
        self.state.record_ack(ack)
        pending = self._pending_acks.pop(ack["envelope_id"], None)
        if pending is not None and not pending.done():
            pending.set_result(ack)

    async def send_envelope(
        self,
        envelope_type: str,
        payload: JsonDict,
        *,
        accepts_response_payload: bool = False,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
        timeout: float = 10.0,
    ) -> JsonDict:
        """Send one Socket Mode envelope to the newest connected client; return its ack.

        Raises RuntimeError when no client is connected, TimeoutError when no ack comes in
        time, ConnectionError when the client leaves first.
        """
        if not self._sockets:
            raise RuntimeError("no bot_url given and no Socket Mode client connected")
        envelope: JsonDict = {
            "envelope_id": str(uuid.uuid4()),
            "type": envelope_type,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        if envelope_type == "events_api":
            envelope["retry_attempt"] = retry_attempt or 0
            envelope["retry_reason"] = retry_reason or ""
        acked: asyncio.Future[JsonDict] = asyncio.get_running_loop().create_future()
        self._pending_acks[envelope["envelope_id"]] = acked
        try:
            await self._sockets[-1].send_json(envelope)
            async with asyncio.timeout(timeout):
                return await acked
        except TimeoutError:
            message = f"no ack for the {envelope_type} envelope within {timeout} s"
            raise TimeoutError(message) from None
        finally:
            self._pending_acks.pop(envelope["envelope_id"], None)

    # ---- acting as Slack towards the bot ------------------------------------------------

    async def send_slash_command(
        self,
        bot_url: str | None,
        command: str,
        text: str,
        *,
        user_id: str = "U123",
        user_name: str = "alice",
        channel_id: str = "C123",
        channel_name: str = "general",
        team_id: str | None = None,
        signing_secret: str | None = None,
        timestamp: int | str | None = None,
    ) -> Delivery:
        """Run a slash command as Slack does: a signed form POST to `bot_url`, or a
        `slash_commands` envelope over Socket Mode when `bot_url` is None."""
        fields = slack_client.slash_command(
            command=command,
            text=text,
            user_id=user_id,
            user_name=user_name,
            channel_id=channel_id,
            channel_name=channel_name,
            team_id=team_id or self.team_id,
            response_url=self.new_response_url(channel_id, user_id),
        )
        if bot_url is None:
            return await self._deliver_socket("slash_commands", fields, accepts_response=True)
        return await self._post(
            bot_url,
            slack_client.form_body(fields),
            content_type="application/x-www-form-urlencoded",
            signing_secret=signing_secret,
            timestamp=timestamp,
        )

    async def send_block_action(
        self,
        bot_url: str | None,
        *,
        action_id: str,
        value: str,
        message_ts: str,
        user_id: str = "U123",
        user_name: str = "alice",
        channel_id: str = "C123",
        channel_name: str = "general",
        block_id: str = "b",
        button_text: str = "Button",
        team_id: str | None = None,
        signing_secret: str | None = None,
        timestamp: int | str | None = None,
    ) -> Delivery:
        """Click a button on the message `message_ts` as `user_id` (a `block_actions`
        interaction); the payload carries the message as the emulator holds it."""
        stored = self.state.message(channel_id, message_ts)
        message: JsonDict = (
            stored.to_slack()
            if stored is not None
            else {"type": "message", "ts": message_ts, "text": "", "bot_id": self.bot_id}
        )
        payload = slack_client.block_action(
            action_id=action_id,
            value=value,
            block_id=block_id,
            user_id=user_id,
            user_name=user_name,
            channel_id=channel_id,
            channel_name=channel_name,
            team_id=team_id or self.team_id,
            message=message,
            response_url=self.new_response_url(channel_id, user_id, message_ts=message_ts),
            button_text=button_text,
            is_ephemeral=stored is not None and stored.ephemeral_for is not None,
        )
        if bot_url is None:
            return await self._deliver_socket("interactive", payload)
        return await self._post(
            bot_url,
            slack_client.payload_body(payload),
            content_type="application/x-www-form-urlencoded",
            signing_secret=signing_secret,
            timestamp=timestamp,
        )

    async def send_event(
        self,
        bot_url: str | None,
        event: JsonDict,
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
        team_id: str | None = None,
        signing_secret: str | None = None,
        timestamp: int | str | None = None,
    ) -> Delivery:
        """Deliver `event` in an `event_callback` envelope; with `retry_num`, as Slack's
        retry of it (`X-Slack-Retry-Num`, reason "http_timeout" unless given)."""
        envelope = slack_client.event_callback(
            event, team_id=team_id or self.team_id, bot_user_id=self.bot_user_id, event_id=event_id
        )
        if retry_num is not None:
            retry_reason = retry_reason or "http_timeout"
        if bot_url is None:
            return await self._deliver_socket(
                "events_api", envelope, retry_attempt=retry_num, retry_reason=retry_reason
            )
        headers = {}
        if retry_num is not None:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": retry_reason}
        return await self._post(
            bot_url,
            slack_client.json_body(envelope),
            content_type="application/json",
            signing_secret=signing_secret,
            timestamp=timestamp,
            headers=headers,
        )

    async def _post(
        self,
        bot_url: str,
        body: str,
        *,
        content_type: str,
        signing_secret: str | None,
        timestamp: int | str | None,
        headers: dict[str, str] | None = None,
    ) -> Delivery:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return await slack_client.post_signed(
            self._session,
            bot_url,
            body,
            content_type=content_type,
            signing_secret=self.signing_secret if signing_secret is None else signing_secret,
            timestamp=timestamp,
            headers=headers,
        )

    async def _deliver_socket(
        self,
        envelope_type: str,
        payload: JsonDict,
        *,
        accepts_response: bool = False,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
    ) -> Delivery:
        started = time.perf_counter()
        ack = await self.send_envelope(
            envelope_type,
            payload,
            accepts_response_payload=accepts_response,
            retry_attempt=retry_attempt,
            retry_reason=retry_reason,
        )
        body = json.dumps(ack["payload"]) if ack.get("payload") else ""
        return Delivery(200, body, time.perf_counter() - started)

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


async def _read_args(request: web.Request) -> tuple[JsonDict, str | None]:
    """The call's arguments (query, then a form or JSON body) and its token (the
    `Authorization: Bearer` header, else the `token` argument)."""
    args: JsonDict = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise SlackError("invalid_json") from None
            if not isinstance(body, dict):
                raise SlackError("invalid_json")
            args.update(body)
        else:
            args.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    token = args.pop("token", None)
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        token = authorization.removeprefix("Bearer ").strip()
    for key in _JSON_ARGS:
        if isinstance(args.get(key), str):
            try:
                args[key] = json.loads(args[key])
            except ValueError:
                raise SlackError(f"invalid_{key}") from None
    return args, token


async def _apply_fault(fault: Fault) -> Answer | None:
    """Wait the fault's delay; return its answer, or None to answer normally."""
    if fault.delay > 0:
        await asyncio.sleep(fault.delay)
    if fault.status == 429:
        answer = _ratelimited(fault.retry_after)
        if fault.error is not None:
            answer[1]["error"] = fault.error
        return answer
    if fault.status != 200:
        return fault.status, _ERROR_PAGE.format(status=fault.status), {}
    if fault.error is not None:
        return 200, {"ok": False, "error": fault.error}, {}
    return None


def _ratelimited(retry_after: float) -> tuple[int, JsonDict, dict[str, str]]:
    seconds = int(retry_after) if float(retry_after).is_integer() else retry_after
    return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(seconds)}


def _error_body(exc: SlackError) -> JsonDict:
    body: JsonDict = {"ok": False, "error": exc.error}
    if exc.detail is not None:
        body["response_metadata"] = {"messages": [f"[ERROR] {exc.detail}"]}
    return body


def _required(args: JsonDict, name: str) -> str:
    value = args.get(name)
    if value is None or value == "":
        raise SlackError("invalid_arguments", detail=f"missing required field: {name}")
    return str(value)


def _content(args: JsonDict) -> tuple[str | None, list[Any] | None]:
    """The message's text (or `markdown_text`) and blocks; `no_text` when it has no content."""
    text = args.get("text")
    if text is None:
        text = args.get("markdown_text")
    blocks = args.get("blocks")
    if blocks is not None and not isinstance(blocks, list):
        raise SlackError("invalid_blocks")
    if not text and not blocks and not args.get("attachments"):
        raise SlackError("no_text")
    return (None if text is None else str(text)), blocks


def _task_updates(args: JsonDict) -> list[JsonDict]:
    """The `task_update` chunks of a streaming call, checked as Slack checks them: an id, a
    title and a known status each; details and output at most 256 characters."""
    chunks = args.get("chunks")
    if chunks is not None and not isinstance(chunks, list):
        raise SlackError("invalid_arguments", detail="chunks must be an array")
    updates = [c for c in chunks or () if isinstance(c, dict) and c.get("type") == "task_update"]
    for chunk in updates:
        if not chunk.get("id") or not chunk.get("title"):
            raise SlackError("invalid_arguments", detail="task_update needs an id and a title")
        if chunk.get("status") not in TASK_STATUSES:
            raise SlackError(
                "invalid_arguments", detail=f"task_update status {chunk.get('status')!r}"
            )
        for key in ("details", "output"):
            if len(str(chunk.get(key) or "")) > TASK_TEXT_LIMIT:
                raise SlackError(
                    "invalid_arguments", detail=f"task_update {key} over 256 characters"
                )
    return updates


def _stream_text(args: JsonDict) -> str | None:
    """The text a streaming call appends: `markdown_text` then the `markdown_text` chunks;
    None when the call has neither."""
    parts: list[str] = []
    if isinstance(args.get("markdown_text"), str):
        parts.append(args["markdown_text"])
    chunks = args.get("chunks")
    if isinstance(chunks, list):
        parts.extend(
            str(c.get("text", ""))
            for c in chunks
            if isinstance(c, dict) and c.get("type") == "markdown_text"
        )
    if not parts and "markdown_text" not in args and not isinstance(chunks, list):
        return None
    return "".join(parts)
