"""The service's life cycle: Socket Mode, crash recovery, graceful shutdown."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from bot.config import AppConfig
from bot.models import RunKind, RunQuery, RunRecord, RunStatus, utcnow
from bot.server import INTERRUPTED_BY_RESTART, Service, build_parts
from tests.conftest import make_settings, socket_mode_service, wait_until
from tests.scripted import ScriptedModel
from tests.test_ask import all_text, answer_text


async def test_socket_mode_runs_ask_without_an_http_endpoint(emulator, tmp_path):
    script = ScriptedModel.words("answered over the socket")
    async with socket_mode_service(emulator, tmp_path, script.model()) as service:
        delivery = await emulator.send_slash_command(None, "/ask", "over the socket please")
        assert delivery.status == 200
        await emulator.wait_for(
            lambda: any(
                answer_text(m) == "answered over the socket" for m in emulator.messages("C123")
            )
        )
        await service.parts.runner.live.wait_idle(10)
        [run] = await _runs(service)
        assert run.status is RunStatus.SUCCEEDED and run.prompt == "over the socket please"


async def _runs(service: Service) -> list[RunRecord]:
    return await service.parts.store.query(RunQuery())


async def test_restart_marks_crashed_runs_interrupted_and_says_so_in_slack(emulator, tmp_path):
    settings = make_settings(emulator, tmp_path / "crash.db")
    # A first process posted a live message and recorded its run, then died (no finish) a
    # minute ago: no lease renewed since.
    first = await build_parts(settings, AppConfig(), model=ScriptedModel(["x"]).model())
    posted = await first.client.chat_postMessage(channel="C123", text="thinking…")
    crashed = _crashed_run(posted["ts"], created_at=utcnow() - timedelta(minutes=1))
    await first.store.create(crashed)
    await first.store.renew_leases([crashed.id], now=crashed.created_at)
    await first.close()

    service = Service(await build_parts(settings, AppConfig(), model=ScriptedModel(["x"]).model()))
    await service.start(host="127.0.0.1", port=0)
    try:
        run = await service.parts.store.get(crashed.id)
        assert run.status is RunStatus.INTERRUPTED and run.error == INTERRUPTED_BY_RESTART
        assert run.finished_at is not None
        message = emulator.message("C123", posted["ts"])
        assert "Interrupted" in all_text(message) and "restarted" in all_text(message)
        assert answer_text(message) == "half of it"
    finally:
        await service.stop(grace=0)


async def test_a_run_that_crashed_just_before_the_restart_is_recovered_a_stale_age_later(
    emulator, tmp_path
):
    settings = make_settings(emulator, tmp_path / "crash.db")
    # The first process renewed its run's lease just before it died.
    first = await build_parts(settings, AppConfig(), model=ScriptedModel(["x"]).model())
    posted = await first.client.chat_postMessage(channel="C123", text="thinking…")
    crashed = _crashed_run(posted["ts"])
    await first.store.create(crashed)
    await first.store.renew_leases([crashed.id])
    await first.close()

    parts = await build_parts(settings, AppConfig(), model=ScriptedModel(["x"]).model())
    service = Service(parts, lease_stale_after=1.0, lease_renew_every=0.1, poll_interval=0.05)
    await service.start(host="127.0.0.1", port=0)
    try:
        run = await parts.store.get(crashed.id)
        assert run.status is RunStatus.RUNNING, "its lease is fresh at start-up: left alone"

        async def interrupted() -> bool:
            run = await parts.store.get(crashed.id)
            return run.status is RunStatus.INTERRUPTED

        await wait_until(interrupted, emulator, timeout=10)
        run = await parts.store.get(crashed.id)
        assert run.error == INTERRUPTED_BY_RESTART
        await emulator.wait_for(
            lambda: "Interrupted" in all_text(emulator.message("C123", posted["ts"]))
        )
    finally:
        await service.stop(grace=0)


def _crashed_run(message_ts: str, **fields: Any) -> RunRecord:
    return RunRecord(
        kind=RunKind.ASK,
        prompt="a question",
        user_id="U123",
        channel_id="C123",
        team_id="T0001",
        message_ts=message_ts,
        status=RunStatus.RUNNING,
        output="half of it",
        **fields,
    )


async def test_shutdown_lets_short_runs_finish_within_the_grace(start_bot, emulator):
    script = ScriptedModel.words("quick answer", delay=0.05)
    bot = await start_bot(script.model())
    await bot.command("hello")
    await emulator.wait_for(lambda: len(emulator.calls_to("chat.postMessage")) == 1)
    await bot.service.stop(grace=10)
    [run] = await bot.runs()
    assert run.status is RunStatus.SUCCEEDED and run.output == "quick answer"


async def test_shutdown_interrupts_runs_past_the_grace_and_says_so(start_bot, emulator):
    script = ScriptedModel.words("never finishes", hang_after=1)
    bot = await start_bot(script.model())
    await bot.command("hello")
    await emulator.wait_for(
        lambda: any("never" in answer_text(m) for m in emulator.messages("C123"))
    )
    await bot.service.stop(grace=0.1)
    [run] = await bot.runs()
    assert run.status is RunStatus.INTERRUPTED and "shut down" in run.error
    assert run.output == "never "
    message = emulator.messages("C123")[0]
    assert "Interrupted" in all_text(message) and answer_text(message) == "never "
    with pytest.raises(aiohttp.ClientConnectionError):
        await bot.command("too late")  # a stopped service takes no new work


async def test_while_draining_new_requests_get_503_and_live_runs_finish(start_bot, emulator):
    import asyncio

    import aiohttp

    script = ScriptedModel.words("slow but finishes", hang_after=1)
    bot = await start_bot(script.model())
    await bot.command("hello")
    await emulator.wait_for(
        lambda: any("slow" in answer_text(m) for m in emulator.messages("C123"))
    )
    stopping = asyncio.create_task(bot.service.stop(grace=10))
    async with aiohttp.ClientSession() as http:
        healthz = f"http://127.0.0.1:{bot.service.port}/healthz"
        async with http.get(healthz) as resp:
            assert resp.status == 503
    status, _, _ = await bot.command("new work")
    assert status == 503, "Slack retries it elsewhere"
    script.released.set()
    await stopping
    [run] = await bot.runs()
    assert run.status is RunStatus.SUCCEEDED and run.output == "slow but finishes"
