"""Slack's side of the conversation with the bot: exact payloads and signed HTTP requests.

The builders return what Slack sends (form fields for slash commands, the `payload` JSON of
interactions, the `event_callback` envelope of events); `post_signed` sends a body the way
Slack does, signed with the v0 scheme, and reports status, body and latency.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any, NamedTuple
from urllib.parse import urlencode

import aiohttp

from bot.playground.state import Message

JsonDict = dict[str, Any]

VERIFICATION_TOKEN = "emulator-verification-token"  # Slack's legacy per-app token
API_APP_ID = "A0EMULATOR"
TEAM_DOMAIN = "emulator"


class Delivery(NamedTuple):
    """How the bot answered a request: HTTP status, body text and seconds until the answer.

    Over Socket Mode the status is 200 and the body is the ack's `payload` as JSON ("" when
    the ack had none), so tests read both transports the same way.
    """

    status: int
    body: str
    latency: float

    def json(self) -> Any:
        """The body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


def signature(signing_secret: str, timestamp: str, body: str) -> str:
    """Slack's v0 request signature of `body` sent at `timestamp`."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


async def post_signed(
    session: aiohttp.ClientSession,
    url: str,
    body: str,
    *,
    content_type: str,
    signing_secret: str,
    timestamp: int | str | None = None,
    headers: dict[str, str] | None = None,
) -> Delivery:
    """POST `body` to `url` with Slack's signature headers; never raises for an HTTP status."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    sent_headers = {
        "Content-Type": content_type,
        "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature(signing_secret, stamp, body),
        **(headers or {}),
    }
    started = time.perf_counter()
    async with session.post(url, data=body.encode(), headers=sent_headers) as response:
        text = await response.text()
    return Delivery(response.status, text, time.perf_counter() - started)


def form_body(fields: dict[str, str]) -> str:
    """`application/x-www-form-urlencoded` as Slack writes it."""
    return urlencode(fields)


def payload_body(payload: JsonDict) -> str:
    """The `payload=<json>` form body of interactions."""
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))})


def json_body(envelope: JsonDict) -> str:
    return json.dumps(envelope, separators=(",", ":"))


def new_trigger_id() -> str:
    return f"{int(time.time())}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"


def new_event_id() -> str:
    return "Ev" + secrets.token_hex(5).upper()


def slash_command(
    *,
    command: str,
    text: str,
    user_id: str,
    user_name: str,
    channel_id: str,
    channel_name: str,
    team_id: str,
    response_url: str,
) -> dict[str, str]:
    """The form fields of a slash command, in Slack's order."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": API_APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": new_trigger_id(),
    }


def block_action(
    *,
    action_id: str,
    value: str,
    block_id: str,
    user_id: str,
    user_name: str,
    channel_id: str,
    channel_name: str,
    team_id: str,
    message: JsonDict,
    response_url: str,
    button_text: str,
    is_ephemeral: bool = False,
) -> JsonDict:
    """The `block_actions` payload of a button click on `message` (Slack's message dict)."""
    action_ts = f"{time.time():.6f}"
    container: JsonDict = {
        "type": "message",
        "message_ts": message["ts"],
        "channel_id": channel_id,
        "is_ephemeral": is_ephemeral,
    }
    if "thread_ts" in message:
        container["thread_ts"] = message["thread_ts"]
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": container,
        "trigger_id": new_trigger_id(),
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "message": message,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": block_id,
                "text": {"type": "plain_text", "text": button_text, "emoji": True},
                "value": value,
                "action_ts": action_ts,
            }
        ],
    }


def event_callback(
    event: JsonDict, *, team_id: str, bot_user_id: str, event_id: str | None = None
) -> JsonDict:
    """The Events API envelope Slack wraps around `event`."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "context_team_id": team_id,
        "context_enterprise_id": None,
        "api_app_id": API_APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or new_event_id(),
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-" + secrets.token_hex(16),
    }


def message_event(message: Message, *, team_id: str, mention: bool = False) -> JsonDict:
    """The `message` event (or `app_mention` when `mention`) Slack sends for `message`.

    The channel type follows Slack's ID prefixes: D… is an `im`, G… a `group`.
    """
    event: JsonDict = {
        "type": "app_mention" if mention else "message",
        "user": message.user,
        "text": message.text,
        "ts": message.ts,
        "team": team_id,
        "channel": message.channel,
        "event_ts": message.ts,
    }
    if message.blocks:
        event["blocks"] = message.blocks
    if message.thread_ts is not None:
        event["thread_ts"] = message.thread_ts
    if not mention:
        event["channel_type"] = {"D": "im", "G": "group"}.get(message.channel[:1], "channel")
    return event
