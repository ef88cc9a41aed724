"""The Slack board: the parent message of a team, pipeline or comparison, edited through the
pacer, with each part answering in its thread."""

from __future__ import annotations

from collections.abc import Callable

from bot.board import BoardView
from bot.models import RunRecord
from bot.ports import Sink
from handlers import render
from handlers.pacer import LiveMessage, WorkspacePacer
from handlers.sinks import Notify, post_first_message

ReplySink = Callable[[str, str], Sink]
"""Makes the sink of one part: (thread_ts, heading) → Sink."""


class SlackBoard:
    def __init__(
        self, pacer: WorkspacePacer, *, channel: str, notify: Notify, make_reply: ReplySink
    ) -> None:
        self._pacer = pacer
        self._channel = channel
        self._notify = notify
        self._make_reply = make_reply
        self._posts = 0
        self._live: LiveMessage | None = None
        self._run: RunRecord | None = None

    @property
    def writes(self) -> int:
        return self._posts + (self._live.writes if self._live else 0)

    async def open(self, run: RunRecord, view: BoardView) -> None:
        self._run = run
        message = render.board_message(run, view, final=False)
        self._posts += 1
        run.message_ts = await post_first_message(
            self._pacer, self._channel, message, notify=self._notify
        )
        self._live = self._pacer.track(self._channel, run.message_ts)

    def show(self, view: BoardView) -> None:
        if self._live is None or self._run is None:
            return
        message = render.board_message(self._run, view, final=False)
        self._live.set(message.text, message.blocks)

    async def close(self, run: RunRecord, view: BoardView) -> None:
        assert self._live is not None, "close() before open()"
        message = render.board_message(run, view, final=True)
        self._live.set(message.text, message.blocks, final=True)
        await self._live.wait_delivered()

    def reply(self, heading: str) -> Sink:
        assert self._run is not None and self._run.message_ts is not None
        return self._make_reply(self._run.message_ts, heading)
