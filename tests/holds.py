"""A Slack that stalls: hold the emulator's answers to chosen calls until the test releases
them (the emulator's own faults only delay for a fixed time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bot.playground.emulator import SlackEmulator

Args = dict[str, Any]


@dataclass
class SlackHold:
    """Calls of `method` whose arguments match `when` wait (unanswered) until `release`."""

    method: str
    when: Callable[[Args], bool]
    held: list[Args] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_held(self, *, timeout: float = 15.0) -> Args:
        """The first held call's arguments, once it has arrived."""
        async with asyncio.timeout(timeout):
            await self._arrived.wait()
        return self.held[0]

    def release(self) -> None:
        """Answer the held calls, and every later one at once."""
        self._released.set()


def hold_calls(
    emulator: SlackEmulator,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    *,
    when: Callable[[Args], bool] = lambda args: True,
) -> SlackHold:
    """Make the emulator hold its answers to `method` calls matching `when`."""
    hold = SlackHold(method, when)
    answer = emulator._answer

    async def held(called: str, args: Args, token: str | None) -> Any:
        if called == method and not hold._released.is_set() and hold.when(args):
            hold.held.append(args)
            hold._arrived.set()
            await hold._released.wait()
        return await answer(called, args, token)

    monkeypatch.setattr(emulator, "_answer", held)
    return hold


def has_stop_button(args: Args) -> bool:
    return any(block.get("type") == "actions" for block in args.get("blocks") or [])


def is_final_edit(args: Args) -> bool:
    """A `chat.update` that shows a run's end: the live message without its Stop button."""
    return not has_stop_button(args)


def shows_final(message: Any, text: str) -> bool:
    """Whether a message shows a run's end with `text` as its answer (not a live edit that
    happens to hold all the text already)."""
    from tests.test_ask import answer_text

    ended = not any(block.get("type") == "actions" for block in message.blocks)
    return ended and answer_text(message) == text
