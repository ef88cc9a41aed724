"""The emulator's response URLs: where the bot answers a slash command or a button click.

`ResponseUrls` is a part of `SlackEmulator`: each interaction the emulator sends carries a
fresh `/response/{id}` URL, and a POST to it replaces, deletes or posts a message as Slack
would.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from aiohttp import web

from bot.playground.state import FaultBook, JsonDict, Workspace
from bot.playground.web_api import apply_fault


@dataclass(frozen=True)
class ResponseTarget:
    """Where a response URL's messages go: the channel, the user, the clicked message."""

    channel: str
    user: str
    message_ts: str | None = None


class ResponseUrls:
    """Response URLs, as a part of `SlackEmulator` (which sets the attributes below)."""

    state: Workspace
    bot_user_id: str
    bot_id: str
    url: str
    _faults: FaultBook
    _response_targets: dict[str, ResponseTarget]

    def new_response_url(self, channel: str, user: str, *, message_ts: str | None = None) -> str:
        """A response URL served by this emulator, for an interaction in `channel`."""
        response_id = uuid.uuid4().hex
        self._response_targets[response_id] = ResponseTarget(channel, user, message_ts)
        return f"{self.url}/response/{response_id}"

    async def _handle_response(self, request: web.Request) -> web.StreamResponse:
        response_id = request.match_info["id"]
        target = self._response_targets.get(response_id)
        if target is None:
            return web.Response(status=404, text="no_service")
        fault = self._faults.take("response_url")
        if fault is not None:
            faulted = await apply_fault(fault)
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

    def _apply_response(self, target: ResponseTarget, body: JsonDict) -> None:
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
