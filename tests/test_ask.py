"""`/ask` end to end: real signed requests into the real server, the emulator as Slack."""

from __future__ import annotations

import time

import pytest
from pydantic_ai.exceptions import ModelUnavailableError

from bot.models import RunKind, RunStatus
from handlers.render import ANSWER_CHUNK_BYTES, STOP_ACTION_ID
from tests.scripted import ScriptedModel

SIXTY_WORDS = " ".join(f"word{i}" for i in range(60))


def answer_text(message) -> str:
    """The answer shown in a message: the text of its markdown blocks."""
    return "".join(b["text"] for b in message.blocks if b.get("type") == "markdown")


def all_text(message) -> str:
    parts = []
    for block in message.blocks:
        if block.get("type") == "markdown":
            parts.append(block["text"])
        elif block.get("type") == "section":
            parts.append(block["text"]["text"])
        elif block.get("type") == "context":
            parts.extend(e.get("text", "") for e in block["elements"])
    return "\n".join(parts)


async def test_ask_streams_by_editing_one_message(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.02)  # ~1.2 s of streaming
    bot = await start_bot(script.model())

    started = time.perf_counter()
    status, body, latency = await bot.command("tell me a story")
    assert status == 200 and body == ""
    assert latency < 3.0, "Slack needs its ack within 3 s"

    [run] = await bot.wait_for_run()
    elapsed = time.perf_counter() - started
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.kind is RunKind.ASK and run.output == script.text
    assert run.prompt == "tell me a story" and run.user_id == "U123" and run.channel_id == "C123"

    [message] = emulator.messages("C123")
    assert message.ts == run.message_ts
    assert answer_text(message) == script.text
    footer = all_text(message)
    assert "`scripted`" in footer and "tokens" in footer and "tok/s" in footer

    posts = emulator.calls_to("chat.postMessage")
    updates = emulator.calls_to("chat.update")
    assert len(posts) == 1
    # Paced, not per token: 60 chunks but about one edit per interval (0.2 s) plus the final.
    assert 2 <= len(updates) <= elapsed / 0.2 + 3
    assert message.edits == len(updates)
    assert run.slack_writes == len(posts) + len(updates)
    assert run.input_tokens > 0 and run.output_tokens > 0 and run.requests == 1
    assert run.first_token_at is not None and run.duration_ms is not None
    stored = await bot.store.get(run.id)
    assert stored.messages_json and b"tell me a story" in stored.messages_json


async def test_live_updates_show_text_so_far_and_a_stop_button(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=30)
    bot = await start_bot(script.model())
    await bot.command("stream please")
    await emulator.wait_for(
        lambda: any("word29" in answer_text(m) for m in emulator.messages("C123"))
    )
    [message] = emulator.messages("C123")
    assert answer_text(message).startswith("word0 word1")
    assert "word30" not in answer_text(message)
    buttons = [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [STOP_ACTION_ID]
    assert "tok/s" in all_text(message)
    script.released.set()
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED
    assert answer_text(emulator.messages("C123")[0]) == script.text


async def test_long_answer_continues_in_thread_without_losing_text(start_bot, emulator):
    paragraph = "Ünïcödé and emoji 🚀 survive the split. " * 40
    text = "\n\n".join(f"{i}: {paragraph}" for i in range(8))  # ~14 KB
    script = ScriptedModel([text[i : i + 500] for i in range(0, len(text), 500)])
    bot = await start_bot(script.model())
    await bot.command("write a lot")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED

    [parent] = emulator.messages("C123")
    thread = emulator.thread("C123", parent.ts)
    assert len(thread) >= 4, "parent plus at least three continuation replies"
    shown = "".join(answer_text(m) for m in thread)
    assert shown == text
    assert all(len(answer_text(m).encode()) <= ANSWER_CHUNK_BYTES for m in thread)
    assert "continued in thread" in all_text(parent)


async def test_empty_prompt_gets_usage_and_no_model_call(start_bot, emulator):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model())
    status, body, _ = await bot.command("   ")
    assert status == 200
    assert "empty" in body and "/ask <your text>" in body
    assert script.calls == []
    assert emulator.calls_to("chat.postMessage") == []
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.REFUSED and "empty" in run.error


async def test_oversized_prompt_is_refused_clearly(start_bot, emulator):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model(), AGENTBOT_MAX_PROMPT_CHARS=100)
    status, body, _ = await bot.command("x" * 101)
    assert status == 200 and "101 characters" in body and "limit is 100" in body
    assert script.calls == []
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.REFUSED and "limit is 100" in run.error


@pytest.mark.parametrize("case", ["bad secret", "stale timestamp"])
async def test_bad_signature_is_401_and_runs_nothing(start_bot, emulator, case):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model())
    if case == "bad secret":
        status, _, _ = await bot.command("hi", signing_secret="wrong")
    else:
        status, _, _ = await bot.command("hi", timestamp=int(time.time()) - 600)
    assert status == 401
    assert script.calls == [] and await bot.runs() == []
    assert emulator.calls_to("chat.postMessage") == []


async def test_channel_the_bot_is_not_in_gets_an_invite_hint(start_bot, emulator):
    emulator.not_in_channels.add("C999")
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model())
    await bot.command("hello", channel_id="C999")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.FAILED and "not in channel" in run.error
    await emulator.wait_for(lambda: len(emulator.responses) == 1)
    [hint] = emulator.responses
    assert "/invite @agentbot" in hint["text"] and hint.get("response_type") == "ephemeral"
    # The model starts before the post is made (a busy channel must not hold it back); the
    # refused post ends the run all the same, and nothing was shown.
    assert emulator.messages("C999") == []


async def test_model_failing_on_every_try_is_shown_and_recorded(start_bot, emulator):
    error = ModelUnavailableError("scripted", "the model is overloaded")
    script = ScriptedModel(["never"], error=error, fail_first=99)
    bot = await start_bot(script.model())
    await bot.command("hello")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.FAILED
    assert "overloaded" in run.error
    assert len(script.calls) == 3, "one try and two retries (the default)"
    [message] = emulator.messages("C123")
    assert "⚠️" in all_text(message) and "overloaded" in all_text(message)


async def test_transient_error_before_first_token_is_retried(start_bot, emulator):
    script = ScriptedModel.words(
        "fine after all", error=ModelUnavailableError("m", "busy"), fail_first=1
    )
    bot = await start_bot(script.model())
    await bot.command("hello")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED and run.output == "fine after all"
    assert len(script.calls) == 2


async def test_failure_mid_stream_keeps_the_partial_answer(start_bot, emulator):
    script = ScriptedModel.words(
        SIXTY_WORDS, error=ModelUnavailableError("m", "connection reset"), fail_after=10
    )
    bot = await start_bot(script.model())
    await bot.command("hello")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.FAILED and "connection reset" in run.error
    assert run.output == "".join(script.chunks[:10])
    assert len(script.calls) == 1, "no retry once text is visible"
    [message] = emulator.messages("C123")
    assert answer_text(message) == run.output
    assert "Partial answer kept above" in all_text(message)


async def test_idle_timeout_fails_the_run_and_keeps_partial_text(start_bot, emulator, tmp_path):
    from bot.config import AgentSpec, AppConfig

    config = AppConfig(agents={"assistant": AgentSpec(idle_timeout=0.3, total_timeout=30)})
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=5)
    bot = await start_bot(script.model(), config=config)
    await bot.command("hello")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.FAILED
    assert "sent nothing for 0.3 s" in run.error
    assert run.output == "".join(script.chunks[:5])
    assert "did not answer in time" in all_text(emulator.messages("C123")[0])


async def test_429_on_chat_update_still_delivers_the_complete_text(start_bot, emulator):
    emulator.inject("chat.update", status=429, retry_after=1, times=2)
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.01)
    bot = await start_bot(script.model())
    await bot.command("hello")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED
    assert answer_text(emulator.messages("C123")[0]) == script.text
    limited = [c for c in emulator.calls_to("chat.update") if c.status == 429]
    assert len(limited) == 2
    # After a 429 the pacer waits Retry-After before the next edit.
    after = [c for c in emulator.calls_to("chat.update") if c.at > limited[-1].at]
    assert after and after[0].at - limited[-1].at >= 0.95


async def test_stop_by_requester_cancels_and_keeps_text(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=20)
    bot = await start_bot(script.model())
    await bot.command("hello")
    await emulator.wait_for(
        lambda: any("word19" in answer_text(m) for m in emulator.messages("C123"))
    )
    [message] = emulator.messages("C123")
    run_id = next(
        e["value"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]
    )

    await emulator.send_block_action(
        bot.url, action_id=STOP_ACTION_ID, value=run_id, user_id="U999", message_ts=message.ts
    )
    await emulator.wait_for(lambda: len(emulator.responses) == 1)
    assert "Only <@U123> or an admin" in emulator.responses[0]["text"]
    assert bot.service.parts.runner.live.get(run_id) is not None, "a stranger cannot stop it"

    await emulator.send_block_action(
        bot.url, action_id=STOP_ACTION_ID, value=run_id, user_id="U123", message_ts=message.ts
    )
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.CANCELLED and "Stopped by <@U123>" in run.error
    assert run.output == "".join(script.chunks[:20])
    final = emulator.messages("C123")[0]
    assert answer_text(final) == run.output and "Stopped by" in all_text(final)
    assert not [b for b in final.blocks if b["type"] == "actions"], "no Stop button once stopped"


async def test_admin_can_stop_someone_elses_run(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    bot = await start_bot(script.model(), AGENTBOT_ADMINS="UADMIN")
    await bot.command("hello")
    await emulator.wait_for(
        lambda: (
            bool(emulator.messages("C123"))
            and bot.service.parts.runner.live.get(_run_id(emulator)) is not None
        )
    )
    await emulator.send_block_action(
        bot.url,
        action_id=STOP_ACTION_ID,
        value=_run_id(emulator),
        user_id="UADMIN",
        message_ts=emulator.messages("C123")[0].ts,
    )
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.CANCELLED and "UADMIN" in run.error


def _run_id(emulator) -> str:
    message = emulator.messages("C123")[0]
    return next(e["value"] for b in message.blocks if b["type"] == "actions" for e in b["elements"])


async def test_healthz_and_metrics(start_bot, emulator):
    import aiohttp

    script = ScriptedModel.words("short answer")
    bot = await start_bot(script.model())
    await bot.command("hello")
    await bot.wait_for_run()
    base = f"http://127.0.0.1:{bot.service.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["ok"] is True
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
    assert 'agentbot_runs_total{kind="ask",status="succeeded"} 1.0' in text
    assert 'agentbot_slack_calls_total{method="chat.postMessage",outcome="ok"}' in text
    assert "agentbot_live_runs 0.0" in text and "agentbot_runs_waiting 0.0" in text
    assert "agentbot_slack_update_staleness_seconds_count" in text
    assert "agentbot_pacer_queue_depth" in text
    assert "agentbot_run_duration_seconds_bucket" in text


async def test_healthz_is_503_when_the_database_is_gone(start_bot, emulator):
    import aiohttp

    bot = await start_bot(ScriptedModel(["x"]).model())
    await bot.service.parts.engine.dispose()

    async def broken_ping() -> None:
        raise OSError("database is gone")

    bot.service.parts.store.ping = broken_ping  # the store's own failure path
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{bot.service.port}/healthz") as resp:
            assert resp.status == 503
            assert "database" in (await resp.json())["reason"]
