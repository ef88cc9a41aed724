"""Delivery under Slack's limits, end to end: a busy channel does not hold models back, a
finished answer is posted in one write, a 429 with an absurd Retry-After freezes nothing
beyond the cap, and the event loop's lag is a metric."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp
from pydantic_ai.exceptions import ModelHTTPError

from bot.metrics import Metrics, watch_loop_lag
from bot.models import RunKind, RunRecord, RunStatus
from bot.runner import Checkpoints
from tests.scripted import ScriptedModel
from tests.test_ask import SIXTY_WORDS, answer_text


def _live(message) -> bool:
    return any(b.get("type") == "actions" for b in message.blocks)


async def test_a_busy_channel_starts_every_model_at_once_and_posts_finished_answers_whole(
    start_bot, emulator
):
    script = ScriptedModel.words("a short answer")
    bot = await start_bot(script.model())
    count = 8  # the channel allows 5 posts in a burst, then about one a second
    for i in range(count):
        await bot.command(f"question {i}", channel_id="CBUSY", user_id=f"U{i}")
    # Every model is under way before the channel had room for every first post.
    await emulator.wait_for(lambda: len(script.calls) == count, timeout=5)
    assert len(emulator.calls_to("chat.postMessage")) < count
    runs = await bot.wait_for_run(count=count, timeout=30)
    assert all(r.status is RunStatus.SUCCEEDED and 0 <= r.duration_ms < 30_000 for r in runs)
    messages = emulator.messages("CBUSY")
    assert len(messages) == count
    assert {m.ts for m in messages} == {r.message_ts for r in runs}, "the records know them"
    for message in messages:
        assert not _live(message) and answer_text(message) == script.text
    # The answers whose turn came after they were done went out in one write each.
    updated = {c.args["ts"] for c in emulator.calls_to("chat.update")}
    whole = [m for m in messages if m.ts not in updated]
    assert len(whole) >= count - 5
    assert all(r.slack_writes == 1 for r in runs if r.message_ts in {m.ts for m in whole})


async def test_a_retry_after_of_an_hour_freezes_nothing_beyond_the_cap(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.02)
    bot = await start_bot(script.model())
    pacer = bot.service.parts.pacer
    pacer.config = dataclasses.replace(pacer.config, max_retry_after=1.0)
    emulator.inject("chat.update", status=429, retry_after=3600, times=1)
    await bot.command("first", channel_id="C1")
    await bot.command("second", channel_id="C2")
    runs = await bot.wait_for_run(count=2, timeout=20)
    assert all(r.status is RunStatus.SUCCEEDED for r in runs)
    for channel in ("C1", "C2"):
        [message] = emulator.messages(channel)
        assert not _live(message) and answer_text(message) == script.text
    limited, following = emulator.calls_to("chat.update")[:2]
    assert limited.status == 429 and following.status == 200
    assert 0.95 <= following.at - limited.at < 5, "paused for the cap (1 s), not an hour"


async def test_metrics_show_the_event_loop_lag(start_bot, emulator):
    bot = await start_bot(ScriptedModel(["x"]).model())
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{bot.service.port}/metrics") as resp:
            text = await resp.text()
    assert "# TYPE agentbot_event_loop_lag_seconds gauge" in text


async def test_the_loop_lag_gauge_measures_a_blocked_loop():
    metrics = Metrics()

    def lag() -> float:
        return metrics.registry.get_sample_value("agentbot_event_loop_lag_seconds") or 0.0

    watcher = asyncio.create_task(watch_loop_lag(metrics, period=0.02))
    try:
        await asyncio.sleep(0)  # let the watcher ask to be woken
        busy_until = time.monotonic() + 0.2
        while time.monotonic() < busy_until:  # a callback that hogs the loop for 0.2 s
            pass
        for _ in range(50):  # a few periods at most
            if lag() >= 0.15:
                break
            await asyncio.sleep(0.02)
        assert lag() >= 0.15
    finally:
        watcher.cancel()


async def test_a_message_posted_late_reaches_the_record_at_the_next_event(sqlite_store):
    store = sqlite_store
    run = RunRecord(kind=RunKind.ASK, prompt="hello", channel_id="C1")
    await store.create(run)
    checkpoints = Checkpoints(store, interval=3600)  # no save is due by the clock
    checkpoints.now(run)
    run.message_ts = "1700000000.000100"  # the busy channel's turn came
    for _ in range(100):  # bounded: the model's next events
        checkpoints.maybe(run)
        if (await store.get(run.id)).message_ts == run.message_ts:
            break
        await asyncio.sleep(0.01)
    assert (await store.get(run.id)).message_ts == run.message_ts


async def test_a_run_that_fails_before_its_first_post_lands_still_ends_its_message(
    start_bot, emulator
):
    error = ModelHTTPError(400, "scripted", {"error": "bad request"})
    script = ScriptedModel(["never"], fail_first=1, error=error)
    bot = await start_bot(script.model())
    emulator.inject("chat.postMessage", delay=0.5)  # the post lands after the model failed
    await bot.command("hello")
    [run] = await bot.wait_for_run(timeout=15)
    assert run.status is RunStatus.FAILED and not run.output
    assert 0 <= run.duration_ms < 15_000
    [message] = emulator.messages("C123")
    assert not _live(message), "no Stop button left on a finished run"
    assert "HTTP 400" in str(message.blocks) and run.message_ts == message.ts
