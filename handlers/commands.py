"""Slash commands: acknowledge at once, then run the agent and stream into Slack."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.models import RunKind, RunRecord, RunStatus, utcnow
from bot.runner import RunPolicy
from handlers.sinks import SlackEditSink

if TYPE_CHECKING:
    from handlers.app import BotDeps

log = logging.getLogger(__name__)


def register(app: AsyncApp, deps: BotDeps) -> None:
    for name, spec in deps.config.commands.items():
        if spec.kind == "ask":
            app.command(name)(_ask_listener(deps, agent_name=spec.agent))


def usage(command: str) -> str:
    return (
        f"Ask the agent anything: `{command} <your question>`\n"
        f"For example: `{command} summarise the main risks of our Q3 plan in 5 bullets`"
    )


def _ask_listener(deps: BotDeps, *, agent_name: str):
    async def ask(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        prompt = (command.get("text") or "").strip()
        name = command.get("command") or "/ask"
        built = deps.agents.get(agent_name)
        run = RunRecord(
            kind=RunKind.ASK,
            prompt=prompt,
            command=name,
            agent=built.name,
            model=built.model_name,
            team_id=command.get("team_id"),
            channel_id=command.get("channel_id"),
            user_id=command.get("user_id"),
        )
        problem = _check_prompt(prompt, limit=deps.settings.max_prompt_chars)
        if problem is not None:
            await ack(text=f"{problem}\n\n{usage(name)}")
            await _record_refusal(deps, run, problem)
            return
        await ack()

        async def notify(text: str) -> None:
            await respond(text=text, response_type="ephemeral", replace_original=False)

        sink = SlackEditSink(
            deps.pacer.workspace(run.team_id), channel=run.channel_id or "", notify=notify
        )
        spec = built.spec
        policy = RunPolicy(
            idle_timeout=spec.idle_timeout, total_timeout=spec.total_timeout, retries=spec.retries
        )
        deps.background.spawn(
            deps.runner.run(built.agent, run, sink=sink, policy=policy), name=f"run-{run.id}"
        )

    return ask


def _check_prompt(prompt: str, *, limit: int) -> str | None:
    if not prompt:
        return "Your question is empty."
    if len(prompt) > limit:
        return (
            f"Your question is {len(prompt):,} characters long; the limit is {limit:,}. "
            "Shorten it, or put the long part in a file and ask about its key points."
        )
    return None


async def _record_refusal(deps: BotDeps, run: RunRecord, problem: str) -> None:
    """A refused request is still a recorded run, so that admins see what users tried."""
    run.status = RunStatus.FAILED
    run.error = f"refused: {problem}"
    run.finished_at = run.started_at = utcnow()
    run.duration_ms = 0
    try:
        await deps.store.create(run)
    except Exception:
        log.exception("could not record refused run %s", run.id)
