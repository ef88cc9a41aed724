"""How other Slack bots show a streamed answer, for comparison with agentbot's pacer.

Each strategy is a small bot of its own: it posts a message, reads the same scripted stream
through pydantic-ai and edits the message with `chat.update` through slack_sdk's
`AsyncWebClient`, against an emulator of its own that enforces Slack's limits.

- naive: an edit per chunk, awaited before the next chunk is read (the plain loop);
- every 20 chunks: an edit per 20 chunks, each sent without waiting (seratch/ChatGPT-in-Slack
  starts a thread per edit and joins them before the final edit);
- 256-char buffer: an edit each time 256 new characters have accumulated, awaited (what
  slack_sdk's `chat_stream()` does with `chat.appendStream` at its default `buffer_size`).

All three use slack_sdk's rate-limit retry handler with 2 retries (as ChatGPT-in-Slack
configures it), drop an interim edit that still fails, and end with one final edit of the
whole text. A stream that is not done `grace` seconds after its last token is cut off.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from pydantic_ai import Agent
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bench.streams import ScriptedModel, StreamFigures, analyse
from bot.playground.emulator import SlackEmulator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Strategy:
    name: str
    every_chunks: int | None = None  # edit after this many chunks…
    every_chars: int | None = None  # …or after this many new characters
    wait_for_edit: bool = True  # await each edit before reading on

    def due(self, chunks: int, chars: int) -> bool:
        if self.every_chunks is not None and chunks >= self.every_chunks:
            return True
        return self.every_chars is not None and chars >= self.every_chars


STRATEGIES = (
    Strategy("naive: edit per chunk", every_chunks=1),
    Strategy("every 20 chunks", every_chunks=20, wait_for_edit=False),
    Strategy("256-char buffer", every_chars=256),
)


@dataclass
class StrategyResult:
    strategy: Strategy
    figures: StreamFigures
    cut_off: int  # streams not done within the grace period


async def run_strategy(
    strategy: Strategy, *, model: ScriptedModel, channels: list[str], grace: float, secret: str
) -> StrategyResult:
    """The workload of `channels` (one stream each, all at once) through `strategy`."""
    emulator = SlackEmulator(signing_secret=secret, enforce_limits=True)
    await emulator.start()
    try:
        client = AsyncWebClient(token=emulator.bot_token, base_url=emulator.api_url)
        client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
        agent = Agent(model.model)

        async def one(channel: str) -> bool:
            try:
                async with asyncio.timeout(model.duration(channel) + grace):
                    await stream_reply(client, agent, channel, strategy)
            except TimeoutError:
                return False
            except SlackApiError as exc:
                log.info("%s: %s failed: %s", strategy.name, channel, exc.response.get("error"))
            return True

        done = await asyncio.gather(*(one(channel) for channel in channels))
        figures = analyse(emulator, model, channels, interval=1.0)
    finally:
        await emulator.close()
    return StrategyResult(strategy, figures, cut_off=done.count(False))


async def stream_reply(
    client: AsyncWebClient, agent: Agent[None, str], channel: str, strategy: Strategy
) -> None:
    posted = await client.chat_postMessage(channel=channel, text="…")
    ts = posted["ts"]
    text = ""
    chunks = chars = 0
    in_flight: set[asyncio.Task[None]] = set()
    try:
        async with agent.run_stream(f"stream {channel}") as result:
            async for delta in result.stream_text(delta=True, debounce_by=None):
                text += delta
                chunks += 1
                chars += len(delta)
                if not strategy.due(chunks, chars):
                    continue
                chunks = chars = 0
                edit = _interim_edit(client, channel, ts, text)
                if strategy.wait_for_edit:
                    await edit
                else:
                    task = asyncio.create_task(edit)
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(set(in_flight))
        await client.chat_update(channel=channel, ts=ts, text=text)
    finally:
        for task in in_flight:
            task.cancel()


async def _interim_edit(client: AsyncWebClient, channel: str, ts: str, text: str) -> None:
    try:
        await client.chat_update(channel=channel, ts=ts, text=text)
    except SlackApiError:
        pass  # these bots log it and go on
