"""Conversations end to end: thread follow-ups with history, mentions, DMs, retried events."""

from __future__ import annotations

from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

from bot.models import RunKind, RunStatus
from tests.scripted import ScriptedModel
from tests.test_ask import answer_text


def turns(messages) -> list[tuple[str, str]]:
    """What the model saw, as (who, text) pairs."""
    seen = []
    for message in messages:
        for part in message.parts:
            if isinstance(message, ModelRequest) and isinstance(part, UserPromptPart):
                seen.append(("user", part.content))
            elif isinstance(message, ModelResponse) and isinstance(part, TextPart):
                seen.append(("model", part.content))
    return seen


async def ask_first(bot, emulator, script) -> str:
    await bot.command("what is the capital of France?")
    await bot.wait_for_run()
    return emulator.messages("C123")[0].ts


async def test_a_thread_reply_continues_the_conversation_with_history(start_bot, emulator):
    script = ScriptedModel.words("Paris, of course")
    bot = await start_bot(script.model())
    answer_ts = await ask_first(bot, emulator, script)

    reply = emulator.post_user_message("C123", "U123", "and of Italy?", thread_ts=answer_ts)
    delivery = await emulator.send_event(bot.url, emulator.message_event(reply))
    assert delivery.status == 200
    await bot.wait_for_run(kind=RunKind.FOLLOWUP)

    assert turns(script.calls[1]) == [
        ("user", "what is the capital of France?"),
        ("model", "Paris, of course"),
        ("user", "and of Italy?"),
    ]
    [followup] = await bot.runs(kind=RunKind.FOLLOWUP)
    assert followup.status is RunStatus.SUCCEEDED and followup.thread_ts == answer_ts
    assert followup.agent == "assistant"
    thread = emulator.thread("C123", answer_ts)
    assert [m.user for m in thread] == ["UBOT", "U123", "UBOT"]
    assert answer_text(thread[-1]) == "Paris, of course"

    # A third turn sees both earlier ones: history is the thread's latest run's messages.
    again = emulator.post_user_message("C123", "U123", "and Spain?", thread_ts=answer_ts)
    await emulator.send_event(bot.url, emulator.message_event(again))
    await bot.wait_for_run(kind=RunKind.FOLLOWUP, count=2)
    assert [who for who, _ in turns(script.calls[2])] == ["user", "model"] * 2 + ["user"]


async def test_a_retried_event_runs_nothing_twice(start_bot, emulator):
    script = ScriptedModel.words("Paris")
    bot = await start_bot(script.model())
    answer_ts = await ask_first(bot, emulator, script)
    reply = emulator.post_user_message("C123", "U123", "sure?", thread_ts=answer_ts)
    event = emulator.message_event(reply)
    first = await emulator.send_event(bot.url, event, event_id="Ev0001")
    retry = await emulator.send_event(bot.url, event, event_id="Ev0001", retry_num=1)
    assert first.status == retry.status == 200
    await bot.wait_for_run(kind=RunKind.FOLLOWUP)
    assert len(script.calls) == 2, "the /ask and one follow-up, not two"
    assert len(await bot.runs(kind=RunKind.FOLLOWUP)) == 1


async def test_the_bots_own_messages_and_edits_trigger_nothing(start_bot, emulator):
    script = ScriptedModel.words("Paris")
    bot = await start_bot(script.model())
    answer_ts = await ask_first(bot, emulator, script)
    own = emulator.message("C123", answer_ts)
    events = [
        {**emulator.message_event(own), "bot_id": "B0001"},
        {
            "type": "message",
            "subtype": "message_changed",
            "channel": "C123",
            "channel_type": "channel",
            "ts": "1.1",
            "message": {"user": "UBOT", "text": "edited", "ts": answer_ts},
            "hidden": True,
        },
        {**emulator.message_event(own), "thread_ts": answer_ts},
    ]
    for event in events:
        assert (await emulator.send_event(bot.url, event)).status == 200
    await bot.service.parts.background.wait(5)
    assert len(script.calls) == 1
    assert len(await bot.runs()) == 1


async def test_a_reply_in_a_thread_that_is_not_the_bots_is_ignored(start_bot, emulator):
    script = ScriptedModel.words("never")
    bot = await start_bot(script.model())
    root = emulator.post_user_message("C123", "U555", "lunch?")
    reply = emulator.post_user_message("C123", "U123", "yes", thread_ts=root.ts)
    await emulator.send_event(bot.url, emulator.message_event(reply))
    await bot.service.parts.background.wait(5)
    assert script.calls == [] and await bot.runs() == []


async def test_a_mention_in_a_channel_answers_in_a_thread(start_bot, emulator):
    script = ScriptedModel.words("Hello from the thread")
    bot = await start_bot(script.model())
    said = emulator.post_user_message("C123", "U123", "<@UBOT> say hello")
    await emulator.send_event(bot.url, emulator.message_event(said, mention=True))
    # Slack also sends the plain `message` event for it: that one must not answer again.
    await emulator.send_event(bot.url, emulator.message_event(said))
    [run] = await bot.wait_for_run(kind=RunKind.MENTION)
    assert run.prompt == "say hello" and run.status is RunStatus.SUCCEEDED
    thread = emulator.thread("C123", said.ts)
    assert [m.user for m in thread] == ["U123", "UBOT"]
    assert answer_text(thread[1]) == "Hello from the thread"
    assert len(script.calls) == 1


async def test_a_direct_message_is_answered_in_the_dm_and_continues(start_bot, emulator):
    script = ScriptedModel.words("Hi there")
    bot = await start_bot(script.model())
    first = emulator.post_user_message("D123", "U123", "hello bot")
    await emulator.send_event(bot.url, emulator.message_event(first))
    await bot.wait_for_run(kind=RunKind.MENTION)
    assert [m.user for m in emulator.messages("D123")] == ["U123", "UBOT"]
    second = emulator.post_user_message("D123", "U123", "remember me?")
    await emulator.send_event(bot.url, emulator.message_event(second))
    await bot.wait_for_run(kind=RunKind.MENTION, count=2)
    assert turns(script.calls[1]) == [
        ("user", "hello bot"),
        ("model", "Hi there"),
        ("user", "remember me?"),
    ]


async def test_an_empty_mention_gets_a_private_hint(start_bot, emulator):
    script = ScriptedModel.words("never")
    bot = await start_bot(script.model())
    said = emulator.post_user_message("C123", "U123", "<@UBOT>")
    await emulator.send_event(bot.url, emulator.message_event(said, mention=True))
    await emulator.wait_for(lambda: len(emulator.ephemerals("C123")) == 1)
    assert "empty" in emulator.ephemerals("C123")[0].text
    assert script.calls == []
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.FAILED and run.kind is RunKind.MENTION
