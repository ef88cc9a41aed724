"""Faults end to end: Slack 429 storms, errors and 5xx; a locked database; a killed process.

Each ends with the final Slack text complete (or the failure shown) and the record matching.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3

import pytest

from bot.models import RunKind, RunStatus
from tests.conftest import BOT_TOKEN, SIGNING_SECRET
from tests.holds import shows_final
from tests.processes import bot_process
from tests.scripted import ScriptedModel
from tests.test_ask import SIXTY_WORDS, all_text, answer_text
from tests.test_cli import agentbot
from tests.test_shared_database import FAST_LEASES, _live_run
from tests.test_team import PLAN, Crew


@pytest.mark.parametrize("method", ["chat.postMessage", "chat.update"])
async def test_a_429_storm_on_a_write_method_loses_nothing(start_bot, emulator, method):
    emulator.inject(method, status=429, retry_after=1, times=3)
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.01)
    bot = await start_bot(script.model())
    await bot.command("hello")
    [run] = await bot.wait_for_run(timeout=30)
    assert run.status is RunStatus.SUCCEEDED
    assert answer_text(emulator.messages("C123")[0]) == script.text
    assert emulator.rate_limited[method] == 3
    calls = emulator.calls_to(method)
    # Each retry came after the Retry-After pause.
    for limited, following in itertools.pairwise(calls):
        if limited.status == 429:
            assert following.at - limited.at >= 0.95


async def test_429_storms_on_every_method_of_a_native_team(start_bot, emulator):
    for method in (
        "chat.postMessage",
        "chat.update",
        "chat.startStream",
        "chat.appendStream",
        "chat.stopStream",
    ):
        emulator.inject(method, status=429, retry_after=1, times=1)
    crew = Crew(plan=PLAN[:2])
    bot = await start_bot(crew.factory, AGENTBOT_STREAM_MODE="native")
    await bot.command("small task", command="/team")
    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=60)
    assert parent.status is RunStatus.SUCCEEDED
    for child in await bot.store.children(parent.id):
        assert child.status is RunStatus.SUCCEEDED
        reply = emulator.message("C123", child.message_ts)
        assert child.output in reply.text + answer_text(reply)
    assert sum(emulator.rate_limited.values()) >= 3


async def test_slack_server_errors_are_retried(start_bot, emulator):
    emulator.inject("chat.postMessage", status=503, times=2)
    emulator.inject("chat.update", status=500, times=2)
    script = ScriptedModel.words("made it through")
    bot = await start_bot(script.model())
    await bot.command("hello")
    [run] = await bot.wait_for_run(timeout=30)
    assert run.status is RunStatus.SUCCEEDED
    assert answer_text(emulator.messages("C123")[0]) == "made it through"


async def test_a_deleted_message_gets_the_final_answer_posted_anew(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=5)
    bot = await start_bot(script.model())
    await bot.command("hello")
    await emulator.wait_for(lambda: bool(emulator.messages("C123")))
    emulator.inject("chat.update", error="message_not_found", times=None)
    script.released.set()
    [run] = await bot.wait_for_run(timeout=30)
    assert run.status is RunStatus.SUCCEEDED
    thread = emulator.thread("C123", run.message_ts)
    assert answer_text(thread[-1]) == script.text, "the final text, complete, in the thread"


async def test_slack_refusing_the_first_post_is_shown_and_recorded(start_bot, emulator):
    emulator.inject("chat.postMessage", error="is_archived", times=1)
    script = ScriptedModel.words("never")
    bot = await start_bot(script.model())
    await bot.command("hello")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.FAILED and "is_archived" in run.error
    await emulator.wait_for(lambda: len(emulator.responses) == 1)
    assert "is_archived" in emulator.responses[0]["text"]
    assert emulator.messages("C123") == [], "the model may have started; nothing was shown"


async def test_a_database_locked_for_a_while_delays_the_record_but_loses_nothing(
    start_bot, emulator, tmp_path
):
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.01)
    bot = await start_bot(script.model())
    locker = sqlite3.connect(
        tmp_path / "agentbot.db", isolation_level=None, check_same_thread=False
    )
    release = asyncio.Event()
    try:
        await emulator.wait_for(lambda: True)
        await bot.command("hello")
        await emulator.wait_for(lambda: len(emulator.calls_to("chat.postMessage")) == 1)
        # Another writer holds the database; taken off the loop, so that a write of the
        # bot's under way (a checkpoint) can commit first instead of deadlocking with it.
        await asyncio.to_thread(locker.execute, "BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(1.5, release.set)  # ... for 1.5 s
        await release.wait()
        locker.execute("ROLLBACK")
        [run] = await bot.wait_for_run(timeout=30)
    finally:
        locker.close()
    assert run.status is RunStatus.SUCCEEDED and run.output == script.text
    assert answer_text(emulator.messages("C123")[0]) == script.text


async def test_sigkill_mid_stream_then_restart_marks_the_run_interrupted(emulator, tmp_path):
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": emulator.api_url,
        "AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'kill.db'}",
        "AGENTBOT_CHECKPOINT_INTERVAL": "0.3",
    }
    async with bot_process("serve", "--host", "127.0.0.1", env=env, cwd=tmp_path) as bot:
        await emulator.send_slash_command(f"{bot.url}/slack/events", "/ask", "long answer please")
        # Two edits in (about 2 s), the text so far has been checkpointed more than once.
        await emulator.wait_for(lambda: len(emulator.calls_to("chat.update")) >= 2, timeout=15)
        bot.process.send_signal(signal.SIGKILL)
        await bot.process.wait()
    [message] = emulator.messages("C123")
    assert "Stop" in str(message.blocks), "the killed process left it looking alive"
    shown_before_kill = answer_text(message)

    async with bot_process("serve", "--host", "127.0.0.1", env=env, cwd=tmp_path):
        await emulator.wait_for(lambda: "Interrupted" in all_text(message), timeout=15)
    assert "restarted" in all_text(message) and "Stop" not in str(message.blocks)
    _, out, _ = await agentbot(
        "history", "--json", env={"AGENTBOT_DATABASE_URL": env["AGENTBOT_DATABASE_URL"]}
    )
    [run] = json.loads(out)
    assert run["status"] == "interrupted" and run["message_ts"] == message.ts
    # The last checkpoint's text is kept, in the record and in the message.
    assert run["output"] and shown_before_kill.startswith(run["output"][:20])
    assert answer_text(message) == run["output"]


async def test_a_database_locked_past_the_lease_age_and_the_busy_timeout_loses_no_run(
    start_bot, emulator, tmp_path
):
    """Another writer holds SQLite while a run ends: lease renewals, checkpoints, the final
    save and the recovery passes all fail with "database is locked" for longer than a lease
    lives. The answer is shown after a bounded wait for the save, the record lands once the
    lock goes, and this process never marks its own run interrupted. (Whether a recovery
    pass or a renewal gets the database first after the lock is luck: the deterministic
    regression test is `test_a_database_out_of_reach_for_longer_than_a_lease_loses_no_run`.)"""
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    bot = await start_bot(script.model(), service_options=FAST_LEASES)
    await bot.command("hello")
    run_id, message_ts = await _live_run(bot, emulator)
    locker = sqlite3.connect(
        tmp_path / "agentbot.db", isolation_level=None, check_same_thread=False
    )
    try:
        # Taken off the loop, so that a write of the bot's under way (a checkpoint) can
        # commit first instead of deadlocking with it.
        await asyncio.to_thread(locker.execute, "BEGIN IMMEDIATE")
        script.released.set()
        # Shown while locked: the final save was tried (and refused) first, then delivered.
        await emulator.wait_for(
            lambda: shows_final(emulator.message("C123", message_ts), script.text), timeout=40
        )
        assert run_id in bot.service.parts.runner.live.ids(), "its record still to be saved"
        locker.execute("ROLLBACK")
        [run] = await bot.wait_for_run(timeout=60)
    finally:
        locker.close()
    assert run.status is RunStatus.SUCCEEDED and run.output == script.text
    passes = bot.service.recoveries
    await asyncio.wait_for(bot.service.wait_recoveries(passes + 2), timeout=20)
    assert (await bot.store.get(run_id)).status is RunStatus.SUCCEEDED
    assert answer_text(emulator.message("C123", message_ts)) == script.text
    edits = [json.dumps(call.args) for call in emulator.calls_to("chat.update")]
    assert not [edit for edit in edits if "restarted" in edit], "never 'the bot restarted'"
