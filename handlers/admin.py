"""`/history` for admins: the latest runs with filters, stats, and one run with its parts.

The listener acks at once and hands the rest to the background: check the caller, query,
answer with an ephemeral message through the response URL. Everything is scoped to the
workspace of the request (`team_id`), and every use (allowed, refused, not understood) is
written to the audit log.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.models import AuditEntry, AuditOutcome, RunCursor, StatsQuery
from bot.query import Help, ListRuns, ShowRun, ShowStats, parse_history
from handlers import admin_render as view
from handlers.render import SlackMessage

if TYPE_CHECKING:
    from handlers.app import BotDeps

log = logging.getLogger(__name__)

HISTORY_COMMAND = "/history"
ROLE_TTL = 300.0
"""How long a workspace admin/owner answer from `users.info` is trusted, in seconds."""


class WorkspaceRoles:
    """Whether a user is an admin or owner of their workspace, per Slack's `users.info`,
    remembered for `ttl` seconds (failures are not remembered)."""

    def __init__(
        self,
        *,
        ttl: float = ROLE_TTL,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[float, bool]] = {}

    async def is_admin(self, client: AsyncWebClient, *, team_id: str, user_id: str) -> bool:
        key = (team_id, user_id)
        now = self._clock()
        cached = self._known.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        try:
            response = await client.users_info(user=user_id)
        except SlackApiError as exc:
            log.warning("users.info for %s failed: %s", user_id, exc.response.get("error"))
            return False
        user = response.get("user") or {}
        allowed = bool(user.get("is_admin") or user.get("is_owner")) and not user.get("deleted")
        if len(self._known) >= self._max_entries:
            self._known.pop(next(iter(self._known)))
        self._known[key] = (now, allowed)
        return allowed


@dataclass(frozen=True)
class Caller:
    """Who asked, from which workspace and channel."""

    user_id: str
    team_id: str
    channel_id: str | None


def register(app: AsyncApp, deps: BotDeps) -> None:
    @app.command(HISTORY_COMMAND)
    async def history(
        ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond, client: AsyncWebClient
    ) -> None:
        await ack()
        caller = Caller(
            user_id=command.get("user_id") or "",
            team_id=command.get("team_id") or "",
            channel_id=command.get("channel_id"),
        )
        text = command.get("text") or ""
        deps.background.spawn(
            answer(deps, client, caller, text, respond), name=f"history-{caller.user_id}"
        )

    @app.action(view.MORE_ACTION_ID)
    async def more(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        caller = _clicker(body)
        try:
            text, now, cursor = view.parse_more_value(action.get("value") or "")
        except (ValueError, KeyError, TypeError):
            await _say(respond, view.unavailable("This button is out of date: run /history again."))
            return
        deps.background.spawn(
            answer(deps, client, caller, text, respond, now=now, cursor=cursor),
            name=f"history-{caller.user_id}",
        )

    @app.action(view.SHOW_ACTION_ID)
    async def show(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        caller = _clicker(body)
        text = f"show {action.get('value') or ''}"
        deps.background.spawn(
            answer(deps, client, caller, text, respond), name=f"history-{caller.user_id}"
        )


async def answer(
    deps: BotDeps,
    client: AsyncWebClient,
    caller: Caller,
    text: str,
    respond: AsyncRespond,
    *,
    now: datetime | None = None,
    cursor: RunCursor | None = None,
) -> None:
    """Check the caller, record the use, run the query and answer (ephemeral)."""
    now = now or datetime.now(UTC)
    try:
        if not caller.team_id:  # never query without a workspace: that would mean all of them
            await _say(respond, view.unavailable("/history only works inside a workspace."))
            return
        if not await may_see_history(deps, client, caller):
            log.info("refused /history to %s in %s", caller.user_id, caller.team_id)
            await _audit(deps, caller, text, AuditOutcome.REFUSED, "not an admin")
            await _say(respond, view.refusal())
            return
        command = parse_history(text, now=now)
        if isinstance(command, Help):
            outcome = AuditOutcome.INVALID if command.problem else AuditOutcome.ALLOWED
            await _audit(deps, caller, text, outcome, command.problem)
            await _say(respond, view.help_message(command.problem))
            return
        detail = f"page after {cursor.id}" if cursor is not None else None
        await _audit(deps, caller, text, AuditOutcome.ALLOWED, detail)
        await _say(respond, await _reply(deps, caller, command, text, now=now, cursor=cursor))
    except Exception:
        log.exception("/history failed for %s", caller.user_id)
        await _say(respond, view.unavailable("Sorry, the history could not be read just now."))


async def may_see_history(deps: BotDeps, client: AsyncWebClient, caller: Caller) -> bool:
    """An agentbot admin (`AGENTBOT_ADMINS`), or, when `AGENTBOT_HISTORY_WORKSPACE_ADMINS`
    is on, an admin or owner of the workspace."""
    if deps.is_admin(caller.user_id):
        return True
    if not deps.settings.history_workspace_admins or not caller.user_id:
        return False
    return await deps.roles.is_admin(client, team_id=caller.team_id, user_id=caller.user_id)


async def _reply(
    deps: BotDeps,
    caller: Caller,
    command: ListRuns | ShowStats | ShowRun,
    text: str,
    *,
    now: datetime,
    cursor: RunCursor | None,
) -> SlackMessage:
    store = deps.store
    match command:
        case ListRuns(query=query, described=described):
            page = query.limit
            query = dataclasses.replace(
                query, team_id=caller.team_id, before=cursor, limit=page + 1
            )
            runs = await store.query(query)
            more = view.more_value(text, now, runs[page - 1]) if len(runs) > page else None
            return view.run_list(
                runs[:page], described=described, more=more, continued=cursor is not None
            )
        case ShowStats(since=since, span=span):
            stats = await store.stats(StatsQuery(team_id=caller.team_id, since=since))
            return view.stats_message(stats, since=since, span=span, today=now.date())
        case ShowRun(run_id=run_id):
            run = await store.get(run_id)
            if run is None or run.team_id != caller.team_id:
                return view.unavailable(f"No run `{run_id}` in this workspace.")
            children = [c for c in await store.children(run.id) if c.team_id == caller.team_id]
            return view.run_detail(run, children)


def _clicker(body: dict[str, Any]) -> Caller:
    user = body.get("user") or {}
    team = body.get("team") or {}
    channel = body.get("channel") or {}
    return Caller(
        user_id=user.get("id") or "",
        team_id=team.get("id") or user.get("team_id") or "",
        channel_id=channel.get("id"),
    )


async def _audit(
    deps: BotDeps, caller: Caller, text: str, outcome: AuditOutcome, detail: str | None
) -> None:
    entry = AuditEntry(
        user_id=caller.user_id,
        command=HISTORY_COMMAND,
        text=text,
        outcome=outcome,
        team_id=caller.team_id,
        channel_id=caller.channel_id,
        detail=detail,
    )
    try:
        await deps.store.record_audit(entry)
    except Exception:
        log.exception("could not record the audit entry %s", entry)


async def _say(respond: AsyncRespond, message: SlackMessage) -> None:
    await respond(
        text=message.text,
        blocks=message.blocks,
        response_type="ephemeral",
        replace_original=False,
    )
