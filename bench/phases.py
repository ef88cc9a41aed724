"""The bot's side of `python -m bench`: each phase starts the real server (`build_parts` +
`Service` on 127.0.0.1, SQLite in a temporary directory) and a fresh Slack emulator that
enforces Slack's limits, drives a workload into it and reads the figures.

Phases that spread runs over several workspaces (the ack burst, the 200 runs) raise the
emulator's `chat.update` limit to 50 a minute per workspace: the emulator counts one window
for all teams, while the bot keeps one budget per team.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from bench import load
from bench.ask import SECRET, start
from bench.streams import LoopLag, ScriptedModel, StreamFigures, analyse
from bot.playground.emulator import SlackEmulator
from bot.playground.state import Limit
from bot.server import Service

UPDATES_PER_MINUTE = 50  # Slack's Tier 3, per workspace (DESIGN.md §4)
WORKSPACES = 10


@dataclass
class AckFigures:
    separate: list[float]  # seconds, load from a child process
    in_process: list[float]  # seconds, load from the bot's own event loop
    all_ok: bool


@dataclass
class LoadFigures:
    runs: int
    lags: list[float]  # loop lag samples while the runs stream
    cpu: float  # process CPU time / wall time while the runs stream
    window: float  # seconds from the burst to the last token
    acks: list[float]
    figures: StreamFigures


def channels(count: int, first: int = 0) -> list[str]:
    return [f"C{i:04}" for i in range(first, first + count)]


def team_of(index: int, workspaces: int) -> str:
    return f"T{index % workspaces + 1:04}"


async def emulator_for(workspaces: int = 1) -> SlackEmulator:
    emulator = SlackEmulator(signing_secret=SECRET, enforce_limits=True)
    if workspaces > 1:
        emulator.set_limits(limits={"chat.update": Limit(UPDATES_PER_MINUTE * workspaces)})
    await emulator.start()
    return emulator


def url_of(service: Service) -> str:
    return f"http://127.0.0.1:{service.port}/slack/events"


async def warm_up(emulator: SlackEmulator, service: Service) -> None:
    """Bolt's first `auth.test` and the first database session; an empty prompt starts no
    run, so no Slack write is spent."""
    await emulator.send_slash_command(url_of(service), "/ask", "", channel_id="CWARMUP")


async def finish_work(service: Service, timeout: float) -> None:
    if not await service.parts.background.wait(timeout):
        raise TimeoutError(f"runs still going after {timeout:.0f} s")


def commands_for(
    emulator: SlackEmulator, names: list[str], *, workspaces: int, first_user: int = 0
) -> list[load.Command]:
    out = []
    for i, channel in enumerate(names):
        user = f"U{first_user + i:05}"
        out.append(
            load.Command(
                command="/ask",
                text=f"stream {channel}",
                channel=channel,
                user=user,
                team=team_of(i, workspaces),
                response_url=emulator.new_response_url(channel, user),
            )
        )
    return out


async def ack_latency(commands: int, *, seed: int, tmp: Path) -> AckFigures:
    """`commands` slash commands at once, from a child process, then from the bot's loop;
    every command starts a one-second streamed answer."""
    emulator = await emulator_for(WORKSPACES)
    model = ScriptedModel(tokens=30, rate=30.0, seed=seed)
    service = await start(emulator, tmp / "ack.db", model.model)
    try:
        await warm_up(emulator, service)
        job = commands_for(emulator, channels(commands), workspaces=WORKSPACES)
        separate = await load.burst(url_of(service), SECRET, job)
        await finish_work(service, 120)
        second = channels(commands, first=commands)
        deliveries = await asyncio.gather(
            *(
                emulator.send_slash_command(
                    url_of(service),
                    "/ask",
                    f"stream {channel}",
                    channel_id=channel,
                    user_id=f"U{commands + i:05}",
                    team_id=team_of(i, WORKSPACES),
                )
                for i, channel in enumerate(second)
            )
        )
        await finish_work(service, 120)
    finally:
        await service.stop(grace=5)
        await emulator.close()
    all_ok = all(a.status == 200 for a in separate) and all(d.status == 200 for d in deliveries)
    return AckFigures([a.latency for a in separate], [d.latency for d in deliveries], all_ok)


async def concurrent_streams(count: int, *, model: ScriptedModel, tmp: Path) -> StreamFigures:
    """`count` streamed answers at once in one workspace, each in its own channel."""
    emulator = await emulator_for()
    service = await start(emulator, tmp / f"streams-{count}.db", model.model)
    names = channels(count)
    try:
        await warm_up(emulator, service)
        deliveries = await asyncio.gather(
            *(
                emulator.send_slash_command(
                    url_of(service),
                    "/ask",
                    f"stream {channel}",
                    channel_id=channel,
                    user_id=f"U{i:05}",
                )
                for i, channel in enumerate(names)
            )
        )
        assert all(d.status == 200 for d in deliveries), [d.status for d in deliveries]
        longest = max(model.duration(c) for c in names)
        # Slack's ceiling: every final needs one update of the workspace's 50 a minute.
        await finish_work(service, longest + count * 60 / UPDATES_PER_MINUTE * 2 + 30)
        interval = service.parts.settings.update_interval
    finally:
        await service.stop(grace=5)
        await emulator.close()
    return analyse(emulator, model, names, interval=interval)


async def many_runs(runs: int, *, model: ScriptedModel, tmp: Path) -> LoadFigures:
    """`runs` streamed answers at once over `WORKSPACES` workspaces; event-loop lag and CPU
    from the burst until the last token was generated."""
    emulator = await emulator_for(WORKSPACES)
    service = await start(
        emulator, tmp / "load.db", model.model, AGENTBOT_MAX_CONCURRENT_RUNS=max(runs, 50)
    )
    names = channels(runs)
    ticker = LoopLag()
    try:
        await warm_up(emulator, service)
        ticker.start()
        job = commands_for(emulator, names, workspaces=WORKSPACES)
        answers = await load.burst(url_of(service), SECRET, job)
        longest = max(model.duration(c) for c in names)
        await model.wait_finished(runs, timeout=longest + 120)
        last_token = time.monotonic()
        per_workspace = runs / WORKSPACES
        await finish_work(service, longest + per_workspace * 60 / UPDATES_PER_MINUTE * 2 + 60)
        interval = service.parts.settings.update_interval
    finally:
        await ticker.stop()
        await service.stop(grace=5)
        await emulator.close()
    sent = min(a.sent_at for a in answers)
    return LoadFigures(
        runs=runs,
        lags=ticker.lags(sent, last_token),
        cpu=ticker.cpu_share(sent, last_token),
        window=last_token - sent,
        acks=[a.latency for a in answers],
        figures=analyse(emulator, model, names, interval=interval),
    )
