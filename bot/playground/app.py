"""`agentbot playground`: the whole bot offline in a browser, in one process.

One aiohttp application on loopback serves three things: the Slack emulator (`/api/…`,
`/response/…`, `/emulator/…`), the real bot exactly as `serve` builds it (`/slack/events`,
`/healthz`, `/metrics`), and a page at `/` that looks like a Slack channel. The page talks to
the bot only the way Slack would: `/playground/send` and `/playground/action` make the
emulator send the bot signed slash commands, events and button clicks, and the page watches
the emulator's live feed to show the bot's messages as they are posted and edited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic_ai.models import Model

from bot.agents import ModelFactory
from bot.config import AppConfig, Settings
from bot.demo import DEMO_SPEEDS
from bot.errors import ConfigError
from bot.playground.emulator import SlackEmulator
from bot.playground.slack_client import Delivery
from bot.playground.state import JsonDict, Message
from bot.server import Service, build_parts

log = logging.getLogger(__name__)

USER_ID = "U123"
USER_NAME = "you"
CHANNEL_ID = "C123"
CHANNEL_NAME = "general"
DM_ID = "D123"
"""The user's direct messages with the bot ("agentbot" under Apps on the page)."""
STATIC_DIR = Path(__file__).parent / "static"

_CHANNEL_ID = re.compile(r"^[CDG][A-Z0-9]{2,20}$")
_TS = re.compile(r"^\d{1,12}\.\d{1,6}$")
_COMMAND = re.compile(r"^(/\S+)\s*(.*)$", re.DOTALL)
_MAX_TEXT = 40_000  # Slack's own limit for a message's text
_USAGE = {"ask": "<question>", "team": "<task>", "pipeline": "<input>", "compare": "<prompt>"}
_HISTORY_USAGE = "/history [filters] · /history stats · /history show <run-id>"


@dataclass
class Playground:
    """A running playground: `url` is its page (without the trailing slash)."""

    url: str
    emulator: SlackEmulator
    service: Service
    _stopped: bool = field(default=False, repr=False)

    @property
    def bot_url(self) -> str:
        """Where the emulator sends the bot Slack's requests."""
        return f"{self.url}/slack/events"

    async def stop(self, *, grace: float | None = None) -> None:
        """Shut down as `serve` does: let live runs finish for `grace` seconds (default the
        settings' shutdown grace), interrupt the rest, then close the emulator."""
        if self._stopped:
            return
        self._stopped = True
        if grace is None:
            grace = self.service.parts.settings.shutdown_grace
        try:
            await self.service.stop(grace=grace)
        finally:
            await self.emulator.close()


async def start_playground(
    settings: Settings,
    config: AppConfig,
    *,
    port: int,
    host: str = "127.0.0.1",
    model: Model | ModelFactory | None = None,
    enforce_limits: bool = True,
) -> Playground:
    """Serve the emulator, the bot and the page on `host:port` (0 picks a free port).

    The bot gets the user's settings except for Slack's: it talks to the emulator with the
    emulator's token and a fresh signing secret, and the playground user is an admin.
    `model`, when given, replaces the agents' models (tests), as in `build_parts`.
    `enforce_limits` makes the emulator apply Slack's rate limits, as the real Slack would.
    """
    emulator = SlackEmulator(signing_secret=secrets.token_hex(32), enforce_limits=enforce_limits)
    emulator.state.add_user(USER_ID, USER_NAME, real_name="You", is_admin=True)
    # Bound before the bot is built, so that port 0 is known when the bot's settings are made.
    sock = _bind(host, port)
    try:
        bound = sock.getsockname()[1]
        url = f"http://{_url_host(host)}:{bound}"
        emulator.url = url
        bot_settings = settings.model_copy(
            update={
                "slack_api_url": emulator.api_url,
                "slack_bot_token": emulator.bot_token,
                "slack_signing_secret": emulator.signing_secret,
                "slack_app_token": None,
                "admins": settings.admins | {USER_ID},
            }
        )
        parts = await build_parts(bot_settings, config, model=model)
    except BaseException:
        sock.close()
        raise
    service = Service(parts)
    playground = Playground(url=url, emulator=emulator, service=service)
    app = service.web_app()
    emulator.add_routes(app)
    PlaygroundRoutes(playground, config).add_to(app)
    try:
        await service.start(host=host, port=bound, app=app, sock=sock)
    except BaseException:
        sock.close()
        await playground.stop(grace=0)
        raise
    return playground


def run_playground(settings: Settings, config: AppConfig, *, port: int) -> int:
    """Run the playground on 127.0.0.1:`port` until SIGINT or SIGTERM; 0 once shut down."""
    asyncio.run(_run_until_signal(settings, config, port=port))
    return 0


async def _run_until_signal(settings: Settings, config: AppConfig, *, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    playground = await start_playground(settings, config, port=port)
    if playground.service.parts.agents.uses_demo_model:
        log.warning("AGENTBOT_MODEL is not set: agents answer with the offline demo model")
    print(f"agentbot playground: open {playground.url}/ in a browser (Ctrl-C stops)", flush=True)
    log.info("runs are recorded in %s", settings.database_url)
    await stop.wait()
    log.info("shutting down: letting live runs finish for up to %.0f s", settings.shutdown_grace)
    await playground.stop()


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` but not yet listening (the server listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- the page's endpoints ------------------------------------------------------------------


class PlaygroundRoutes:
    """`/`, `/static/…` and the JSON endpoints the page calls (`/playground/…`)."""

    def __init__(self, playground: Playground, config: AppConfig) -> None:
        self.playground = playground
        self.emulator = playground.emulator
        self.config = config

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC_DIR)
        app.router.add_get("/playground/info", self._info)
        app.router.add_post("/playground/send", self._send)
        app.router.add_post("/playground/action", self._action)
        # The live feeds never end by themselves: end them when the server shuts down.
        app.on_shutdown.append(self._close_feeds)

    async def _close_feeds(self, app: web.Application) -> None:
        self.emulator.state.close_subscriptions()

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _info(self, request: web.Request) -> web.Response:
        agents = self.playground.service.parts.agents
        settings = self.playground.service.parts.settings
        commands: list[JsonDict] = []
        for name, spec in self.config.commands.items():
            kind = getattr(spec, "kind", "ask")
            commands.append(
                {
                    "command": name,
                    "kind": kind,
                    "usage": f"{name} {_USAGE.get(kind, '<text>')}",
                    "model": agents.get(spec.agent).model_name if kind == "ask" else None,
                }
            )
        commands.append({"command": "/history", "kind": "history", "usage": _HISTORY_USAGE})
        asks = [c["model"] for c in commands if c["kind"] == "ask"]
        model = asks[0] if asks else settings.model
        users = {
            user_id: {
                "name": user["name"],
                "real_name": user["real_name"],
                "is_bot": user["is_bot"],
            }
            for user_id, user in self.emulator.users.items()
        }
        return web.json_response(
            {
                "model": model,
                "demo": model in DEMO_SPEEDS,
                "user": {"id": USER_ID, "name": USER_NAME},
                "bot": {"id": self.emulator.bot_user_id, "name": "agentbot"},
                "channel": {"id": CHANNEL_ID, "name": CHANNEL_NAME},
                "dm": {"id": DM_ID, "name": "agentbot"},
                "commands": commands,
                "users": users,
                "team_id": self.emulator.team_id,
                "database": _safe_url(settings.database_url),
            }
        )

    async def _send(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _bad_request("text must be a non-empty string")
        if len(text) > _MAX_TEXT:
            raise _bad_request(f"text is longer than {_MAX_TEXT:,} characters")
        channel = _channel(body)
        thread_ts = body.get("thread_ts") or None
        if thread_ts is not None:
            if not isinstance(thread_ts, str) or not _TS.match(thread_ts):
                raise _bad_request("thread_ts must be a Slack timestamp such as 1732450000.000100")
            if self.emulator.message(channel, thread_ts) is None:
                raise _bad_request(f"no message {thread_ts} in {channel}")
        command = _COMMAND.match(text.strip())
        if command is not None:
            return await self._slash_command(command[1], command[2], channel=channel)
        return await self._user_message(text, channel=channel, thread_ts=thread_ts)

    async def _slash_command(self, command: str, text: str, *, channel: str) -> web.Response:
        """Send the command as Slack does; show a non-empty answer (or a refusal) to the user
        as Slack would: an ephemeral message, or a channel message for `in_channel`."""
        try:
            delivery = await self.emulator.send_slash_command(
                self.playground.bot_url,
                command,
                text,
                user_id=USER_ID,
                user_name=USER_NAME,
                channel_id=channel,
                channel_name=_channel_name(channel),
            )
        except aiohttp.ClientError as exc:
            return _unreachable(exc)
        shown = _command_answer(command, delivery, self._command_names())
        if shown is not None:
            answer_text, blocks, in_channel = shown
            self._post_as_bot(channel, answer_text, blocks=blocks, ephemeral=not in_channel)
        return web.json_response(
            {
                "ok": True,
                "kind": "command",
                "status": delivery.status,
                "ephemeral": shown[0] if shown is not None and not shown[2] else None,
                "latency_ms": round(delivery.latency * 1000, 1),
            }
        )

    async def _user_message(
        self, text: str, *, channel: str, thread_ts: str | None
    ) -> web.Response:
        """Post the message as the user; deliver the events Slack would send the bot for it
        (a thread reply or a DM as `message`, a mention as `app_mention`)."""
        bot = self.emulator.bot_user_id
        slack_text = _slack_escape(text).replace("@agentbot", f"<@{bot}>")
        message = self.emulator.post_user_message(channel, USER_ID, slack_text, thread_ts=thread_ts)
        events: list[JsonDict] = []
        if message.thread_ts is not None or channel.startswith("D"):
            events.append(self.emulator.message_event(message))
        if f"<@{bot}>" in slack_text:
            events.append(self.emulator.message_event(message, mention=True))
        delivered: list[int] = []
        try:
            for event in events:
                delivery = await self.emulator.send_event(self.playground.bot_url, event)
                delivered.append(delivery.status)
        except aiohttp.ClientError as exc:
            return _unreachable(exc)
        return web.json_response(
            {"ok": True, "kind": "message", "ts": message.ts, "delivered": delivered}
        )

    async def _action(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        action_id, message_ts = body.get("action_id"), body.get("message_ts")
        value = body.get("value") or ""
        if not isinstance(action_id, str) or not action_id:
            raise _bad_request("action_id must be a non-empty string")
        if not isinstance(message_ts, str) or not _TS.match(message_ts):
            raise _bad_request("message_ts must be a Slack timestamp")
        if not isinstance(value, str):
            raise _bad_request("value must be a string")
        channel = _channel(body)
        message = self.emulator.message(channel, message_ts)
        if message is None:
            raise web.HTTPNotFound(
                text=json.dumps({"ok": False, "error": "message_not_found"}),
                content_type="application/json",
            )
        block_id, button_text = _button(message, action_id, value)
        try:
            delivery = await self.emulator.send_block_action(
                self.playground.bot_url,
                action_id=action_id,
                value=value,
                message_ts=message_ts,
                user_id=USER_ID,
                user_name=USER_NAME,
                channel_id=channel,
                channel_name=_channel_name(channel),
                block_id=block_id,
                button_text=button_text,
            )
        except aiohttp.ClientError as exc:
            return _unreachable(exc)
        if delivery.status == 404:
            self._post_as_bot(
                channel,
                f"The *{button_text}* button is not available (yet).",
                thread_ts=message.thread_ts,
            )
        elif delivery.status != 200:
            self._post_as_bot(
                channel,
                f"The bot answered the *{button_text}* button with HTTP {delivery.status}.",
                thread_ts=message.thread_ts,
            )
        return web.json_response({"ok": True, "kind": "action", "status": delivery.status})

    def _post_as_bot(
        self,
        channel: str,
        text: str,
        *,
        blocks: list[Any] | None = None,
        ephemeral: bool = True,
        thread_ts: str | None = None,
    ) -> Message:
        """A message from the bot that the page shows at once (as Slack shows an ack)."""
        return self.emulator.state.post(
            channel,
            user=self.emulator.bot_user_id,
            bot_id=self.emulator.bot_id,
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            ephemeral_for=USER_ID if ephemeral else None,
        )

    def _command_names(self) -> list[str]:
        return [*self.config.commands, "/history"]


def _command_answer(
    command: str, delivery: Delivery, available: list[str]
) -> tuple[str, list[Any] | None, bool] | None:
    """What the user sees after a slash command: (text, blocks, in_channel), or None."""
    if delivery.status == 404:
        names = ", ".join(f"`{name}`" for name in available) or "none"
        return (
            f"`{command}` is not available (yet). Commands you can use here: {names}.",
            None,
            False,
        )
    if delivery.status == 503:
        return "The bot is shutting down; try again in a moment.", None, False
    if delivery.status != 200:
        return f"The bot answered `{command}` with HTTP {delivery.status}.", None, False
    if not delivery.body.strip():
        return None
    try:
        answer = json.loads(delivery.body)
    except ValueError:
        return delivery.body, None, False
    if not isinstance(answer, dict):
        return delivery.body, None, False
    blocks = answer.get("blocks") if isinstance(answer.get("blocks"), list) else None
    text = str(answer.get("text") or "")
    if not text and not blocks:
        return None
    return text, blocks, answer.get("response_type") == "in_channel"


def _button(message: Message, action_id: str, value: str) -> tuple[str, str]:
    """The block id and label of the clicked button, as Slack puts them in the payload."""
    for block in message.blocks:
        if not isinstance(block, dict) or block.get("type") != "actions":
            continue
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id and element.get("value", "") == value:
                label = (element.get("text") or {}).get("text") or "Button"
                return str(block.get("block_id") or "b"), str(label)
    return "b", "Button"


async def _json_object(request: web.Request) -> JsonDict:
    try:
        body = await request.json()
    except ValueError:
        raise _bad_request("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _bad_request("the body must be a JSON object")
    return body


def _channel(body: JsonDict) -> str:
    channel = body.get("channel") or CHANNEL_ID
    if not isinstance(channel, str) or not _CHANNEL_ID.match(channel):
        raise _bad_request("channel must be a Slack channel id such as C123")
    return channel


def _channel_name(channel: str) -> str:
    """The `channel_name` Slack puts in a payload ("directmessage" for a DM)."""
    if channel == CHANNEL_ID:
        return CHANNEL_NAME
    return "directmessage" if channel.startswith("D") else channel.lower()


def _slack_escape(text: str) -> str:
    """What Slack does to a person's text: its three control characters become entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe_url(url: str) -> str:
    """The database URL without a password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _bad_request(reason: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"ok": False, "error": reason}), content_type="application/json"
    )


def _unreachable(exc: Exception) -> web.Response:
    return web.json_response(
        {"ok": False, "error": f"the bot did not answer: {type(exc).__name__}"}, status=502
    )
