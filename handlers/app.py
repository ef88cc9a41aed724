"""Builds the Bolt app and registers every listener."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.agents import AgentRegistry
from bot.config import AppConfig, Settings
from bot.limits import Guard
from bot.ports import RunStore, Sink
from bot.runner import Runner
from bot.tasks import BackgroundTasks
from bot.team import Orchestrator
from handlers import actions, admin, commands, events, reply_sinks
from handlers.live_message import Notify
from handlers.pacer import Pacer, WorkspacePacer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BotDeps:
    """What the listeners need, built by the composition root."""

    settings: Settings
    config: AppConfig
    agents: AgentRegistry
    runner: Runner
    store: RunStore
    pacer: Pacer
    background: BackgroundTasks
    orchestrator: Orchestrator
    guard: Guard = field(default_factory=Guard)
    # Workspace admins/owners per users.info, cached (for /history).
    roles: admin.WorkspaceRoles = field(default_factory=admin.WorkspaceRoles)

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.settings.admins

    def reply_sink(
        self,
        pacer: WorkspacePacer,
        *,
        channel: str,
        thread_ts: str,
        notify: Notify,
        heading: str | None = None,
    ) -> Sink:
        """The sink of one answer in a thread, in the configured stream mode."""
        return reply_sinks.reply_sink(
            pacer,
            mode=self.settings.stream_mode,
            task_display=self.settings.task_display,
            channel=channel,
            thread_ts=thread_ts,
            notify=notify,
            heading=heading,
        )


def build_app(deps: BotDeps, client: AsyncWebClient) -> AsyncApp:
    """The Bolt app with every listener."""
    app = AsyncApp(
        client=client,
        # Socket Mode requests are not signed (the app token authenticates the socket), and
        # Bolt skips verification for them; "" keeps Bolt from reading the environment.
        signing_secret=deps.settings.slack_signing_secret or "",
        # Listeners ack, hand the work to `deps.background` and return, so the ack goes out
        # at once (Bolt's default mode polls for the ack every 10 ms).
        process_before_response=True,
        raise_error_for_unhandled_request=False,
    )
    events.register(app, deps)  # first: its middleware drops Slack's retried events
    commands.register(app, deps)
    actions.register(app, deps)
    admin.register(app, deps)
    return app
