"""`read_thread` for agents: the messages of the Slack thread (or channel) a run started in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.tools import ThreadMessage
from handlers.pacer import Pacer


class SlackThreadReader:
    """Reads through the workspace pacer, so reads honour a 429's pause like writes."""

    def __init__(self, pacer: Pacer) -> None:
        self._pacer = pacer

    async def __call__(
        self, channel_id: str, thread_ts: str | None, *, limit: int, team_id: str | None = None
    ) -> Sequence[ThreadMessage]:
        workspace = self._pacer.workspace(team_id)
        if thread_ts is not None:
            data = await workspace.call(
                "conversations.replies", channel=channel_id, ts=thread_ts, limit=limit
            )
            messages = data.get("messages", [])
        else:  # newest first from Slack: put them in reading order
            data = await workspace.call("conversations.history", channel=channel_id, limit=limit)
            messages = list(reversed(data.get("messages", [])))
        return [
            ThreadMessage(
                author=m.get("user") or m.get("bot_id") or "?", text=_text(m), ts=m.get("ts", "")
            )
            for m in messages[-limit:]
        ]


def _text(message: dict[str, Any]) -> str:
    """A bot answer's full text is in its markdown blocks; `text` is only its notification."""
    shown = [b["text"] for b in message.get("blocks") or [] if b.get("type") == "markdown"]
    return "".join(shown) or message.get("text", "")
