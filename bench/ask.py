"""`/ask` figures against the emulator: slash-command ack latency and Slack writes per answer.

    python -m bench.ask [--commands 100]

Runs the real server (aiohttp + Bolt + runner + pacer + SQLite) on 127.0.0.1 with the Slack
emulator as Slack and a scripted streaming model, and prints:
- ack latency of one `/ask` at a time (p50/p99 of 20) and of 100 arriving at once;
- for a 60-word answer streamed over 4 s at the default 1 s interval: `chat.update` calls,
  Slack writes in all, and the time from the last token to the final text in Slack.
The load generator shares the bot's event loop, so the latencies include its own work.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from bot.config import AppConfig, Settings
from bot.models import RunQuery
from bot.playground.emulator import SlackEmulator
from bot.server import Service, build_parts

SECRET = "bench-secret"


def streaming_model(words: int, seconds: float, last_token_at: list[float]) -> FunctionModel:
    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        for i in range(words):
            await asyncio.sleep(seconds / words)
            if i == words - 1:
                last_token_at.append(time.monotonic())
            yield f"word{i} "

    return FunctionModel(stream_function=stream, model_name="bench")


async def start(emulator: SlackEmulator, db: Path, model: FunctionModel, **env: object) -> Service:
    settings = Settings(
        SLACK_BOT_TOKEN=emulator.bot_token,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=emulator.api_url,
        AGENTBOT_DATABASE_URL=f"sqlite+aiosqlite:///{db}",
        **env,
    )
    service = Service(await build_parts(settings, AppConfig(), model=model))
    await service.start(host="127.0.0.1", port=0)
    return service


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(commands: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        emulator = SlackEmulator(signing_secret=SECRET)
        await emulator.start()
        try:
            await ack_latency(emulator, Path(tmp) / "ack.db", commands)
            await one_answer(Path(tmp) / "answer.db")
            await one_team(Path(tmp) / "team.db")
        finally:
            await emulator.close()


async def ack_latency(emulator: SlackEmulator, db: Path, commands: int) -> None:
    # A one-word model and a large edit budget: this measures the ack, not the streaming.
    service = await start(
        emulator,
        db,
        streaming_model(1, 0.0, []),
        AGENTBOT_CHAT_UPDATE_PER_MINUTE=10_000,
        AGENTBOT_USER_RUNS_PER_MINUTE=100_000,  # one user sends them all
    )
    url = f"http://127.0.0.1:{service.port}/slack/events"
    try:
        await emulator.send_slash_command(url, "/ask", "warm-up")  # Bolt's first auth.test
        one = [(await emulator.send_slash_command(url, "/ask", f"q{i}")).latency for i in range(20)]
        deliveries = await asyncio.gather(
            *(
                emulator.send_slash_command(url, "/ask", f"burst {i}", channel_id=f"C{i:04}")
                for i in range(commands)
            )
        )
        assert all(d.status == 200 for d in deliveries)
        burst = [d.latency for d in deliveries]
        await service.parts.runner.live.wait_idle(120)
        # Mentions: their ack waits for the database to say the event is new (dedupe
        # shared by every process), then hands the run to the background.
        mentions = []
        for i in range(20):
            posted = emulator.post_user_message("C123", "U123", f"<@UBOT> m{i}")
            event = emulator.message_event(posted, mention=True)
            mentions.append((await emulator.send_event(url, event)).latency)
        await service.parts.background.wait(60)
    finally:
        await service.stop(grace=30)
    ms = 1000
    print(
        f"ack, one at a time (20):     p50 {pct(one, 0.5) * ms:6.1f} ms   "
        f"p99 {pct(one, 0.99) * ms:6.1f} ms"
    )
    print(
        f"ack, {commands} at once:           p50 {pct(burst, 0.5) * ms:6.1f} ms   "
        f"p99 {pct(burst, 0.99) * ms:6.1f} ms   max {max(burst) * ms:6.1f} ms"
    )
    print(
        f"mention ack, one at a time (20): p50 {pct(mentions, 0.5) * ms:6.1f} ms   "
        f"p99 {pct(mentions, 0.99) * ms:6.1f} ms"
    )


async def one_answer(db: Path) -> None:
    emulator = SlackEmulator(signing_secret=SECRET)
    await emulator.start()
    last_token: list[float] = []
    service = await start(emulator, db, streaming_model(60, 4.0, last_token))
    url = f"http://127.0.0.1:{service.port}/slack/events"
    try:
        await emulator.send_slash_command(url, "/ask", "sixty words please")
        await emulator.wait_for(
            lambda: any(
                "word59" in str(m.blocks)
                and "tok/s" in str(m.blocks)
                and not any(b.get("type") == "actions" for b in m.blocks)
                for m in emulator.messages("C123")
            ),
            timeout=30,
        )
        final_at = emulator.calls_to("chat.update")[-1].at
        await service.parts.runner.live.wait_idle(10)
        [run] = await service.parts.store.query(RunQuery(limit=1))
    finally:
        await service.stop(grace=5)
        await emulator.close()
    updates = len(emulator.calls_to("chat.update"))
    print(
        f"60-word answer over 4 s:      chat.update {updates}, Slack writes {run.slack_writes}, "
        f"run {run.duration_ms} ms, last token → final text in Slack "
        f"{(final_at - last_token[0]) * 1000:.0f} ms"
    )


async def one_team(db: Path) -> None:
    """A 4-subtask /team with the offline demo model (about 4 s per answer) at the defaults."""
    emulator = SlackEmulator(signing_secret=SECRET, enforce_limits=True)
    await emulator.start()
    settings = Settings(
        SLACK_BOT_TOKEN=emulator.bot_token,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=emulator.api_url,
        AGENTBOT_DATABASE_URL=f"sqlite+aiosqlite:///{db}",
    )
    service = Service(await build_parts(settings, AppConfig()))
    await service.start(host="127.0.0.1", port=0)
    try:
        started = time.monotonic()
        url = f"http://127.0.0.1:{service.port}/slack/events"
        await emulator.send_slash_command(url, "/team", "plan a team offsite")
        await emulator.wait_for(lambda: len(emulator.calls_to("chat.postMessage")) >= 1)
        await service.parts.background.wait(120)
        elapsed = time.monotonic() - started
        runs = await service.parts.store.query(RunQuery(limit=10))
    finally:
        await service.stop(grace=5)
        await emulator.close()
    writes = sum(r.slack_writes for r in runs)
    children = len([r for r in runs if r.parent_id])
    print(
        f"/team, 4 subtasks (demo model): {len(runs)} runs ({children} children), "
        f"Slack writes {writes} ({len(emulator.calls_to('chat.postMessage'))} posts, "
        f"{len(emulator.calls_to('chat.update'))} updates), "
        f"429s {sum(emulator.rate_limited.values())}, {elapsed:.1f} s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=100)
    asyncio.run(main(parser.parse_args().commands))
