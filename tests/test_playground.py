"""`agentbot playground`: the emulator, the real bot and the page in one process (no browser)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel

from bot.agents import AgentRegistry, BuiltAgent
from bot.config import DEMO_FAST_MODEL, DEMO_MODEL, AppConfig, Settings
from bot.demo import DEMO_SPEEDS
from bot.models import RunKind, RunQuery, RunRecord, RunStatus
from bot.playground.app import Playground, start_playground
from bot.playground.state import Message
from bot.tools import ToolDeps
from handlers.render import ANSWER_CHUNK_BYTES, STOP_ACTION_ID, utf8_len
from tests.conftest import wait_until
from tests.scripted import ScriptedModel
from tests.test_ask import all_text, answer_text

ROOT = Path(__file__).resolve().parent.parent
SIXTY_WORDS = " ".join(f"word{i}" for i in range(60))

PlaygroundFactory = Callable[..., Awaitable[Playground]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[PlaygroundFactory]:
    """Start playgrounds on 127.0.0.1, any free port, each with its own SQLite file."""
    started: list[Playground] = []

    async def starter(model: Model | None = None, **overrides: Any) -> Playground:
        values: dict[str, Any] = {
            "AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / f'pg{len(started)}.db'}",
            "AGENTBOT_UPDATE_INTERVAL": 0.2,
            **overrides,
        }
        playground = await start_playground(Settings(**values), AppConfig(), port=0, model=model)
        started.append(playground)
        return playground

    yield starter
    for playground in started:
        await playground.stop(grace=0)


async def post(playground: Playground, path: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{playground.url}{path}", json=body) as response:
            return response.status, await response.json()


async def get_json(playground: Playground, path: str) -> Any:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{playground.url}{path}") as response:
            assert response.status == 200
            return await response.json()


def finished(message: Message) -> bool:
    """The run's message has its final form: the footer, no Stop button."""
    no_buttons = not [b for b in message.blocks if b.get("type") == "actions"]
    return no_buttons and " out tokens" in all_text(message)


def stop_button(message: Message) -> dict[str, Any] | None:
    for block in message.blocks:
        if block.get("type") == "actions":
            for element in block["elements"]:
                if element["action_id"] == STOP_ACTION_ID:
                    return element
    return None


async def runs(playground: Playground) -> list[RunRecord]:
    return await playground.service.parts.store.query(RunQuery())


async def test_ask_from_the_page_streams_into_the_emulator(start):
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.005)
    playground = await start(script.model())
    emulator = playground.emulator

    status, answer = await post(playground, "/playground/send", {"text": "/ask hello"})
    assert status == 200
    assert answer["kind"] == "command" and answer["status"] == 200
    assert answer["ephemeral"] is None, "a good /ask is acknowledged silently"

    await emulator.wait_for(lambda: any(finished(m) for m in emulator.messages("C123")))
    [message] = emulator.messages("C123")
    assert answer_text(message) == script.text
    assert "`scripted`" in all_text(message)
    assert "<@U123> asked `/ask`: hello" in all_text(message)
    assert emulator.calls_to("chat.update"), "the answer grew by editing the message"

    async def recorded() -> bool:
        return any(r.status.is_final for r in await runs(playground))

    await wait_until(recorded, emulator)
    [run] = await runs(playground)
    assert run.status is RunStatus.SUCCEEDED and run.output == script.text
    assert (run.user_id, run.channel_id, run.prompt) == ("U123", "C123", "hello")


async def test_the_page_is_served_and_needs_nothing_from_outside(start):
    playground = await start(ScriptedModel(["x"]).model())
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{playground.url}/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            page = await response.text()
        assets = {}
        for name in ("app.js", "style.css"):
            async with http.get(f"{playground.url}/static/{name}") as response:
                assert response.status == 200, name
                assets[name] = await response.text()
    assert 'id="composer-input"' in page and "/static/app.js" in page
    assert "/emulator/events" in assets["app.js"] and "/playground/action" in assets["app.js"]
    external = re.compile(
        r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import"""
    )
    for name, text in {"index.html": page, **assets}.items():
        assert not external.search(text), f"{name} loads something from outside"


async def test_info_names_the_model_the_user_and_the_commands(start):
    playground = await start(ScriptedModel(["x"]).model())
    info = await get_json(playground, "/playground/info")
    assert info["model"] == "scripted" and info["demo"] is False
    assert info["user"] == {"id": "U123", "name": "you"}
    assert info["channel"] == {"id": "C123", "name": "general"}
    assert "/ask" in [c["command"] for c in info["commands"]]
    assert "U123" in playground.service.parts.settings.admins, "the playground user is an admin"


async def test_info_says_when_the_offline_demo_model_answers(start):
    playground = await start()  # no model, no AGENTBOT_MODEL: the demo model
    info = await get_json(playground, "/playground/info")
    assert info["model"] == "demo" and info["demo"] is True


async def test_the_feed_delivers_message_events_as_the_answer_grows(start):
    script = ScriptedModel.words(SIXTY_WORDS, delay=0.005)
    playground = await start(script.model())
    seen: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{playground.url}/emulator/events") as feed:
            assert feed.headers["Content-Type"].startswith("text/event-stream")
            assert (await feed.content.readline()).startswith(b": connected")
            await post(playground, "/playground/send", {"text": "/ask hello"})
            async with asyncio.timeout(15):
                async for line in feed.content:
                    if not line.startswith(b"data: "):
                        continue
                    event = json.loads(line[len(b"data: ") :])
                    seen.append(event)
                    message = event.get("message") or {}
                    blocks = message.get("blocks") or []
                    if event["type"] == "message" and not any(
                        b["type"] == "actions" for b in blocks
                    ):
                        if any(b.get("text") == script.text for b in blocks):
                            break
    changes = [e["change"] for e in seen if e["type"] == "message"]
    assert changes[0] == "posted" and "updated" in changes
    assert any(e["type"] == "call" and e["call"]["method"] == "chat.update" for e in seen)


async def test_an_unknown_command_says_it_is_not_available(start):
    playground = await start(ScriptedModel(["never"]).model())
    status, answer = await post(playground, "/playground/send", {"text": "/nope do things"})
    assert status == 200 and answer["status"] == 404
    assert "not available (yet)" in answer["ephemeral"]
    [shown] = playground.emulator.ephemerals("C123")
    assert shown.ephemeral_for == "U123" and "`/nope` is not available (yet)" in shown.text
    assert "`/ask`" in shown.text, "and names what is available"


async def test_the_bots_ack_text_is_shown_as_an_ephemeral(start):
    script = ScriptedModel(["never"])
    playground = await start(script.model())
    status, answer = await post(playground, "/playground/send", {"text": "/ask   "})
    assert status == 200 and "empty" in answer["ephemeral"]
    [shown] = playground.emulator.ephemerals("C123")
    assert "/ask <" in shown.text and shown.ephemeral_for == "U123"
    assert script.calls == []


async def test_stop_through_the_action_endpoint_cancels_the_run(start):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=10)
    playground = await start(script.model())
    emulator = playground.emulator
    await post(playground, "/playground/send", {"text": "/ask a long story"})
    await emulator.wait_for(
        lambda: any("word9" in answer_text(m) for m in emulator.messages("C123"))
    )
    [message] = emulator.messages("C123")
    button = stop_button(message)
    assert button is not None

    status, answer = await post(
        playground,
        "/playground/action",
        {
            "action_id": button["action_id"],
            "value": button["value"],
            "message_ts": message.ts,
            "channel": "C123",
        },
    )
    assert status == 200 and answer["status"] == 200
    await emulator.wait_for(lambda: "Stopped by" in all_text(emulator.messages("C123")[0]))
    assert stop_button(emulator.messages("C123")[0]) is None

    async def recorded() -> bool:
        return any(r.status.is_final for r in await runs(playground))

    await wait_until(recorded, emulator)
    [run] = await runs(playground)
    assert run.status is RunStatus.CANCELLED and "<@U123>" in run.error


async def test_plain_messages_are_posted_and_thread_replies_reach_the_bot(start):
    script = ScriptedModel.words("short answer")
    playground = await start(script.model())
    emulator = playground.emulator
    status, answer = await post(playground, "/playground/send", {"text": "hi <b>all</b>"})
    assert status == 200 and answer["kind"] == "message" and answer["delivered"] == []
    [said] = emulator.messages("C123")
    assert said.user == "U123" and said.text == "hi &lt;b&gt;all&lt;/b&gt;", "escaped as Slack does"

    await post(playground, "/playground/send", {"text": "/ask hello"})
    await emulator.wait_for(lambda: any(finished(m) for m in emulator.messages("C123")))
    parent = next(m for m in emulator.messages("C123") if m.bot_id)
    status, answer = await post(
        playground,
        "/playground/send",
        {"text": "thanks @agentbot", "thread_ts": parent.ts, "channel": "C123"},
    )
    assert status == 200
    assert len(answer["delivered"]) == 2, "a thread reply (message) that mentions the bot"
    reply = emulator.thread("C123", parent.ts)[-1]
    assert reply.user == "U123" and reply.text == "thanks <@UBOT>"
    assert emulator.message("C123", parent.ts).reply_count == 1


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/playground/send", {"text": "  "}, 400),
        ("/playground/send", {"text": "hi", "channel": "not a channel"}, 400),
        ("/playground/send", {"text": "hi", "thread_ts": "1.000001"}, 400),
        ("/playground/send", ["not", "an", "object"], 400),
        ("/playground/action", {"action_id": STOP_ACTION_ID, "message_ts": "1.000001"}, 404),
        ("/playground/action", {"message_ts": "1.000001"}, 400),
    ],
)
async def test_bad_requests_are_refused_clearly(start, path, body, expected):
    playground = await start(ScriptedModel(["never"]).model())
    status, answer = await post(playground, path, body)
    assert status == expected and answer["ok"] is False and answer["error"]


# -- the command as a user runs it ---------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """No Slack, agentbot or provider settings at all: the playground must need none."""
    keep = ("PATH", "HOME", "LANG", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(ROOT)
    return env


async def _read_url(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while line := (await process.stdout.readline()).decode():
            found = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if found:
                return found[0].rstrip("/")
    raise AssertionError("the playground printed no URL")


async def _healthy(http: aiohttp.ClientSession, url: str, *, timeout: float = 20.0) -> None:
    """Bounded polling for start-up: the process is separate, there is no event to wait on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            async with http.get(f"{url}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if loop.time() > deadline:
            raise TimeoutError("the playground never became healthy")
        await asyncio.sleep(0.1)


async def test_the_command_runs_with_no_configuration_and_stops_on_sigterm(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "playground",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_clean_env(),
        cwd=tmp_path,
    )
    try:
        url = await _read_url(process)
        async with aiohttp.ClientSession() as http:
            await _healthy(http, url)
            async with http.get(f"{url}/playground/info") as response:
                assert (await response.json())["demo"] is True
            async with http.get(f"{url}/emulator/events") as feed:
                await feed.content.readline()  # ": connected"
                async with http.post(f"{url}/playground/send", json={"text": "/ask hello"}):
                    pass
                final = await _final_message(feed)
                assert "Demo model" in final["text"] and "hello" in final["text"]
                # A page still following the feed does not hold the shutdown up.
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(20):
                    _, err = await process.communicate()
        assert process.returncode == 0, err.decode()[-2000:]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    # The run is real history, in ./agentbot.db where the playground ran.
    history = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "history",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_clean_env(),
        cwd=tmp_path,
    )
    async with asyncio.timeout(30):
        out, err = await history.communicate()
    assert history.returncode == 0, err.decode()
    [run] = json.loads(out)
    assert (run["prompt"], run["status"], run["model"]) == ("hello", "succeeded", "demo")
    assert run["user_id"] == "U123" and run["channel_id"] == "C123"


async def _final_message(feed: aiohttp.ClientResponse) -> dict[str, Any]:
    """Read the feed until the bot's message has its final form; return its answer block."""
    async with asyncio.timeout(30):
        async for line in feed.content:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[len(b"data: ") :])
            blocks = (event.get("message") or {}).get("blocks") or []
            footer = " ".join(
                e.get("text", "") for b in blocks if b["type"] == "context" for e in b["elements"]
            )
            if event["type"] == "message" and " out tokens" in footer:
                return next(b for b in blocks if b["type"] == "markdown")
    raise AssertionError("the feed ended before the answer was complete")


# -- the offline demo model shows every feature ----------------------------------------------


@pytest.fixture
def fast_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo models at test speed, still `demo-fast` ten times faster than `demo`."""
    monkeypatch.setitem(DEMO_SPEEDS, DEMO_MODEL, 100.0)
    monkeypatch.setitem(DEMO_SPEEDS, DEMO_FAST_MODEL, 1000.0)


def thread_answer(emulator: Any, channel: str, ts: str) -> str:
    """The whole answer across a message and its thread replies (the bot's, in order)."""
    return "".join(answer_text(m) for m in emulator.thread(channel, ts) if m.bot_id)


async def finished_runs(playground: Playground, count: int) -> list[RunRecord]:
    found: list[RunRecord] = []

    async def done() -> bool:
        nonlocal found
        found = [r for r in await runs(playground) if r.status.is_final]
        return len(found) >= count and len(playground.service.parts.background) == 0

    await wait_until(done, playground.emulator)
    return found


async def test_the_demo_writes_a_long_answer_that_continues_in_the_thread(start, fast_demo):
    playground = await start()  # no model, no AGENTBOT_MODEL: the demo model
    emulator = playground.emulator
    await post(playground, "/playground/send", {"text": "/ask write a long essay about bees"})
    [run] = await finished_runs(playground, 1)
    assert run.status is RunStatus.SUCCEEDED
    assert utf8_len(run.output) > 2 * ANSWER_CHUNK_BYTES, "more than two messages hold"

    [message] = emulator.messages("C123")
    replies = emulator.thread("C123", message.ts)[1:]
    assert len(replies) >= 2, "continued in thread replies"
    assert "continued in thread" in all_text(message)
    assert thread_answer(emulator, "C123", message.ts) == run.output, "no text dropped"


async def test_a_demo_follow_up_visibly_uses_the_earlier_turns(start, fast_demo):
    playground = await start()
    emulator = playground.emulator
    await post(playground, "/playground/send", {"text": "/ask tell me about otters"})
    await finished_runs(playground, 1)
    [parent] = emulator.messages("C123")

    await post(
        playground,
        "/playground/send",
        {"text": "and sea lions?", "thread_ts": parent.ts, "channel": "C123"},
    )
    runs_now = await finished_runs(playground, 2)
    followup = next(r for r in runs_now if r.kind is RunKind.FOLLOWUP)
    assert "turn 2 of our conversation" in followup.output
    assert "Before this you asked “tell me about otters”" in followup.output
    shown = "".join(answer_text(m) for m in emulator.thread("C123", parent.ts)[1:] if m.bot_id)
    assert "tell me about otters" in shown, "the reply in the thread shows it"


async def test_a_demo_question_about_the_time_calls_the_time_tool(start, fast_demo):
    playground = await start()
    emulator = playground.emulator
    await post(playground, "/playground/send", {"text": "/ask what time is it in Europe/Paris?"})
    [run] = await finished_runs(playground, 1)
    assert run.status is RunStatus.SUCCEEDED
    assert [call["name"] for call in run.tool_calls or []] == ["current_time"]
    assert "I called the `current_time` tool. It says:" in run.output
    assert "Europe/Paris" in run.output, "with the time zone the prompt named"
    [message] = emulator.messages("C123")
    assert "🔧 current_time" in all_text(message), "the footer shows the tool"
    live = [json.dumps(call.args.get("blocks")) for call in emulator.calls_to("chat.update")]
    assert any("current_time" in b and STOP_ACTION_ID in b for b in live), "and the live line"


async def test_demo_compare_runs_two_demo_models_of_different_speeds(start, fast_demo):
    playground = await start()
    emulator = playground.emulator
    await post(playground, "/playground/send", {"text": "/compare which is faster?"})
    found = await finished_runs(playground, 3)
    children = {r.model: r for r in found if r.kind is RunKind.COMPARE}
    assert set(children) == {DEMO_MODEL, DEMO_FAST_MODEL}
    assert all(r.status is RunStatus.SUCCEEDED for r in children.values())
    slow, fast = children[DEMO_MODEL], children[DEMO_FAST_MODEL]
    assert (slow.duration_ms or 0) > (fast.duration_ms or 0)
    [parent] = emulator.messages("C123")
    headings = [all_text(m) for m in emulator.thread("C123", parent.ts)[1:]]
    assert any(f"`{DEMO_FAST_MODEL}`" in text for text in headings)


def test_compare_falls_back_to_two_demo_models_only_on_the_demo():
    assert Settings().compare_models == (DEMO_MODEL, DEMO_FAST_MODEL)
    assert Settings(AGENTBOT_MODEL="openai-chat:gpt-4o-mini").compare_models == ()
    assert Settings(AGENTBOT_COMPARE_MODELS="demo,x:y").compare_models == ("demo", "x:y")


async def _tool_names(built: BuiltAgent) -> list[str]:
    seen: list[str] = []

    async def stream(messages: list[Any], info: AgentInfo) -> AsyncIterator[str]:
        seen.extend(tool.name for tool in info.function_tools)
        yield "ok"

    with built.agent.override(model=FunctionModel(stream_function=stream)):
        async with built.agent.run_stream("hi", deps=ToolDeps()) as result:
            await result.get_output()
    return seen


async def test_only_agents_on_a_demo_model_get_the_time_tool():
    demo = AgentRegistry(AppConfig(), Settings())
    assert await _tool_names(demo.get("assistant")) == ["current_time"]
    assert await _tool_names(demo.with_model("assistant", DEMO_FAST_MODEL)) == ["current_time"]
    real = AgentRegistry(AppConfig(), Settings(AGENTBOT_MODEL="test"))
    assert await _tool_names(real.get("assistant")) == []


async def test_a_dm_to_the_bot_is_answered_in_the_dm(start, fast_demo):
    playground = await start()
    emulator = playground.emulator
    info = await get_json(playground, "/playground/info")
    dm = info["dm"]["id"]
    assert dm.startswith("D") and info["dm"]["name"] == "agentbot"
    status, answer = await post(playground, "/playground/send", {"text": "hi", "channel": dm})
    assert status == 200 and answer["delivered"] == [200]
    await finished_runs(playground, 1)
    assert any(m.bot_id and "You asked: “hi”" in answer_text(m) for m in emulator.messages(dm))
    assert emulator.messages("C123") == []
