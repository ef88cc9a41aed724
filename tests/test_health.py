"""What an operator watches: `/metrics` counts each thing once, `/healthz` names what is down."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bot import mcp
from bot.config import AppConfig
from bot.mcp import McpServers, McpServerSpec
from bot.metrics import Metrics
from tests.scripted import ScriptedModel


def test_a_slack_429_is_counted_in_one_series_only():
    metrics = Metrics()
    metrics.slack_call("chat.update", "ratelimited")
    metrics.slack_call("chat.update", "ok")
    counted = [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value == 1
    ]
    assert counted == [
        ("agentbot_slack_calls_total", {"method": "chat.update", "outcome": "ratelimited"}),
        ("agentbot_slack_calls_total", {"method": "chat.update", "outcome": "ok"}),
    ]


MCP_SERVER = str(Path(__file__).with_name("mcp_server.py"))
T = TypeVar("T")


def mcp_server_pids() -> list[int]:
    """The test MCP servers this process started and that still run (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and MCP_SERVER.encode() in cmdline:
            found.append(int(entry.name))
    return found


async def health(port: int) -> tuple[int, dict[str, Any]]:
    """`/healthz`'s status and JSON body."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status, await response.json()


async def until(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Call `probe` as a monitor would until `done` holds for its answer (bounded in count
    and time); that answer."""
    answer = None
    async with asyncio.timeout(30):
        for _ in range(600):
            if done(answer := await probe()):
                return answer
            await asyncio.sleep(0.05)  # the monitor's probe interval
    raise AssertionError(f"still {answer!r}")


async def test_healthz_names_a_dead_mcp_server_until_it_is_back(start_bot):
    spec = McpServerSpec(command=sys.executable, args=[MCP_SERVER])
    config = AppConfig(mcp_servers={"calc": spec})
    bot = await start_bot(ScriptedModel(["x"]).model(), config=config)
    port = bot.service.port
    assert await health(port) == (200, {"ok": True, "live_runs": 0})
    [first] = mcp_server_pids()
    os.kill(first, signal.SIGKILL)

    _, down = await until(lambda: health(port), lambda answer: answer[0] == 503)
    assert down["ok"] is False and down["reason"].startswith("MCP server 'calc': stopped (")
    # No run asks for the server: the health check's own restart brings it back.
    await until(lambda: health(port), lambda answer: answer == (200, {"ok": True, "live_runs": 0}))
    [second] = mcp_server_pids()
    assert second != first


async def test_an_mcp_server_that_cannot_restart_is_reported_and_tried_again(tmp_path, monkeypatch):
    broken = tmp_path / "broken"  # while it exists the server exits at once
    starts_unless_broken = (
        f"import os, runpy, sys\n"
        f"if os.path.exists({str(broken)!r}): sys.exit('broken')\n"
        f"runpy.run_path({MCP_SERVER!r}, run_name='__main__')"
    )
    spec = McpServerSpec(command=sys.executable, args=["-c", starts_unless_broken])
    async with McpServers({"calc": spec}) as servers:
        assert await servers.problems() == {}
        [first] = mcp_server_pids()

        async def reason() -> str | None:
            return (await servers.problems()).get("calc")

        broken.touch()
        os.kill(first, signal.SIGKILL)
        assert (await until(reason, lambda why: why is not None)).startswith("stopped (")
        await until(reason, lambda why: (why or "").startswith("could not start"))
        monkeypatch.setattr(mcp, "RETRY_START_AFTER", 0.0)
        broken.unlink()
        await until(reason, lambda why: why is None)
        [second] = mcp_server_pids()
        assert second != first


async def test_a_health_check_in_flight_at_shutdown_starts_nothing_again():
    servers = McpServers({"calc": McpServerSpec(command=sys.executable, args=[MCP_SERVER])})
    await servers.start()
    try:
        check = asyncio.create_task(servers.problems())
        await asyncio.sleep(0)  # the check has sent its request
        await servers.stop()
        await check
        left = [task for task in asyncio.all_tasks() if task.get_name().startswith("mcp-")]
        if left:
            await asyncio.wait(left, timeout=10)
        assert all(task.done() for task in left), "a server was started again after stop()"
        assert mcp_server_pids() == [] and await servers.problems() == {"calc": "not started"}
    finally:
        await servers.stop()
