"""The two small protocols through which the core talks to the outside world.

A `Sink` receives the progress of one run (Slack messages, the playground, tests); a
`RunStore` records runs (SQL in production, a dictionary in contract tests).
"""

from __future__ import annotations

from typing import Protocol

from bot.models import Progress, RunQuery, RunRecord


class Sink(Protocol):
    """Where one run's progress goes. Methods are called in order: start, progress*, then one
    of finish / fail."""

    @property
    def writes(self) -> int:
        """How many writes this sink has made to the outside (Slack API calls)."""
        ...

    async def start(self, run: RunRecord) -> None:
        """Show that the run has begun; may set `run.message_ts`/`run.thread_ts`.

        Raises `InputError` when the run cannot be shown at all (for example a channel the bot
        is not in); the user has then been told why.
        """
        ...

    def progress(self, text: str, progress: Progress) -> None:
        """The text so far. Cheap and never blocks: the sink decides when to show it."""
        ...

    async def finish(self, run: RunRecord) -> None:
        """Show the final state of the run (succeeded, cancelled or failed with partial text);
        returns once the whole output is delivered."""
        ...


class RunStore(Protocol):
    """Records runs. `create` is called before the first write to Slack, `save` after."""

    async def create(self, run: RunRecord) -> None: ...

    async def save(self, run: RunRecord) -> None:
        """Write the whole record (upsert by id), including `messages_json` when set."""
        ...

    async def get(self, run_id: str) -> RunRecord | None: ...

    async def query(self, query: RunQuery) -> list[RunRecord]:
        """Runs matching the query, newest first, at most `query.limit`."""
        ...

    async def children(self, parent_id: str) -> list[RunRecord]:
        """The runs whose parent is `parent_id`, oldest first."""
        ...

    async def find_by_message(self, channel_id: str, ts: str) -> RunRecord | None:
        """The latest run in `channel_id` whose message or thread is `ts`, with its messages."""
        ...

    async def mark_interrupted(self, reason: str) -> list[RunRecord]:
        """Mark every run still `running` or `queued` as `interrupted`; return them."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot answer."""
        ...
