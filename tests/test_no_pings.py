"""End to end: a model's answer that tries to ping the channel or disguise a link reaches
Slack harmless, in every write (first post, interim and final edits, continuation replies,
native stream appends), in both stream modes, for /ask, a thread follow-up and /team."""

from __future__ import annotations

import json

import pytest

from bot.models import RunKind, RunStatus
from bot.playground.emulator import SlackEmulator
from handlers import untrusted
from tests.test_ask import all_text, answer_text
from tests.test_team import Crew
from tests.test_untrusted_text import unsafe

ATTACK = (
    "Heads up <!channel> and <!here>, cc <!everyone> <!subteam^S123> <!subteam^S9|@oncall> "
    "<@U777>.\n\n"
    "Log in at <https://evil.example|https://sso.company.example> or "
    "[https://sso.company.example](https://evil.example) now.\n\n"
    "Also @here, and in code: `<!channel>`.\n\n"
)
FILLER = "An ordinary paragraph with **bold**, `code < here` and a [link](https://example.com).\n\n"
LONG_ANSWER = (ATTACK + FILLER * 12) * 8  # ~11 KB: the message and continuation replies
WRITES = (
    "chat.postMessage",
    "chat.update",
    "chat.startStream",
    "chat.appendStream",
    "chat.stopStream",
    "chat.postEphemeral",
)


def chunks(text: str, size: int = 7) -> list[str]:
    """Small deltas, so that escapes and links are cut across them."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def assert_nothing_pings(
    emulator: SlackEmulator, *, asker: str = "U123", channel: str = "C123"
) -> None:
    """No write the bot made, and no message Slack holds, could ping or hide a target."""
    writes = [c for c in emulator.calls if c.method in WRITES]
    assert writes
    for call in writes:
        sent = json.dumps(call.args, ensure_ascii=False).replace(f"<@{asker}>", "")
        assert not unsafe(sent), (call.method, unsafe(sent))
    for message in emulator.messages(channel):
        for shown in [message, *emulator.thread(channel, message.ts)]:
            held = json.dumps([shown.text, shown.blocks], ensure_ascii=False)
            assert not unsafe(held.replace(f"<@{asker}>", "")), unsafe(held)


def shows_real_target(text: str) -> bool:
    return "https://evil.example" in text and "[https://sso.company.example](" not in text


@pytest.mark.parametrize("mode", ["edit", "native"])
async def test_an_ask_answer_and_its_follow_up_ping_nobody(start_bot, emulator, mode):
    from tests.scripted import ScriptedModel

    script = ScriptedModel(chunks(LONG_ANSWER, 97), delay=0.006)  # ~0.7 s: interim writes
    bot = await start_bot(script.model(), AGENTBOT_STREAM_MODE=mode)
    await bot.command("summarise this page")
    [run] = await bot.wait_for_run(timeout=60)
    assert run.status is RunStatus.SUCCEEDED and run.output == LONG_ANSWER  # kept as said

    [parent] = emulator.messages("C123")
    thread = emulator.thread("C123", parent.ts)
    assert len(thread) >= 3, "the answer continues in thread replies"
    shown = "".join(answer_text(m) for m in thread)
    assert shows_real_target(shown) and "&lt;!channel>" in shown
    assert len(emulator.calls_to("chat.update")) >= 2, "interim edits were made"

    # A follow-up in the thread streams natively in "native" mode.
    reply = emulator.post_user_message("C123", "U123", "and then?", thread_ts=parent.ts)
    await emulator.send_event(bot.url, emulator.message_event(reply))
    [followup] = await bot.wait_for_run(kind=RunKind.FOLLOWUP, timeout=60)
    assert followup.status is RunStatus.SUCCEEDED
    answer = emulator.message("C123", followup.message_ts)
    shown = answer.text if mode == "native" else answer_text(answer)
    assert shows_real_target(shown)
    if mode == "native":
        assert len(emulator.calls_to("chat.appendStream")) >= 2
    assert_nothing_pings(emulator)


@pytest.mark.parametrize("mode", ["edit", "native"])
async def test_a_team_childs_answer_and_the_board_ping_nobody(start_bot, emulator, mode):
    class Attacker(Crew):
        def output(self, role: str) -> str:
            return f"{role}: {ATTACK}"

    plan = [
        {"role": "researcher", "title": "Find <!channel> facts", "instructions": "Look."},
        {"role": "analyst", "title": "Weigh @here", "instructions": "Weigh."},
    ]
    crew = Attacker(plan=plan)
    bot = await start_bot(crew.factory, AGENTBOT_STREAM_MODE=mode)
    await bot.command("plan the launch", command="/team")
    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=60)
    assert parent.status is RunStatus.SUCCEEDED

    children = await bot.store.children(parent.id)
    subtasks = [c for c in children if c.kind is RunKind.SUBTASK]
    assert len(subtasks) == 2
    for child in subtasks:
        assert "<!channel>" in child.output  # recorded as the model said it
        reply = emulator.message("C123", child.message_ts)
        shown = reply.text if mode == "native" else answer_text(reply)
        assert shows_real_target(shown)
    board = all_text(emulator.messages("C123")[0])
    assert "Find &lt;!channel&gt; facts" in board
    assert_nothing_pings(emulator)


# -- the native stream, call by call ---------------------------------------------------------


async def test_a_native_stream_appends_exactly_the_escaped_answer(emulator):
    """Fed a few characters at a time, the stream carries the escape of the answer, each
    piece once: no append ever holds half an escape or a link it must take back."""
    from tests.test_stream_sink import ended, make_pacer, make_run, make_sink, progress, streamed

    pacer = make_pacer(emulator, interval=0.02)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    answer = ATTACK * 3 + "```\nif a < b: print('<!here>')\n```\nDone."
    for i in range(0, len(answer), 5):
        sink.progress(answer[: i + 5], progress(i))
        if i % 100 == 0:  # let appends happen mid-answer
            seen = len(emulator.calls)
            await emulator.wait_for(lambda seen=seen: len(emulator.calls) > seen, timeout=5)
    await sink.finish(ended(run, answer))

    assert len(emulator.calls_to("chat.appendStream")) >= 3
    assert streamed(emulator) == untrusted.markdown(answer)
    assert emulator.message("C1", run.message_ts).text == untrusted.markdown(answer)
    assert not emulator.calls_to("chat.update"), "no fall back was needed"
    assert_nothing_pings(emulator, channel="C1")
    await pacer.close()


async def test_a_stream_whose_escape_changes_is_edited_instead(emulator, monkeypatch):
    """The safety net: should the escape of the answer ever stop extending what the stream
    already shows, the message is edited whole, and still pings nobody."""
    from tests.test_stream_sink import (
        ended,
        make_pacer,
        make_run,
        make_sink,
        markdown_of,
        progress,
    )

    monkeypatch.setattr(untrusted, "stable_end", len)  # hold nothing back: a broken promise
    pacer = make_pacer(emulator, interval=0.02)
    sink = make_sink(emulator, pacer)
    run = make_run()
    await sink.start(run)
    sink.progress("See [https://sso.company.example](https://ev", progress(1))
    await emulator.wait_for(lambda: emulator.calls_to("chat.appendStream"), timeout=5)
    answer = "See [https://sso.company.example](https://evil.example) <!channel>"
    sink.progress(answer, progress(2))
    await emulator.wait_for(lambda: emulator.calls_to("chat.update"), timeout=5)
    await sink.finish(ended(run, answer))

    message = emulator.message("C1", run.message_ts)
    assert markdown_of(message) == untrusted.markdown(answer)
    assert shows_real_target(markdown_of(message)) and not message.streaming
    assert_nothing_pings(emulator, channel="C1")
    await pacer.close()
