"""What an operator watches: `/metrics` counts each thing once, `/healthz` names what is down."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bot.metrics import Metrics


def test_a_slack_429_is_counted_in_one_series_only():
    metrics = Metrics()
    metrics.slack_call("chat.update", "ratelimited")
    metrics.slack_call("chat.update", "ok")
    counted = [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value == 1
    ]
    assert counted == [
        ("agentbot_slack_calls_total", {"method": "chat.update", "outcome": "ratelimited"}),
        ("agentbot_slack_calls_total", {"method": "chat.update", "outcome": "ok"}),
    ]
