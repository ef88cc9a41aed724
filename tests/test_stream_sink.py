"""Slack's native streaming sink against the emulator: exact text once, pacing, 429 pauses,
expiry and the fall back to chat.update, failure notices, and a real run through the Runner."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelUnavailableError
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import InputError
from bot.metrics import Metrics
from bot.models import Progress, RunKind, RunRecord, RunStatus, ToolState, ToolTask
from bot.playground.emulator import SlackEmulator
from bot.runner import LiveRuns, Runner, RunPolicy
from handlers.live_message import NOT_IN_CHANNEL
from handlers.pacer import Budget, PacerConfig, WorkspacePacer
from handlers.reply_sinks import reply_sink
from handlers.sinks import SlackEditSink
from handlers.stream_sink import STREAM_TEXT_LIMIT, UNFINISHED, SlackStreamSink
from tests.conftest import BOT_TOKEN
from tests.scripted import ScriptedModel

CHANNEL = "C1"
STREAM_GONE = "message_not_in_streaming_state"
SIXTY_WORDS = " ".join(f"word{i}" for i in range(60))


class Notes:
    """A `Notify` that remembers what the user was told."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.told = asyncio.Event()

    async def __call__(self, text: str) -> None:
        self.said.append(text)
        self.told.set()


def make_pacer(emulator: SlackEmulator, **config) -> WorkspacePacer:
    client = AsyncWebClient(token=BOT_TOKEN, base_url=emulator.api_url)
    return WorkspacePacer(client, config=PacerConfig(**config), metrics=Metrics())


def make_run(**fields) -> RunRecord:
    values = {
        "kind": RunKind.FOLLOWUP,
        "prompt": "tell me",
        "user_id": "U123",
        "team_id": "T0001",
        "channel_id": CHANNEL,
        "model": "scripted",
    }
    return RunRecord(**(values | fields))


def question(emulator: SlackEmulator) -> str:
    """A user's message to reply to; its ts is the thread."""
    return emulator.post_user_message(CHANNEL, "U123", "a question").ts


def make_sink(emulator: SlackEmulator, pacer: WorkspacePacer, **kwargs) -> SlackStreamSink:
    notify = kwargs.pop("notify", Notes())
    return SlackStreamSink(
        pacer, channel=CHANNEL, thread_ts=question(emulator), notify=notify, **kwargs
    )


def ended(run: RunRecord, text: str, status: RunStatus = RunStatus.SUCCEEDED, error=None):
    run.output, run.status, run.error = text, status, error
    run.duration_ms, run.input_tokens, run.output_tokens = 1500, 10, 42
    return run


def progress(n: int) -> Progress:
    return Progress(output_tokens=n, elapsed_s=0.1 * n)


def markdown_of(message) -> str:
    """The answer an edited message shows: the text of its markdown blocks."""
    return "".join(b["text"] for b in message.blocks if b.get("type") == "markdown")


def block_texts(message) -> str:
    parts = []
    for block in message.blocks:
        if block["type"] == "section":
            parts.append(block["text"]["text"])
        elif block["type"] == "context":
            parts.extend(e["text"] for e in block["elements"])
    return "\n".join(parts)


def streamed(emulator: SlackEmulator) -> str:
    """Every piece of text the stream calls carried, in order."""
    calls = [
        c
        for c in emulator.calls
        if c.method in ("chat.startStream", "chat.appendStream", "chat.stopStream") and c.ok
    ]
    return "".join(carried_text(c.args) for c in calls)


def carried_text(args) -> str:
    """The answer text one chat.*Stream call carried: `markdown_text` or text chunks."""
    chunks = args.get("chunks") or []
    pieces = [c["text"] for c in chunks if c["type"] == "markdown_text"]
    return args.get("markdown_text", "") + "".join(pieces)


async def feed_until(
    emulator: SlackEmulator,
    sink: SlackStreamSink,
    done: Callable[[], bool],
    *,
    text: str = "",
    limit: int = 200,
) -> str:
    """Add a word to `text`, wait for the next Slack call, repeat until `done()`; returns
    the whole text fed."""
    for i in range(limit):
        if done():
            return text
        text += f"w{len(text.split())} "
        sink.progress(text, progress(i + 1))
        seen = len(emulator.calls)
        await emulator.wait_for(lambda seen=seen: len(emulator.calls) > seen)
    raise AssertionError(f"{done.__name__} not reached after {limit} words")


# -- the stream ---------------------------------------------------------------------------


async def test_start_appends_and_stop_show_the_answer_exactly_once(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    [start] = emulator.calls_to("chat.startStream")
    assert start.args["thread_ts"] == run.thread_ts and run.message_ts is not None
    assert start.args["recipient_user_id"] == "U123"
    assert start.args["recipient_team_id"] == "T0001"

    text = ""
    for i, word in enumerate(SIXTY_WORDS.split(" ")):
        text += word + " "
        sink.progress(text, progress(i + 1))
        if i % 15 == 14:  # let the stream catch up now and then: several appends
            await emulator.wait_for(
                lambda t=text: emulator.message(CHANNEL, run.message_ts).text == t
            )
    text += "The end."
    sink.progress(text, progress(61))
    await sink.finish(ended(run, text))

    message = emulator.message(CHANNEL, run.message_ts)
    assert message.text == text and not message.streaming
    assert message.thread_ts == run.thread_ts
    assert streamed(emulator) == text, "every piece once, in order"
    assert len(emulator.calls_to("chat.appendStream")) >= 4
    [stop] = emulator.calls_to("chat.stopStream")
    assert "`scripted`" in block_texts(message) and "42 out" in block_texts(message)
    assert stop.args["blocks"] == message.blocks
    assert emulator.calls_to("chat.update") == []
    assert sink.writes == len(emulator.calls)
    await pacer.close()


async def test_appends_are_paced_and_carry_only_new_text(emulator):
    pacer = make_pacer(emulator, interval=0.25)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    text = ""
    for burst in range(3):
        for i in range(100):  # a hundred tokens at once: one append
            text += f"b{burst}t{i} "
            sink.progress(text, progress(len(text)))
        await emulator.wait_for(lambda t=text: emulator.message(CHANNEL, run.message_ts).text == t)
    appends = emulator.calls_to("chat.appendStream")
    assert len(appends) == 3
    assert streamed(emulator) == text, "no text sent twice"
    at = [emulator.calls_to("chat.startStream")[0].at, *(c.at for c in appends)]
    assert min(b - a for a, b in itertools.pairwise(at)) >= 0.24, "at most one per interval"
    await sink.finish(ended(run, text))
    assert emulator.message(CHANNEL, run.message_ts).text == text
    assert len(emulator.calls_to("chat.appendStream")) == 3, "nothing left for a 4th append"
    await pacer.close()


def fetching(state: ToolState, note: str = "") -> ToolTask:
    return ToolTask("call1", "fetch_url example.com", state, note)


def with_tasks(n: int, *tasks: ToolTask) -> Progress:
    return Progress(output_tokens=n, elapsed_s=0.1 * n, tasks=tasks)


async def test_tool_calls_ride_on_the_stream_as_task_cards_after_their_text(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer, task_display="plan")
    run = make_run()
    await sink.start(run)
    assert emulator.calls_to("chat.startStream")[0].args["task_display_mode"] == "plan"
    message = emulator.message(CHANNEL, run.message_ts)

    before = "Let me look at the page. "
    sink.progress(before, with_tasks(5, fetching(ToolState.RUNNING)))
    await emulator.wait_for(lambda: message.tasks.get("call1", {}).get("status") == "in_progress")
    [append] = emulator.calls_to("chat.appendStream")
    assert append.args["chunks"] == [
        {"type": "markdown_text", "text": before},
        {"type": "task_update", "id": "call1", "title": "fetch_url example.com",
         "status": "in_progress"},
    ]  # fmt: skip
    assert message.text == before

    # The call ends and the answer goes on before the next append: one call carries both,
    # the card first, as it happened.
    done = fetching(ToolState.DONE, "done in 0.4 s")
    sink.progress(before, with_tasks(5, done))
    text = before + "It says: ship on Tuesday."
    sink.progress(text, with_tasks(9, done))
    await emulator.wait_for(lambda: message.text == text)
    second = emulator.calls_to("chat.appendStream")[1]
    assert [c["type"] for c in second.args["chunks"]] == ["task_update", "markdown_text"]
    assert message.tasks["call1"] == {
        "id": "call1", "title": "fetch_url example.com", "status": "complete",
        "output": "done in 0.4 s",
    }  # fmt: skip

    sink.progress(text, with_tasks(9, done))  # nothing new: no call
    await sink.finish(ended(run, text))
    assert streamed(emulator) == text and message.text == text, "the text once, in order"
    assert [t["status"] for t in message.task_history] == ["in_progress", "complete"]
    assert len(emulator.calls_to("chat.appendStream")) == 2
    assert sink.writes == len(emulator.calls) == 4  # start, two appends, stop
    await pacer.close()


async def test_after_a_fall_back_to_editing_tool_calls_are_status_lines(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer, max_stream_age=0.3)
    run = make_run()
    await sink.start(run)
    message = emulator.message(CHANNEL, run.message_ts)
    sink.progress("Fetching. ", with_tasks(2, fetching(ToolState.RUNNING)))
    await emulator.wait_for(lambda: "call1" in message.tasks)
    text = await feed_until(emulator, sink, lambda: message.edits > 0, text="Fetching. ")
    # The stream grew too old: the message is edited now, tool calls as status lines.
    sink.progress(text, Progress(2, 0.2, ("🔧 fetch_url example.com … running (0 s)",)))
    await emulator.wait_for(lambda: "… running" in block_texts(message))
    assert message.tasks == {}, "the edit replaced the streamed cards"
    await sink.finish(ended(run, text + "Done."))
    assert markdown_of(message).endswith("Done.") and message.tasks == {}
    await pacer.close()


async def test_a_tool_call_cut_short_by_the_end_of_the_run_is_shown_unfinished(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    assert emulator.calls_to("chat.startStream")[0].args["task_display_mode"] == "timeline"
    message = emulator.message(CHANNEL, run.message_ts)
    sink.progress("Fetching. ", with_tasks(2, fetching(ToolState.RUNNING)))
    await emulator.wait_for(lambda: "call1" in message.tasks)
    await sink.finish(ended(run, "Fetching. ", RunStatus.CANCELLED, "Stopped by <@U123>"))
    [stop] = emulator.calls_to("chat.stopStream")
    [card] = stop.args["chunks"]
    assert (card["status"], card["output"]) == ("error", UNFINISHED)
    assert message.tasks["call1"]["status"] == "error" and message.text == "Fetching. "
    assert "Stopped by" in block_texts(message)
    await pacer.close()


async def test_a_429_pauses_appends_then_sends_all_the_pending_text(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    emulator.inject("chat.appendStream", status=429, retry_after=0.5, times=1)
    sink.progress("first ", progress(1))
    await emulator.wait_for(lambda: len(emulator.calls_to("chat.appendStream")) == 1)
    sink.progress("first second ", progress(2))
    sink.progress("first second third", progress(3))
    await emulator.wait_for(
        lambda: emulator.message(CHANNEL, run.message_ts).text == "first second third"
    )
    appends = emulator.calls_to("chat.appendStream")
    assert [c.status for c in appends] == [429, 200]
    assert appends[1].args["markdown_text"] == "first second third"
    assert appends[1].at - appends[0].at >= 0.45, "Retry-After was honoured"
    await sink.finish(ended(run, "first second third"))
    assert emulator.message(CHANNEL, run.message_ts).text == "first second third"
    assert "markdown_text" not in emulator.calls_to("chat.stopStream")[0].args
    assert sink.writes == len(emulator.calls)
    await pacer.close()


async def test_text_beyond_slacks_per_call_limit_is_split_across_appends(emulator):
    pacer = make_pacer(emulator, interval=0.01)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    paragraph = "A line of a very long answer, with some words in it.\n"
    text = paragraph * 700  # ~37,000 characters at once
    sink.progress(text, progress(9000))
    await sink.finish(ended(run, text + "Done."))
    message = emulator.message(CHANNEL, run.message_ts)
    assert message.text == text + "Done."
    pieces = [
        c.args.get("markdown_text", "")
        for c in emulator.calls
        if c.method in ("chat.appendStream", "chat.stopStream")
    ]
    assert len(pieces) >= 4 and max(len(p) for p in pieces) <= STREAM_TEXT_LIMIT
    assert "".join(pieces) == text + "Done."
    await pacer.close()


@pytest.mark.parametrize(
    ("status", "error", "notice"),
    [
        (RunStatus.FAILED, "The model did not answer in time (60 s)", "⚠️ The model did not"),
        (RunStatus.CANCELLED, "Stopped by <@U9>", "⏹️ Stopped by <@U9>."),
    ],
)
async def test_an_unsuccessful_end_shows_its_notice_below_the_partial_answer(
    emulator, status, error, notice
):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    sink.progress("partial answer", progress(3))
    await sink.finish(ended(run, "partial answer", status, error))
    message = emulator.message(CHANNEL, run.message_ts)
    assert message.text == "partial answer"
    assert notice in block_texts(message) and "Partial answer kept above." in block_texts(message)
    assert [b["type"] for b in message.blocks] == ["section", "context"]
    await pacer.close()


async def test_not_in_channel_tells_the_user_and_refuses_the_run(emulator):
    emulator.not_in_channels.add(CHANNEL)
    notes = Notes()
    pacer = make_pacer(emulator)
    sink = make_sink(emulator, pacer, notify=notes)
    run = make_run()
    with pytest.raises(InputError, match="not in channel"):
        await sink.start(run)
    assert notes.said == [NOT_IN_CHANNEL]
    assert run.message_ts is None and sink.writes == 1
    assert [c.error for c in emulator.calls] == ["not_in_channel"]
    await pacer.close()


async def test_a_server_error_on_append_is_retried_without_duplicating_text(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    emulator.inject("chat.appendStream", status=500, times=1)
    sink.progress("one two ", progress(2))
    await emulator.wait_for(lambda: emulator.message(CHANNEL, run.message_ts).text == "one two ")
    await sink.finish(ended(run, "one two three"))
    assert emulator.message(CHANNEL, run.message_ts).text == "one two three"
    assert [c.status for c in emulator.calls_to("chat.appendStream")] == [500, 200]
    assert emulator.calls_to("chat.update") == [], "still streaming: no fall back"
    await pacer.close()


# -- the fall back to chat.update ---------------------------------------------------------


async def test_an_expired_stream_falls_back_to_editing_the_same_message(emulator):
    emulator.stream_ttl = 0.4
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)

    def expired() -> bool:
        return any(c.error == STREAM_GONE for c in emulator.calls_to("chat.appendStream"))

    def edited() -> bool:
        return bool(emulator.calls_to("chat.update"))

    text = await feed_until(emulator, sink, expired)
    text = await feed_until(emulator, sink, edited, text=text)  # the live view, same message
    assert not sink.streaming
    live = emulator.calls_to("chat.update")[0]
    assert live.args["ts"] == run.message_ts
    assert markdown_of(emulator.message(CHANNEL, run.message_ts)).startswith("w0 w1 ")
    answer = text + "and the end."
    sink.progress(answer, progress(999))
    await sink.finish(ended(run, answer))

    message = emulator.message(CHANNEL, run.message_ts)
    assert markdown_of(message) == answer, "the final edit holds the whole answer"
    assert "`scripted`" in block_texts(message)
    assert {c.args["ts"] for c in emulator.calls_to("chat.update")} == {run.message_ts}
    assert [m.ts for m in emulator.thread(CHANNEL, run.thread_ts)][1:] == [run.message_ts]
    assert emulator.calls_to("chat.stopStream") == []
    assert sink.writes == len(emulator.calls)
    await pacer.close()


async def test_a_stream_ended_before_stop_is_finished_by_an_edit(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    sink.progress("some text", progress(2))
    await emulator.wait_for(lambda: emulator.message(CHANNEL, run.message_ts).text == "some text")
    emulator.inject("chat.stopStream", error=STREAM_GONE)
    await sink.finish(ended(run, "some text and more"))
    message = emulator.message(CHANNEL, run.message_ts)
    assert markdown_of(message) == "some text and more"
    assert [c.error for c in emulator.calls_to("chat.stopStream")] == [STREAM_GONE]
    assert len(emulator.calls_to("chat.update")) == 1
    await pacer.close()


async def test_the_stream_is_left_before_its_max_age_not_at_expiry(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer, max_stream_age=0.3)  # Slack's ttl stays at 300 s
    run = make_run()
    await sink.start(run)

    def edited() -> bool:
        return bool(emulator.calls_to("chat.update"))

    text = await feed_until(emulator, sink, edited)
    [stop] = emulator.calls_to("chat.stopStream")
    assert stop.ok and "markdown_text" not in stop.args
    assert stop.at < emulator.calls_to("chat.update")[0].at
    await sink.finish(ended(run, text + "fin"))
    assert markdown_of(emulator.message(CHANNEL, run.message_ts)) == text + "fin"
    assert all(c.ok for c in emulator.calls), "no call met an expired stream"
    assert len(emulator.calls_to("chat.stopStream")) == 1
    await pacer.close()


async def test_a_refused_append_falls_back_and_a_long_answer_continues_in_the_thread(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    emulator.inject("chat.appendStream", error="msg_too_long")
    answer = "".join(f"Sentence number {i} of a long answer. " for i in range(400))  # ~15 kB
    sink.progress(answer, progress(4000))
    await emulator.wait_for(lambda: bool(emulator.calls_to("chat.update")))  # the live view
    await sink.finish(ended(run, answer))

    replies = emulator.thread(CHANNEL, run.thread_ts)[1:]
    assert replies[0].ts == run.message_ts and len(replies) >= 4
    assert "".join(markdown_of(m) for m in replies) == answer, "nothing lost, nothing twice"
    assert "continued in thread" in block_texts(replies[0])
    assert len(emulator.calls_to("chat.postMessage")) == len(replies) - 1
    assert sink.writes == len(emulator.calls)
    await pacer.close()


async def test_when_slack_will_not_start_a_stream_the_reply_is_posted_and_edited(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    sink = make_sink(emulator, pacer)
    emulator.inject("chat.startStream", error="invalid_arguments")
    run = make_run()
    await sink.start(run)
    [post] = emulator.calls_to("chat.postMessage")
    assert post.args["thread_ts"] == run.thread_ts and not sink.streaming
    sink.progress("an answer", progress(2))
    await sink.finish(ended(run, "an answer all the same"))
    message = emulator.message(CHANNEL, run.message_ts)
    assert message.thread_ts == run.thread_ts
    assert markdown_of(message) == "an answer all the same"
    assert emulator.calls_to("chat.appendStream") == emulator.calls_to("chat.stopStream") == []
    await pacer.close()


# -- budgets and the factory --------------------------------------------------------------


def test_stream_budgets_follow_slacks_tiers():
    config = PacerConfig()
    assert config.budget_for("chat.startStream").per_minute == 20
    assert config.budget_for("chat.stopStream").per_minute == 20
    assert config.budget_for("chat.appendStream").per_minute == 100
    assert config.budget_for("chat.update") is None  # paced by the live-message sender
    assert config.stream_max_age == 270


async def test_paced_calls_keep_to_the_methods_budget(emulator):
    pacer = make_pacer(emulator, chat_start_stream=Budget(per_minute=600, burst=1))
    thread = question(emulator)
    for _ in range(4):
        await pacer.paced_call("chat.startStream", channel=CHANNEL, thread_ts=thread)
    at = [c.at for c in emulator.calls_to("chat.startStream")]
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(at))
    await pacer.close()


async def test_reply_sink_picks_the_configured_mode(emulator):
    pacer = make_pacer(emulator)
    common = {"channel": CHANNEL, "thread_ts": "1.000001", "notify": Notes()}
    assert isinstance(reply_sink(pacer, mode="native", **common), SlackStreamSink)
    assert isinstance(reply_sink(pacer, mode="edit", **common), SlackEditSink)
    with pytest.raises(ValueError, match="stream mode"):
        reply_sink(pacer, mode="carrier-pigeon", **common)
    await pacer.close()


# -- under a real run ---------------------------------------------------------------------


async def test_a_real_run_streams_natively_through_the_runner(emulator, sqlite_store):
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.01)
    pacer = make_pacer(emulator, interval=0.1)
    store = sqlite_store
    runner = Runner(store=store, metrics=Metrics(), live=LiveRuns())
    thread = question(emulator)
    sink = reply_sink(
        pacer, mode="native", channel=CHANNEL, thread_ts=thread, notify=Notes(), heading="Analyst"
    )
    run = await runner.run(Agent(script.model()), make_run(), sink=sink, policy=RunPolicy())

    assert run.status is RunStatus.SUCCEEDED, run.error
    message = emulator.message(CHANNEL, run.message_ts)
    assert message.thread_ts == thread and not message.streaming
    assert message.text == "**Analyst**\n\n" + script.text
    assert "`scripted`" in block_texts(message)
    appends = emulator.calls_to("chat.appendStream")
    assert 1 <= len(appends) <= run.duration_ms / 1000 / 0.1 + 3
    stored = await store.get(run.id)
    assert stored.message_ts == run.message_ts and stored.thread_ts == thread
    assert stored.slack_writes == len(emulator.calls)
    await pacer.close()


async def test_a_run_that_fails_mid_stream_keeps_its_text_and_says_why(emulator, sqlite_store):
    error = ModelUnavailableError("scripted", "connection reset")
    script = ScriptedModel.words(SIXTY_WORDS, fail_after=20, error=error)
    pacer = make_pacer(emulator, interval=0.05)
    runner = Runner(store=sqlite_store, metrics=Metrics(), live=LiveRuns())
    sink = make_sink(emulator, pacer)
    run = await runner.run(Agent(script.model()), make_run(), sink=sink, policy=RunPolicy())

    assert run.status is RunStatus.FAILED
    message = emulator.message(CHANNEL, run.message_ts)
    assert message.text == "".join(script.chunks[:20]) == run.output
    notice = block_texts(message)
    assert "⚠️" in notice and "connection reset" in notice and "Partial answer kept" in notice
    await pacer.close()


@pytest.mark.parametrize("mode", ["edit", "native"])
async def test_a_run_stopped_before_its_first_message_finishes_without_one(emulator, mode):
    pacer = make_pacer(emulator)
    sink = reply_sink(
        pacer, mode=mode, channel=CHANNEL, thread_ts=question(emulator), notify=Notes()
    )
    await sink.finish(ended(make_run(), "", RunStatus.CANCELLED, "Stopped by <@U123>"))
    assert [c.method for c in emulator.calls] == [] and sink.writes == 0
    await pacer.close()


# -- a busy channel: the first write waits for its turn, the model does not ----------------


async def test_a_stream_whose_turn_has_not_come_does_not_hold_the_run_back(emulator):
    # One chat.startStream a minute: the second stream's turn is a minute away.
    pacer = make_pacer(emulator, chat_start_stream=Budget(per_minute=1, burst=1))
    first, second = make_sink(emulator, pacer), make_sink(emulator, pacer, heading="Writer")
    await first.start(make_run())
    run = make_run()
    await second.start(run)  # returns at once: no turn yet
    assert len(emulator.calls_to("chat.startStream")) == 1 and run.message_ts is None
    second.progress("an answer written ", progress(3))  # held until it can be shown
    paragraph = "A line of a very long answer, with some words in it.\n"
    answer = paragraph * 300  # more than one message holds
    await second.finish(ended(run, answer))
    # Finished before its turn: the end is posted whole, one reply plus continuations.
    assert len(emulator.calls_to("chat.startStream")) == 1
    replies = [m for m in emulator.thread(CHANNEL, run.thread_ts)[1:] if m.ts != first._ts]
    assert replies[0].ts == run.message_ts and len(replies) >= 2
    assert "".join(markdown_of(m) for m in replies) == answer
    assert "Writer" in block_texts(replies[0])
    assert second.writes == len(replies) == len(emulator.calls_to("chat.postMessage"))
    await pacer.close()


async def test_a_stream_refused_after_its_turn_came_fails_the_run_through_progress(emulator):
    pacer = make_pacer(emulator, chat_start_stream=Budget(per_minute=600, burst=1))
    await make_sink(emulator, pacer).start(make_run())  # takes the burst
    emulator.not_in_channels.add(CHANNEL)
    notes = Notes()
    sink = make_sink(emulator, pacer, notify=notes)
    run = make_run()
    await sink.start(run)  # the turn is 0.1 s away: returns before Slack answers
    await asyncio.wait_for(notes.told.wait(), 5)
    assert notes.said == [NOT_IN_CHANNEL]
    with pytest.raises(InputError, match="not in channel"):
        sink.progress("text the model wrote meanwhile", progress(5))
    await sink.finish(ended(run, "text", RunStatus.FAILED, "not in channel"))  # no raise again
    assert run.message_ts is None
    await pacer.close()


async def test_an_edit_sink_posts_the_text_so_far_when_its_turn_comes(emulator):
    pacer = make_pacer(emulator, interval=0.05, post_per_channel=Budget(per_minute=60, burst=1))
    ahead = asyncio.create_task(pacer.post(CHANNEL, text="a message ahead in the channel"))
    sink = SlackEditSink(pacer, channel=CHANNEL, notify=Notes())
    run = make_run()
    await sink.start(run)
    sink.progress("the text so far", progress(4))
    await ahead

    def posted() -> bool:
        return any(markdown_of(m) == "the text so far" for m in emulator.messages(CHANNEL))

    await emulator.wait_for(posted, timeout=5)
    [message] = [m for m in emulator.messages(CHANNEL) if "ahead" not in m.text]
    assert message.edits == 0, "the post itself carried the text, no edit was spent"
    sink.progress("the text so far and more", progress(6))
    await sink.finish(ended(run, "the text so far and more, the end"))
    assert message.ts == run.message_ts
    assert markdown_of(message) == "the text so far and more, the end"
    await pacer.close()


async def test_an_edit_sink_refused_after_the_run_ended_raises_from_finish(emulator):
    pacer = make_pacer(emulator, post_per_channel=Budget(per_minute=600, burst=1))
    emulator.not_in_channels.add("C9")
    ahead = asyncio.create_task(pacer.post("C9", text="ahead"))  # refused, and takes the turn
    notes = Notes()
    sink = SlackEditSink(pacer, channel="C9", notify=notes)
    run = make_run(channel_id="C9")
    await sink.start(run)
    with pytest.raises(Exception, match="not_in_channel"):
        await ahead
    with pytest.raises(InputError, match="not in channel"):
        await sink.finish(ended(run, "an answer nobody will see"))
    assert notes.said == [NOT_IN_CHANNEL] and run.message_ts is None
    await pacer.close()
