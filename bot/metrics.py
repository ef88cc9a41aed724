"""Prometheus metrics, on a registry of their own (no module-level collectors)."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Everything agentbot counts. Built once in the composition root and passed down."""

    content_type = CONTENT_TYPE

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "agentbot_runs", "Finished agent runs.", ["kind", "status"], registry=self.registry
        )
        self.run_duration = Histogram(
            "agentbot_run_duration_seconds",
            "Wall time of finished agent runs.",
            ["kind"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.live_runs = Gauge("agentbot_live_runs", "Runs in progress.", registry=self.registry)
        self.slack_calls = Counter(
            "agentbot_slack_calls",
            "Slack Web API calls by method and outcome (ok, error, ratelimited, unreachable).",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.pacer_queue_depth = Gauge(
            "agentbot_pacer_queue_depth",
            "Live messages whose newest text waits for its chat.update (last seen by a sender).",
            registry=self.registry,
        )
        self.update_staleness = Histogram(
            "agentbot_slack_update_staleness_seconds",
            "How long a live message's new text waited before chat.update showed it.",
            buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.slack_gave_up = Counter(
            "agentbot_slack_gave_up",
            "Slack writes given up for good (a live message's edits or a post), by method and "
            "reason (ratelimited, render_failed, Slack's error code, ...).",
            ["method", "reason"],
            registry=self.registry,
        )
        self.slack_undelivered = Counter(
            "agentbot_slack_undelivered",
            "Finished runs whose end was not confirmed in Slack when the sink gave up waiting "
            "(timeout: it is still queued and may arrive; else the reason it never will).",
            ["reason"],
            registry=self.registry,
        )
        self.event_loop_lag = Gauge(
            "agentbot_event_loop_lag_seconds",
            "How late the event loop last ran a callback scheduled for a given time "
            "(sampled about twice a second): the delay every request and message then sees.",
            registry=self.registry,
        )
        self.runs_waiting = Gauge(
            "agentbot_runs_waiting",
            "Runs waiting in line for a free place (AGENTBOT_MAX_CONCURRENT_RUNS).",
            registry=self.registry,
        )

    def slack_call(self, method: str, outcome: str) -> None:
        self.slack_calls.labels(method, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


LOOP_LAG_PERIOD = 0.5


async def watch_loop_lag(metrics: Metrics, *, period: float = LOOP_LAG_PERIOD) -> None:
    """Until cancelled: every `period` seconds, set `event_loop_lag` to how late the loop
    woke this task compared with when it asked to be woken."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        metrics.event_loop_lag.set(max(0.0, loop.time() - due))
