"""Streaming and load figures of agentbot against a Slack emulator that enforces Slack's limits.

    python -m bench [--quick] [--seed N]

Everything runs on 127.0.0.1: the real server (aiohttp + Bolt + runner + pacer + SQLite)
with the emulator as Slack and a scripted streaming model (~30 tokens/s). Prints one table
with each figure, its target (docs/ARCHITECTURE.md §12) and PASS/MISS:
- slash-command ack latency with 100 commands at once (3 bursts), sent from a separate
  process, and once from the bot's own loop;
- visible lag, token generated → visible in Slack, for one stream (and 10, 50);
- Slack writes per message, 429s and final-text completeness for 1, 10 and 50 streams;
- event-loop lag (a 10 ms ticker) and CPU while 200 runs stream at once;
- the same 10-stream workload through the edit strategies other Slack bots use;
- 100 `/ask` at once in one channel: time against Slack's one post a second per channel,
  writes per answer, and how many answers showed text before their end.
`--quick` is a smoke run with smaller counts and shorter streams; `--only one-channel` runs
only the last phase.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydantic_ai import models

from bench import phases
from bench.ask import SECRET
from bench.phases import AckFigures, LoadFigures
from bench.strategies import STRATEGIES, StrategyResult, run_strategy
from bench.streams import ScriptedModel, StreamFigures, percentile

RATE = 30.0  # tokens a second
INTERVAL = 1.0  # the bot's default AGENTBOT_UPDATE_INTERVAL
ACK_P99 = 0.050
LAG_SLACK = 0.150
LOOP_LAG_P99 = 0.100
CEILING_MARGIN = 0.10  # a burst in one channel ends within 10 % of Slack's post ceiling
WRITES_PER_ANSWER = 1.3


@dataclass(frozen=True)
class Plan:
    acks: int
    bursts: int
    stream_seconds: float
    counts: tuple[int, ...]
    compare: int  # streams in the strategy comparison (one of `counts`)
    runs: int
    run_seconds: float
    grace: float  # how long a compared strategy may go on after its last token
    one_channel: int  # answers asked at once in one channel


FULL = Plan(acks=100, bursts=3, stream_seconds=12, counts=(1, 10, 50), compare=10, runs=200,
            run_seconds=15, grace=40, one_channel=100)  # fmt: skip
QUICK = Plan(acks=20, bursts=1, stream_seconds=4, counts=(1, 5, 10), compare=5, runs=40,
             run_seconds=5, grace=15, one_channel=20)  # fmt: skip


@dataclass
class Row:
    name: str
    measured: str
    target: str = ""
    verdict: str = "info"


def model_for(seconds: float, seed: int) -> ScriptedModel:
    return ScriptedModel(tokens=round(seconds * RATE), rate=RATE, seed=seed)


async def run(plan: Plan, seed: int, *, only: str | None = None) -> list[Row]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        say(f"{plan.one_channel} /ask at once in one channel, streams of {plan.stream_seconds:g} s")
        model = model_for(plan.stream_seconds, seed)
        channel = await phases.one_channel(plan.one_channel, model=model, tmp=tmp)
        if only == "one-channel":
            return channel_rows(channel)
        say(f"ack latency: {plan.bursts} × {plan.acks} commands at once")
        acks = await phases.ack_latency(plan.acks, bursts=plan.bursts, seed=seed, tmp=tmp)
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
                secret=SECRET,
            )
            for strategy in STRATEGIES
        )
    )
    return [
        *ack_rows(acks),
        *stream_rows(streams),
        *load_rows(load),
        *strategy_rows(streams[plan.compare], others),
        *channel_rows(channel),
    ]


def channel_rows(f: phases.ChannelFigures) -> list[Row]:
    n = f.answers
    per_answer = f.writes / max(1, n)
    limit = f.ceiling * (1 + CEILING_MARGIN)
    posts, updates = f.ratelimited["chat.postMessage"], f.ratelimited["chat.update"]
    return [
        Row(
            f"{n} /ask at once in one channel: last final in Slack",
            f"{f.seconds:.1f} s after the burst (Slack's ceiling {f.ceiling:.0f} s at 1 post/s)",
            f"≤ {limit:.0f} s",
            verdict(f.seconds <= limit),
        ),
        Row(
            f"{n} /ask in one channel: Slack writes per answer",
            f"{per_answer:.2f} ({f.writes} writes; 429s: {posts} posts, {updates} updates)",
            f"≤ {WRITES_PER_ANSWER}",
            verdict(per_answer <= WRITES_PER_ANSWER),
        ),
        Row(
            f"{n} /ask in one channel: failed, complete",
            f"{f.failed_runs}, {f.complete}/{n}",
            f"0, {n}/{n}",
            verdict(f.failed_runs == 0 and f.complete == n),
        ),
        Row(
            f"{n} /ask in one channel: text seen before the final / first text p50, max",
            f"{f.early_text} of {n}; {s(percentile(f.first_text, 0.5))} / "
            f"{s(max(f.first_text, default=math.nan))} s; final p50 "
            f"{s(percentile(f.final, 0.5))} s; {f.place_notices} places told privately",
        ),
    ]


def ack_rows(acks: AckFigures) -> list[Row]:
    pooled = [latency for burst in acks.separate for latency in burst]
    n = len(acks.separate[0])
    p50, p99 = percentile(pooled, 0.5), percentile(pooled, 0.99)
    each = ", ".join(ms(percentile(burst, 0.99)) for burst in acks.separate)
    trouble = f"; {acks.not_ok} not 200" if acks.not_ok else ""
    trouble += f"; {acks.failed_runs} runs failed" if acks.failed_runs else ""
    return [
        Row(
            f"ack p50 / p99, {n} /ask at once ×{len(acks.separate)} (separate process)",
            f"{ms(p50)} / {ms(p99)} ms, max {ms(max(pooled))}; p99 per burst {each}{trouble}",
            f"p99 < {ms(ACK_P99)} ms",
            verdict(p99 < ACK_P99 and not acks.not_ok),
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
    f = load.figures
    all_p99, all_max = percentile(load.lags_all, 0.99), max(load.lags_all)
    whole = f"whole phase p99 {ms(all_p99)} ms (max {ms(all_max)})"
    least = math.ceil(phases.FULL_LOAD * load.peak)
    p99 = percentile(load.lags, 0.99)
    span = load.full[1] - load.full[0] if load.full else math.nan
    reached = load.peak >= math.ceil(phases.FULL_LOAD * load.runs)
    return [
        Row(
            f"event-loop lag p99 (max), {load.runs} runs streaming at once",
            f"{ms(p99)} ms (max {ms(max(load.lags, default=math.nan))}) over {span:.1f} s with "
            f"≥ {least} streaming (peak {load.peak} of {load.runs}); {whole}",
            f"< {ms(LOOP_LAG_P99)} ms",
            verdict(reached and p99 < LOOP_LAG_P99),
        ),
        Row(
            f"CPU (process CPU / wall), {load.runs} runs streaming",
            f"{load.cpu * 100:.0f} % of one core at the peak; "
            f"{load.cpu_all * 100:.0f} % over the phase",
        ),
        Row(
            f"{load.runs} runs: ack p50 / p99, first message p50 / max",
            f"{ms(percentile(load.acks, 0.5))} / {ms(percentile(load.acks, 0.99))} ms, "
            f"{s(percentile(load.posted, 0.5))} / {s(max(load.posted, default=math.nan))} s "
            "after the burst",
        ),
        Row(
            f"{load.runs} runs: failed, 429s, complete, lag median",
            f"{load.failed_runs}, {f.ratelimited}, {f.complete}/{f.streams}, "
            f"{s(percentile(f.token_lags, 0.5))} s",
            f"0, 0, {f.streams}/{f.streams}",
            verdict(load.failed_runs == 0 and f.ratelimited == 0 and f.complete == f.streams),
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
                f"×{times(lag / base_lag)} lag",
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


def times(ratio: float) -> str:
    return "∞" if math.isinf(ratio) else f"{ratio:.1f}"


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


class ErrorCount(logging.Handler):
    """Counts the bot's error logs (instead of printing their tracebacks) for the summary."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        cause = record.exc_info[1] if record.exc_info else None
        reason = f": {type(cause).__name__}: {str(cause).splitlines()[0]}" if cause else ""
        self.counts[f"{record.name}: {record.getMessage().split(' run-')[0]}{reason}"] += 1

    def summary(self) -> list[str]:
        return [f"error logged {n} time(s): {what}" for what, n in self.counts.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--seed", type=int, default=7, help="seed of the token schedules")
    parser.add_argument("--only", choices=["one-channel"], help="run only this phase")
    args = parser.parse_args()
    errors = ErrorCount()
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.ERROR)
    models.ALLOW_MODEL_REQUESTS = False  # only the scripted model runs
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    rows = asyncio.run(run(plan, args.seed, only=args.only))
    title = (
        f"agentbot streaming and load — seed {args.seed}, {RATE:g} tokens/s, "
        f"update interval {INTERVAL:g} s, streams of {plan.stream_seconds:g} s, "
        "Slack's limits enforced"
    )
    print_table(rows, title)
    for line in errors.summary():
        print(line)
    print(f"\nruntime {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
