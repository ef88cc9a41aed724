"""The Slack board: the parent message of a team, pipeline or comparison, edited through the
pacer, with each part answering in its thread."""

from __future__ import annotations

from collections.abc import Callable

from bot.board import BoardView
from bot.models import RunRecord
from bot.ports import Sink
from handlers import render
from handlers.live_message import Notify, SlackLiveMessage
from handlers.pacer import WorkspacePacer

ReplySink = Callable[[str, str], Sink]
"""Makes the sink of one part: (thread_ts, heading) → Sink."""


class SlackBoard:
    def __init__(
        self, pacer: WorkspacePacer, *, channel: str, notify: Notify, make_reply: ReplySink
    ) -> None:
        self._message = SlackLiveMessage(pacer, channel=channel, notify=notify)
        self._make_reply = make_reply
        self._run: RunRecord | None = None

    @property
    def writes(self) -> int:
        return self._message.writes

    async def open(self, run: RunRecord, view: BoardView) -> None:
        self._run = run
        message = render.board_message(run, view, final=False)
        run.message_ts = await self._message.post(message)
        self._message.edit()

    def show(self, view: BoardView) -> None:
        if not self._message.editing or self._run is None:
            return
        self._message.show(render.board_message(self._run, view, final=False))

    async def close(self, run: RunRecord, view: BoardView) -> None:
        assert self._message.editing, "close() before open()"
        self._message.show(render.board_message(run, view, final=True), final=True)
        await self._message.wait_delivered()

    def reply(self, heading: str) -> Sink:
        assert self._run is not None and self._run.message_ts is not None
        return self._make_reply(self._run.message_ts, heading)
