"""The playground page in a real browser: Debian's Chromium, headless, driven by Playwright.

Skipped when /usr/bin/chromium or the `playwright` package is missing (`playwright install`
cannot download browsers here; `.ci/run` installs Chromium with apt when it can).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from bot.config import AppConfig, Settings
from bot.demo import last_prompt
from bot.playground.app import Playground, start_playground

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"
)
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the playwright package is missing (pip install playwright)"
)
expect = playwright_api.expect

WORDS = [f"w{i}" for i in range(40)]
PAUSE_AT = 12
HELLO_ANSWER = "Here is **bold**, some `code` and <b>no html</b>:\n\n- one\n- two\n\n" + " ".join(
    WORDS
)


class GatedModel:
    """Answers "hello" with `HELLO_ANSWER`, pausing before word `PAUSE_AT` until `gate` is
    set; answers anything else with an endless slow stream (until stopped)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def model(self) -> FunctionModel:
        return FunctionModel(stream_function=self._stream, model_name="scripted")

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        if "hello" in last_prompt(messages):
            head, _, _ = HELLO_ANSWER.partition(WORDS[0])
            yield head
            for i, word in enumerate(WORDS):
                if i == PAUSE_AT:
                    await self.gate.wait()
                yield word + (" " if i < len(WORDS) - 1 else "")
        else:
            for i in range(10_000):
                yield f"tick{i} "
                await asyncio.sleep(0.05)


@pytest.fixture
async def playground(tmp_path: Path) -> AsyncIterator[tuple[Playground, GatedModel]]:
    script = GatedModel()
    settings = Settings(
        AGENTBOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'browser.db'}",
        AGENTBOT_UPDATE_INTERVAL=0.2,
    )
    started = await start_playground(settings, AppConfig(), port=0, model=script.model())
    try:
        yield started, script
    finally:
        script.gate.set()
        await started.stop(grace=0)


@pytest.fixture
async def page():
    async with playwright_api.async_playwright() as driver:
        browser = await driver.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield await browser.new_page(viewport={"width": 1440, "height": 900})
        finally:
            await browser.close()


async def test_ask_grows_live_stop_stops_and_api_calls_are_listed(playground, page):
    pg, script = playground
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect.set_options(timeout=15_000)

    await page.goto(f"{pg.url}/")
    await expect(page.locator("#connection")).to_have_text("live")
    await expect(page.locator("#model-badge")).to_have_text("Model: scripted")

    composer = page.locator("#composer-input")
    await composer.fill("/ask hello")
    await composer.press("Enter")
    answer = page.locator("#channel-messages .message.from-bot").first
    text = answer.locator(".markdown")

    # Mid-stream: the text so far, the live footer and the Stop button; no later word yet.
    await expect(text).to_contain_text(WORDS[PAUSE_AT - 1])
    assert WORDS[PAUSE_AT] not in await text.inner_text()
    await expect(answer.locator("button", has_text="Stop")).to_be_visible()
    await expect(answer.locator(".context").last).to_contain_text("tok/s")

    script.gate.set()
    await expect(answer.locator(".context").last).to_contain_text(" out tokens")
    await expect(text).to_contain_text(" ".join(WORDS))
    await expect(answer.locator("button", has_text="Stop")).to_have_count(0)
    await expect(answer.locator(".context").first).to_contain_text("@you asked /ask: hello")
    # Markdown rendered, and a message's HTML shown as text, never injected.
    await expect(text.locator("strong")).to_have_text("bold")
    await expect(text.locator("code")).to_have_text("code")
    await expect(text.locator("li")).to_have_text(["one", "two"])
    await expect(text.locator("b")).to_have_count(0)
    await expect(text).to_contain_text("<b>no html</b>")

    # A second run, stopped from its button.
    await composer.fill("/ask tell me a long story")
    await composer.press("Enter")
    second = page.locator("#channel-messages .message.from-bot").nth(1)
    await expect(second.locator(".markdown")).to_contain_text("tick3")
    await second.locator("button", has_text="Stop").click()
    await expect(second).to_contain_text("Stopped by @you")
    await expect(second.locator("button", has_text="Stop")).to_have_count(0)

    # An unknown command gets an ephemeral only the user sees.
    await composer.fill("/nope")
    await composer.press("Enter")
    ephemeral = page.locator("#channel-messages .message.ephemeral")
    await expect(ephemeral).to_contain_text("Only visible to you")
    await expect(ephemeral).to_contain_text("/nope is not available (yet)")

    # The API-calls panel lists the edits as they happened.
    calls = page.locator("#calls .call")
    await expect(calls.filter(has_text="chat.update").first).to_be_visible()
    await expect(calls.filter(has_text="chat.postMessage").first).to_contain_text("ok")
    await expect(page.locator("#call-count")).to_have_text(str(len(pg.emulator.calls)))
    assert errors == []


async def test_a_native_streams_tool_calls_show_as_task_cards(playground, page):
    from slack_sdk.web.async_client import AsyncWebClient

    pg, _ = playground
    expect.set_options(timeout=15_000)
    client = AsyncWebClient(token=pg.emulator.bot_token, base_url=pg.emulator.api_url)
    parent = await client.chat_postMessage(channel="C123", text="what does the page say?")
    stream = await client.chat_startStream(
        channel="C123", thread_ts=parent["ts"], markdown_text="Let me look. "
    )
    card = {"type": "task_update", "id": "call1", "title": "fetch_url example.com"}
    await client.chat_appendStream(
        channel="C123", ts=stream["ts"], chunks=[{**card, "status": "in_progress"}]
    )

    await page.goto(f"{pg.url}/")
    await page.locator("#channel-messages .replies").first.click()
    reply = page.locator("#thread-messages .message.from-bot").last
    task = reply.locator(".tasks-timeline .task")
    await expect(task).to_have_class("task task-in_progress")
    await expect(task).to_contain_text("fetch_url example.com")

    await client.chat_stopStream(
        channel="C123",
        ts=stream["ts"],
        chunks=[
            {**card, "status": "complete", "output": "done in 0.4 s"},
            {"type": "markdown_text", "text": "It says to ship on Tuesday."},
        ],
    )
    await expect(task).to_have_class("task task-complete")
    await expect(task).to_contain_text("done in 0.4 s")
    await expect(reply).to_contain_text("Let me look. It says to ship on Tuesday.")
