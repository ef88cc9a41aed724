"""The requests the emulator sends to the bot, as Slack sends them.

`RequestsToBot` is a part of `SlackEmulator`: it runs slash commands, clicks buttons and
delivers events. Each goes to the bot as a signed POST to its URL, or, when no URL is given,
as an envelope over Socket Mode; `Delivery` reports the bot's answer the same way for both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import aiohttp

from bot.playground import slack_client
from bot.playground.slack_client import Delivery
from bot.playground.state import JsonDict, Workspace

_FORM = "application/x-www-form-urlencoded"


class RequestsToBot:
    """Acting as Slack towards the bot, as a part of `SlackEmulator` (which sets the
    attributes below; `new_response_url` and `send_envelope` come from its other parts)."""

    state: Workspace
    signing_secret: str
    team_id: str
    bot_user_id: str
    bot_id: str
    _session: aiohttp.ClientSession | None
    new_response_url: Callable[..., str]
    send_envelope: Callable[..., Awaitable[JsonDict]]

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
        return await self._deliver(
            bot_url,
            "slash_commands",
            fields,
            encode=slack_client.form_body,
            content_type=_FORM,
            signing_secret=signing_secret,
            timestamp=timestamp,
            accepts_response=True,
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
        return await self._deliver(
            bot_url,
            "interactive",
            payload,
            encode=slack_client.payload_body,
            content_type=_FORM,
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
        return await self._deliver(
            bot_url,
            "events_api",
            envelope,
            encode=slack_client.json_body,
            content_type="application/json",
            signing_secret=signing_secret,
            timestamp=timestamp,
            retry_num=retry_num,
            retry_reason=retry_reason,
        )

    async def _deliver(
        self,
        bot_url: str | None,
        envelope_type: str,
        payload: JsonDict,
        *,
        encode: Callable[[JsonDict], str],
        content_type: str,
        signing_secret: str | None,
        timestamp: int | str | None,
        accepts_response: bool = False,
        retry_num: int | None = None,
        retry_reason: str | None = None,
    ) -> Delivery:
        """Send `payload` to the bot: `encode(payload)` in a signed POST to `bot_url`, or,
        when `bot_url` is None, `payload` in an `envelope_type` envelope over Socket Mode.

        A retry (`retry_num`) is told as Slack tells it on each way: `X-Slack-Retry-*`
        headers, or the envelope's `retry_attempt` and `retry_reason`.
        """
        if bot_url is None:
            return await self._deliver_socket(
                envelope_type,
                payload,
                accepts_response=accepts_response,
                retry_attempt=retry_num,
                retry_reason=retry_reason,
            )
        headers: dict[str, str] = {}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            if retry_reason is not None:  # send_event always names one; a direct caller may not
                headers["X-Slack-Retry-Reason"] = retry_reason
        return await self._deliver_http(
            bot_url,
            encode(payload),
            content_type=content_type,
            signing_secret=signing_secret,
            timestamp=timestamp,
            headers=headers,
        )

    async def _deliver_http(
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
