"""The sink of one answer in a thread, in the configured stream mode."""

from __future__ import annotations

from bot.ports import Sink
from handlers.live_message import Notify
from handlers.pacer import WorkspacePacer
from handlers.sinks import SlackEditSink
from handlers.stream_sink import SlackStreamSink


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
