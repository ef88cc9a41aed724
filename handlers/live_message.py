"""One Slack message a run shows itself in: posted in the channel's turn, edited through the
pacer, its end delivered (continued in thread replies), and every write to Slack counted,
whatever sends its text (edits, a native stream, a team's board)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot.errors import InputError, RunFailed
from bot.models import RunRecord
from handlers import render
from handlers.pacer import (
    RATELIMITED,
    TIMEOUT,
    Content,
    LiveMessage,
    SlackCallFailed,
    WorkspacePacer,
)

log = logging.getLogger(__name__)

Notify = Callable[[str], Awaitable[None]]
"""Tells the requesting user something privately (an ephemeral reply)."""

NOT_IN_CHANNEL = "I'm not in this channel yet: invite me with `/invite @agentbot`, then try again."
CHANNEL_ERRORS = ("not_in_channel", "channel_not_found")

MakeMessage = Callable[[], render.SlackMessage]


class SlackLiveMessage:
    """A run's message in `channel` (a reply in `thread_ts` when given).

    `writes` counts every Slack call made for it: posts as they go out (a post retried is
    two), the pacer's edits, and the calls its owner reports with `count` (a native stream's).
    """

    def __init__(
        self,
        pacer: WorkspacePacer,
        *,
        channel: str,
        notify: Notify,
        thread_ts: str | None = None,
    ) -> None:
        self._pacer = pacer
        self.channel = channel
        self._notify = notify
        self._thread_ts = thread_ts
        self.ts: str | None = None
        self._calls = 0
        self._live: LiveMessage | None = None

    @property
    def writes(self) -> int:
        return self._calls + (self._live.writes if self._live else 0)

    @property
    def editing(self) -> bool:
        """True once edits go through the pacer (`edit` was called)."""
        return self._live is not None

    def count(self) -> None:
        """Count one Slack call made by the owner itself (a native stream's call)."""
        self._calls += 1

    async def post(self, message: render.SlackMessage | MakeMessage) -> str:
        """Post the message; return (and keep) its ts. `message` may be a function that
        makes it when the channel's turn comes (the content of that moment is posted).

        When Slack refuses, the user is told why (privately) and `InputError` (the bot is not
        in the channel) or `RunFailed` is raised.
        """
        try:
            posted = await self._post(message, thread_ts=self._thread_ts)
        except SlackCallFailed as exc:
            if exc.error in CHANNEL_ERRORS:
                raise await self.not_in_channel(exc) from exc
            await self._notify(f"⚠️ I could not post in this channel ({exc.error}).")
            raise RunFailed(f"could not post the message ({exc.error})") from exc
        ts: str = posted["ts"]
        self.ts = ts
        return ts

    async def not_in_channel(self, exc: SlackCallFailed) -> InputError:
        """Tell the user to invite the bot (Slack refused `exc`: one of `CHANNEL_ERRORS`);
        return the error to raise, which ends the run failed."""
        await self._notify(NOT_IN_CHANNEL)
        return InputError(f"the bot is not in channel {self.channel} ({exc.error})")

    async def reply(self, messages: list[render.SlackMessage], *, thread_ts: str | None) -> None:
        """Post `messages` in order as replies in `thread_ts` (the rest of a long end)."""
        for message in messages:
            await self._post(message, thread_ts=thread_ts)

    def edit(self) -> None:
        """Edit the posted message from now on, through the pacer."""
        assert self.ts is not None, "edit() before the message has a ts"
        self._live = self._pacer.track(self.channel, self.ts)

    def show(self, message: render.SlackMessage, *, final: bool = False) -> None:
        """Make `message` the content the next edit sends (cheap, never waits)."""
        assert self._live is not None, "show() before edit()"
        self._live.set(message.text, message.blocks, final=final)

    def show_rendered(self, make: MakeMessage) -> None:
        """Like `show`, but the message is made only when the edit is sent."""
        assert self._live is not None, "show_rendered() before edit()"
        self._live.set_rendered(lambda: _content(make()))

    async def wait_delivered(self) -> None:
        """Wait until the final content is in Slack (see `LiveMessage.wait_delivered`)."""
        assert self._live is not None, "wait_delivered() before edit()"
        await self._live.wait_delivered()

    async def show_final(
        self, run: RunRecord, *, heading: str | None, reply_to: str | None
    ) -> None:
        """Replace the message with the run's end; text beyond one message continues in
        replies to `reply_to`, in order."""
        assert self._live is not None, "show_final() before edit()"
        first, *rest = render.final_messages(run, heading=heading)
        self._live.set(first.text, first.blocks, final=True)
        try:
            await self._live.wait_delivered()
        except SlackCallFailed as exc:
            self._pacer.metrics.slack_undelivered.labels(exc.error).inc()
            if exc.error in (TIMEOUT, RATELIMITED):
                # Slack holds the message but keeps refusing edits for now; posting the end
                # anew could show it twice. After a timeout the edit stays queued and may
                # still land.
                log.warning("run %s: final edit not confirmed in Slack (%s)", run.id, exc.error)
            else:
                # The message is gone (deleted, channel archived): post the end as a new one.
                log.warning("run %s: final edit failed (%s); posting it anew", run.id, exc.error)
                rest = [first, *rest]
        await self.reply(rest, thread_ts=reply_to)

    async def _post(
        self, message: render.SlackMessage | MakeMessage, *, thread_ts: str | None
    ) -> dict[str, Any]:
        def content() -> Content:
            made = message() if callable(message) else message
            self._calls += 1  # counted as it goes out: the pacer makes it per attempt
            return _content(made)

        return await self._pacer.post(self.channel, render=content, thread_ts=thread_ts)


def _content(message: render.SlackMessage) -> Content:
    return message.text, message.blocks
