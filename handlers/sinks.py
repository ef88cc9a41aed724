"""Slack sinks: show a run's progress in Slack by editing one message through the pacer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.errors import InputError, RunFailed
from bot.models import Progress, RunRecord
from bot.ports import Sink
from handlers import render
from handlers.pacer import LiveMessage, SlackCallFailed, WorkspacePacer

log = logging.getLogger(__name__)

Notify = Callable[[str], Awaitable[None]]
"""Tells the requesting user something privately (an ephemeral reply)."""

NOT_IN_CHANNEL = "I'm not in this channel yet: invite me with `/invite @agentbot`, then try again."


async def post_first_message(
    pacer: WorkspacePacer,
    channel: str,
    message: render.SlackMessage,
    *,
    notify: Notify,
    thread_ts: str | None = None,
) -> str:
    """Post the message a run starts with; return its ts.

    When Slack refuses, the user is told why (privately) and `InputError` (the bot is not in
    the channel) or `RunFailed` is raised.
    """
    try:
        posted = await pacer.post(
            channel, text=message.text, blocks=message.blocks, thread_ts=thread_ts
        )
    except SlackCallFailed as exc:
        if exc.error in ("not_in_channel", "channel_not_found"):
            await notify(NOT_IN_CHANNEL)
            raise InputError(f"the bot is not in channel {channel} ({exc.error})") from exc
        await notify(f"⚠️ I could not post in this channel ({exc.error}).")
        raise RunFailed(f"could not post the message ({exc.error})") from exc
    return posted["ts"]


class SlackEditSink:
    """Posts one message when the run starts and edits it as text arrives (`chat.update`).

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
    ) -> None:
        """`thread_ts` makes the message a reply in that thread; `heading` replaces the
        default first line of the message."""
        self._pacer = pacer
        self._channel = channel
        self._notify = notify
        self._thread_ts = thread_ts
        self._heading = heading
        self._posts = 0
        self._live: LiveMessage | None = None
        self._run: RunRecord | None = None

    @property
    def writes(self) -> int:
        return self._posts + (self._live.writes if self._live else 0)

    async def start(self, run: RunRecord) -> None:
        self._run = run
        first = render.live_message(run, "", None, heading=self._heading)
        self._posts += 1
        run.message_ts = await post_first_message(
            self._pacer, self._channel, first, notify=self._notify, thread_ts=self._thread_ts
        )
        run.thread_ts = self._thread_ts
        self._live = self._pacer.track(self._channel, run.message_ts)

    def queued(self, position: int) -> None:
        if self._live is None or self._run is None:
            return
        message = render.live_message(self._run, "", None, heading=self._heading, queued=position)
        self._live.set(message.text, message.blocks)

    def progress(self, text: str, progress: Progress) -> None:
        if self._live is None or self._run is None:
            return
        run, heading = self._run, self._heading

        def content() -> tuple[str, list]:
            message = render.live_message(run, text, progress, heading=heading)
            return message.text, message.blocks

        self._live.set_rendered(content)

    async def finish(self, run: RunRecord) -> None:
        if self._live is None:
            return  # never shown: the run was stopped before its first message was posted
        self._posts += await show_final(
            self._pacer,
            self._live,
            run,
            heading=self._heading,
            reply_to=self._thread_ts or run.message_ts,
        )


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
