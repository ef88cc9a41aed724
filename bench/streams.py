"""What the streaming benchmarks measure with: a scripted model that stamps every token,
a loop-lag ticker, and the reading of the emulator's calls into figures.

Tokens are "t0 ", "t1 ", … so that any text shown in Slack says which tokens it holds.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from bot.models import percentile_index
from bot.playground.emulator import SlackEmulator
from bot.playground.state import ApiCall, Message

TOKEN = re.compile(r"\bt(\d+)\b")
WRITES = ("chat.postMessage", "chat.update")


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile (nan when there are no values)."""
    ordered = sorted(values)
    return ordered[percentile_index(len(ordered), fraction)] if ordered else float("nan")


class ScriptedModel:
    """A streaming `FunctionModel`: the prompt's last word names the stream, whose tokens
    come on a schedule fixed by the seed and that name (first token after 0.2–0.5 s, then
    `rate` tokens a second with ±50 % jitter).

    Each token is stamped with the time it was due: a consumer that falls behind (a busy
    event loop, a blocked sink) sees it later, as it would see a provider's stream buffered
    in its socket, and that delay counts as lag.
    """

    def __init__(self, *, tokens: int, rate: float, seed: int) -> None:
        self.tokens = tokens
        self.rate = rate
        self.seed = seed
        self.generated: dict[str, list[float]] = {}
        self.model = FunctionModel(stream_function=self._stream, model_name="bench-scripted")

    def schedule(self, key: str) -> list[float]:
        """Seconds from the request to each token of stream `key`."""
        rng = random.Random(f"{self.seed}:{key}")
        at = rng.uniform(0.2, 0.5)
        offsets = []
        for _ in range(self.tokens):
            offsets.append(at)
            at += rng.uniform(0.5, 1.5) / self.rate
        return offsets

    def duration(self, key: str) -> float:
        return self.schedule(key)[-1]

    def text(self) -> str:
        return "".join(f"t{i} " for i in range(self.tokens))

    def busiest(self, at_least: int) -> tuple[int, tuple[float, float] | None]:
        """The most streams that were between their first and last token at once, and the
        time span in which at least `at_least` were (None if never)."""
        edges = sorted(
            [(stamps[0], 1) for stamps in self.generated.values() if stamps]
            + [(stamps[-1], -1) for stamps in self.generated.values() if stamps]
        )
        live = peak = 0
        start = end = None
        for at, step in edges:
            live += step
            peak = max(peak, live)
            if live >= at_least and start is None:
                start = at
            if live < at_least and start is not None and end is None:
                end = at
        return peak, (None if start is None or end is None else (start, end))

    def last_token_at(self) -> float:
        """When the last token of any stream was due (nan before any)."""
        return max((stamps[-1] for stamps in self.generated.values() if stamps), default=math.nan)

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        key = prompt_of(messages).split()[-1]
        start = time.monotonic()
        stamps = self.generated.setdefault(key, [])
        for i, offset in enumerate(self.schedule(key)):
            due = start + offset
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            stamps.append(due)
            yield f"t{i} "


def prompt_of(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


class LoopLag:
    """A task that asks to wake every `period` seconds and records how late it woke, and
    the process's CPU time then."""

    def __init__(self, period: float = 0.01, max_samples: int = 200_000) -> None:
        self.period = period
        self.max_samples = max_samples
        self.samples: list[tuple[float, float, float]] = []  # (monotonic time, lag, CPU time)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick(), name="bench-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def lags(self, start: float, end: float) -> list[float]:
        return [lag for at, lag, _ in self.samples if start <= at <= end]

    def cpu_share(self, start: float, end: float) -> float:
        """Process CPU time / wall time between the first and last samples in the window."""
        inside = [(at, cpu) for at, _, cpu in self.samples if start <= at <= end]
        if len(inside) < 2:
            return float("nan")
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) / (t1 - t0)

    async def _tick(self) -> None:
        while len(self.samples) < self.max_samples:
            expected = time.monotonic() + self.period
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self.samples.append((now, max(0.0, now - expected), time.process_time()))


@dataclass
class StreamFigures:
    """What one workload did in Slack: per message and per token."""

    streams: int
    writes: list[int]  # Slack write calls per message (posts and updates, 429s included)
    bounds: list[float]  # duration / interval + 3, per message
    ratelimited: int  # 429s answered by the emulator
    complete: int  # messages whose final text is the whole answer
    lags: list[float]  # per token: first visible in Slack − generated
    unseen: int  # tokens never visible
    last_token_lag: list[float] = field(default_factory=list)  # last token: visible − generated

    @property
    def token_lags(self) -> list[float]:
        """`lags` with every token never shown counted as an infinite lag."""
        return self.lags + [math.inf] * self.unseen

    @property
    def writes_per_message(self) -> float:
        return sum(self.writes) / max(1, len(self.writes))

    @property
    def within_bound(self) -> bool:
        return all(w <= b for w, b in zip(self.writes, self.bounds, strict=True))


def visible_text(args: dict[str, Any]) -> str:
    """The answer text a write shows: its `markdown` blocks if any, else its `text`."""
    blocks = args.get("blocks")
    if isinstance(blocks, list):
        shown = [
            b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "markdown"
        ]
        if shown:
            return "".join(str(s) for s in shown)
    return str(args.get("text") or "")


def final_text(emulator: SlackEmulator, message: Message) -> str | None:
    """The answer a finished message shows with its thread replies; None while it is live
    (it still has a Stop button)."""
    if any(b.get("type") == "actions" for b in message.blocks if isinstance(b, dict)):
        return None
    parts = [visible_text({"blocks": message.blocks, "text": message.text})]
    for reply in emulator.thread(message.channel, message.ts)[1:]:
        parts.append(visible_text({"blocks": reply.blocks, "text": reply.text}))
    return "".join(parts)


def analyse(
    emulator: SlackEmulator, model: ScriptedModel, channels: list[str], *, interval: float
) -> StreamFigures:
    """Read the emulator's calls for the streams in `channels` (one message each)."""
    wanted = set(channels)
    calls = sorted(
        (c for c in emulator.calls if c.method in WRITES and c.args.get("channel") in wanted),
        key=lambda c: c.at,
    )
    writes: dict[str, int] = defaultdict(int)
    for call in calls:
        writes[call.args["channel"]] += 1
    seen = {channel: -1 for channel in channels}
    lags: list[float] = []
    last_shown: dict[str, float] = {}
    for call in calls:
        if not _applied(call):
            continue
        channel = call.args["channel"]
        stamps = model.generated.get(channel, [])
        shown = [int(m) for m in TOKEN.findall(visible_text(call.args))]
        newest = min(max(shown, default=-1), len(stamps) - 1)
        for i in range(seen[channel] + 1, newest + 1):
            lags.append(call.at - stamps[i])
        seen[channel] = max(seen[channel], newest)
        if newest == model.tokens - 1 and channel not in last_shown:
            last_shown[channel] = call.at
    expected = model.text().strip()
    complete = 0
    for channel in channels:
        top = emulator.messages(channel)
        text = final_text(emulator, top[0]) if top else None
        complete += text is not None and text.strip() == expected
    return StreamFigures(
        streams=len(channels),
        writes=[writes[c] for c in channels],
        bounds=[model.duration(c) / interval + 3 for c in channels],
        ratelimited=sum(1 for c in calls if c.status == 429),
        complete=complete,
        lags=lags,
        unseen=sum(model.tokens - 1 - seen[c] for c in channels),
        last_token_lag=[
            last_shown[c] - model.generated[c][-1] for c in channels if c in last_shown
        ],
    )


def _is_markdown(block: object) -> bool:
    return isinstance(block, dict) and block.get("type") == "markdown"


def _applied(call: ApiCall) -> bool:
    return call.status == 200 and call.ok
