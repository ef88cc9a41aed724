"""The playground page in a real browser: Debian's Chromium, headless, driven by Playwright.

Skipped when /usr/bin/chromium or the `playwright` package is missing (`playwright install`
cannot download browsers here; `.ci/run` installs Chromium with apt when it can).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from bot.config import AppConfig, Settings
from bot.demo import demo_plan, last_prompt
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
    set; answers anything else with an endless slow stream (until stopped); gives a team's
    planner the demo's plan."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def model(self) -> FunctionModel:
        return FunctionModel(stream_function=self._stream, model_name="scripted")

    async def _stream(
        self, messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        if info.output_tools:  # a team's planner: the demo's plan, one subtask per role
            plan = json.dumps(demo_plan(last_prompt(messages)))
            yield {0: DeltaToolCall(name=info.output_tools[0].name, json_args=plan)}
        elif "hello" in last_prompt(messages):
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
            # A fixed zone and locale, so that dates Slack formats for the reader are known.
            yield await browser.new_page(
                viewport={"width": 1440, "height": 900}, timezone_id="UTC", locale="en-US"
            )
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
    # The time column says what it measures.
    column = page.locator(".calls-columns > span").first
    await expect(column).to_have_text("s since start")
    assert "since the playground started" in (await column.get_attribute("title") or "")
    first_time = page.locator("#calls .call .call-time").last
    await expect(first_time).to_have_attribute("title", re.compile("after the playground started"))
    await expect(first_time).to_have_text(re.compile(r"^\d+\.\d{3} s$"))
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


async def test_slack_markup_renders_as_slack_shows_it(playground, page):
    from slack_sdk.web.async_client import AsyncWebClient

    pg, script = playground
    script.gate.set()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect.set_options(timeout=15_000)
    await page.goto(f"{pg.url}/")
    await expect(page.locator("#connection")).to_have_text("live")
    # A person the page has not heard of yet: it asks the emulator, which knows users.info's.
    pg.emulator.state.add_user("U777", "carol", real_name="Carol")

    mrkdwn = (
        "Due <!date^1700000000^{date_num} at {time}|Nov 14, 2023>; ask <@U123> or <@U777> "
        "in <#C123> or <#C999|random>. Escaped: &lt;!here&gt; &amp; &lt;b&gt;. Real: <!here>. "
        "See <https://example.com/a?b=1&amp;c=2|the docs>, `a &lt; b`, "
        "<!date^nope^{date}|the fallback> and <!date^1700000000^{bogus}|another fallback>."
        "\n```if a &lt; b:\n    ping(<@U123>)```"
    )
    markdown = (
        "Markdown: <@U123> wrote `x &lt; y`; &lt;!channel&gt; stays text.\n\n"
        "```\n1 &lt; 2 &amp;&amp; 3 &gt; 2\n```"
    )
    client = AsyncWebClient(token=pg.emulator.bot_token, base_url=pg.emulator.api_url)
    await client.chat_postMessage(
        channel="C123",
        text="markup",
        blocks=[
            {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}},
            {"type": "markdown", "text": markdown},
        ],
    )
    message = page.locator("#channel-messages .message.from-bot").last
    section = message.locator(".block.section")
    await expect(section).to_contain_text("Due 2023-11-14 at 10:13 PM;")
    await expect(section.locator("time.slack-date")).to_have_attribute("title", "Nov 14, 2023")
    await expect(section).to_contain_text("ask @you or @carol in #general or #random.")
    await expect(section).to_contain_text("Escaped: <!here> & <b>. Real: @here.")
    await expect(section.locator(".mention.broadcast")).to_have_count(1)
    docs = section.locator("a", has_text="the docs")
    await expect(docs).to_have_attribute("href", "https://example.com/a?b=1&c=2")
    await expect(section.locator("code").first).to_have_text("a < b")
    await expect(section).to_contain_text("the fallback and another fallback.")
    await expect(section.locator("pre")).to_have_text("if a < b:\n    ping(@you)")
    block = message.locator(".block.markdown")
    await expect(block).to_contain_text("Markdown: @you wrote x < y; <!channel> stays text.")
    await expect(block.locator("pre")).to_have_text("1 < 2 && 3 > 2")
    await expect(block.locator(".mention.broadcast")).to_have_count(0)
    shown = await message.inner_text()
    for raw in ("<@", "<#", "<!date", "&lt;", "&gt;", "&amp;", "{date"):
        assert raw not in shown, raw

    # /history, in the playground, shows dates, people and channels: no raw markup.
    composer = page.locator("#composer-input")
    await composer.fill("/ask hello")
    await composer.press("Enter")
    answer = page.locator("#channel-messages .message.from-bot").last
    await expect(answer.locator(".context").last).to_contain_text(" out tokens")
    await composer.fill("/history")
    await composer.press("Enter")
    history = page.locator("#channel-messages .message.ephemeral", has_text="Latest 1 run")
    await expect(history).to_contain_text("Latest 1 run")
    await expect(history).to_contain_text("@you · #general · Today ")
    details = history.locator("button", has_text="Details")
    await details.click()
    detail = page.locator("#channel-messages .message.ephemeral").last
    await expect(detail).to_contain_text("@you in #general Today ")
    await expect(details).to_be_enabled()  # ready again once the bot answered, as in Slack
    for shown in (await history.inner_text(), await detail.inner_text()):
        for raw in ("<@", "<#", "<!", "&lt;", "&gt;", "&amp;", "{date", "{time"):
            assert raw not in shown, raw
    assert errors == []


async def test_stop_on_a_team_parent_shows_at_once_on_the_parent_and_every_reply(playground, page):
    pg, _ = playground
    expect.set_options(timeout=20_000)
    await page.goto(f"{pg.url}/")
    composer = page.locator("#composer-input")
    await composer.fill("/team plan a picnic")
    await composer.press("Enter")
    parent = page.locator("#channel-messages .message.from-bot").first
    await expect(parent.locator(".replies-count")).to_have_text("4 replies")
    await parent.locator(".replies").click()
    stops = page.locator("#thread-messages button[data-action-id='stop_run']")
    await expect(stops).to_have_count(5)  # the parent's and one per subtask
    await expect(page.locator("#thread-messages .message.from-bot").last).to_contain_text("tick")

    # Slack holds every edit back for a while: what shows now is the page's own doing.
    pg.emulator.inject("chat.update", delay=6.0, times=None)
    await parent.locator("button", has_text="Stop").click()
    quick = {"timeout": 3_000}
    await expect(parent.locator("button", has_text="Stopping…")).to_be_disabled(**quick)
    await expect(parent).to_contain_text("⏹️ Stopping…", **quick)
    stopping = page.locator("#thread-messages .message.stopping")
    await expect(stopping).to_have_count(5, **quick)
    await expect(page.locator("#thread-messages button", has_text="Stopping…")).to_have_count(
        5, **quick
    )

    # Then the bot's own edits end every part, and the parent.
    pg.emulator.clear_faults("chat.update")
    await expect(parent).to_contain_text("Stopped by @you")
    await expect(parent.locator("button", has_text=re.compile("Stop"))).to_have_count(0)
    replies = page.locator("#thread-messages .message.from-bot")
    await expect(replies.filter(has_text="Stopped by @you")).to_have_count(5)
    await expect(stops).to_have_count(0)
    await expect(stopping).to_have_count(0)


async def test_a_live_footer_keeps_moving_while_no_edit_comes(playground, page):
    pg, script = playground
    expect.set_options(timeout=15_000)
    await page.goto(f"{pg.url}/")
    composer = page.locator("#composer-input")
    await composer.fill("/ask hello")
    await composer.press("Enter")
    answer = page.locator("#channel-messages .message.from-bot").first
    # The model pauses before this word: the bot has no new text, so it sends no edit.
    await expect(answer.locator(".markdown")).to_contain_text(WORDS[PAUSE_AT - 1])
    footer = answer.locator(".context", has_text="tok/s")
    await expect(footer).to_have_text(re.compile(r"^✍️ ~\d+ tokens · \d+ tok/s · \d+ s$"))
    [message] = pg.emulator.messages("C123")
    edits = message.edits
    first = int(re.findall(r"(\d+) s$", await footer.inner_text())[0])
    await page.wait_for_function(
        """([first]) => {
            const footer = [...document.querySelectorAll("#channel-messages .context")]
                .find((node) => node.textContent.includes("tok/s"));
            const found = footer && footer.textContent.match(/(\\d+) s$/);
            return found && Number(found[1]) >= first + 2;
        }""",
        arg=[first],
        timeout=15_000,
    )
    assert message.edits == edits, "the page moved the footer, not a Slack write"
    assert WORDS[PAUSE_AT] not in answer_text_of(message)
    script.gate.set()
    await expect(answer.locator(".context").last).to_contain_text(" out tokens")
    await expect(answer.locator(".ticking")).to_have_count(0)


def answer_text_of(message) -> str:
    return "".join(b["text"] for b in message.blocks if b.get("type") == "markdown")


async def test_agentbot_under_apps_opens_the_dm(playground, page):
    pg, script = playground
    script.gate.set()
    expect.set_options(timeout=15_000)
    await page.goto(f"{pg.url}/")
    await expect(page.locator("#connection")).to_have_text("live")
    await page.locator(".sidebar a", has_text="agentbot").click()
    await expect(page.locator("#channel-name")).to_have_text("agentbot")
    await expect(page.locator("#composer-input")).to_have_attribute(
        "placeholder", "Message agentbot"
    )
    assert page.url.endswith("#dm")

    composer = page.locator("#composer-input")
    await composer.fill("hello")
    await composer.press("Enter")
    answer = page.locator("#channel-messages .message.from-bot")
    await expect(answer.locator(".context").last).to_contain_text(" out tokens")
    await expect(answer.locator(".markdown")).to_contain_text(" ".join(WORDS))
    dm = await page.evaluate("window.agentbotPlayground.store.info.dm.id")
    assert pg.emulator.messages(dm)[0].user == "U123"
    assert any(m.bot_id for m in pg.emulator.messages(dm))
    assert pg.emulator.messages("C123") == []

    # Back to #general: the DM's messages are not in the channel.
    await page.locator(".sidebar a", has_text="general").click()
    await expect(page.locator("#channel-name")).to_have_text("general")
    await expect(page.locator("#channel-messages .message")).to_have_count(0)
    # And a reload of the DM's address opens the DM again.
    await page.goto(f"{pg.url}/#dm")
    await expect(page.locator("#channel-name")).to_have_text("agentbot")
    await expect(page.locator("#channel-messages .message.from-bot")).to_have_count(1)
