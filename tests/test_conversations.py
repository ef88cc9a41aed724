"""Conversations end to end: thread follow-ups with history, mentions, DMs, retried events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from bot.config import AgentSpec, AppConfig
from bot.history import trim_to_budget
from bot.models import RunKind, RunRecord, RunStatus
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
    assert run.status is RunStatus.REFUSED and run.kind is RunKind.MENTION


# --- Each turn stored once; history rebuilt from the runs and trimmed to a budget ---------


async def converse(bot, emulator, prompts: list[str]) -> str:
    """`/ask` the first prompt, then each other one as a reply in its thread, one at a time."""
    await bot.command(prompts[0])
    await bot.wait_for_run()
    answer_ts = emulator.messages("C123")[0].ts
    for done, prompt in enumerate(prompts[1:], start=1):
        reply = emulator.post_user_message("C123", "U123", prompt, thread_ts=answer_ts)
        await emulator.send_event(bot.url, emulator.message_event(reply))
        await bot.wait_for_run(kind=RunKind.FOLLOWUP, count=done)
    return answer_ts


async def stored_messages(bot) -> list[list]:
    """Each run's stored messages, oldest run first."""
    runs = sorted(await bot.runs(), key=lambda run: run.created_at)
    stored = [await bot.store.get(run.id) for run in runs]
    return [ModelMessagesTypeAdapter.validate_json(run.messages_json) for run in stored]


def user_prompts(messages) -> list[str]:
    return [text for who, text in turns(messages) if who == "user"]


def tool_ids(messages, kind) -> list[str]:
    return [part.tool_call_id for m in messages for part in m.parts if isinstance(part, kind)]


async def test_each_turn_is_stored_once_and_the_fifth_turn_sees_the_four_before(
    start_bot, emulator
):
    script = ScriptedModel.words("noted")
    bot = await start_bot(script.model())
    prompts = [f"turn {n}" for n in range(1, 6)]
    await converse(bot, emulator, prompts)

    # A request and a response per turn: the stored total grows by two a turn, not by 2n.
    assert [len(messages) for messages in await stored_messages(bot)] == [2, 2, 2, 2, 2]
    assert turns(script.calls[4]) == [
        *[pair for prompt in prompts[:4] for pair in (("user", prompt), ("model", "noted"))],
        ("user", "turn 5"),
    ]


ANSWER_CHARS = 800  # 200 tokens at four characters a token


def tool_then_text_model() -> tuple[FunctionModel, list[list[ModelMessage]]]:
    """Answers each prompt with ANSWER_CHARS characters; a prompt that asks the time first
    calls `current_time`. Records what every request sent."""
    calls: list[list[ModelMessage]] = []

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        calls.append(list(messages))
        [prompt] = [p.content for p in messages[-1].parts if isinstance(p, UserPromptPart)] or [
            None
        ]
        if isinstance(prompt, str) and "time" in prompt:
            yield {0: DeltaToolCall(name="current_time", json_args="{}", tool_call_id="t1")}
            return
        yield ("answer " + "x" * ANSWER_CHARS)[:ANSWER_CHARS]

    return FunctionModel(stream_function=stream, model_name="scripted"), calls


async def test_a_small_history_budget_sends_the_newest_whole_turns_that_fit(start_bot, emulator):
    model, calls = tool_then_text_model()
    config = AppConfig()
    # Turns one and three cost about 200 tokens each, turn two (with its tool call) about 240:
    # the new prompt with turns three and two fit in 500, turn one no more.
    config.agents["assistant"] = AgentSpec(tools=["current_time"], history_budget=500)
    bot = await start_bot(model, config=config)
    prompts = ["turn one", "turn two: what time is it?", "turn three", "turn four"]
    await converse(bot, emulator, prompts)

    sent = calls[-1]
    assert user_prompts(sent) == ["turn two: what time is it?", "turn three", "turn four"]
    assert tool_ids(sent, ToolCallPart) == tool_ids(sent, ToolReturnPart) == ["t1"]
    # Only what is sent is trimmed: the store still holds every turn.
    assert [len(messages) for messages in await stored_messages(bot)] == [2, 4, 2, 2]


async def test_an_old_row_holding_the_whole_history_is_not_repeated(start_bot, emulator):
    script = ScriptedModel.words("noted")
    bot = await start_bot(script.model())
    answer_ts = await converse(bot, emulator, ["turn 1", "turn 2"])
    # Rewrite turn 2 as rows were stored before: the whole conversation so far.
    _, followup = sorted(await bot.runs(), key=lambda run: run.created_at)
    first, second = await stored_messages(bot)
    old = await bot.store.get(followup.id)
    old.messages_json = ModelMessagesTypeAdapter.dump_json([*first, *second])
    await bot.store.save(old)

    for count, prompt in enumerate(["turn 3", "turn 4"], start=2):
        reply = emulator.post_user_message("C123", "U123", prompt, thread_ts=answer_ts)
        await emulator.send_event(bot.url, emulator.message_event(reply))
        await bot.wait_for_run(kind=RunKind.FOLLOWUP, count=count)

    assert user_prompts(script.calls[2]) == ["turn 1", "turn 2", "turn 3"]
    assert user_prompts(script.calls[3]) == ["turn 1", "turn 2", "turn 3", "turn 4"]
    assert [len(messages) for messages in await stored_messages(bot)] == [2, 4, 2, 2]


async def test_a_failed_turn_does_not_cut_the_conversation(start_bot, emulator):
    script = ScriptedModel.words("noted")
    bot = await start_bot(script.model())
    answer_ts = await converse(bot, emulator, ["turn 1", "turn 2"])
    # A run that ended without messages (it failed, was stopped or refused) sits between.
    failed = RunRecord(
        kind=RunKind.FOLLOWUP,
        prompt="turn 3",
        channel_id="C123",
        thread_ts=answer_ts,
        status=RunStatus.FAILED,
        error="The model API failed",
    )
    await bot.store.create(failed)
    reply = emulator.post_user_message("C123", "U123", "turn 4", thread_ts=answer_ts)
    await emulator.send_event(bot.url, emulator.message_event(reply))
    await bot.wait_for_run(kind=RunKind.FOLLOWUP, count=3)
    assert user_prompts(script.calls[-1]) == ["turn 1", "turn 2", "turn 4"]


def tool_turns() -> list[ModelMessage]:
    """Turn 1 (with the system prompt), turn 2 (a tool call with large arguments and a small
    return) and the new prompt."""
    return [
        ModelRequest(parts=[SystemPromptPart("be brief"), UserPromptPart("q1")]),
        ModelResponse(parts=[TextPart("a" * 400)]),
        ModelRequest(parts=[UserPromptPart("q2")]),
        ModelResponse(parts=[ToolCallPart("lookup", {"q": "x" * 400}, tool_call_id="c1")]),
        ModelRequest(parts=[ToolReturnPart("lookup", "ok", tool_call_id="c1")]),
        ModelResponse(parts=[TextPart("done")]),
        ModelRequest(parts=[UserPromptPart("q3")]),
    ]


def test_trimming_keeps_the_system_prompt_and_whole_turns_newest_first():
    messages = tool_turns()
    assert trim_to_budget(messages, 10_000) == messages
    # Turn 2 (about 110 tokens) fits in 150 with the new prompt; turn 1 no more.
    system_alone = ModelRequest(parts=[messages[0].parts[0]])
    assert trim_to_budget(messages, 150) == [system_alone, *messages[2:]]
    # In 60, the tool's small return and the answer after it would fit, but not its call:
    # the whole turn goes, and with it every older one.
    assert trim_to_budget(messages, 60) == [system_alone, messages[-1]]
    # The new turn is always sent, whatever its size.
    assert trim_to_budget(messages, 1) == [system_alone, messages[-1]]


async def test_a_thread_under_a_dm_answer_continues_the_dm_conversation(start_bot, emulator):
    script = ScriptedModel.words("noted")
    bot = await start_bot(script.model())
    for count, text in enumerate(["dm 1", "dm 2"], start=1):
        said = emulator.post_user_message("D123", "U123", text)
        await emulator.send_event(bot.url, emulator.message_event(said))
        await bot.wait_for_run(kind=RunKind.MENTION, count=count)
    answer_ts = emulator.messages("D123")[-1].ts
    for count, text in enumerate(["in thread 1", "in thread 2"], start=1):
        reply = emulator.post_user_message("D123", "U123", text, thread_ts=answer_ts)
        await emulator.send_event(bot.url, emulator.message_event(reply))
        await bot.wait_for_run(kind=RunKind.FOLLOWUP, count=count)

    assert user_prompts(script.calls[-1]) == ["dm 1", "dm 2", "in thread 1", "in thread 2"]
    assert [len(messages) for messages in await stored_messages(bot)] == [2, 2, 2, 2]
