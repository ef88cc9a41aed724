"""Pure functions that turn runs into Slack messages (Block Kit), within Slack's limits.

Lengths are measured in UTF-8 bytes, which is never less than Slack's character count, so a
piece that fits here fits in Slack.

Every text that is not ours (the model's answer, the prompt, tool arguments, errors) goes
through `handlers.untrusted` once, after it is cut to fit and before it is measured: each
message is safe on its own, and no cut falls inside an escape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.board import BoardItem, BoardView, ItemStatus
from bot.models import Progress, RunRecord, RunStatus
from bot.text import one_line
from handlers import untrusted

ANSWER_CHUNK_BYTES = 3900
"""The most answer text, in UTF-8 bytes, one message shows (docs/ARCHITECTURE.md §4)."""

PROMPT_PREVIEW_CHARS = 280
NOTIFICATION_CHARS = 150
"""The most characters of a message's `text` (its notification) beside its blocks."""
STOP_ACTION_ID = "stop_run"

Blocks = list[dict[str, Any]]


@dataclass(frozen=True)
class SlackMessage:
    """What `chat.postMessage` / `chat.update` send: the notification text and the blocks."""

    text: str
    blocks: Blocks


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def split_text(text: str, limit: int = ANSWER_CHUNK_BYTES) -> list[str]:
    """Split `text` into pieces of at most `limit` UTF-8 bytes whose concatenation is `text`.

    Cuts at a paragraph break if one is in the second half of a piece, else at a line break,
    else after a space, else anywhere (between code points). Never loses or reorders text.
    """
    if limit < 4:
        raise ValueError("limit must leave room for one code point (4 bytes)")
    pieces: list[str] = []
    rest = text
    while utf8_len(rest) > limit:
        head = _prefix_within(rest, limit)
        cut = _best_cut(head)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest or not pieces:
        pieces.append(rest)
    return pieces


def split_answer(text: str, limit: int = ANSWER_CHUNK_BYTES) -> list[tuple[str, str]]:
    """`text` (untrusted Markdown) in pieces as `split_text` cuts it, each as (raw, shown):
    `shown` is the piece made safe (`untrusted.markdown`), at most `limit` UTF-8 bytes.

    The raw pieces concatenate to `text`; each piece is escaped on its own, as Slack shows
    each message on its own.
    """
    pieces: list[tuple[str, str]] = []
    rest = text
    while rest:
        budget = limit
        while True:
            cut = _first_cut(rest, budget)
            shown = untrusted.markdown(rest[:cut])
            excess = utf8_len(shown) - limit
            if excess <= 0:
                break
            budget = max(4, budget - excess)  # escapes grew it: cut shorter
        pieces.append((rest[:cut], shown))
        rest = rest[cut:]
    return pieces


def answer_tail(text: str, limit: int = ANSWER_CHUNK_BYTES) -> str:
    """The end of `text` (untrusted Markdown) that fits in `limit` bytes once made safe."""
    budget = limit
    while True:
        shown = untrusted.markdown(tail_that_fits(text, budget))
        excess = utf8_len(shown) - limit
        if excess <= 0:
            return shown
        budget = max(8, budget - excess)


def _first_cut(text: str, limit: int) -> int:
    """Where `split_text` ends the first piece of `text`."""
    if utf8_len(text) <= limit:
        return len(text)
    return _best_cut(_prefix_within(text, limit))


def tail_that_fits(text: str, limit: int = ANSWER_CHUNK_BYTES) -> str:
    """The end of `text`, marked with a leading ellipsis when cut, within `limit` bytes."""
    if utf8_len(text) <= limit:
        return text
    marker = "…"
    budget = limit - utf8_len(marker)
    encoded = text.encode("utf-8")[-budget:]
    return marker + encoded.decode("utf-8", errors="ignore")


def _prefix_within(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")[:limit]
    return encoded.decode("utf-8", errors="ignore")


def _best_cut(head: str) -> int:
    half = len(head) // 2
    for separator in ("\n\n", "\n", " "):
        at = head.rfind(separator)
        if at >= half:
            return at + len(separator)
    # Not inside an escape (`&amp;`): cut before its `&`.
    entity = head.rfind("&", max(half, len(head) - 8))
    if entity > 0 and ";" not in head[entity:]:
        return entity
    return len(head)


def asked_line(user_id: str | None, prompt: str, *, command: str | None = None) -> str:
    shown = prompt if len(prompt) <= PROMPT_PREVIEW_CHARS else prompt[:PROMPT_PREVIEW_CHARS] + "…"
    who = f"<@{user_id}>" if user_id else "Someone"  # the asker: ours, meant to mention
    via = f" `{command}`" if command else ""
    return f"{who} asked{via}: {_quote_inline(shown)}"


def live_message(
    run: RunRecord,
    text: str,
    progress: Progress | None,
    *,
    heading: str | None = None,
    queued: int | None = None,
) -> SlackMessage:
    """The message while the run streams: the text so far, a live footer and a Stop button.

    `heading` replaces the default first line ("<@U> asked: …"), e.g. for a team's subtask;
    `queued` is the run's place in line while it waits for a free place.
    """
    body = answer_tail(text) if text else "_thinking…_"
    if queued is not None:
        status = f"⏳ queued, position {queued}: agentbot is busy, your run starts soon"
    elif progress is None:
        status = "⏳ thinking…"
    else:
        status = (
            f"✍️ ~{progress.output_tokens} tokens · {progress.tokens_per_s:.0f} tok/s · "
            f"{progress.elapsed_s:.0f} s"
        )
    blocks: Blocks = [_context(_heading_line(run, heading)), _markdown(body)]
    if progress is not None and progress.tools:
        blocks.append(_context(untrusted.mrkdwn("\n".join(progress.tools))))
    blocks += [_context(status), _stop_button(run.id)]
    return SlackMessage(text=_notification(text or "thinking…"), blocks=blocks)


def final_messages(run: RunRecord, *, heading: str | None = None) -> list[SlackMessage]:
    """The finished run: the first message (which replaces the live one), then thread replies.

    The whole output is shown across them, in order, nothing dropped.
    """
    chunks = split_answer(run.output)
    notice = status_notice(run)
    footer = footer_line(run)
    if len(chunks) > 1:
        footer += f" · continued in thread ({len(chunks) - 1} more)"
    blocks: Blocks = [_context(_heading_line(run, heading))]
    if chunks:
        blocks.append(_markdown(chunks[0][1]))
    if notice:
        blocks.append(_section(notice))
    blocks.append(_context(footer))
    if chunks:
        said = _notification(chunks[0][0])
    else:
        said = _notification_of_mrkdwn(notice or "done")
    first = SlackMessage(text=said, blocks=blocks)
    rest = [
        SlackMessage(text=_notification(raw), blocks=[_markdown(shown)])
        for raw, shown in chunks[1:]
    ]
    return [first, *rest]


def status_notice(run: RunRecord, *, answer_above: bool = True) -> str | None:
    """The mrkdwn line that explains an unsuccessful end, or None for a success.
    `answer_above`: the message shows the run's output above the line (a board does not)."""
    kept = " Partial answer kept above." if run.output and answer_above else ""
    error = _error(run.error, run.status) if run.error else None
    match run.status:
        case RunStatus.SUCCEEDED:
            return None if run.output else "_The model returned an empty answer._"
        case RunStatus.CANCELLED:
            return f"⏹️ {error or 'Stopped'}.{kept}"
        case RunStatus.INTERRUPTED:
            return f"⚠️ Interrupted: {error or 'the bot stopped'}.{kept}"
        case RunStatus.FAILED:
            return f"⚠️ {error or 'The run failed'}.{kept}"
        case RunStatus.REFUSED:
            return f"🚫 {error or 'Refused'}"
        case RunStatus.QUEUED | RunStatus.RUNNING:
            return None


def footer_line(run: RunRecord) -> str:
    seconds = (run.duration_ms or 0) / 1000
    rate = run.output_tokens / seconds if seconds > 0 else 0.0
    about = "~" if run.usage_estimated else ""  # estimated from the text, not reported
    parts = [
        f"`{untrusted.mrkdwn(run.model)}`" if run.model else None,
        f"{about}{run.input_tokens} in / {about}{run.output_tokens} out tokens",
        f"{seconds:.1f} s",
        f"{rate:.0f} tok/s",
        tools_used(run),
    ]
    return " · ".join(part for part in parts if part)


def tools_used(run: RunRecord) -> str | None:
    """A compact list of the tools a run used: "🔧 fetch_url ×2, read_thread (1 failed)"
    (mrkdwn; the names are the model's)."""
    if not run.tool_calls:
        return None
    counts: dict[str, int] = {}
    for call in run.tool_calls:
        counts[call["name"]] = counts.get(call["name"], 0) + 1
    used = ", ".join(
        untrusted.mrkdwn(name) + (f" ×{n}" if n > 1 else "") for name, n in counts.items()
    )
    failed = sum(1 for call in run.tool_calls if not call.get("ok"))
    return f"🔧 {used}" + (f" ({failed} failed)" if failed else "")


def _notification(text: str) -> str:
    """A message's `text` (mrkdwn): what notifications and screen readers show of `text`."""
    return untrusted.fit(one_line(text), NOTIFICATION_CHARS, untrusted.mrkdwn)


def _notification_of_mrkdwn(text: str) -> str:
    """A message's `text` made of mrkdwn that is safe already: cut, never inside an escape
    (`&amp;`) or a mention (`<@U1>`)."""
    flat = one_line(text)
    if len(flat) <= NOTIFICATION_CHARS:
        return flat
    return untrusted.cut_clear(flat[: NOTIFICATION_CHARS - 1]) + "…"


def _error(error: str, status: RunStatus) -> str:
    """A run's error as mrkdwn. A stopped or interrupted run's reason is the bot's own
    ("Stopped by <@U1>"); a failure's may quote a provider or the model, and is escaped."""
    if status in (RunStatus.CANCELLED, RunStatus.INTERRUPTED):
        return error
    return untrusted.mrkdwn(error)


def _heading_line(run: RunRecord, heading: str | None) -> str:
    """The first line of a run's message: `heading` (mrkdwn that may quote the model, e.g.
    a subtask's title) or who asked what."""
    if heading:
        return untrusted.mrkdwn(heading)
    return asked_line(run.user_id, run.prompt, command=run.command)


def _quote_inline(text: str) -> str:
    """One line, escaped so a prompt cannot ping anyone."""
    return untrusted.mrkdwn(one_line(text))


def _stop_button(run_id: str) -> dict[str, Any]:
    return {
        "type": "actions",
        "block_id": "run_controls",
        "elements": [
            {
                "type": "button",
                "action_id": STOP_ACTION_ID,
                "text": {"type": "plain_text", "text": "Stop"},
                "style": "danger",
                "value": run_id,
            }
        ],
    }


def _markdown(text: str) -> dict[str, Any]:
    return {"type": "markdown", "text": text}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


BOARD_ICONS = {
    ItemStatus.PLANNED: "⏳",
    ItemStatus.RUNNING: "✍️",
    ItemStatus.DONE: "✅",
    ItemStatus.FAILED: "⚠️",
    ItemStatus.CANCELLED: "⏹️",
    ItemStatus.SKIPPED: "⏭️",
}
SECTION_BYTES = 3000


def _detail(item: BoardItem) -> str:
    """A board line's detail: a stopped part's reason is the bot's; else escaped."""
    if item.status is ItemStatus.CANCELLED:
        return item.detail
    return untrusted.mrkdwn(item.detail)


def board_message(run: RunRecord, view: BoardView, *, final: bool) -> SlackMessage:
    """The parent of a team, pipeline or comparison: the task, one line per part with its
    status, and (while live) a Stop button that stops every part."""
    safe = untrusted.mrkdwn  # labels quote the planner's titles, details the runs' errors
    lines = [
        f"{BOARD_ICONS[item.status]} {safe(item.label)}"
        + (f" — _{_detail(item)}_" if item.detail else "")
        for item in view.items
    ]
    blocks: Blocks = [
        _context(asked_line(run.user_id, run.prompt, command=run.command)),
        _section(f"*{safe(view.title)}* · {safe(view.phase)}"),
    ]
    if lines:
        blocks.append(_section(tail_that_fits("\n".join(lines), SECTION_BYTES)))
    notice = None
    if final and run.status is not RunStatus.SUCCEEDED:
        notice = status_notice(run, answer_above=False)
    if final and run.status is RunStatus.SUCCEEDED and run.error:
        notice = f"⚠️ {safe(run.error)}."  # e.g. some subtasks failed but the team answered
    if notice:
        blocks.append(_section(notice))
    if final:
        summary = safe(view.summary or "")
        blocks.append(_context(f"{summary} · answers in the thread ↓".lstrip(" ·")))
    else:
        blocks.append(_stop_button(run.id))
    return SlackMessage(text=_notification(f"{view.title}: {view.phase}"), blocks=blocks)
