"""Limits a shared bot needs: a cap on runs at once (the rest wait in line, told their place),
a per-user rate limit, and allowlists of channels and users."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

Clock = Callable[[], float]
PositionChanged = Callable[[int], None]
"""Told the run's place in the line (1 = next) each time it changes."""


class Admission:
    """At most `capacity` runs at once; the others wait first come, first served."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._running = 0
        self._line: deque[_Waiter] = deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._line)

    @asynccontextmanager
    async def slot(self, on_position: PositionChanged) -> AsyncIterator[None]:
        """Hold one of the places while inside; wait in line for one first if all are taken."""
        if self._running < self._capacity and not self._line:
            self._running += 1
        else:
            waiter = _Waiter(asyncio.get_running_loop().create_future(), on_position)
            self._line.append(waiter)
            on_position(len(self._line))
            try:
                await waiter.admitted
            except asyncio.CancelledError:
                if waiter.admitted.done() and not waiter.admitted.cancelled():
                    self._release()  # admitted just as it was cancelled: pass the place on
                else:
                    self._line.remove(waiter)
                    self._tell_positions()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._running -= 1
        while self._line and self._running < self._capacity:
            waiter = self._line.popleft()
            if not waiter.admitted.done():
                self._running += 1
                waiter.admitted.set_result(None)
        self._tell_positions()

    def _tell_positions(self) -> None:
        for position, waiter in enumerate(self._line, start=1):
            waiter.on_position(position)


@dataclass
class _Waiter:
    admitted: asyncio.Future[None]
    on_position: PositionChanged


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: a sentence for the user. `rate_limited` when it is refused
    for the user's rate itself (cheap to answer, and worth little to keep)."""

    text: str
    rate_limited: bool = False


@dataclass
class Guard:
    """Who may start a run where, and how often. Empty allowlists allow everyone."""

    allowed_users: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    runs_per_user_per_minute: int | None = None
    clock: Clock = time.monotonic
    _starts: dict[str, deque[float]] = field(default_factory=dict)

    def refusal(self, *, user_id: str | None, channel_id: str | None) -> Refusal | None:
        """Why this user may not start a run here now, or None.

        Every request counts towards the user's rate limit, whether it is allowed or refused
        afterwards (a refused request costs an answer and a record too), except one refused
        for the rate itself, which leaves the count as it is.
        """
        if self.runs_per_user_per_minute is not None and user_id is not None:
            starts = self._starts.setdefault(user_id, deque())
            now = self.clock()
            while starts and starts[0] <= now - 60:
                starts.popleft()
            if len(starts) >= self.runs_per_user_per_minute:
                wait = max(1, round(starts[0] + 60 - now))
                text = (
                    f"You have sent {len(starts)} requests in the last minute (the limit is "
                    f"{self.runs_per_user_per_minute}); try again in {wait} s."
                )
                return Refusal(text, rate_limited=True)
            starts.append(now)
        if self.allowed_users and user_id not in self.allowed_users:
            return Refusal("Sorry, you are not on the list of people who can use agentbot here.")
        if self.allowed_channels and channel_id not in self.allowed_channels:
            return Refusal("agentbot is not enabled in this channel; ask an admin to add it.")
        return None
