"""Pure functions that turn history answers into ephemeral Block Kit messages.

Made to read on a phone: one short section per run, times in the reader's own time zone
(`<!date^…>`), no tables. Within Slack's limits: at most 50 blocks, at most 3,000 characters
per section text, button values under 2,000 characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from bot.models import RunCursor, RunRecord, RunStats, RunStatus
from bot.query import (
    MAX_PAGE,
    bucketed,
    compact,
    daily_series,
    duration,
    share,
    sparkline,
)
from bot.text import preview as text_preview
from handlers import untrusted
from handlers.render import SlackMessage

MORE_ACTION_ID = "history_more"
SHOW_ACTION_ID = "history_show"
MAX_BLOCKS = 50
SECTION_CHARS = 3000
BUTTON_VALUE_CHARS = 2000
PREVIEW_CHARS = 150
MAX_CHILDREN_SHOWN = 40

Block = dict[str, Any]

ICONS = {
    RunStatus.QUEUED: "⏳",
    RunStatus.RUNNING: "✍️",
    RunStatus.SUCCEEDED: "✅",
    RunStatus.FAILED: "⚠️",
    RunStatus.CANCELLED: "⏹️",
    RunStatus.INTERRUPTED: "⏸️",
    RunStatus.REFUSED: "🚫",
}

REFUSAL = (
    "Sorry, `/history` is only for agentbot admins, so there is nothing to show you here. "
    "If you need to look at past runs, please ask one of your workspace's admins."
)

USAGE = "\n".join(
    [
        "*`/history`* shows this workspace's latest runs. Filters, in any order:",
        "• `user:@alice` · `channel:#general` · `status:failed` · `kind:team`",
        "• `since:7d` (or `24h`, `30m`, `2w`, `2026-11-01`) · `limit:20` (1 to "
        f"{MAX_PAGE} per page)",
        "• any other words are looked for in prompts; quote a phrase to search for a word "
        'that looks like a filter: `"stats"`',
        "*`/history stats [since:30d]`* runs by status, kind and person; tokens; p50/p95 "
        "time; runs per day.",
        "*`/history show <run-id>`* one run with its subtasks or stages.",
    ]
)


def refusal() -> SlackMessage:
    return SlackMessage(text=REFUSAL, blocks=[section(REFUSAL)])


def unavailable(reason: str) -> SlackMessage:
    return SlackMessage(text=reason, blocks=[section(f"⚠️ {reason}")])


def help_message(problem: str | None) -> SlackMessage:
    blocks = [section(f"⚠️ {fit(problem)}")] if problem else []
    blocks.append(section(USAGE))
    return SlackMessage(text=problem or "How to use /history", blocks=blocks)


def run_list(
    runs: Sequence[RunRecord],
    *,
    described: Sequence[str],
    more: str | None,
    continued: bool,
) -> SlackMessage:
    """A page of runs, newest first, with a Details button each and a More button when
    `more` (the button's value) is given."""
    where = f" · {', '.join(described)}" if described else ""
    if not runs:
        text = f"No {'more ' if continued else ''}runs match in this workspace{where}."
        return SlackMessage(text=text, blocks=[section(text)])
    title = "More runs" if continued else f"Latest {len(runs)} run{'s' if len(runs) > 1 else ''}"
    blocks: list[Block] = [section(fit(f"*{title}* in this workspace{where}"))]
    blocks += [run_summary(run) for run in runs[: MAX_BLOCKS - 2]]
    if more is not None:
        blocks.append(actions(button("More", MORE_ACTION_ID, more)))
    return SlackMessage(text=f"{title} in this workspace", blocks=blocks)


def more_value(text: str, now: datetime, after: RunRecord) -> str | None:
    """The More button's value: the query as typed, its `now`, and where the page ended
    (None when it would be too long for a button)."""
    cursor = RunCursor.after(after)
    value = json.dumps(
        {"q": text, "n": now.isoformat(), "c": [cursor.created_at.isoformat(), cursor.id]},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return value if len(value) <= BUTTON_VALUE_CHARS else None


def parse_more_value(value: str) -> tuple[str, datetime, RunCursor]:
    """The contents of a More button; `ValueError` if it was not made by `more_value`."""
    data = json.loads(value)
    text, now, (at, run_id) = data["q"], data["n"], data["c"]
    if not (isinstance(text, str) and isinstance(run_id, str)):
        raise ValueError("not a history button")
    cursor = RunCursor(created_at=datetime.fromisoformat(at), id=run_id)
    return text, datetime.fromisoformat(now), cursor


def run_summary(run: RunRecord) -> Block:
    """One run in a list: what, who, where, when, how long; the prompt; the id."""
    facts = [f"{ICONS[run.status]} *{run.kind.value}*"]
    if run.user_id:
        facts.append(f"<@{run.user_id}>")
    if run.channel_id:
        facts.append(f"<#{run.channel_id}>")
    facts.append(when(run.created_at))
    if run.duration_ms is not None:
        facts.append(duration(run.duration_ms))
    tokens = run.input_tokens + run.output_tokens
    if tokens:
        facts.append(f"{compact(tokens)} tok")
    lines = [" · ".join(facts), f">{escape(preview(run.prompt)) or '_(empty prompt)_'}"]
    tail = f"`{run.id}`"
    if run.error and run.status is not RunStatus.SUCCEEDED:
        tail += f" · {escape(preview(run.error, 100))}"
    lines.append(tail)
    block = section(fit("\n".join(lines)))
    block["accessory"] = button("Details", SHOW_ACTION_ID, run.id)
    return block


def run_detail(run: RunRecord, children: Sequence[RunRecord]) -> SlackMessage:
    """One run in full (prompt and output cut to fit) and a line per child."""
    head = [f"{ICONS[run.status]} *{run.kind.value}* · {run.status.value}"]
    if run.command:
        head.append(f"`{escape(run.command)}`")
    if run.agent:
        head.append(f"agent {escape(run.agent)}")
    if run.model:
        head.append(f"`{escape(run.model)}`")
    who = [f"<@{run.user_id}>" if run.user_id else "someone"]
    if run.channel_id:
        who.append(f"in <#{run.channel_id}>")
    who.append(when(run.created_at))
    blocks: list[Block] = [
        section(fit(f"*Run* `{run.id}`\n{' · '.join(head)}\n{' '.join(who)}")),
        section(fit(f"*Prompt*\n{escape(run.prompt) or '_(empty)_'}")),
    ]
    if run.output:
        blocks.append(section(fit(f"*Output*\n{escape(run.output)}")))
    if run.error:
        blocks.append(section(fit(f"*Error*\n{escape(run.error)}")))
    blocks.append(context(fit(figures(run))))
    if run.parent_id:
        parent = section(f"Part of `{run.parent_id}`")
        parent["accessory"] = button("Parent", SHOW_ACTION_ID, run.parent_id)
        blocks.append(parent)
    if children:
        blocks.append(section(f"*Parts ({len(children)})*"))
        room = MAX_BLOCKS - len(blocks) - 1
        blocks += [run_summary(child) for child in children[: min(room, MAX_CHILDREN_SHOWN)]]
        hidden = len(children) - min(room, MAX_CHILDREN_SHOWN)
        if hidden > 0:
            blocks.append(context(f"…and {hidden} more: `agentbot history show {run.id}`"))
    return SlackMessage(text=f"Run {run.id}: {run.status.value}", blocks=blocks)


def figures(run: RunRecord) -> str:
    parts = [
        f"{run.input_tokens:,} in / {run.output_tokens:,} out tokens",
        f"{run.requests} model request{'s' if run.requests != 1 else ''}",
        f"took {duration(run.duration_ms)}",
    ]
    if run.first_token_at and run.started_at:
        ms = int((run.first_token_at - run.started_at).total_seconds() * 1000)
        parts.append(f"first token after {duration(ms)}")
    parts.append(f"{run.slack_writes} Slack writes")
    return " · ".join(parts)


def stats_message(stats: RunStats, *, since: datetime, span: str, today: date) -> SlackMessage:
    """The stats in a handful of short sections and a sparkline of runs per day."""
    label = span_words(span)
    if not stats.total:
        text = f"No runs in this workspace {label}."
        return SlackMessage(text=text, blocks=[section(text)])
    people = f"{stats.users} {'person' if stats.users == 1 else 'people'}"
    lines = [
        f"*{stats.total:,} runs* {label} by {people} (since {when(since, time=False)})",
        "*Status* "
        + " · ".join(
            f"{ICONS[status]} {status.value} {n:,} ({share(n, stats.total)})"
            for status, n in stats.by_status.items()
        ),
        "*Kind* " + " · ".join(f"{kind.value} {n:,}" for kind, n in stats.by_kind.items()),
        "*Top people* " + (" · ".join(f"<@{user}> {n:,}" for user, n in stats.top_users) or "–"),
        f"*Tokens* {compact(stats.input_tokens)} in · {compact(stats.output_tokens)} out",
        f"*Time per run* p50 {duration(stats.p50_ms)} · p95 {duration(stats.p95_ms)}",
    ]
    series = daily_series(stats.per_day, first=since.date(), last=today)
    bars, size = bucketed(series)
    unit = {1: "day", 7: "week", 30: "30 days"}.get(size, f"{size} days")
    peak = max(bars, default=0)
    # In a code span (even widths); "_" for an empty day, as Slack may trim edge spaces.
    chart = (
        f"*Runs per {unit}* `{sparkline(bars).replace(' ', '_')}`\n"
        f"{when(since, time=False)} → today · busiest {unit}: {peak:,} runs"
    )
    blocks = [section(fit("\n".join(lines))), section(fit(chart))]
    return SlackMessage(text=f"{stats.total:,} runs {label}", blocks=blocks)


def span_words(span: str) -> str:
    """`30d` → "in the last 30 days"; a date → "since 2026-11-01"."""
    found = re.match(r"^(\d+)([mhdw])$", span.strip().lower())
    if found is None:
        return f"since {span}"
    count, unit = int(found[1]), {"m": "minute", "h": "hour", "d": "day", "w": "week"}[found[2]]
    return f"in the last {count} {unit}{'s' if count != 1 else ''}"


# -- small pieces ----------------------------------------------------------------------------


def when(moment: datetime, *, time: bool = True) -> str:
    """A time shown in the reader's own time zone, with a UTC fallback."""
    pattern = "{date_short_pretty} {time}" if time else "{date_short_pretty}"
    fallback = moment.strftime("%Y-%m-%d %H:%M UTC" if time else "%Y-%m-%d")
    return f"<!date^{int(moment.timestamp())}^{pattern}|{fallback}>"


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    return text_preview(text, limit)


def escape(text: str) -> str:
    """Text shown as typed (prompts, outputs, errors): nobody is pinged."""
    return untrusted.mrkdwn(text)


def fit(text: str, limit: int = SECTION_CHARS) -> str:
    """`text` cut to `limit` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    cut = untrusted.cut_clear(text[: limit - 40])
    return f"{cut}… _({len(text) - len(cut):,} more characters)_"


def section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def button(label: str, action_id: str, value: str) -> Block:
    return {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label},
        "value": value,
    }


def actions(*elements: Block) -> Block:
    return {"type": "actions", "elements": list(elements)}
