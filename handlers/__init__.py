"""Everything Slack-specific: Bolt listeners, rendering, sinks and the pacer."""
