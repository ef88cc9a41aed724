"""Agents with tools end to end: the Slack message shows each tool call while it runs, the
answer after it, and the run's record keeps the calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from bot.config import AgentSpec, AppConfig
from bot.fetch import FetchPolicy
from bot.models import RunKind, RunStatus
from tests.test_ask import all_text, answer_text
from tests.test_cli import agentbot


@pytest.fixture
async def page() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A loopback web page that answers once `release` is set (so the tool is seen running)."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        html = "<html><head><script>x()</script></head><body><h1>Launch plan</h1>"
        return web.Response(
            text=html + "<p>Ship on Tuesday.</p></body></html>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/plan", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/plan", release
    await runner.cleanup()


@dataclass
class ToolUser:
    """Calls one tool first, then answers with what the tool returned."""

    tool: str
    args: dict[str, str]
    returned: list[str] = field(default_factory=list)

    def factory(self, agent: str, model_string: str) -> Model:
        async def stream(
            messages: list[ModelMessage], info: AgentInfo
        ) -> AsyncIterator[str | DeltaToolCalls]:
            results = [
                part
                for m in messages
                if isinstance(m, ModelRequest)
                for part in m.parts
                if isinstance(part, ToolReturnPart)
            ]
            if not results or len(results) < self._calls_wanted(messages):
                yield {
                    0: DeltaToolCall(
                        name=self.tool,
                        json_args=json.dumps(self.args),
                        tool_call_id=f"call{len(results)}",
                    )
                }
                return
            text = str(results[-1].content)
            self.returned.append(text)
            yield "From the tool: "
            yield text[:200]

        return FunctionModel(stream_function=stream, model_name="tool-user")

    def _calls_wanted(self, messages: list[ModelMessage]) -> int:
        # One tool call per user turn.
        return sum(
            1
            for m in messages
            if isinstance(m, ModelRequest) and any(p.part_kind == "user-prompt" for p in m.parts)
        )


def tools_config(*tools: str, allow_loopback: bool = True) -> AppConfig:
    base = AppConfig()
    agents = {**base.agents, "assistant": AgentSpec(tools=list(tools))}
    fetch = FetchPolicy(allow_networks=["127.0.0.0/8"] if allow_loopback else [])
    return AppConfig(agents=agents, fetch=fetch)


async def test_fetch_url_shows_while_it_runs_and_is_recorded(start_bot, emulator, page, tmp_path):
    url, release = page
    model = ToolUser("fetch_url", {"url": url})
    bot = await start_bot(model.factory, config=tools_config("fetch_url"))
    await bot.command("summarise the launch plan page")
    await emulator.wait_for(
        lambda: any(
            "fetch_url 127.0.0.1 … running" in all_text(m) for m in emulator.messages("C123")
        )
    )
    release.set()
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert "Launch plan" in model.returned[0] and "Ship on Tuesday." in model.returned[0]
    assert "x()" not in model.returned[0], "scripts are dropped"
    message = emulator.messages("C123")[0]
    assert answer_text(message).startswith("From the tool: ")
    assert "🔧 fetch_url" in all_text(message), "the final footer lists the tools used"
    stored = await bot.store.get(run.id)
    [call] = stored.tool_calls
    assert call["name"] == "fetch_url" and call["ok"] is True and call["args"] == "127.0.0.1"
    assert call["duration_ms"] >= 0
    # `agentbot history show` lists the run's tool calls.
    db = {"AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'agentbot.db'}"}
    code, out, _ = await agentbot("history", "show", run.id, env=db)
    assert code == 0 and "tool calls:" in out and "fetch_url 127.0.0.1" in out and "ok" in out


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:9/", "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/"],
)
async def test_fetch_url_refuses_internal_addresses_and_the_run_goes_on(
    start_bot, emulator, target
):
    model = ToolUser("fetch_url", {"url": target})
    bot = await start_bot(model.factory, config=tools_config("fetch_url", allow_loopback=False))
    await bot.command("fetch it")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED
    assert "refused" in model.returned[0].lower() or "not" in model.returned[0].lower()
    stored = await bot.store.get(run.id)
    [call] = stored.tool_calls
    assert call["ok"] is False and "refused" in call["error"]
    assert "1 failed" in all_text(emulator.messages("C123")[0])


async def test_read_thread_reads_the_thread_the_run_started_in(start_bot, emulator):
    model = ToolUser("read_thread", {})
    bot = await start_bot(model.factory, config=tools_config("read_thread"))
    root = emulator.post_user_message("C123", "U555", "<@UBOT> what did we decide?")
    emulator.post_user_message("C123", "U777", "We ship on Friday.", thread_ts=root.ts)
    mention = emulator.post_user_message(
        "C123", "U123", "<@UBOT> summarise this thread", thread_ts=root.ts
    )
    await emulator.send_event(bot.url, emulator.message_event(mention, mention=True))
    [run] = await bot.wait_for_run(kind=RunKind.MENTION)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert "We ship on Friday." in model.returned[0]
    assert (await bot.store.get(run.id)).tool_calls[0]["name"] == "read_thread"


async def test_an_mcp_server_from_the_config_gives_an_agent_its_tools(start_bot, emulator):
    import sys
    from pathlib import Path

    from bot.mcp import McpServerSpec

    server = McpServerSpec(
        command=sys.executable, args=[str(Path(__file__).parent / "mcp_server.py")]
    )
    base = AppConfig()
    config = AppConfig(
        agents={**base.agents, "assistant": AgentSpec(mcp_servers=["calc"])},
        mcp_servers={"calc": server},
    )
    model = ToolUser("add", {"a": 2, "b": 40})  # type: ignore[dict-item]
    bot = await start_bot(model.factory, config=config)
    await bot.command("what is 2 + 40?")
    [run] = await bot.wait_for_run(timeout=30)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert model.returned[0] == "42"
    assert (await bot.store.get(run.id)).tool_calls[0]["name"] == "add"


async def test_an_mcp_server_that_cannot_start_is_one_clear_config_error(emulator, tmp_path):
    from bot.errors import ConfigError
    from bot.mcp import McpServerSpec
    from bot.server import build_parts
    from tests.conftest import make_settings

    config = AppConfig(mcp_servers={"gone": McpServerSpec(command="/no/such/server")})
    with pytest.raises(ConfigError, match="gone"):
        await build_parts(make_settings(emulator, tmp_path / "x.db"), config)


# -- done when: one agent with every kind of tool, in Slack ----------------------------------


@dataclass
class Researcher:
    """Reads the page, then the thread, then the decision log (MCP), then answers from all
    three. Before each call after the first it waits for the test to let it go on, so the
    test sees the tool lines in Slack in the order a user would."""

    url: str
    go_on: list[asyncio.Event] = field(default_factory=lambda: [asyncio.Event() for _ in range(3)])
    thread: str = ""  # what read_thread returned

    def factory(self, agent: str, model_string: str) -> Model:
        steps = [
            ("fetch_url", {"url": self.url}),
            ("read_thread", {}),
            ("decisions", {"topic": "launch"}),
        ]

        async def stream(
            messages: list[ModelMessage], info: AgentInfo
        ) -> AsyncIterator[str | DeltaToolCalls]:
            results = [
                str(part.content)
                for m in messages
                if isinstance(m, ModelRequest)
                for part in m.parts
                if isinstance(part, ToolReturnPart)
            ]
            done = len(results)
            if done:
                await self.go_on[done - 1].wait()
            if done < len(steps):
                name, args = steps[done]
                yield {0: DeltaToolCall(name=name, json_args=json.dumps(args), tool_call_id=name)}
                return
            page, thread, log = results
            self.thread = thread
            yield "The page: " + " ".join(page.split())[:80] + "\n"
            yield "This thread: " + " ".join(thread.split()) + "\n"
            yield log

        return FunctionModel(stream_function=stream, model_name="researcher")


def tool_shown(message, title: str, state: str) -> bool:
    """Whether the reply shows tool call `title` as `state` ("running", "done"): a status
    line of an edited message, or a task card of a native stream."""
    if message.tasks:
        status = {"running": "in_progress", "done": "complete"}[state]
        return any(t["title"] == title and t["status"] == status for t in message.tasks.values())
    line = {"running": f"{title} … running", "done": f"{title} · done"}[state]
    return line in all_text(message)


@pytest.mark.parametrize("mode", ["edit", "native"])
async def test_an_agent_compares_a_page_with_the_thread_using_every_kind_of_tool(
    start_bot, emulator, page, mode
):
    import sys
    from pathlib import Path

    from bot.mcp import McpServerSpec

    url, release_page = page
    spec = AgentSpec(tools=["fetch_url", "read_thread"], mcp_servers=["decisions"])
    config = AppConfig(
        agents={**AppConfig().agents, "assistant": spec},
        fetch=FetchPolicy(allow_networks=["127.0.0.0/8"]),
        mcp_servers={
            "decisions": McpServerSpec(
                command=sys.executable, args=[str(Path(__file__).parent / "mcp_server.py")]
            )
        },
    )
    model = Researcher(url)
    bot = await start_bot(model.factory, config=config, AGENTBOT_STREAM_MODE=mode)
    root = emulator.post_user_message("C123", "U555", "Launch plan: where do we stand?")
    emulator.post_user_message("C123", "U777", "We said we ship on Friday.", thread_ts=root.ts)
    ask = "<@UBOT> summarise this page and compare it with what we said in this thread: " + url
    mention = emulator.post_user_message("C123", "U123", ask, thread_ts=root.ts)
    await emulator.send_event(bot.url, emulator.message_event(mention, mention=True))

    def reply():
        return next((m for m in emulator.thread("C123", root.ts) if m.bot_id), None)

    def shows(title: str, state: str) -> bool:
        return (message := reply()) is not None and tool_shown(message, title, state)

    # Each tool shows in the reply while the run goes on, before the answer does.
    await emulator.wait_for(lambda: shows("fetch_url 127.0.0.1", "running"), timeout=20)
    release_page.set()
    for title, go_on in zip(
        ("fetch_url 127.0.0.1", "read_thread", "decisions launch"), model.go_on, strict=True
    ):
        await emulator.wait_for(lambda title=title: shows(title, "done"))
        assert "The page:" not in reply().text
        go_on.set()

    [run] = await bot.wait_for_run(kind=RunKind.MENTION, timeout=30)
    assert run.status is RunStatus.SUCCEEDED, run.error
    answer = reply().text if mode == "native" else answer_text(reply())
    assert "Launch plan Ship on Tuesday." in answer, "the page, as text"
    assert "We said we ship on Friday." in answer, "the thread"
    thread_authors = [line.split(":")[0] for line in model.thread.splitlines()]
    assert thread_authors == ["U555", "U777", "U123"], "not the bot's reply being written"
    assert "launch moved to Wednesday" in answer, "the MCP server's tool"
    assert "🔧 fetch_url, read_thread, decisions" in all_text(reply()), "the tools used"
    if mode == "native":
        assert emulator.calls_to("chat.startStream") and not emulator.calls_to("chat.update")
    stored = await bot.store.get(run.id)
    assert [(c["name"], c["ok"]) for c in stored.tool_calls] == [
        ("fetch_url", True),
        ("read_thread", True),
        ("decisions", True),
    ]
