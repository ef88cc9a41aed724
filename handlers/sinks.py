"""Slack sinks: show a run's progress in Slack by editing one message through the pacer."""

from __future__ import annotations

import asyncio
import logging

from bot.errors import BotError
from bot.models import Progress, RunRecord
from handlers import render
from handlers.live_message import Notify, SlackLiveMessage
from handlers.pacer import WorkspacePacer

log = logging.getLogger(__name__)

PLACE_NOTICE_AFTER = 2.0
"""Seconds in line after which a user is told their place: a short wait needs no notice,
and a burst of commands is acknowledged before any notice is sent."""


class SlackEditSink:
    """Posts one message for the run and edits it as text arrives (`chat.update`).

    `start` never waits for Slack: the first post waits for the channel's turn (about one
    post a second per channel) while the model already runs, and shows what there is when
    it goes out: the text so far, or the whole end when the run finished first (one write).
    A refused first post (the bot is not in the channel) is told to the user at once and
    raised from the next `progress` or from `finish`, so that the run ends failed.

    The final answer replaces the live message; text beyond one message's limit continues
    in thread replies, in order.
    """

    def __init__(
        self,
        pacer: WorkspacePacer,
        *,
        channel: str,
        notify: Notify,
        thread_ts: str | None = None,
        heading: str | None = None,
        tell_place: Notify | None = None,
        place_notice_after: float = PLACE_NOTICE_AFTER,
    ) -> None:
        """`thread_ts` makes the message a reply in that thread; `heading` replaces the
        default first line of the message; `tell_place` tells a user waiting in line their
        place privately, once, when they have waited `place_notice_after` seconds (through
        a slash command's `response_url`, which spends no channel budget); without it the
        message shows the place."""
        self._message = SlackLiveMessage(pacer, channel=channel, notify=notify, thread_ts=thread_ts)
        self._thread_ts = thread_ts
        self._heading = heading
        self._tell_place = tell_place
        self._place_notice_after = place_notice_after
        self._place = 0
        self._run: RunRecord | None = None
        self._posting: asyncio.Task[None] | None = None
        self._refused: BotError | None = None  # the first post's refusal, until raised
        self._text = ""
        self._progress: Progress | None = None
        self._queued: int | None = None
        self._version = 0  # bumped by every change of the live content
        self._ending: list[render.SlackMessage] | None = None  # set by `finish`
        self._sending: tuple[int, bool] = (0, False)  # (version, whether the end) being posted
        self._posted: tuple[int, bool] | None = None  # the same, once Slack took the post
        self._telling: asyncio.Task[None] | None = None

    @property
    def writes(self) -> int:
        return self._message.writes

    async def start(self, run: RunRecord) -> None:
        self._run = run
        run.thread_ts = self._thread_ts
        self._posting = asyncio.create_task(self._post_first(run), name=f"first-post-{run.id}")

    def queued(self, position: int) -> None:
        if self._run is None:
            return
        if self._tell_place is not None:
            self._place = position
            if self._telling is None:  # once: a response_url takes a few uses only
                self._telling = asyncio.create_task(self._tell(), name=f"tell-place-{self._run.id}")
            return
        self._queued = position
        self._changed()

    def progress(self, text: str, progress: Progress) -> None:
        self._raise_refusal()
        if self._run is None:
            return
        self._text, self._progress, self._queued = text, progress, None
        self._changed()

    async def finish(self, run: RunRecord) -> None:
        if self._posting is None:
            return  # never started
        self._ending = render.final_messages(run, heading=self._heading)
        try:
            await asyncio.wait([self._posting])  # its own waits are bounded (the pacer's)
        except asyncio.CancelledError:
            self._posting.cancel()  # shutdown: nothing more goes to Slack
            raise
        self._raise_refusal()
        if self._posted is None:
            return  # not shown: the refusal was raised before (the run ended failed)
        if self._posted[1]:
            # The run was over before its turn came: the end went out in the post itself.
            await self._message.reply(self._ending[1:], thread_ts=self._reply_to(run))
            return
        await self._message.show_final(run, heading=self._heading, reply_to=self._reply_to(run))

    # -- the first post, when the channel's turn comes ----------------------------------------

    async def _post_first(self, run: RunRecord) -> None:
        try:
            run.message_ts = await self._message.post(self._first)
        except BotError as exc:
            self._refused = exc
            return
        self._posted = version, ended = self._sending
        if ended:
            return
        self._message.edit()
        if self._version != version:  # text came while the post was on its way
            self._show_live()

    def _first(self) -> render.SlackMessage:
        """What the first post shows, made when it is sent: the end if there is one."""
        self._sending = (self._version, self._ending is not None)
        return self._live_content() if self._ending is None else self._ending[0]

    # -- the live message ---------------------------------------------------------------------

    def _changed(self) -> None:
        self._version += 1
        if self._message.editing:
            self._show_live()

    def _show_live(self) -> None:
        self._message.show_rendered(self._live_content)

    def _live_content(self) -> render.SlackMessage:
        assert self._run is not None
        return render.live_message(
            self._run, self._text, self._progress, heading=self._heading, queued=self._queued
        )

    def _reply_to(self, run: RunRecord) -> str | None:
        return self._thread_ts or run.message_ts

    def _raise_refusal(self) -> None:
        """Raise the first post's refusal, once: the run then ends failed."""
        refused, self._refused = self._refused, None
        if refused is not None:
            raise refused

    async def _tell(self) -> None:
        """After `PLACE_NOTICE_AFTER` seconds still in line, tell the user their place."""
        assert self._tell_place is not None and self._run is not None
        await asyncio.sleep(self._place_notice_after)
        if self._run.started_at is not None or self._progress is not None:
            return  # its turn came first
        text = f"⏳ agentbot is busy: you are number {self._place} in line, starting soon."
        try:
            await self._tell_place(text)
        except Exception as exc:  # only a courtesy: the run goes on
            log.info("could not tell a user their place in line: %s", exc)
