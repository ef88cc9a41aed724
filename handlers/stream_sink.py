"""Slack's native streaming for thread replies, falling back to editing the same message.

`chat.startStream` opens the reply, `chat.appendStream` adds only the text not yet sent (at
most once per interval, within the workspace's Tier 4 budget) and `chat.stopStream` adds the
rest with the footer. Tool calls go as `task_update` chunks on the same paced appends, each
placed after the text written before it: with text waiting they add no call, and a state
change alone waits for the next turn like text would.

Slack ends a stream about 5 minutes after it starts (`message_not_in_streaming_state`); the
sink then edits the same message with `chat.update` through the pacer, as `SlackEditSink`
does, and does so on its own shortly before that age.

Slack's documented limits (chat.startStream / appendStream / stopStream reference): each
call's `markdown_text` is at most 12,000 characters; `stopStream` takes up to 50 `blocks`,
shown below the streamed text; a reply needs `thread_ts`, and outside DMs the stream needs
`recipient_user_id` and `recipient_team_id`. No total length of a streamed message is
documented: if Slack refuses an append, the sink edits instead, and the final message is
split by `render.final_messages` into the message and thread replies, nothing lost.

What is streamed is the answer made safe (`untrusted.markdown`), and a stream can only grow:
the sink appends the safe form of the part of the answer whose escape can no longer change
(`untrusted.stable_end`), so what Slack holds is at every moment the escape of a beginning of
the answer. Should the escape of the answer ever stop extending what was sent, the sink
edits the message instead, which replaces it whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from bot.errors import BotError, InputError
from bot.models import Progress, RunRecord, ToolState, ToolTask
from handlers import render, untrusted
from handlers.pacer import (
    MAX_RATELIMITED,
    MAX_TRANSIENT_FAILURES,
    LiveMessage,
    SlackCallFailed,
    WorkspacePacer,
)
from handlers.sinks import NOT_IN_CHANNEL, Notify, post_first_message, show_final

log = logging.getLogger(__name__)

START, APPEND, STOP = "chat.startStream", "chat.appendStream", "chat.stopStream"
STREAM_TEXT_LIMIT = 12_000
"""The most `markdown_text` one chat.*Stream call carries: Slack allows 12,000 characters;
pieces are measured in UTF-8 bytes, never fewer than characters."""

TASK_TEXT_LIMIT = 256
"""The most characters of a task card's `details` or `output` (Slack's SDK docs); titles are
held to it too, as no limit of theirs is documented."""
TASK_STATUS = {
    ToolState.RUNNING: "in_progress",
    ToolState.DONE: "complete",
    ToolState.FAILED: "error",
}
UNFINISHED = "not finished: the run ended first"

RATELIMITED = "ratelimited"
CHANNEL_ERRORS = ("not_in_channel", "channel_not_found")


class _Mode(Enum):
    IDLE = "idle"  # before start
    STREAMING = "streaming"  # chat.appendStream / chat.stopStream
    EDITING = "editing"  # chat.update through the pacer (the stream ended or never began)


class SlackStreamSink:
    """Streams a run's answer into one thread reply with Slack's native streaming.

    The message holds the whole answer exactly once: each append carries only the text since
    the last successful one, and `finish` sends the remainder with the footer (and the notice
    of a failed or stopped run). When the stream ends early, the same message is edited.
    """

    def __init__(
        self,
        pacer: WorkspacePacer,
        *,
        channel: str,
        thread_ts: str,
        notify: Notify,
        heading: str | None = None,
        task_display: str = "timeline",
        interval: float | None = None,
        max_stream_age: float | None = None,
    ) -> None:
        """`heading` becomes a bold first line of the streamed reply (and the first line of
        an edited one); `task_display` is Slack's `task_display_mode` for tool calls;
        `interval` and `max_stream_age` default to the pacer's config."""
        if not thread_ts:
            raise ValueError("native streaming needs a thread to reply in (thread_ts)")
        self._pacer = pacer
        self._channel = channel
        self._thread_ts = thread_ts
        self._notify = notify
        self._heading = heading
        self._task_display = task_display
        self._interval = pacer.config.interval if interval is None else interval
        self._max_age = pacer.config.stream_max_age if max_stream_age is None else max_stream_age
        self._clock = pacer.clock
        self._mode = _Mode.IDLE
        self._run: RunRecord | None = None
        self._ts: str | None = None
        self._text = ""  # the answer so far, as the runner gave it
        self._final = False  # `_text` is the whole answer: nothing is held back
        self._safe = ""  # what the stream is to show: the safe form of (most of) `_text`
        self._safe_of: tuple[str, bool] | None = None  # the (`_text`, `_final`) of `_safe`
        self._streamed = ""  # what the stream shows: a beginning of `_safe`
        self._progress: Progress | None = None
        self._sent = 0  # characters of `_safe` already in the stream
        self._tasks: dict[str, ToolTask] = {}  # the latest state of each tool call seen
        self._seen_tasks: tuple[ToolTask, ...] = ()  # `Progress.tasks` as last taken in
        self._unsent_tasks: list[tuple[int, ToolTask]] = []  # (place in the text, state)
        self._calls = 0
        self._live: LiveMessage | None = None
        self._started_at = 0.0
        self._last_append = 0.0
        self._last_look = 0.0  # when the sender last found everything held back
        self._failures = 0
        self._wake = asyncio.Event()  # set while text or tool states wait to be appended
        self._sender: asyncio.Task[None] | None = None
        self._calling = False  # the sender has a call in flight: do not cancel it then
        self._closing = False
        self._opening: asyncio.Task[None] | None = None  # the stream's first call, deferred
        self._refused: BotError | None = None  # the opening's refusal, until raised
        self._replying = False  # replying with an ordinary message instead of a stream

    @property
    def writes(self) -> int:
        return self._calls + (self._live.writes if self._live else 0)

    @property
    def streaming(self) -> bool:
        """True while the answer goes out by chat.appendStream (not yet by editing)."""
        return self._mode is _Mode.STREAMING

    # -- the Sink protocol -----------------------------------------------------------------

    async def start(self, run: RunRecord) -> None:
        """Open the stream when Slack's budget allows; the model does not wait for it. In a
        quiet workspace that is at once, and a refusal is raised here; under a burst the
        stream opens later (or the end is posted whole, `finish`), and a refusal is raised
        from the next `progress` or from `finish`."""
        self._run = run
        quiet = self._pacer.turn_free(START)
        self._opening = asyncio.create_task(self._open(run), name=f"slack-open-{run.id}")
        if quiet:
            await asyncio.wait([self._opening])
            self._raise_refusal()

    async def _open(self, run: RunRecord) -> None:
        try:
            try:
                answer = await self._call(
                    START,
                    channel=self._channel,
                    thread_ts=self._thread_ts,
                    recipient_user_id=run.user_id,
                    recipient_team_id=run.team_id,
                    markdown_text=self._heading_text(),
                    task_display_mode=self._task_display,
                )
            except SlackCallFailed as exc:
                if exc.error in CHANNEL_ERRORS:
                    raise await self._not_in_channel(exc) from exc
                log.warning("run %s: %s failed (%s); replying by edits", run.id, START, exc.error)
                await self._post_instead(run)
                return
        except BotError as exc:
            self._refused = exc
            return
        self._ts = str(answer["ts"])
        run.message_ts = self._ts
        run.thread_ts = self._thread_ts
        self._started_at = self._last_append = self._clock()
        self._mode = _Mode.STREAMING
        self._sender = asyncio.create_task(self._send_loop(), name=f"slack-stream-{run.id}")
        if self._text or self._unsent_tasks:  # what came while the stream waited to open
            self._wake.set()

    def _raise_refusal(self) -> None:
        """Raise the opening's refusal, once: the run then ends failed."""
        refused, self._refused = self._refused, None
        if refused is not None:
            raise refused

    def queued(self, position: int) -> None:
        """Not shown: what a native stream shows cannot be taken back, and a place in line
        would stay in the answer."""

    def progress(self, text: str, progress: Progress) -> None:
        self._raise_refusal()
        self._text = text
        self._progress = progress
        if progress.tasks is not self._seen_tasks:  # the same tuple until a call changes
            self._seen_tasks = progress.tasks
            for task in progress.tasks:
                self._note_task(task)
        if self._mode is _Mode.STREAMING:
            self._wake.set()  # the sender sees whether any of it can go yet
        elif self._mode is _Mode.EDITING:
            self._show_live()

    async def finish(self, run: RunRecord) -> None:
        opening = self._opening
        if opening is None:
            return  # never started
        if not (opening.done() or self._calling or self._replying):
            # Still waiting for its turn to open: the end goes out whole, as one reply.
            opening.cancel()
            await asyncio.wait([opening])
            if self._mode is _Mode.IDLE and self._refused is None:
                await self._post_end(run)
                return
        try:
            await asyncio.wait([opening])  # its own waits are bounded (the pacer's)
        except asyncio.CancelledError:
            opening.cancel()  # shutdown: nothing more goes to Slack
            raise
        self._raise_refusal()
        if self._mode is _Mode.IDLE:
            return  # never shown (the refusal was raised before, or the run was stopped)
        await self._stop_sender()
        if self._mode is _Mode.STREAMING:
            too_old = self._age() >= self._max_age
            # The runner only ever extends the text; if not, editing shows it whole.
            extends = untrusted.markdown(run.output).startswith(self._streamed)
            if not too_old and extends and await self._end_stream(run):
                return
            await self._fall_back(stop_stream=too_old or not extends)
        await self._finish_by_edit(run)

    # -- streaming -------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """Append the text not yet in the stream, at most once per interval and within the
        workspace's chat.appendStream budget, until finish or a fall back to editing."""
        try:
            while not self._closing:
                await self._wake.wait()
                soonest = max(self._last_append, self._last_look) + self._interval
                await asyncio.sleep(max(0.0, soonest - self._clock()))
                if not self._safe_text().startswith(self._streamed):
                    log.warning("stream %s: the escaped answer changed; editing", self._ts)
                    await self._fall_back(stop_stream=True)
                    return
                if not self._news():
                    self._last_look = self._clock()  # all held back: look again in a while
                    self._wake.clear()
                    continue
                if self._age() < self._max_age:
                    await self._pacer.wait_turn(APPEND)
                if self._age() >= self._max_age:
                    await self._fall_back(stop_stream=True)  # before Slack ends it mid-append
                    return
                batch = self._next_batch()
                if batch.empty:
                    self._wake.clear()
                    continue
                try:
                    await self._send(APPEND, channel=self._channel, ts=self._ts, **batch.args)
                except SlackCallFailed as exc:
                    if exc.error == RATELIMITED:
                        continue  # paused; then all the pending text goes in one append
                    if _transient(exc.error) and self._failures < MAX_TRANSIENT_FAILURES:
                        self._failures += 1
                        self._last_append = self._clock()  # try again one interval later
                        continue
                    log.info("stream %s: %s failed (%s); editing", self._ts, APPEND, exc.error)
                    await self._fall_back(stop_stream=False)
                    return
                self._failures = 0
                self._sent_batch(batch)
                self._last_append = self._clock()
                if not self._news():
                    self._wake.clear()
        except Exception:
            log.exception("stream %s: the sender failed; editing instead", self._ts)
            await self._fall_back(stop_stream=False)

    async def _stop_sender(self) -> None:
        """End the sender without losing track of what it sent: it is cancelled only while
        no call is in flight, else it stops after that call."""
        sender = self._sender
        if sender is None or sender.done():
            return
        self._closing = True
        if not self._calling:
            sender.cancel()
        self._wake.set()
        await asyncio.wait([sender])

    async def _end_stream(self, run: RunRecord) -> bool:
        """Send what the stream lacks and stop it with the footer; False when Slack refused
        (the end is then shown by editing, which replaces the message whole)."""
        self._text, self._final = run.output, True
        for task in list(self._tasks.values()):
            if task.state is ToolState.RUNNING:  # the run ended during the call
                self._note_task(dataclasses.replace(task, state=ToolState.FAILED, note=UNFINISHED))
        try:
            while not (batch := self._next_batch()).last:
                await self._call(APPEND, channel=self._channel, ts=self._ts, **batch.args)
                self._sent_batch(batch)
            await self._call(
                STOP, channel=self._channel, ts=self._ts, blocks=end_blocks(run), **batch.args
            )
        except SlackCallFailed as exc:
            log.warning("run %s: ending the stream failed (%s); editing", run.id, exc.error)
            return False
        self._sent_batch(batch)
        return True

    # -- what one call carries ---------------------------------------------------------------

    def _note_task(self, task: ToolTask) -> None:
        """Queue a tool call's new state, to follow the text written so far."""
        if self._tasks.get(task.id) != task:
            self._tasks[task.id] = task
            self._unsent_tasks.append((len(self._safe_text()), task))

    def _news(self) -> bool:
        """True when text or tool states can be appended now."""
        return len(self._safe_text()) > self._sent or bool(self._unsent_tasks)

    def _safe_text(self) -> str:
        """The safe form of the answer as far as it can be streamed now (all of it once
        final); made when asked, not on every token."""
        if self._safe_of != (self._text, self._final):
            text = self._text
            shown = text if self._final else text[: untrusted.stable_end(text)]
            self._safe, self._safe_of = untrusted.markdown(shown), (text, self._final)
        return self._safe

    def _next_batch(self) -> _Batch:
        """The next call's content: the unsent text, up to Slack's limit, with each unsent
        tool state placed after the text that came before it."""
        text = self._safe_text()
        start = self._sent
        end = start + len(_first_piece(text[start:]))
        tasks = [(at, task) for at, task in self._unsent_tasks if at <= end]
        last = end == len(text) and len(tasks) == len(self._unsent_tasks)
        if not tasks:
            return _Batch({"markdown_text": text[start:end] or None}, text[:end], 0, last)
        chunks: list[dict[str, Any]] = []
        at = start
        for place, task in tasks:
            if place > at:
                chunks.append({"type": "markdown_text", "text": text[at:place]})
                at = place
            chunks.append(task_chunk(task))
        if end > at:
            chunks.append({"type": "markdown_text", "text": text[at:end]})
        return _Batch({"chunks": chunks}, text[:end], len(tasks), last)

    def _sent_batch(self, batch: _Batch) -> None:
        self._streamed = batch.streamed
        self._sent = len(batch.streamed)
        del self._unsent_tasks[: batch.task_count]

    # -- editing (the fallback) ------------------------------------------------------------

    async def _fall_back(self, *, stop_stream: bool) -> None:
        """Edit the message from now on; with `stop_stream`, end the stream first (best
        effort) so that Slack does not end it under the edits."""
        if self._mode is not _Mode.STREAMING:
            return
        if stop_stream:
            try:
                await self._call(STOP, channel=self._channel, ts=self._ts)
            except SlackCallFailed as exc:
                log.info("stream %s: %s failed (%s)", self._ts, STOP, exc.error)
        assert self._ts is not None
        self._live = self._pacer.track(self._channel, self._ts)
        self._mode = _Mode.EDITING
        self._show_live()

    async def _post_end(self, run: RunRecord) -> None:
        """Reply with the run's end, whole (continued in more replies when long)."""
        first, *rest = render.final_messages(run, heading=self._heading)
        self._calls += 1
        self._ts = await post_first_message(
            self._pacer, self._channel, first, notify=self._notify, thread_ts=self._thread_ts
        )
        run.message_ts, run.thread_ts = self._ts, self._thread_ts
        for message in rest:
            self._calls += 1
            await self._pacer.post(
                self._channel, text=message.text, blocks=message.blocks, thread_ts=self._thread_ts
            )

    async def _post_instead(self, run: RunRecord) -> None:
        """Reply with an ordinary message to edit, when Slack would not start a stream."""
        self._replying = True  # the post may be on its way: never cancel the opening now

        def first() -> render.SlackMessage:  # made when the post goes out
            return render.live_message(run, "", None, heading=self._heading)

        self._calls += 1
        self._ts = await post_first_message(
            self._pacer, self._channel, first, notify=self._notify, thread_ts=self._thread_ts
        )
        run.message_ts = self._ts
        run.thread_ts = self._thread_ts
        self._live = self._pacer.track(self._channel, self._ts)
        self._mode = _Mode.EDITING
        if self._text:  # what came while the reply waited for its turn
            self._show_live()

    def _show_live(self) -> None:
        assert self._live is not None and self._run is not None
        message = render.live_message(self._run, self._text, self._progress, heading=self._heading)
        self._live.set(message.text, message.blocks)

    async def _finish_by_edit(self, run: RunRecord) -> None:
        assert self._live is not None
        self._calls += await show_final(
            self._pacer, self._live, run, heading=self._heading, reply_to=self._thread_ts
        )

    # -- Slack calls -----------------------------------------------------------------------

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """`method` within its budget; a 429 is waited out and the same call made again,
        `MAX_RATELIMITED` times at most (then `SlackCallFailed` "ratelimited")."""
        for _ in range(MAX_RATELIMITED - 1):
            await self._pacer.wait_turn(method)
            try:
                return await self._send(method, **kwargs)
            except SlackCallFailed as exc:
                if exc.error != RATELIMITED:
                    raise
        await self._pacer.wait_turn(method)
        return await self._send(method, **kwargs)

    async def _send(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """One Slack call, counted in `writes`."""
        self._calls += 1
        self._calling = True
        try:
            return await self._pacer.call(method, **kwargs)
        finally:
            self._calling = False

    async def _not_in_channel(self, exc: SlackCallFailed) -> InputError:
        """Tell the user to invite the bot; the error to raise."""
        await self._notify(NOT_IN_CHANNEL)
        return InputError(f"the bot is not in channel {self._channel} ({exc.error})")

    def _heading_text(self) -> str | None:
        """The bold first line of the reply: `heading` may quote the model (a subtask's
        title)."""
        return f"**{untrusted.markdown(self._heading)}**\n\n" if self._heading else None

    def _age(self) -> float:
        return self._clock() - self._started_at


@dataclass(frozen=True)
class _Batch:
    """The content of one chat.appendStream or chat.stopStream call."""

    args: dict[str, Any]  # `markdown_text` (None when there is none) or `chunks`
    streamed: str  # what the stream shows once the call succeeds
    task_count: int  # how many of the unsent tool states it carries (the first ones)
    last: bool  # nothing remains after it

    @property
    def empty(self) -> bool:
        return not self.task_count and not self.args.get("markdown_text")


def task_chunk(task: ToolTask) -> dict[str, Any]:
    """A `task_update` chunk: the card of one tool call, kept within Slack's limits. Its
    title and output quote the model's arguments and the tool's errors: made safe."""
    chunk: dict[str, Any] = {
        "type": "task_update",
        "id": task.id,
        "title": untrusted.fit(task.title, TASK_TEXT_LIMIT, untrusted.markdown),
        "status": TASK_STATUS[task.state],
    }
    if task.note:
        chunk["output"] = untrusted.fit(task.note, TASK_TEXT_LIMIT, untrusted.markdown)
    return chunk


def end_blocks(run: RunRecord) -> render.Blocks:
    """The blocks `chat.stopStream` shows below the streamed answer: the notice of an
    unsuccessful end, then the footer."""
    blocks: render.Blocks = []
    notice = render.status_notice(run)
    if notice:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": notice}})
    footer = render.footer_line(run)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    return blocks


def _first_piece(text: str) -> str:
    return render.split_text(text, STREAM_TEXT_LIMIT)[0] if text else ""


def _transient(error: str) -> bool:
    """A failure after which the append was surely not applied (Slack's edge answered 5xx),
    so sending the same text again cannot duplicate it."""
    return error.startswith("HTTP 5")
