"""Two bot processes sharing one database (two `agentbot serve` behind a load balancer, or a
restart between a delivery and its retry): each Slack event is answered once, Stop works
whichever process it reaches, and a process starting up leaves the other's runs alone."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from bot.models import RunKind, RunRecord, RunStatus, utcnow
from bot.runner import LiveRuns
from bot.server import INTERRUPTED_BY_RESTART
from handlers.render import STOP_ACTION_ID
from tests.conftest import Bot, BotFactory
from tests.scripted import ScriptedModel
from tests.test_ask import SIXTY_WORDS, all_text
from tests.test_conversations import ask_first


async def test_a_retry_delivered_to_the_other_process_is_not_answered_again(start_bot, emulator):
    script = ScriptedModel.words("Paris")
    first = await start_bot(script.model())
    second = await start_bot(script.model())  # the same database file
    answer_ts = await ask_first(first, emulator, script)
    reply = emulator.post_user_message("C123", "U123", "sure?", thread_ts=answer_ts)
    event = emulator.message_event(reply)

    delivered = await emulator.send_event(first.url, event, event_id="Ev0001")
    retried = await emulator.send_event(second.url, event, event_id="Ev0001", retry_num=1)

    assert delivered.status == retried.status == 200
    await first.wait_for_run(kind=RunKind.FOLLOWUP)
    assert await second.service.parts.background.wait(5)
    assert len(script.calls) == 2, "the /ask and one follow-up, not two"
    assert len(await first.runs(kind=RunKind.FOLLOWUP)) == 1
    assert len(emulator.thread("C123", answer_ts)) == 3  # answer, question, one reply


async def test_an_event_is_handled_when_the_database_cannot_tell_a_retry(
    start_bot, emulator, monkeypatch, caplog
):
    script = ScriptedModel.words("Paris")
    bot = await start_bot(script.model())
    answer_ts = await ask_first(bot, emulator, script)

    async def unreachable(event_id: str, **_: object) -> bool:
        raise OSError("database is gone")

    monkeypatch.setattr(bot.store, "first_delivery", unreachable)
    reply = emulator.post_user_message("C123", "U123", "sure?", thread_ts=answer_ts)
    with caplog.at_level(logging.WARNING, logger="handlers.events"):
        delivery = await emulator.send_event(bot.url, emulator.message_event(reply))
    assert delivery.status == 200
    [followup] = await bot.wait_for_run(kind=RunKind.FOLLOWUP)
    assert followup.status is RunStatus.SUCCEEDED
    assert any("without checking other processes" in r.getMessage() for r in caplog.records)


async def test_stop_pressed_on_the_other_process_stops_the_run(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    running = await start_bot(script.model())
    other = await start_bot(script.model())  # started first: its start-up recovery is over
    await running.command("hello")
    run_id, message_ts = await _live_run(running, emulator)

    async def press(user_id: str) -> str:
        count = len(emulator.responses)
        await emulator.send_block_action(
            other.url, action_id=STOP_ACTION_ID, value=run_id, user_id=user_id,
            message_ts=message_ts,
        )  # fmt: skip
        await emulator.wait_for(lambda: len(emulator.responses) > count)
        return emulator.responses[count]["text"]

    assert "Only <@U123> or an admin" in await press("U999")
    assert await other.store.stop_requests([run_id]) == {}, "a stranger records nothing"
    assert running.service.parts.runner.live.get(run_id) is not None

    assert "Stopping" in await press("U123")
    [run] = await running.wait_for_run()
    assert run.status is RunStatus.CANCELLED and "Stopped by <@U123>" in run.error
    assert run.output == "".join(script.chunks[:3])
    final = emulator.messages("C123")[0]
    assert "Stopped by <@U123>" in all_text(final)
    assert not [b for b in final.blocks if b["type"] == "actions"], "no Stop button once stopped"
    assert "already finished" in await press("U123")


async def test_an_admin_of_the_other_process_may_stop_the_run(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    running = await start_bot(script.model())
    other = await start_bot(script.model(), AGENTBOT_ADMINS="UADMIN")
    await running.command("hello")
    run_id, message_ts = await _live_run(running, emulator)
    await emulator.send_block_action(
        other.url, action_id=STOP_ACTION_ID, value=run_id, user_id="UADMIN", message_ts=message_ts
    )
    [run] = await running.wait_for_run()
    assert run.status is RunStatus.CANCELLED and run.error == "Stopped by <@UADMIN>"


async def test_one_live_runs_poller_per_process_ends_at_shutdown(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    bot = await start_bot(script.model())
    for prompt in ("one", "two", "three"):
        await bot.command(prompt)
    live = bot.service.parts.runner.live
    await emulator.wait_for(lambda: len(live) == 3)
    assert len(_pollers()) == 1, "one loop for the process, not one per run"

    await bot.service.stop(grace=0)

    assert _pollers() == []
    runs = await bot.runs()
    assert [r.status for r in runs] == [RunStatus.INTERRUPTED] * 3


async def test_live_runs_wake_the_poller_only_while_a_run_is_live():
    live = LiveRuns()
    waiting = asyncio.create_task(live.wait_busy())
    for _ in range(5):
        await asyncio.sleep(0)  # loop turns, not time: nothing may wake it
    assert not waiting.done()

    async def carry_out(run: RunRecord) -> None:
        with live.track(run):
            await asyncio.wait_for(waiting, timeout=5)
            assert live.stoppable() == [run.id]
            live.stop(run.id, status=RunStatus.CANCELLED, reason="Stopped by <@U1>")
            assert live.stoppable() == [], "a run being stopped is not asked about again"
            await asyncio.Event().wait()  # until the stop cancels it

    task = asyncio.create_task(carry_out(RunRecord(kind=RunKind.ASK, prompt="p")))
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()
    again = asyncio.create_task(live.wait_busy())
    await asyncio.sleep(0)
    assert not again.done(), "idle again once the last run ended"
    again.cancel()


async def _live_run(bot, emulator) -> tuple[str, str]:
    """The id and message of the run live in `bot`, once its Stop button is shown."""

    def shown() -> bool:
        messages = emulator.messages("C123")
        return bool(messages) and bot.service.parts.runner.live.get(_stop_value(messages[0]))

    await emulator.wait_for(shown)
    message = emulator.messages("C123")[0]
    return _stop_value(message), message.ts


def _stop_value(message) -> str:
    return next(
        (e["value"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]),
        "",
    )


def _pollers() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "live-runs-poller" and not t.done()]


UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)  # as last saved: checkpoints come later
# Short lease timings, for the recovery pass a stale age after start-up to happen in a test.
FAST_LEASES = {"lease_stale_after": 1.0, "lease_renew_every": 0.1, "poll_interval": 0.05}


@pytest.fixture
def start_fast_bot(start_bot: BotFactory) -> BotFactory:
    """Like `start_bot` (one database file), with `FAST_LEASES`."""

    async def start(model) -> Bot:
        return await start_bot(model, service_options=FAST_LEASES)

    return start


async def test_a_process_starting_up_leaves_the_others_live_runs_alone(start_fast_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    running = await start_fast_bot(script.model())
    await running.command("hello")
    run_id, message_ts = await _live_run(running, emulator)
    # Its own later pass (after start-up's) leaves its own run alone too.
    await asyncio.wait_for(running.service.wait_recoveries(2), timeout=10)
    # A third process died a minute ago, its run left running with no lease.
    crashed = RunRecord(
        kind=RunKind.ASK, prompt="lost", status=RunStatus.RUNNING,
        created_at=utcnow() - timedelta(minutes=1),
    )  # fmt: skip
    await running.store.create(crashed)

    other = await start_fast_bot(script.model())

    assert (await other.store.get(crashed.id)).status is RunStatus.INTERRUPTED
    assert (await other.store.get(crashed.id)).error == INTERRUPTED_BY_RESTART
    assert (await other.store.get(run_id)).status in UNFINISHED
    await asyncio.wait_for(other.service.wait_recoveries(2), timeout=10)  # a stale age on
    assert (await other.store.get(run_id)).status in UNFINISHED
    assert running.service.parts.runner.live.get(run_id) is not None

    script.released.set()
    [finished] = [r for r in await running.wait_for_run(count=2) if r.id == run_id]
    assert finished.status is RunStatus.SUCCEEDED and finished.output == SIXTY_WORDS
    assert "Interrupted" not in all_text(emulator.message("C123", message_ts))


async def test_the_runs_of_a_process_that_dies_later_are_recovered(start_fast_bot, emulator):
    bot = await start_fast_bot(ScriptedModel.words("ok").model())
    # Another process started this run, renewed its lease once, then died.
    orphan = RunRecord(kind=RunKind.ASK, prompt="lost", status=RunStatus.RUNNING)
    await bot.store.create(orphan)
    await bot.store.renew_leases([orphan.id])
    # A pass right now, not the next periodic one: that one may come more than a stale age
    # after the renewal when the machine is busy (the flaky part of this test).
    await bot.service.recover()
    assert (await bot.store.get(orphan.id)).status is RunStatus.RUNNING, "its lease was fresh"
    passes = bot.service.recoveries
    # The second pass from now starts a stale age after the first ended, after the renewal.
    await asyncio.wait_for(bot.service.wait_recoveries(passes + 2), timeout=10)
    assert (await bot.store.get(orphan.id)).status is RunStatus.INTERRUPTED


async def test_a_finished_run_whose_record_is_refused_keeps_its_lease(
    start_fast_bot, emulator, monkeypatch
):
    """The final save fails again and again: the process keeps trying and keeps the run's
    lease, so another process's recovery passes leave it alone until the record lands."""
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    running = await start_fast_bot(script.model())
    other = await start_fast_bot(script.model())
    await running.command("hello")
    run_id, message_ts = await _live_run(running, emulator)
    save, refused = running.store.save, asyncio.Event()
    refusals: list[RunStatus] = []

    async def refuse_final_records(run: RunRecord) -> None:
        if run.status.is_final:
            refusals.append(run.status)
            if len(refusals) >= 5:
                refused.set()
            raise OSError("disk I/O error")
        await save(run)

    monkeypatch.setattr(running.store, "save", refuse_final_records)
    script.released.set()
    passes = other.service.recoveries
    await asyncio.wait_for(refused.wait(), timeout=20)  # tried again and again, never given up
    await asyncio.wait_for(other.service.wait_recoveries(passes + 3), timeout=10)
    assert (await other.store.get(run_id)).status in UNFINISHED, "no process recovered it"
    assert run_id in running.service.parts.runner.live.ids()

    monkeypatch.setattr(running.store, "save", save)
    [run] = await running.wait_for_run(timeout=30)
    assert run.status is RunStatus.SUCCEEDED and run.output == SIXTY_WORDS
    assert "Interrupted" not in all_text(emulator.message("C123", message_ts))
