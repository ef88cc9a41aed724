"""Conversations: `@agentbot …` in a channel, direct messages, and replies in the thread of a
bot answer, which continue that conversation with the same agent and the earlier turns.

The earlier turns come from storage, never from re-reading Slack: each run stores only its
new pydantic-ai messages, and a follow-up joins those of the runs before it. Each Slack
`event_id` is handled once, even when Slack retries it to another process sharing the
database: the store decides which delivery is the first.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.history import estimate_message_tokens, join_turns, stored_whole
from bot.models import RunCursor, RunKind, RunQuery, RunRecord
from bot.team import policy_for
from handlers.commands import conversation_usage, record_refusal, screen
from handlers.incoming import clean_request_text
from handlers.sinks import SlackEditSink

if TYPE_CHECKING:
    from bot.ports import RunStore
    from handlers.app import BotDeps

log = logging.getLogger(__name__)

# Message subtypes that are not a person talking: edits (our own streaming causes these),
# deletions, joins, bot posts.
IGNORED_SUBTYPES = frozenset(
    {"message_changed", "message_deleted", "bot_message", "channel_join", "channel_leave"}
)
_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
# Runs that continue a conversation; any other kind (a command's run) starts one.
CONVERSATION_KINDS = frozenset({RunKind.MENTION, RunKind.FOLLOWUP})
MAX_CHAIN = 200  # most runs read back to rebuild one conversation's history
PAGE = 16  # runs read at once while walking back a conversation


class SeenEvents:
    """The event ids this process handled recently (bounded, with a time to live): drops
    Slack's retries to this process before asking the store."""

    def __init__(self, *, size: int = 10_000, ttl: float = 3600.0) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._size = size
        self._ttl = ttl

    def first_time(self, event_id: str, *, now: float | None = None) -> bool:
        """True the first time `event_id` is offered (within the time to live)."""
        now = time.monotonic() if now is None else now
        while self._seen and (
            len(self._seen) >= self._size or next(iter(self._seen.values())) < now - self._ttl
        ):
            self._seen.popitem(last=False)
        if event_id in self._seen:
            return False
        self._seen[event_id] = now
        return True


def register(app: AsyncApp, deps: BotDeps) -> None:
    # First of all middleware: user text is cleaned once, here, for every listener.
    app.middleware(clean_request_text)
    seen = SeenEvents()

    @app.middleware
    async def handle_each_event_once(
        req: AsyncBoltRequest, resp: BoltResponse, next: Callable[[], Awaitable[None]]
    ) -> BoltResponse:
        event_id = req.body.get("event_id") if isinstance(req.body, dict) else None
        if event_id and not seen.first_time(event_id):
            log.info(
                "event %s already handled (retry %s)",
                event_id,
                req.headers.get("x-slack-retry-num"),
            )
            return BoltResponse(status=200, body="")
        await next()
        return resp

    @app.event("app_mention")
    async def mention(event: dict[str, Any], body: dict[str, Any]) -> None:
        # In a channel the answer goes into a thread: the mention's own, or a new one under it.
        thread_ts = event.get("thread_ts") or event["ts"]
        _converse_after_ack(deps, event, body, kind=RunKind.MENTION, thread_ts=thread_ts)

    @app.event("message")
    async def message(event: dict[str, Any], body: dict[str, Any], context: dict[str, Any]) -> None:
        if event.get("subtype") in IGNORED_SUBTYPES or event.get("bot_id"):
            return
        if event.get("user") in (None, context.get("bot_user_id")):
            return
        if _mentions(event.get("text", ""), context.get("bot_user_id")):
            return  # `app_mention` answers it
        thread_ts = event.get("thread_ts")
        if event.get("channel_type") == "im":
            _converse_after_ack(
                deps,
                event,
                body,
                kind=RunKind.MENTION if thread_ts is None else RunKind.FOLLOWUP,
                thread_ts=thread_ts,
            )
        elif thread_ts is not None:
            _converse_after_ack(
                deps, event, body, kind=RunKind.FOLLOWUP, thread_ts=thread_ts, only_our_threads=True
            )


async def _first_delivery(store: RunStore, event_id: str) -> bool:
    """Whether this is the first delivery of `event_id` of all processes sharing the store
    (the middleware has already dropped this process's own repeats). When the store does not
    answer, the event is handled: a rare double answer beats a lost one."""
    # No time limit: this runs after the ack, and a cancelled check would be rolled back and
    # let another process answer the event too.
    try:
        return await store.first_delivery(event_id)
    except Exception as exc:
        log.warning(
            "event %s: handled without checking other processes (%s: %s)",
            event_id,
            type(exc).__name__,
            exc,
        )
        return True


def _mentions(text: str, bot_user_id: str | None) -> bool:
    return bot_user_id is not None and bot_user_id in _MENTION.findall(text)


def _converse_after_ack(
    deps: BotDeps, event: dict[str, Any], body: dict[str, Any], **how: Any
) -> None:
    """Answer the event in the background: the ack never waits for the database."""
    deps.background.spawn(
        _converse(deps, event, body, **how), name=f"event-{body.get('event_id') or event['ts']}"
    )


async def _converse(
    deps: BotDeps,
    event: dict[str, Any],
    body: dict[str, Any],
    *,
    kind: RunKind,
    thread_ts: str | None,
    only_our_threads: bool = False,
) -> None:
    event_id = body.get("event_id")
    if event_id and not await _first_delivery(deps.store, event_id):
        log.info("event %s already handled by another process", event_id)
        return
    channel = event["channel"]
    earlier = await _earlier_run(deps, channel, thread_ts)
    if only_our_threads and earlier is None:
        return  # a thread that is not a conversation with the bot
    agent_name = earlier.agent if earlier and earlier.agent in deps.config.agents else "assistant"
    built = deps.agents.get(agent_name)
    run = RunRecord(
        kind=kind,
        prompt=_MENTION.sub("", event.get("text", "")).strip(),
        agent=built.name,
        model=built.model_name,
        team_id=body.get("team_id") or event.get("team"),
        channel_id=channel,
        user_id=event.get("user"),
        thread_ts=thread_ts,
    )
    pacer = deps.pacer.workspace(run.team_id)

    async def notify(text: str) -> None:
        await pacer.call(
            "chat.postEphemeral", channel=channel, user=run.user_id, text=text, thread_ts=thread_ts
        )

    refusal = screen(deps, run)
    if refusal is not None:
        await record_refusal(deps, run, refusal)
        answer = refusal.answer(conversation_usage(run))
        deps.background.spawn(notify(answer), name=f"refusal-{run.id}")
        return
    history = await _conversation(deps, earlier, budget=built.spec.history_budget)
    # Native streaming replies in a thread; a DM's top-level answer is an edited message.
    if thread_ts is not None:
        sink = deps.reply_sink(pacer, channel=channel, thread_ts=thread_ts, notify=notify)
    else:
        sink = SlackEditSink(pacer, channel=channel, notify=notify)
    deps.background.spawn(
        deps.runner.run(built.agent, run, sink=sink, policy=policy_for(built), history=history),
        name=f"run-{run.id}",
    )


async def _earlier_run(deps: BotDeps, channel: str, thread_ts: str | None) -> RunRecord | None:
    """The latest run of this conversation: in the thread, or (a DM without thread) the
    channel's latest run."""
    if thread_ts is not None:
        return await deps.store.find_by_message(channel, thread_ts)
    if channel.startswith("D"):
        latest = await deps.store.query(RunQuery(channel_id=channel, limit=1))
        return await deps.store.get(latest[0].id) if latest else None
    return None


async def _conversation(
    deps: BotDeps, latest: RunRecord | None, *, budget: int
) -> list[ModelMessage] | None:
    """The conversation that ends with `latest`: each run stores only its new messages, so the
    history is joined from the chain of runs each one continued, newest first, until it holds
    more than `budget` tokens (the agent trims the rest) or reaches a run that began it.

    A run continued the one `_earlier_run` found then: the same lookup among older runs, read
    a page at a time. A run without messages (failed, refused, still running) adds nothing but
    does not break the chain."""
    segments: list[list[ModelMessage]] = []
    tokens = 0
    page: list[RunRecord] = []  # older runs found by `page_key`'s lookup, newest first
    page_key: tuple[str, str | None] | None = None
    run = latest
    for _ in range(MAX_CHAIN):
        if run is None:
            break
        messages = _messages(run)
        if messages:
            if segments and stored_whole(segments[-1], older=messages):
                break  # the newer run holds this one's messages already
            segments.append(messages)
            tokens += sum(estimate_message_tokens(m) for m in messages)
            if tokens > budget:
                break
        key = _lookup_key(run)
        if key is None:
            break
        if key != page_key or not page:
            channel, ts = key
            page_key = key
            cursor = RunCursor.after(run)
            page = await deps.store.conversation_page(channel, ts, before=cursor, limit=PAGE)
        run = page.pop(0) if page else None
    return join_turns(segments) or None


def _lookup_key(run: RunRecord) -> tuple[str, str | None] | None:
    """How `_earlier_run` found the run `run` continued: (channel, thread) or, in a DM without
    thread, (channel, None); None for a run that began its conversation."""
    if run.kind not in CONVERSATION_KINDS or run.channel_id is None:
        return None  # a command's run starts its conversation
    if run.thread_ts is not None:
        return run.channel_id, run.thread_ts
    return (run.channel_id, None) if run.channel_id.startswith("D") else None


def _messages(run: RunRecord) -> list[ModelMessage]:
    if not run.messages_json:
        return []
    try:
        return ModelMessagesTypeAdapter.validate_json(run.messages_json)
    except ValueError:
        log.warning("run %s: stored messages unreadable; left out of the conversation", run.id)
        return []
