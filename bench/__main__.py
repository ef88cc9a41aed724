"""Streaming and load figures of agentbot against a Slack emulator that enforces Slack's limits.

    python -m bench [--quick] [--seed N]

Everything runs on 127.0.0.1: the real server (aiohttp + Bolt + runner + pacer + SQLite)
with the emulator as Slack and a scripted streaming model (~30 tokens/s). Prints one table
with each figure, its target (DESIGN.md §7) and PASS/MISS:
- slash-command ack latency with 100 commands at once, sent from a separate process;
- visible lag, token generated → visible in Slack, for one stream;
- Slack writes per message, 429s and final-text completeness for 1, 10 and 50 streams;
- event-loop lag and CPU with 200 runs streaming;
- the same 10-stream workload through the edit strategies other Slack bots use.
`--quick` is a smoke run with smaller counts and shorter streams.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic_ai import models

from bench import phases
from bench.phases import AckFigures, LoadFigures
from bench.strategies import STRATEGIES, StrategyResult, run_strategy
from bench.streams import ScriptedModel, StreamFigures, percentile

RATE = 30.0  # tokens a second
INTERVAL = 1.0  # the bot's default AGENTBOT_UPDATE_INTERVAL
ACK_P99 = 0.050
LAG_SLACK = 0.150
LOOP_LAG_P99 = 0.100


@dataclass(frozen=True)
class Plan:
    acks: int
    stream_seconds: float
    counts: tuple[int, ...]
    compare: int  # streams in the strategy comparison (one of `counts`)
    runs: int
    run_seconds: float
    grace: float  # how long a compared strategy may go on after its last token


FULL = Plan(acks=100, stream_seconds=12, counts=(1, 10, 50), compare=10, runs=200,
            run_seconds=10, grace=40)  # fmt: skip
QUICK = Plan(acks=20, stream_seconds=4, counts=(1, 5, 10), compare=5, runs=40,
             run_seconds=4, grace=15)  # fmt: skip


@dataclass
class Row:
    name: str
    measured: str
    target: str = ""
    verdict: str = "info"


def model_for(seconds: float, seed: int) -> ScriptedModel:
    return ScriptedModel(tokens=round(seconds * RATE), rate=RATE, seed=seed)


async def run(plan: Plan, seed: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        say(f"ack latency: {plan.acks} commands at once")
        acks = await phases.ack_latency(plan.acks, seed=seed, tmp=tmp)
        streams: dict[int, StreamFigures] = {}
        for count in plan.counts:
            say(f"{count} concurrent stream(s) of {plan.stream_seconds:g} s in one workspace")
            model = model_for(plan.stream_seconds, seed)
            streams[count] = await phases.concurrent_streams(count, model=model, tmp=tmp)
        say(f"{plan.runs} concurrent runs of {plan.run_seconds:g} s")
        load = await phases.many_runs(plan.runs, model=model_for(plan.run_seconds, seed), tmp=tmp)
    say(f"other bots' edit strategies, {plan.compare} streams each, at once")
    names = phases.channels(plan.compare)
    others = await asyncio.gather(
        *(
            run_strategy(
                strategy,
                model=model_for(plan.stream_seconds, seed),
                channels=names,
                grace=plan.grace,
                secret=phases.SECRET,
            )
            for strategy in STRATEGIES
        )
    )
    return [
        *ack_rows(acks),
        *stream_rows(streams),
        *load_rows(load),
        *strategy_rows(streams[plan.compare], others),
    ]


def ack_rows(acks: AckFigures) -> list[Row]:
    n = len(acks.separate)
    p50, p99 = percentile(acks.separate, 0.5), percentile(acks.separate, 0.99)
    ok = "" if acks.all_ok else " (some not 200!)"
    return [
        Row(
            f"ack p50 / p99, {n} /ask at once (separate process)",
            f"{ms(p50)} / {ms(p99)} ms, max {ms(max(acks.separate))}{ok}",
            f"p99 < {ms(ACK_P99)} ms",
            verdict(p99 < ACK_P99 and acks.all_ok),
        ),
        Row(
            f"ack p50 / p99, {n} /ask at once (bot's own loop)",
            f"{ms(percentile(acks.in_process, 0.5))} / {ms(percentile(acks.in_process, 0.99))} ms, "
            f"max {ms(max(acks.in_process))}",
        ),
    ]


def stream_rows(streams: dict[int, StreamFigures]) -> list[Row]:
    rows = []
    one = streams[min(streams)]
    median = percentile(one.token_lags, 0.5)
    rows.append(
        Row(
            "visible lag median / p95, 1 stream",
            f"{s(median)} / {s(percentile(one.token_lags, 0.95))} s, last token "
            f"{s(max(one.last_token_lag, default=float('nan')))} s",
            f"median ≤ {INTERVAL + LAG_SLACK:.2f} s",
            verdict(median <= INTERVAL + LAG_SLACK),
        )
    )
    for count, figures in streams.items():
        label = f"{count} stream{'s' if count > 1 else ''}"
        rows.append(
            Row(
                f"Slack writes per message, {label}",
                f"mean {figures.writes_per_message:.1f}, max {max(figures.writes)} "
                f"(bound {min(figures.bounds):.1f})",
                "≤ duration/interval + 3",
                verdict(figures.within_bound),
            )
        )
        rows.append(
            Row(
                f"429s, final text complete, {label}",
                f"{figures.ratelimited}, {figures.complete}/{count}",
                f"0, {count}/{count}",
                verdict(figures.ratelimited == 0 and figures.complete == count),
            )
        )
        if count > 1:
            refresh = max(INTERVAL, count * 60 / phases.UPDATES_PER_MINUTE)
            rows.append(
                Row(
                    f"visible lag median / p95, {label}",
                    f"{s(percentile(figures.token_lags, 0.5))} / "
                    f"{s(percentile(figures.token_lags, 0.95))} s",
                    f"Slack's ceiling: a refresh per {refresh:.1f} s",
                )
            )
    return rows


def load_rows(load: LoadFigures) -> list[Row]:
    p99 = percentile(load.lags, 0.99)
    f = load.figures
    return [
        Row(
            f"event-loop lag p99 (max), {load.runs} runs streaming",
            f"{ms(p99)} ms (max {ms(max(load.lags))}) over {load.window:.1f} s, "
            f"{len(load.lags)} ticks",
            f"< {ms(LOOP_LAG_P99)} ms",
            verdict(p99 < LOOP_LAG_P99),
        ),
        Row(
            f"CPU (process CPU / wall), {load.runs} runs streaming",
            f"{load.cpu * 100:.0f} % of one core",
        ),
        Row(
            f"{load.runs} runs: ack p99, 429s, complete, lag median",
            f"{ms(percentile(load.acks, 0.99))} ms, {f.ratelimited}, {f.complete}/{f.streams}, "
            f"{s(percentile(f.token_lags, 0.5))} s",
        ),
    ]


def strategy_rows(ours: StreamFigures, others: list[StrategyResult]) -> list[Row]:
    base_writes = ours.writes_per_message
    base_lag = percentile(ours.token_lags, 0.5)
    rows = [Row(f"agentbot pacer, {ours.streams} streams", describe(ours))]
    for result in others:
        f = result.figures
        lag = percentile(f.token_lags, 0.5)
        cut = f", {result.cut_off} cut off" if result.cut_off else ""
        rows.append(
            Row(
                f"{result.strategy.name}, {f.streams} streams",
                f"{describe(f)}{cut}; ×{f.writes_per_message / base_writes:.1f} writes, "
                f"×{lag / base_lag:.1f} lag",
            )
        )
    return rows


def describe(f: StreamFigures) -> str:
    unseen = f", {f.unseen} tokens never shown" if f.unseen else ""
    return (
        f"{f.writes_per_message:.1f} writes/msg, {f.ratelimited} 429s, "
        f"{f.complete}/{f.streams} complete, lag {s(percentile(f.token_lags, 0.5))} / "
        f"{s(percentile(f.token_lags, 0.95))} s{unseen}"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def s(seconds: float) -> str:
    return "∞" if math.isinf(seconds) else f"{seconds:.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def say(text: str) -> None:
    print(f"… {text}", flush=True)


def print_table(rows: list[Row], title: str) -> None:
    widths = [max(len(getattr(r, k)) for r in rows) for k in ("name", "measured", "target")]
    header = Row("row", "measured", "target", "result")
    print(f"\n{title}")
    for row in [header, *rows]:
        cells = (row.name, row.measured, row.target)
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)), row.verdict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--seed", type=int, default=7, help="seed of the token schedules")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    models.ALLOW_MODEL_REQUESTS = False  # only the scripted model runs
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    rows = asyncio.run(run(plan, args.seed))
    title = (
        f"agentbot streaming and load — seed {args.seed}, {RATE:g} tokens/s, "
        f"update interval {INTERVAL:g} s, streams of {plan.stream_seconds:g} s, "
        "Slack's limits enforced"
    )
    print_table(rows, title)
    print(f"\nruntime {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
