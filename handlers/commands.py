"""Slash commands: check the input, acknowledge at once, then start the work in the background.

`/ask` streams one agent into one message; `/team`, `/pipeline` and `/compare` post a parent
message (a board) and answer part by part in its thread.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.config import CommandSpec
from bot.limits import Refusal
from bot.models import RunKind, RunRecord, RunStatus, utcnow
from bot.team import policy_for
from bot.text import cut_marked
from handlers.board import SlackBoard
from handlers.live_message import Notify
from handlers.sinks import SlackEditSink

if TYPE_CHECKING:
    from bot.ports import Sink
    from handlers.app import BotDeps

log = logging.getLogger(__name__)

Listener = Callable[[AsyncAck, dict[str, Any], AsyncRespond], Awaitable[None]]

KINDS = {
    "ask": RunKind.ASK,
    "team": RunKind.TEAM,
    "pipeline": RunKind.PIPELINE,
    "compare": RunKind.COMPARE,
}
# What a rate-limited request keeps of its prompt: enough to tell what it was.
RATE_LIMITED_PROMPT_CHARS = 200
USAGE = {
    "ask": ("Ask the agent anything", "summarise the main risks of our Q3 plan in 5 bullets"),
    "team": ("Give a task to a team of agents working at once", "plan a launch of our beta"),
    "pipeline": ("Run the staged pipeline on a topic", "serverless databases in 2026"),
    "compare": ("Ask several models the same thing", "explain CRDTs in three sentences"),
}


def register(app: AsyncApp, deps: BotDeps) -> None:
    for name, spec in deps.config.commands.items():
        app.command(name)(_listener(deps, spec))


def usage(command: str, kind: str = "ask") -> str:
    what, example = USAGE[kind]
    return f"{what}: `{command} <your text>`\nFor example: `{command} {example}`"


def conversation_usage(run: RunRecord) -> str:
    """How to ask in the conversation `run` belongs to: a mention in a channel, a direct
    message, or a reply in a thread with the bot."""
    if run.kind is RunKind.FOLLOWUP:
        return "Reply in this thread with your question to continue the conversation."
    if (run.channel_id or "").startswith("D"):
        return "Send me your question as a message, for example: `what changed in v2?`"
    return "Mention me with your question: `@agentbot <your question>`"


def _listener(deps: BotDeps, spec: CommandSpec) -> Listener:
    async def listener(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        prompt = (command.get("text") or "").strip()
        name = command.get("command") or "/ask"
        run = RunRecord(
            kind=KINDS[spec.kind],
            prompt=prompt,
            command=name,
            team_id=command.get("team_id"),
            channel_id=command.get("channel_id"),
            user_id=command.get("user_id"),
        )
        if spec.kind in ("ask", "compare"):
            built = deps.agents.get(spec.agent)
            run.agent, run.model = built.name, built.model_name
        refusal = screen(deps, run)
        if refusal is not None:
            await ack(text=refusal.answer(usage(name, spec.kind)))
            deps.background.spawn(record_refusal(deps, run, refusal), name=f"refusal-{run.id}")
            return
        await ack()

        async def notify(text: str) -> None:
            await respond(text=text, response_type="ephemeral", replace_original=False)

        deps.background.spawn(_work(deps, spec, run, notify), name=f"run-{run.id}")

    return listener


def _work(
    deps: BotDeps, spec: CommandSpec, run: RunRecord, notify: Notify
) -> Coroutine[Any, Any, Any]:
    pacer = deps.pacer.workspace(run.team_id)
    channel = run.channel_id or ""
    if spec.kind == "ask":
        built = deps.agents.get(spec.agent)
        sink = SlackEditSink(pacer, channel=channel, notify=notify, tell_place=notify)
        return deps.runner.run(built.agent, run, sink=sink, policy=policy_for(built))

    def reply(thread_ts: str, heading: str) -> Sink:
        return deps.reply_sink(
            pacer, channel=channel, thread_ts=thread_ts, heading=heading, notify=notify
        )

    board = SlackBoard(pacer, channel=channel, notify=notify, make_reply=reply)
    orchestrator = deps.orchestrator
    match spec.kind:
        case "team":
            return orchestrator.team(run, deps.config.teams[spec.team], board)
        case "pipeline":
            return orchestrator.pipeline(run, deps.config.pipelines[spec.pipeline], board)
        case "compare":
            models = spec.models or list(deps.settings.compare_models) or [deps.settings.model]
            return orchestrator.compare(run, spec.agent, models, board)
    raise AssertionError(f"unknown command kind {spec.kind!r}")


def check_prompt(prompt: str, *, limit: int) -> str | None:
    if not prompt:
        return "Your request is empty."
    if len(prompt) > limit:
        return (
            f"Your request is {len(prompt):,} characters long; the limit is {limit:,}. "
            "Shorten it, or put the long part in a file and ask about its key points."
        )
    return None


@dataclass(frozen=True)
class Screened(Refusal):
    """A refusal, and whether it is about the prompt itself (then usage helps)."""

    about_prompt: bool = False

    def answer(self, how_to_ask: str) -> str:
        """What the user is told: the reason, then `how_to_ask` when the prompt itself (empty
        or too long) is the problem."""
        return f"{self.text}\n\n{how_to_ask}" if self.about_prompt else self.text


def screen(deps: BotDeps, run: RunRecord) -> Screened | None:
    """Why the request behind `run` is refused, or None when it may run.

    The guard comes first, so that every request counts towards its user's rate limit,
    refused ones included; then the prompt itself (empty, or over the limit).
    """
    refusal = deps.guard.refusal(user_id=run.user_id, channel_id=run.channel_id)
    if refusal is not None:
        return Screened(refusal.text, rate_limited=refusal.rate_limited)
    problem = check_prompt(run.prompt, limit=deps.settings.max_prompt_chars)
    return Screened(problem, about_prompt=True) if problem is not None else None


async def record_refusal(deps: BotDeps, run: RunRecord, refusal: Refusal) -> None:
    """A refused request is still a recorded run, so that admins see what users tried:
    status `refused` (not a failure), the reason the user was given as its error, and its
    prompt cut to the prompt limit (a short preview when rate-limited), marked. It never
    started, so it has no start or duration (and no place in the duration percentiles)."""
    keep = deps.settings.max_prompt_chars
    if refusal.rate_limited:
        keep = min(keep, RATE_LIMITED_PROMPT_CHARS)
    run.prompt = cut_marked(run.prompt, keep)
    run.status = RunStatus.REFUSED
    run.error = refusal.text
    run.finished_at = utcnow()
    run.started_at = run.duration_ms = None
    try:
        await deps.store.create(run)
    except Exception:
        log.exception("could not record refused run %s", run.id)
