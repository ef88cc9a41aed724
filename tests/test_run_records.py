"""A run's record tells the truth when it happens, end to end against the emulator: running
once it runs, succeeded once the model is done (saved before Slack shows it), a Stop during
the final delivery changes nothing, a stopped run keeps the tokens it used, and a process
never "recovers" its own runs while the database is out of reach."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.models import RunQuery, RunStatus
from handlers.render import STOP_ACTION_ID
from storage.db import create_engine
from storage.repository import SqlRunStore
from tests.conftest import Bot, wait_until
from tests.holds import hold_calls, is_final_edit, shows_final
from tests.scripted import ScriptedModel
from tests.test_ask import SIXTY_WORDS, all_text, answer_text
from tests.test_shared_database import FAST_LEASES, _live_run

SLOW_CHECKPOINTS = {"AGENTBOT_CHECKPOINT_INTERVAL": 3600}  # only status changes are saved


async def test_a_run_is_recorded_running_as_soon_as_its_model_starts(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=2)
    bot = await start_bot(script.model(), **SLOW_CHECKPOINTS)
    await bot.command("hello")
    run_id, _ = await _live_run(bot, emulator)

    async def recorded_running() -> bool:
        return (await bot.store.get(run_id)).status is RunStatus.RUNNING

    await wait_until(recorded_running, emulator, timeout=5)
    stored = await bot.store.get(run_id)
    assert stored.started_at is not None
    script.released.set()
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED


async def test_the_record_says_succeeded_before_slack_shows_the_answer(
    start_bot, emulator, monkeypatch
):
    final_edit = hold_calls(emulator, monkeypatch, "chat.update", when=is_final_edit)
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.002)
    bot = await start_bot(script.model(), **SLOW_CHECKPOINTS)
    await bot.command("hello")
    held = await final_edit.wait_held()

    [run] = await bot.runs()
    assert run.status is RunStatus.SUCCEEDED and run.output == script.text
    assert run.finished_at is not None and run.duration_ms is not None
    message = emulator.messages("C123")[0]
    assert held["ts"] == message.ts and answer_text(message) != script.text, "not shown yet"

    final_edit.release()
    [run] = await bot.wait_for_run()
    assert answer_text(emulator.messages("C123")[0]) == script.text
    # `slack_writes` is known only once delivered: saved then, in a second small save.
    writes = len(emulator.calls_to("chat.postMessage")) + len(emulator.calls_to("chat.update"))
    assert run.status is RunStatus.SUCCEEDED and run.slack_writes == writes


async def test_stop_pressed_during_the_final_delivery_changes_nothing(
    start_bot, emulator, monkeypatch
):
    final_edit = hold_calls(emulator, monkeypatch, "chat.update", when=is_final_edit)
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.002)
    bot = await start_bot(script.model())
    await bot.command("hello")
    await final_edit.wait_held()
    message = emulator.messages("C123")[0]
    run_id = _stop_value(message)
    assert run_id, "the Stop button is still shown while Slack holds the final edit"

    await emulator.send_block_action(
        bot.url, action_id=STOP_ACTION_ID, value=run_id, message_ts=message.ts
    )
    await emulator.wait_for(lambda: len(emulator.responses) == 1)
    assert "already finished" in emulator.responses[0]["text"]
    final_edit.release()

    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED and run.error is None
    assert run.output == script.text and run.slack_writes > 0
    final = emulator.messages("C123")[0]
    assert answer_text(final) == script.text and "Stopped" not in all_text(final)
    assert not _stop_value(final), "no Stop button on the final answer"


async def test_a_stopped_run_keeps_an_estimate_of_the_tokens_it_used(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=20)
    bot = await start_bot(script.model())
    await bot.command("tell me a long story")
    run_id, message_ts = await _live_run(bot, emulator)
    await emulator.wait_for(lambda: "word19" in _shown(emulator))
    await emulator.send_block_action(
        bot.url, action_id=STOP_ACTION_ID, value=run_id, message_ts=message_ts
    )
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.CANCELLED and run.output == "".join(script.chunks[:20])
    assert run.output_tokens == round(len(run.output) / 4) > 0, "not 0: it streamed text"
    assert run.usage_estimated, "the provider reported nothing: the figures are estimates"
    assert run.input_tokens > 0 and run.requests == 1
    footer = all_text(emulator.message("C123", message_ts))
    assert f"~{run.input_tokens} in / ~{run.output_tokens} out tokens" in footer


async def test_a_finished_run_keeps_the_usage_the_model_reported(start_bot, emulator):
    script = ScriptedModel.words("all done here")
    bot = await start_bot(script.model())
    await bot.command("hello")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED and run.output_tokens > 0
    assert not run.usage_estimated
    assert "~" not in all_text(emulator.messages("C123")[0])


async def test_a_database_out_of_reach_for_longer_than_a_lease_loses_no_run(
    start_bot, emulator, monkeypatch
):
    """Lease renewals and saves fail for several lease ages, the run ends meanwhile: its own
    process never takes it for a dead process's run, and the record lands once it can."""
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    bot: Bot = await start_bot(script.model(), service_options=FAST_LEASES)
    await bot.command("hello")
    run_id, message_ts = await _live_run(bot, emulator)
    store, service = bot.store, bot.service
    renew, save = store.renew_leases, store.save
    outage = {"saves refused": 0}

    async def unreachable_renew(*args: object, **kwargs: object) -> None:
        raise OSError("database is unreachable")

    async def unreachable_save(*args: object, **kwargs: object) -> None:
        outage["saves refused"] += 1
        raise OSError("database is unreachable")

    monkeypatch.setattr(store, "renew_leases", unreachable_renew)
    monkeypatch.setattr(store, "save", unreachable_save)
    script.released.set()
    # The answer is delivered though the record cannot be saved yet.
    await emulator.wait_for(
        lambda: shows_final(emulator.message("C123", message_ts), script.text), timeout=30
    )
    # Recovery passes go by while the lease is more than a stale age old.
    passes = service.recoveries
    await asyncio.wait_for(service.wait_recoveries(passes + 3), timeout=15)
    assert outage["saves refused"] >= 2, "the final save was tried again, not given up"
    assert run_id in service.parts.runner.live.ids(), "held until its record is saved"
    assert (await store.get(run_id)).status in (RunStatus.QUEUED, RunStatus.RUNNING)

    monkeypatch.setattr(store, "renew_leases", renew)
    monkeypatch.setattr(store, "save", save)
    [run] = await bot.wait_for_run(timeout=30)
    assert run.status is RunStatus.SUCCEEDED and run.output == script.text
    assert run.slack_writes > 0
    await asyncio.wait_for(service.wait_recoveries(service.recoveries + 1), timeout=15)
    assert (await store.get(run_id)).status is RunStatus.SUCCEEDED
    assert answer_text(emulator.message("C123", message_ts)) == script.text
    edits = [json.dumps(call.args) for call in emulator.calls_to("chat.update")]
    assert not [edit for edit in edits if "restarted" in edit], "never 'the bot restarted'"
    assert run_id not in service.parts.runner.live.ids()


@pytest.mark.parametrize("pending", [True, False])
async def test_shutdown_tries_an_unsaved_final_record_once_more(
    start_bot, emulator, monkeypatch, pending
):
    script = ScriptedModel.words("short answer")
    bot = await start_bot(script.model())
    store, save = bot.store, bot.store.save
    refused = asyncio.Event()

    async def unreachable_save(*args: object, **kwargs: object) -> None:
        refused.set()
        raise OSError("database is unreachable")

    if pending:
        monkeypatch.setattr(store, "save", unreachable_save)
    await bot.command("hello")
    await emulator.wait_for(lambda: _shown(emulator) == script.text)
    assert await bot.service.parts.background.wait(15)
    records = bot.service.parts.runner.records
    assert len(records) == (1 if pending else 0)
    if pending:
        assert refused.is_set()
        monkeypatch.setattr(store, "save", save)  # back just as the process stops
    url = bot.service.parts.settings.database_url

    await bot.service.stop(grace=5)

    assert len(records) == 0
    engine = create_engine(url)  # the database as the next process finds it
    try:
        [run] = await SqlRunStore(engine).query(RunQuery())
    finally:
        await engine.dispose()
    assert run.status is RunStatus.SUCCEEDED and run.output == script.text


def _shown(emulator) -> str:
    """The answer shown in the channel's first message, if there is one."""
    messages = emulator.messages("C123")
    return answer_text(messages[0]) if messages else ""


def _stop_value(message) -> str:
    return next(
        (e["value"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]),
        "",
    )
