"""The emulator's Web API: `/api/{method}` calls answered as Slack answers them.

`WebApi` is a part of `SlackEmulator`: it reads a call's arguments and token, applies an
injected fault or the rate limits, and runs the method (chat.*, conversations.*, users.info,
assistant.threads.setStatus, auth.test, apps.connections.open) on the emulated workspace.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bot.playground.state import (
    ApiCall,
    Fault,
    FaultBook,
    JsonDict,
    Message,
    RateLimiter,
    SlackError,
    Workspace,
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


class WebApi:
    """Slack's Web API, as a part of `SlackEmulator` (which sets the attributes below)."""

    state: Workspace
    team_id: str
    bot_user_id: str
    bot_id: str
    bot_token: str
    app_token: str
    enforce_limits: bool
    stream_ttl: float
    limiter: RateLimiter
    rate_limited: Counter[str]
    url: str
    _faults: FaultBook
    _methods: dict[str, Handler]

    def _web_api_methods(self) -> dict[str, Handler]:
        """The Web API methods the emulator answers, by name."""
        return {
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

    # ---- answering a call ---------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        method = request.match_info["method"]
        answer: Answer
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
        peer = request.transport.get_extra_info("peername") if request.transport else None
        port = peer[1] if isinstance(peer, tuple) else None
        self.state.record_call(ApiCall(method, args, arrived, status, ok, error, port))
        return response

    async def _answer(self, method: str, args: JsonDict, token: str | None) -> Answer:
        fault = self._faults.take(method)
        if fault is not None:
            faulted = await apply_fault(fault)
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

    # ---- the methods --------------------------------------------------------------------

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
            # New blocks replace what the message showed, a stream's task cards included
            # (Slack does not document this case; it is how an edit replaces content).
            message.tasks = {}
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

    # ---- checks the methods share -------------------------------------------------------

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


async def apply_fault(fault: Fault) -> Answer | None:
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
