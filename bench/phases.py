"""The bot's side of `python -m bench`: each phase starts the real server (`build_parts` +
`Service` on 127.0.0.1, SQLite in a temporary directory) and a fresh Slack emulator that
enforces Slack's limits, drives a workload into it and reads the figures.

Phases that spread runs over several workspaces (the ack bursts, the 200 runs) raise the
emulator's `chat.update` limit to 50 a minute per workspace: the emulator counts one window
for all teams, while the bot keeps one budget per team.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench import load
from bench.ask import SECRET, start
from bench.streams import (
    TOKEN,
    LoopLag,
    ScriptedModel,
    StreamFigures,
    analyse,
    final_text,
    visible_text,
)
from bot.models import RunQuery, RunStatus
from bot.playground.emulator import SlackEmulator
from bot.playground.state import Limit
from bot.server import Service

UPDATES_PER_MINUTE = 50  # Slack's Tier 3, per workspace (docs/ARCHITECTURE.md §4)
WORKSPACES = 10
FULL_LOAD = 0.95  # "at the peak": at least this share of the peak number streaming at once


@dataclass
class AckFigures:
    separate: list[list[float]]  # seconds per burst, load from a child process
    in_process: list[float]  # seconds, one burst from the bot's own event loop
    not_ok: int  # answers other than 200
    failed_runs: int  # commands whose run did not succeed


@dataclass
class LoadFigures:
    runs: int
    peak: int  # most runs streaming at once
    full: tuple[float, float] | None  # when (nearly) the peak number streamed at once
    lags: list[float]  # loop lag samples then
    cpu: float  # process CPU time / wall time then
    lags_all: list[float]  # loop lag samples from the burst to the last token
    cpu_all: float
    window: float  # seconds from the burst to the last token
    acks: list[float]
    posted: list[float]  # seconds from the burst to each run's first message in Slack
    failed_runs: int
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
    """Wait (bounded) until every run has ended; the figures tell what did not finish."""
    if not await service.parts.background.wait(timeout):
        print(f"  ! runs still going after {timeout:.0f} s; counted as they are")


async def failed_runs(service: Service, names: list[str]) -> int:
    """Commands in `names` whose run is not recorded as succeeded."""
    runs = await service.parts.store.query(RunQuery(limit=1000))
    succeeded = {r.channel_id for r in runs if r.status is RunStatus.SUCCEEDED}
    return sum(1 for name in names if name not in succeeded)


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


async def ack_latency(commands: int, *, bursts: int, seed: int, tmp: Path) -> AckFigures:
    """`bursts` rounds of `commands` slash commands at once from a child process, then one
    round from the bot's own loop; each command starts a one-second streamed answer, and
    each round waits for the previous one's runs to end."""
    emulator = await emulator_for(WORKSPACES)
    model = ScriptedModel(tokens=30, rate=30.0, seed=seed)
    service = await start(emulator, tmp / "ack.db", model.model)
    separate: list[list[float]] = []
    names: list[str] = []
    not_ok = 0
    try:
        await warm_up(emulator, service)
        for burst in range(bursts):
            batch = channels(commands, first=burst * commands)
            names += batch
            job = commands_for(emulator, batch, workspaces=WORKSPACES, first_user=len(names))
            answers = await load.burst(url_of(service), SECRET, job)
            separate.append([a.latency for a in answers])
            not_ok += sum(a.status != 200 for a in answers)
            await finish_work(service, 120)
        batch = channels(commands, first=bursts * commands)
        names += batch
        deliveries = await asyncio.gather(
            *(
                emulator.send_slash_command(
                    url_of(service),
                    "/ask",
                    f"stream {channel}",
                    channel_id=channel,
                    user_id=f"U{len(names) + i:05}",
                    team_id=team_of(i, WORKSPACES),
                )
                for i, channel in enumerate(batch)
            )
        )
        not_ok += sum(d.status != 200 for d in deliveries)
        await finish_work(service, 120)
        failed = await failed_runs(service, names)
    finally:
        await service.stop(grace=5)
        await emulator.close()
    return AckFigures(separate, [d.latency for d in deliveries], not_ok, failed)


async def concurrent_streams(count: int, *, model: ScriptedModel, tmp: Path) -> StreamFigures:
    """`count` streamed answers at once in one workspace, each in its own channel."""
    emulator = await emulator_for()
    service = await start(emulator, tmp / f"streams-{count}.db", model.model)
    names = channels(count)
    try:
        await warm_up(emulator, service)
        await asyncio.gather(
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
        longest = max(model.duration(c) for c in names)
        # Slack's ceiling: every final needs one update of the workspace's 50 a minute.
        await finish_work(service, longest + count * 60 / UPDATES_PER_MINUTE * 2 + 30)
        interval = service.parts.settings.update_interval
    finally:
        await service.stop(grace=5)
        await emulator.close()
    return analyse(emulator, model, names, interval=interval)


async def many_runs(runs: int, *, model: ScriptedModel, tmp: Path) -> LoadFigures:
    """`runs` slash commands at once over `WORKSPACES` workspaces; event-loop lag and CPU
    while (nearly) the peak number of runs stream at once, and from the burst until the
    last token was generated."""
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
        per_workspace = runs / WORKSPACES
        await finish_work(service, longest + per_workspace * 60 / UPDATES_PER_MINUTE * 2 + 90)
        interval = service.parts.settings.update_interval
        failed = await failed_runs(service, names)
    finally:
        await ticker.stop()
        await service.stop(grace=5)
        await emulator.close()
    sent = min(a.sent_at for a in answers)
    last_token = model.last_token_at()
    posts = {c.args.get("channel"): c.at for c in reversed(emulator.calls_to("chat.postMessage"))}
    peak, _ = model.busiest(runs)
    _, full = model.busiest(math.ceil(FULL_LOAD * peak))
    begin, end = full or (math.nan, math.nan)
    return LoadFigures(
        runs=runs,
        peak=peak,
        full=full,
        lags=ticker.lags(begin, end),
        cpu=ticker.cpu_share(begin, end),
        lags_all=ticker.lags(sent, last_token),
        cpu_all=ticker.cpu_share(sent, last_token),
        window=last_token - sent,
        acks=[a.latency for a in answers],
        posted=[posts[name] - sent for name in names if name in posts],
        failed_runs=failed,
        figures=analyse(emulator, model, names, interval=interval),
    )


@dataclass
class ChannelFigures:
    """A burst of answers in one channel, read from the emulator's calls."""

    answers: int
    seconds: float  # from the burst to the last answer's final write in Slack
    ceiling: float  # the answers' first posts at Slack's one a second per channel
    writes: int  # chat.postMessage and chat.update calls in the channel, 429s included
    ratelimited: dict[str, int]  # 429s by method
    complete: int  # answers whose message, once finished, shows the whole text
    early_text: int  # answers that showed some of their text before their final write
    first_text: list[float]  # per answer: seconds from the burst to its first text in Slack
    final: list[float]  # per answer: seconds from the burst to its final write
    failed_runs: int
    place_notices: int  # ephemeral "your place in line" answers through response_url


BUSY_CHANNEL = "CBUSY"
_KEY = re.compile(r"\bA\d{3}\b")


async def one_channel(count: int, *, model: ScriptedModel, tmp: Path) -> ChannelFigures:
    """`count` `/ask` at once in one channel of one workspace, each by another user, at the
    default settings (50 runs at once, the rest wait in line) with Slack's limits enforced.
    Slack's ceiling is one post a second in a channel: `count` answers need ~`count` s."""
    emulator = await emulator_for()
    service = await start(emulator, tmp / "one-channel.db", model.model)
    keys = [f"A{i:03}" for i in range(count)]
    try:
        await warm_up(emulator, service)
        sent = time.monotonic()
        await asyncio.gather(
            *(
                emulator.send_slash_command(
                    url_of(service),
                    "/ask",
                    f"stream {key}",
                    channel_id=BUSY_CHANNEL,
                    user_id=f"U{i:05}",
                )
                for i, key in enumerate(keys)
            )
        )
        await finish_work(service, count * 3 + 120)
        runs = await service.parts.store.query(RunQuery(limit=count + 10))
    finally:
        await service.stop(grace=5)
        await emulator.close()
    failed = count - sum(1 for r in runs if r.status is RunStatus.SUCCEEDED)
    return read_channel(emulator, model, keys, sent=sent, failed_runs=failed)


def read_channel(
    emulator: SlackEmulator, model: ScriptedModel, keys: list[str], *, sent: float, failed_runs: int
) -> ChannelFigures:
    """Attribute every write in `BUSY_CHANNEL` to its answer (by the key in its prompt)."""
    key_of_ts: dict[str, str] = {}
    for message in emulator.messages(BUSY_CHANNEL):
        found = _KEY.search(str(message.blocks) + message.text)
        if found:
            key_of_ts[message.ts] = found.group()
    calls = sorted(
        (
            c
            for c in emulator.calls
            if c.method in ("chat.postMessage", "chat.update")
            and c.args.get("channel") == BUSY_CHANNEL
        ),
        key=lambda c: c.at,
    )
    shown: dict[str, list[tuple[float, bool]]] = {key: [] for key in keys}  # (at, has text)
    for call in calls:
        if call.status != 200 or not call.ok or call.args.get("thread_ts"):
            continue
        if call.method == "chat.update":
            key = key_of_ts.get(str(call.args.get("ts")))
        else:
            found = _KEY.search(str(call.args.get("blocks")) + str(call.args.get("text")))
            key = found.group() if found else None
        if key in shown:
            shown[key].append((call.at, bool(TOKEN.search(visible_text(call.args)))))
    expected = model.text().strip()
    complete = 0
    for message in emulator.messages(BUSY_CHANNEL):
        text = final_text(emulator, message)
        complete += text is not None and text.strip() == expected
    writes = [w for w in shown.values() if w]
    return ChannelFigures(
        answers=len(keys),
        seconds=max((w[-1][0] for w in writes), default=math.nan) - sent,
        ceiling=float(len(keys)),
        writes=len(calls),
        ratelimited={
            m: sum(1 for c in calls if c.status == 429 and c.method == m)
            for m in ("chat.postMessage", "chat.update")
        },
        complete=complete,
        early_text=sum(1 for w in writes if any(has for _, has in w[:-1])),
        first_text=[next((at for at, has in w if has), w[-1][0]) - sent for w in writes],
        final=[w[-1][0] - sent for w in writes],
        failed_runs=failed_runs,
        place_notices=sum(1 for r in emulator.responses if "line" in str(r.get("text"))),
    )
