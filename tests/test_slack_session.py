"""Slack calls reuse connections: one aiohttp session per process, closed at shutdown."""

from __future__ import annotations

import asyncio

from bot.config import AppConfig
from bot.models import RunStatus
from bot.server import Service, build_parts
from tests.conftest import Bot, make_settings
from tests.scripted import ScriptedModel
from tests.test_ask import answer_text


async def test_slack_calls_share_connections_and_shutdown_closes_them(emulator, tmp_path):
    script = ScriptedModel.words("one two three four five six", delay=0.05)
    settings = make_settings(emulator, tmp_path / "s.db", AGENTBOT_UPDATE_INTERVAL="0.05")
    service = Service(await build_parts(settings, AppConfig(), model=script.model()))
    await service.start(host="127.0.0.1", port=0)
    stopped = False
    try:
        # Calls made one after another travel on one kept-alive connection.
        first = len(emulator.calls)
        for _ in range(5):
            await service.parts.client.auth_test()
        assert len({c.client_port for c in emulator.calls[first:]}) == 1

        # A whole run (Bolt's per-request client, the pacer's posts and edits) shares them too.
        bot = Bot(emulator=emulator, service=service)
        first = len(emulator.calls)
        await bot.command("count to six")
        [run] = await bot.wait_for_run()
        assert run.status is RunStatus.SUCCEEDED
        assert answer_text(emulator.messages("C123")[-1]) == "one two three four five six"
        calls = emulator.calls[first:]
        ports = {c.client_port for c in calls}
        seen = [(c.method, c.client_port) for c in calls]
        assert len(calls) >= 4 and len(ports) < len(calls), seen
        assert emulator.open_connections >= 1  # kept alive between calls

        await service.stop(grace=0)
        stopped = True
        assert service.parts.http.closed
        # The emulator sees the bot's connections go (bounded: a few loop turns at most).
        for _ in range(100):
            if emulator.open_connections == 0:
                break
            await asyncio.sleep(0)
        assert emulator.open_connections == 0
    finally:
        if not stopped:
            await service.stop(grace=0)
