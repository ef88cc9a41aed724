"""The tool layer: built-in tools, fetch_url's address checks, the guard, tool activity
while text streams, and MCP servers. No internet: pages are served on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError
from pydantic_ai import Agent, AgentRunResult, RunContext
from pydantic_ai.messages import ModelMessage, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from bot.activity import ToolActivity, text_delta
from bot.errors import ConfigError
from bot.fetch import FetchError, FetchPolicy, PageText, fetch_page
from bot.mcp import McpServers, McpServerSpec, build_mcp_toolset
from bot.tools import ThreadMessage, ToolDeps, ToolLimits, tool_guard, toolset_for

MCP_SERVER = str(Path(__file__).with_name("mcp_server.py"))

# ---------------------------------------------------------------- scripted models


@dataclass
class Call:
    """A model step: call these tools (name, args) in one response, after `text`."""

    calls: list[tuple[str, dict[str, Any]]]
    text: str = ""


Step = Call | list[str] | Callable[[list[ModelMessage]], "Call | list[str]"]


@dataclass
class Script:
    """A FunctionModel that plays `steps`, one per model request (the last one repeats)."""

    steps: list[Step]
    requests: int = 0

    def model(self) -> FunctionModel:
        return FunctionModel(stream_function=self._stream, model_name="script")

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        step = self.steps[min(self.requests, len(self.steps) - 1)]
        self.requests += 1
        if callable(step):
            step = step(messages)
        if isinstance(step, Call):
            if step.text:
                yield step.text
            yield {
                i: DeltaToolCall(
                    name=name, json_args=json.dumps(args), tool_call_id=f"c{self.requests}-{i}"
                )
                for i, (name, args) in enumerate(step.calls)
            }
        else:
            for chunk in step:
                yield chunk


def call(name: str, **args: Any) -> Call:
    return Call([(name, args)])


def tool_agent(script: Script, names: Sequence[str] = (), **kwargs: Any) -> Agent[ToolDeps, str]:
    return Agent(
        script.model(),
        name="tools-test",
        deps_type=ToolDeps,
        toolsets=[toolset_for(names)],
        capabilities=[tool_guard()],
        **kwargs,
    )


async def stream_run(
    agent: Agent[Any, str], prompt: str = "go", *, deps: Any = None
) -> tuple[str, ToolActivity, AgentRunResult[str]]:
    """Runs `agent` the way the runner should: text and tool events from one stream."""
    activity, text = ToolActivity(), ""
    async with agent.run_stream_events(prompt, deps=deps) as events:
        async for event in events:
            activity.feed(event)
            text += text_delta(event, text)
    assert events.result is not None
    return text, activity, events.result


def returns(result: AgentRunResult[str]) -> list[ToolReturnPart]:
    return [p for m in result.all_messages() for p in m.parts if isinstance(p, ToolReturnPart)]


# ---------------------------------------------------------------- a loopback web site


@dataclass
class Site:
    port: int
    hits: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


PAGE = """<!doctype html><html><head><title>Test  page</title>
<style>body { color: red }</style><script>alert("hidden")</script></head>
<body><nav><a href="/">Home</a></nav><h1>Main heading</h1>
<p>First   paragraph with a <a href="/x">link text</a>.</p>
<ul><li>one</li><li>two</li></ul><noscript>no script</noscript>
<pre>  indented
    code</pre><p>Caf&eacute; &amp; more</p></body></html>"""


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    state = Site(port=0)

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        state.hits.append(request.path)
        return await handler(request)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def hops(request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        if left == 0:
            return web.Response(text="arrived")
        raise web.HTTPFound(f"/hops/{left - 1}")

    app = web.Application(middlewares=[record])
    app.router.add_get("/page", serve(PAGE, "text/html"))
    app.router.add_get("/plain", serve("plain words", "text/plain"))
    app.router.add_get("/json", serve('{"answer": 42}', "application/json"))
    app.router.add_get("/image", serve("\x89PNG", "image/png"))
    app.router.add_get("/big", serve("word " * 10_000, "text/plain"))
    app.router.add_get("/missing", serve("gone", "text/plain", status=404))
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/hops/{n}", hops)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


def serve(text: str, content_type: str, status: int = 200) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type=content_type, status=status)

    return handler


@dataclass
class FakeDns:
    """A resolver answering from a table, recording each question."""

    table: dict[str, list[str]]
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


LOOPBACK = FetchPolicy(allow_networks=["127.0.0.0/8"])  # type: ignore[list-item]

# ---------------------------------------------------------------- fetch_url


async def test_allowlisted_loopback_page_becomes_readable_text(site: Site) -> None:
    text = await fetch_page(site.url("/page"), LOOPBACK)
    assert text.startswith(f"URL: {site.url('/page')}\nTitle: Test page\n\n")
    assert "# Main heading" in text
    assert "First paragraph with a link text." in text
    assert "- one\n- two" in text
    assert "  indented\n    code" in text
    assert "Café & more" in text
    for hidden in ("alert", "color: red", "no script", "<p>"):
        assert hidden not in text


def test_page_text_keeps_structure_and_drops_scripts() -> None:
    page = PageText()
    page.feed("<div>a <b>bold</b> word</div><h2>Sub</h2><p>x<br>y</p><table><tr><td>1</td>")
    page.feed("<td>2</td></tr></table><script>var s = '<p>';</script>end")
    assert page.text() == "a bold word\n\n## Sub\n\nx\ny\n\n1 2\n\nend"


async def test_plain_text_and_json_are_returned_as_they_are(site: Site) -> None:
    assert (await fetch_page(site.url("/plain"), LOOPBACK)).endswith("\n\nplain words")
    assert (await fetch_page(site.url("/json"), LOOPBACK)).endswith('\n\n{"answer": 42}')


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://192.168.1.10:8080/", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://[fd00:ec2::254]/", "a cloud metadata address"),
        ("http://100.100.100.200/", "a cloud metadata address"),
        ("http://100.64.1.1/", "a shared (CGNAT) address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1 (127.0.0.1) is a loopback address"),
        ("http://[::ffff:169.254.169.254]/", "a cloud metadata address"),
        ("http://[64:ff9b::a00:1]/", "a private address"),  # NAT64 of 10.0.0.1
        ("http://[2002:a00:1::]/", "a private address"),  # 6to4 of 10.0.0.1
        ("http://[fe80::1%25eth0]/", "a link-local address"),
        ("http://0.0.0.0/", "an unspecified address"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://240.0.0.1/", "a reserved address"),
    ],
)
async def test_internal_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(FetchError, match=r"^refused: ") as refused:
        await fetch_page(url, FetchPolicy())
    assert reason in str(refused.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "gopher://x/", "x"])
async def test_only_http_and_https(url: str) -> None:
    with pytest.raises(FetchError, match=r"^refused: "):
        await fetch_page(url, FetchPolicy())


async def test_metadata_addresses_stay_refused_even_when_allowlisted() -> None:
    policy = FetchPolicy(allow_networks=["169.254.0.0/16"], allow_hosts=["meta.test"])  # type: ignore[list-item]
    dns = FakeDns({"meta.test": ["169.254.169.254"]})
    for url in ("http://169.254.169.254/", "http://meta.test/"):
        with pytest.raises(FetchError, match="cloud metadata"):
            await fetch_page(url, policy, resolve=dns)


async def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    dns = FakeDns({"intranet.test": ["10.1.2.3"], "mixed.test": ["93.184.215.14", "10.1.2.3"]})
    with pytest.raises(FetchError, match=r"refused: intranet.test resolves to 10.1.2.3, a private"):
        await fetch_page("http://intranet.test/", FetchPolicy(), resolve=dns)
    with pytest.raises(FetchError, match=r"refused: mixed.test resolves to 10.1.2.3"):
        await fetch_page("https://mixed.test/", FetchPolicy(), resolve=dns)
    with pytest.raises(FetchError, match=r"cannot resolve nowhere.test"):
        await fetch_page("http://nowhere.test/", FetchPolicy(), resolve=dns)


async def test_the_system_resolver_is_checked_too(site: Site) -> None:
    with pytest.raises(FetchError, match=r"^refused: localhost resolves to .*loopback address"):
        await fetch_page(site.url("/plain", host="localhost"), FetchPolicy())
    allowed = FetchPolicy(allow_hosts=["localhost"])
    assert (await fetch_page(site.url("/plain", host="localhost"), allowed)).endswith("plain words")


async def test_the_connection_goes_to_the_checked_address(site: Site) -> None:
    # The system resolver knows nothing of page.test: the page is only reachable through the
    # pinned, checked address, and the name is resolved once.
    dns = FakeDns({"page.test": ["127.0.0.1"]})
    text = await fetch_page(site.url("/plain", host="page.test"), LOOPBACK, resolve=dns)
    assert text.endswith("plain words")
    assert dns.asked == [("page.test", site.port)]


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://127.0.0.1:{port}/page", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata"),
        ("http://[::ffff:10.0.0.1]/", "::ffff:a00:1 (10.0.0.1) is a private address"),
    ],
)
async def test_redirects_are_checked_at_every_hop(site: Site, target: str, reason: str) -> None:
    policy = FetchPolicy(allow_hosts=["page.test"])  # the first host only
    dns = FakeDns({"page.test": ["127.0.0.1"]})
    target = target.format(port=site.port)
    with pytest.raises(FetchError, match="^refused: " + re.escape(reason)) as refused:
        await fetch_page(site.url(f"/redirect?to={target}", host="page.test"), policy, resolve=dns)
    assert "(redirected to http" in str(refused.value)
    assert site.hits == ["/redirect"]


async def test_allowed_redirects_are_followed_up_to_the_limit(site: Site) -> None:
    policy = FetchPolicy(allow_hosts=["page.test"], max_redirects=3)
    dns = FakeDns({"page.test": ["127.0.0.1"]})
    text = await fetch_page(site.url("/hops/3", host="page.test"), policy, resolve=dns)
    assert text == f"URL: {site.url('/hops/0', host='page.test')}\n\narrived"
    with pytest.raises(FetchError, match="more than 3 redirects"):
        await fetch_page(site.url("/hops/4", host="page.test"), policy, resolve=dns)


async def test_other_content_types_and_errors_are_refused(site: Site) -> None:
    with pytest.raises(FetchError, match="refused: content type image/png is not text"):
        await fetch_page(site.url("/image"), LOOPBACK)
    with pytest.raises(FetchError, match=r"^HTTP 404 Not Found$"):
        await fetch_page(site.url("/missing"), LOOPBACK)


async def test_downloads_and_answers_are_capped(site: Site) -> None:
    small = LOOPBACK.model_copy(update={"max_bytes": 10_000})
    text = await fetch_page(site.url("/big"), small)
    assert text.endswith("[cut: only the first 10,000 bytes of the page were read]")
    assert len(text) < 10_200
    short = LOOPBACK.model_copy(update={"max_chars": 1_000})
    text = await fetch_page(site.url("/big"), short)
    assert text.endswith("[cut: showing the first 1,000 of 50,000 characters]")
    assert len(text) < 1_200


async def test_a_refused_fetch_is_a_failed_tool_result_and_the_run_goes_on() -> None:
    script = Script([call("fetch_url", url="http://10.0.0.1/admin"), ["Sorry, ", "refused."]])
    text, activity, result = await stream_run(tool_agent(script, ["fetch_url"]), deps=ToolDeps())
    assert text == "Sorry, refused."
    [failed] = returns(result)
    assert (failed.outcome, failed.content) == ("failed", "refused: 10.0.0.1 is a private address")
    assert activity.lines() == [
        "⚠️ fetch_url 10.0.0.1 · failed: refused: 10.0.0.1 is a private address"
    ]


# ---------------------------------------------------------------- current_time, read_thread


FIXED = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)


async def test_current_time_in_a_zone_and_an_unknown_zone() -> None:
    script = Script(
        [
            Call(
                [
                    ("current_time", {"timezone": "Europe/Paris"}),
                    ("current_time", {"timezone": "Mars/Base"}),
                ]
            ),
            ["ok"],
        ]
    )
    _, _, result = await stream_run(
        tool_agent(script, ["current_time"]), deps=ToolDeps(now=lambda: FIXED)
    )
    paris, mars = returns(result)
    assert paris.content == (
        "Wednesday 15 January 2025, 13:00:00 CET (UTC+01:00, Europe/Paris); "
        "ISO 8601: 2025-01-15T13:00:00+01:00"
    )
    assert mars.outcome == "failed"
    assert (
        mars.content
        == "unknown time zone 'Mars/Base': use an IANA name such as Europe/Paris or UTC"
    )


@dataclass
class FakeThread:
    messages: list[ThreadMessage]
    asked: list[tuple[str, str | None, int, str | None]] = field(default_factory=list)

    async def __call__(
        self, channel_id: str, thread_ts: str | None, *, limit: int, team_id: str | None = None
    ) -> list[ThreadMessage]:
        self.asked.append((channel_id, thread_ts, limit, team_id))
        return self.messages[-limit:]


async def test_read_thread_reads_the_runs_thread_compactly() -> None:
    reader = FakeThread(
        [
            ThreadMessage("ann", "Is the build green?", ts="171.0"),
            ThreadMessage("bob", " Yes\n", ts="172.0"),
            ThreadMessage("UBOT", "_thinking…_", ts="173.0"),  # this run's own reply
        ]
    )
    deps = ToolDeps(
        thread_reader=reader, team_id="T1", channel_id="C1", thread_ts="171.0", message_ts="173.0"
    )
    _, _, result = await stream_run(
        tool_agent(Script([call("read_thread"), ["ok"]]), ["read_thread"]), deps=deps
    )
    assert returns(result)[0].content == "ann: Is the build green?\nbob: Yes"
    assert reader.asked == [("C1", "171.0", 50, "T1")], "within the workspace's budget"


async def test_read_thread_keeps_the_newest_messages_within_its_cap() -> None:
    reader = FakeThread([ThreadMessage(f"u{i}", "x" * 3000) for i in range(40)])
    deps = ToolDeps(thread_reader=reader, channel_id="C1")
    _, _, result = await stream_run(
        tool_agent(Script([call("read_thread"), ["ok"]]), ["read_thread"]), deps=deps
    )
    content = str(returns(result)[0].content)
    assert content.startswith("[33 earlier messages left out]\nu33: ")
    assert content.endswith("u39: " + "x" * 1499 + "…")


async def test_read_thread_without_a_thread_fails_clearly() -> None:
    _, _, result = await stream_run(
        tool_agent(Script([call("read_thread"), ["ok"]]), ["read_thread"])
    )
    assert returns(result)[0].content == "there is no Slack thread to read for this run"


def test_toolset_for_names_unknown_tools() -> None:
    assert sorted(toolset_for(["current_time", "fetch_url", "current_time"]).tools) == [
        "current_time",
        "fetch_url",
    ]
    with pytest.raises(
        ValueError, match=r"unknown tool 'web_search' \(built-in tools: current_time"
    ):
        toolset_for(["current_time", "web_search"])


# ---------------------------------------------------------------- streaming with tool events


async def test_tool_call_then_streamed_text_with_activity() -> None:
    script = Script(
        [call("current_time", timezone="Europe/Paris"), ["It is ", "13:00 ", "in Paris."]]
    )
    clock = iter([10.0, 10.4, 11.0])
    activity = ToolActivity(clock=lambda: next(clock))
    text = ""
    async with tool_agent(script, ["current_time"]).run_stream_events(
        "time?", deps=ToolDeps(now=lambda: FIXED)
    ) as events:
        async for event in events:
            activity.feed(event)
            text += text_delta(event, text)
    assert text == "It is 13:00 in Paris."
    [record] = activity.records
    assert (record.name, record.args_summary, record.ok) == ("current_time", "Europe/Paris", True)
    assert activity.lines() == ["🔧 current_time Europe/Paris · done in 0.4 s"]
    assert events.usage.requests == 2


async def test_run_stream_with_an_event_handler_sees_tools_then_streams_text() -> None:
    script = Script([call("current_time"), ["The ", "time ", "is ", "known."]])
    activity = ToolActivity()
    seen_running: list[str] = []

    async def handler(ctx: RunContext[Any], events: Any) -> None:
        async for event in events:
            if activity.feed(event):
                seen_running.extend(activity.lines())

    deltas = []
    async with tool_agent(script, ["current_time"]).run_stream(
        "time?", deps=ToolDeps(), event_stream_handler=handler
    ) as result:
        async for delta in result.stream_text(delta=True, debounce_by=None):
            deltas.append(delta)
    assert "".join(deltas) == "The time is known."
    assert seen_running[0].startswith("🔧 current_time … running")
    assert activity.records[0].ok is True


async def test_text_before_a_tool_call_ends_run_stream_but_not_run_stream_events() -> None:
    # run_stream takes the first text as the final answer: the tool runs, the answer never comes.
    script = Script([Call([("current_time", {})], text="Let me check. "), ["It is noon."]])
    async with tool_agent(script, ["current_time"]).run_stream("time?", deps=ToolDeps()) as result:
        assert await result.get_output() == "Let me check. "
    assert script.requests == 1
    # run_stream_events runs to the end, streaming the text of every response.
    script = Script([Call([("current_time", {})], text="Let me check. "), ["It is noon."]])
    text, activity, result = await stream_run(tool_agent(script, ["current_time"]), deps=ToolDeps())
    assert text == "Let me check. \n\nIt is noon."
    assert result.output == "It is noon."
    assert activity.records[0].ok is True


# ---------------------------------------------------------------- the guard


async def test_a_tool_that_raises_lets_the_run_finish() -> None:
    async def boom() -> str:
        raise RuntimeError("bug in the tool")

    script = Script([call("boom"), ["Recovered."]])
    text, activity, result = await stream_run(tool_agent(script, tools=[boom]))
    assert text == "Recovered."
    assert returns(result)[0].content == "RuntimeError: bug in the tool"
    assert activity.lines() == ["⚠️ boom · failed: RuntimeError: bug in the tool"]


async def test_tool_calls_per_run_are_capped() -> None:
    script = Script([call("current_time"), call("current_time"), call("current_time"), ["done"]])
    deps = ToolDeps(limits=ToolLimits(max_calls=2))
    text, activity, result = await stream_run(tool_agent(script, ["current_time"]), deps=deps)
    assert text == "done"
    assert [r.outcome for r in returns(result)] == ["success", "success", "failed"]
    assert str(returns(result)[2].content).startswith("refused: this run already made 2 tool calls")
    assert deps.usage.calls == 2
    assert [record.ok for record in activity.records] == [True, True, False]


async def test_tool_time_is_capped_per_call_and_per_run() -> None:
    release = asyncio.Event()

    async def wait_forever() -> str:
        await release.wait()
        return "never"

    script = Script([call("wait_forever"), call("wait_forever"), ["gave up"]])
    deps = ToolDeps(limits=ToolLimits(call_timeout=10, total_time=0.2))
    text, _, result = await stream_run(tool_agent(script, tools=[wait_forever]), deps=deps)
    assert text == "gave up"
    first, second = returns(result)
    assert first.content == "no result within 0.2 s"
    assert str(second.content).startswith("refused: this run used up its 0.2 s of tool time")


def test_usage_limits_add_a_hard_stop_on_tool_calls() -> None:
    limits = ToolLimits(max_calls=7).usage_limits(total_tokens_limit=1000)
    assert (limits.tool_calls_limit, limits.total_tokens_limit) == (14, 1000)


# ---------------------------------------------------------------- MCP


def mcp_spec(**kwargs: Any) -> McpServerSpec:
    return McpServerSpec(command=sys.executable, args=[MCP_SERVER], **kwargs)


def last_return(messages: list[ModelMessage]) -> ToolReturnPart | None:
    parts = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
    return parts[-1] if parts else None


async def test_an_agent_uses_an_mcp_tool() -> None:
    def answer(messages: list[ModelMessage]) -> list[str]:
        result = last_return(messages)
        assert result is not None
        return ["2 + 3 = ", str(result.content)]

    script = Script([call("add", a=2, b=3), answer])
    agent = Agent(
        script.model(), name="mcp-test", toolsets=[build_mcp_toolset(mcp_spec(), name="calc")]
    )
    text, activity, _ = await stream_run(agent)
    assert text == "2 + 3 = 5"
    assert activity.lines()[0].startswith("🔧 add 2, 3 · done in")


async def test_mcp_servers_are_shared_across_runs_and_restarted_when_dead() -> None:
    async with McpServers({"calc": mcp_spec(tool_prefix="calc")}) as servers:
        agent = Agent(
            Script([["unused"]]).model(),
            name="mcp-test",
            toolsets=servers.toolsets(["calc"]),
            capabilities=[tool_guard()],
        )

        async def run_pid_tool() -> list[ToolReturnPart]:
            def again_if_restarted(messages: list[ModelMessage]) -> Call | list[str]:
                result = last_return(messages)
                assert result is not None
                return call("calc_pid") if result.outcome == "failed" else ["ok"]

            with agent.override(model=Script([call("calc_pid"), again_if_restarted]).model()):
                return returns((await stream_run(agent))[2])

        first = await run_pid_tool()
        second = await run_pid_tool()
        assert first[0].content == second[0].content  # one process for both runs
        os.kill(int(first[0].content), signal.SIGKILL)
        dead, fresh = await run_pid_tool()
        assert dead.outcome == "failed"
        assert dead.content == "the MCP server had stopped and was restarted: call the tool again"
        assert fresh.outcome == "success"
        assert fresh.content != first[0].content
        assert await servers.problems() == {}
    assert await servers.problems() == {"calc": "not started"}


async def test_an_mcp_command_that_does_not_exist_is_a_config_error_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(
        ConfigError, match=r"MCP server 'gone' \(/no/such/server\) could not start: "
    ):
        await McpServers({"gone": McpServerSpec(command="/no/such/server")}).start()
    assert time.monotonic() - started < 5


async def test_an_mcp_server_that_never_answers_is_a_config_error_within_its_timeout() -> None:
    mute = McpServerSpec(
        command=sys.executable, args=["-c", "import time; time.sleep(60)"], start_timeout=0.5
    )
    servers = McpServers({"mute": mute, "calc": mcp_spec()})
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"MCP server 'mute' .* did not start within 0.5 s"):
        await servers.start()
    assert time.monotonic() - started < 5
    assert set(await servers.problems()) == {"mute", "calc"}  # the others were stopped


async def test_an_unreachable_mcp_url_is_a_config_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = McpServerSpec(url=f"http://127.0.0.1:{port}/mcp", start_timeout=3)
    with pytest.raises(ConfigError, match=r"MCP server 'web' .* could not start"):
        await McpServers({"web": spec}).start()


def test_mcp_server_specs_take_one_transport() -> None:
    for bad in (
        {},
        {"command": "x", "url": "http://h/mcp"},
        {"url": "ftp://h/"},
        {"url": "http://h/mcp", "args": ["-v"]},
        {"command": "x", "headers": {"A": "b"}},
    ):
        with pytest.raises(ValidationError):
            McpServerSpec(**bad)
    with pytest.raises(ConfigError, match="unknown MCP server 'nope'"):
        McpServers({}).toolset("nope")
