"""Slack sinks: show a run's progress in Slack by editing one message through the pacer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bot.errors import BotError, InputError, RunFailed
from bot.models import Progress, RunRecord
from bot.ports import Sink
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
PLACE_NOTICE_AFTER = 2.0
"""Seconds in line after which a user is told their place: a short wait needs no notice,
and a burst of commands is acknowledged before any notice is sent."""


async def post_first_message(
    pacer: WorkspacePacer,
    channel: str,
    message: render.SlackMessage | Callable[[], render.SlackMessage],
    *,
    notify: Notify,
    thread_ts: str | None = None,
) -> str:
    """Post the message a run starts with; return its ts. `message` may be a function that
    makes it when the channel's turn comes (the content of that moment is posted).

    When Slack refuses, the user is told why (privately) and `InputError` (the bot is not in
    the channel) or `RunFailed` is raised.
    """
    make = message if callable(message) else lambda: message

    def content() -> Content:
        made = make()
        return made.text, made.blocks

    try:
        posted = await pacer.post(channel, render=content, thread_ts=thread_ts)
    except SlackCallFailed as exc:
        if exc.error in ("not_in_channel", "channel_not_found"):
            await notify(NOT_IN_CHANNEL)
            raise InputError(f"the bot is not in channel {channel} ({exc.error})") from exc
        await notify(f"⚠️ I could not post in this channel ({exc.error}).")
        raise RunFailed(f"could not post the message ({exc.error})") from exc
    ts: str = posted["ts"]
    return ts


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
        self._pacer = pacer
        self._channel = channel
        self._notify = notify
        self._thread_ts = thread_ts
        self._heading = heading
        self._tell_place = tell_place
        self._place_notice_after = place_notice_after
        self._place = 0
        self._posts = 0
        self._live: LiveMessage | None = None
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
        return self._posts + (self._live.writes if self._live else 0)

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
            for message in self._ending[1:]:
                self._posts += 1
                await self._pacer.post(
                    self._channel,
                    text=message.text,
                    blocks=message.blocks,
                    thread_ts=self._reply_to(run),
                )
            return
        assert self._live is not None
        self._posts += await show_final(
            self._pacer, self._live, run, heading=self._heading, reply_to=self._reply_to(run)
        )

    # -- the first post, when the channel's turn comes ----------------------------------------

    async def _post_first(self, run: RunRecord) -> None:
        try:
            run.message_ts = await post_first_message(
                self._pacer,
                self._channel,
                self._first,
                notify=self._notify,
                thread_ts=self._thread_ts,
            )
        except BotError as exc:
            self._refused = exc
            return
        self._posted = version, ended = self._sending
        if ended:
            return
        self._live = self._pacer.track(self._channel, run.message_ts)
        if self._version != version:  # text came while the post was on its way
            self._show_live()

    def _first(self) -> render.SlackMessage:
        """What the first post shows, made when it is sent: the end if there is one."""
        self._posts += 1
        self._sending = (self._version, self._ending is not None)
        return self._live_content() if self._ending is None else self._ending[0]

    # -- the live message ---------------------------------------------------------------------

    def _changed(self) -> None:
        self._version += 1
        if self._live is not None:
            self._show_live()

    def _show_live(self) -> None:
        assert self._live is not None
        self._live.set_rendered(lambda: _content(self._live_content()))

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


def _content(message: render.SlackMessage) -> Content:
    return message.text, message.blocks


async def show_final(
    pacer: WorkspacePacer,
    live: LiveMessage,
    run: RunRecord,
    *,
    heading: str | None,
    reply_to: str | None,
) -> int:
    """Replace the live message with the run's end; text beyond one message continues in
    replies to `reply_to`, in order. Returns how many messages it posted."""
    first, *rest = render.final_messages(run, heading=heading)
    live.set(first.text, first.blocks, final=True)
    try:
        await live.wait_delivered()
    except SlackCallFailed as exc:
        pacer.metrics.slack_undelivered.labels(exc.error).inc()
        if exc.error in (TIMEOUT, RATELIMITED):
            # Slack holds the message but keeps refusing edits for now; posting the end anew
            # could show it twice. After a timeout the edit stays queued and may still land.
            log.warning("run %s: final edit not confirmed in Slack (%s)", run.id, exc.error)
        else:
            # The message is gone (deleted, channel archived): post the end as a new message.
            log.warning("run %s: final edit failed (%s); posting it anew", run.id, exc.error)
            rest = [first, *rest]
    for message in rest:
        await pacer.post(live.channel, text=message.text, blocks=message.blocks, thread_ts=reply_to)
    return len(rest)


def reply_sink(
    pacer: WorkspacePacer,
    *,
    mode: str,
    channel: str,
    thread_ts: str,
    notify: Notify,
    heading: str | None = None,
    task_display: str = "timeline",
) -> Sink:
    """The sink of one answer in a thread: Slack's native streaming (`mode` "native") or an
    edited reply ("edit"). In native mode `heading` is the bold first line of the reply and
    tool calls are task cards shown as `task_display` says ("timeline" or "plan")."""
    if mode == "native":
        from handlers.stream_sink import SlackStreamSink  # it imports this module

        return SlackStreamSink(
            pacer,
            channel=channel,
            thread_ts=thread_ts,
            notify=notify,
            heading=heading,
            task_display=task_display,
        )
    if mode == "edit":
        return SlackEditSink(
            pacer, channel=channel, notify=notify, thread_ts=thread_ts, heading=heading
        )
    raise ValueError(f"unknown stream mode {mode!r} (expected 'edit' or 'native')")
