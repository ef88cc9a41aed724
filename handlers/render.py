"""Pure functions that turn runs into Slack messages (Block Kit), within Slack's limits.

Lengths are measured in UTF-8 bytes, which is never less than Slack's character count, so a
piece that fits here fits in Slack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.board import BoardView, ItemStatus
from bot.models import Progress, RunRecord, RunStatus
from bot.text import preview

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
    return len(head)


def asked_line(user_id: str | None, prompt: str, *, command: str | None = None) -> str:
    shown = prompt if len(prompt) <= PROMPT_PREVIEW_CHARS else prompt[:PROMPT_PREVIEW_CHARS] + "…"
    who = f"<@{user_id}>" if user_id else "Someone"
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
    body = tail_that_fits(text) if text else "_thinking…_"
    if queued is not None:
        status = f"⏳ queued, position {queued}: agentbot is busy, your run starts soon"
    elif progress is None:
        status = "⏳ thinking…"
    else:
        status = (
            f"✍️ ~{progress.output_tokens} tokens · {progress.tokens_per_s:.0f} tok/s · "
            f"{progress.elapsed_s:.0f} s"
        )
    blocks: Blocks = [
        _context(heading or asked_line(run.user_id, run.prompt, command=run.command)),
        _markdown(body),
    ]
    if progress is not None and progress.tools:
        blocks.append(_context("\n".join(progress.tools)))
    blocks += [_context(status), _stop_button(run.id)]
    return SlackMessage(text=_notification(text or "thinking…"), blocks=blocks)


def final_messages(run: RunRecord, *, heading: str | None = None) -> list[SlackMessage]:
    """The finished run: the first message (which replaces the live one), then thread replies.

    The whole output is shown across them, in order, nothing dropped.
    """
    chunks = split_text(run.output) if run.output else []
    notice = status_notice(run)
    first_body = chunks[0] if chunks else None
    footer = footer_line(run)
    if len(chunks) > 1:
        footer += f" · continued in thread ({len(chunks) - 1} more)"
    blocks: Blocks = [_context(heading or asked_line(run.user_id, run.prompt, command=run.command))]
    if first_body:
        blocks.append(_markdown(first_body))
    if notice:
        blocks.append(_section(notice))
    blocks.append(_context(footer))
    first = SlackMessage(text=_notification(first_body or notice or "done"), blocks=blocks)
    rest = [
        SlackMessage(text=_notification(chunk), blocks=[_markdown(chunk)]) for chunk in chunks[1:]
    ]
    return [first, *rest]


def status_notice(run: RunRecord, *, answer_above: bool = True) -> str | None:
    """The line that explains an unsuccessful end, or None for a success. `answer_above`:
    the message shows the run's output above the line (a board does not)."""
    kept = " Partial answer kept above." if run.output and answer_above else ""
    match run.status:
        case RunStatus.SUCCEEDED:
            return None if run.output else "_The model returned an empty answer._"
        case RunStatus.CANCELLED:
            return f"⏹️ {run.error or 'Stopped'}.{kept}"
        case RunStatus.INTERRUPTED:
            return f"⚠️ Interrupted: {run.error or 'the bot stopped'}.{kept}"
        case RunStatus.FAILED:
            return f"⚠️ {run.error or 'The run failed'}.{kept}"
        case RunStatus.QUEUED | RunStatus.RUNNING:
            return None


def footer_line(run: RunRecord) -> str:
    seconds = (run.duration_ms or 0) / 1000
    rate = run.output_tokens / seconds if seconds > 0 else 0.0
    parts = [
        f"`{run.model}`" if run.model else None,
        f"{run.input_tokens} in / {run.output_tokens} out tokens",
        f"{seconds:.1f} s",
        f"{rate:.0f} tok/s",
        tools_used(run),
    ]
    return " · ".join(part for part in parts if part)


def tools_used(run: RunRecord) -> str | None:
    """A compact list of the tools a run used: "🔧 fetch_url ×2, read_thread (1 failed)"."""
    if not run.tool_calls:
        return None
    counts: dict[str, int] = {}
    for call in run.tool_calls:
        counts[call["name"]] = counts.get(call["name"], 0) + 1
    used = ", ".join(name + (f" ×{n}" if n > 1 else "") for name, n in counts.items())
    failed = sum(1 for call in run.tool_calls if not call.get("ok"))
    return f"🔧 {used}" + (f" ({failed} failed)" if failed else "")


def _notification(text: str) -> str:
    """A message's `text`: what notifications and screen readers show of it."""
    return preview(text, NOTIFICATION_CHARS)


def _quote_inline(text: str) -> str:
    """One line, with Slack's three control characters escaped so a prompt cannot ping anyone."""
    flat = " ".join(text.split())
    return flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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


def board_message(run: RunRecord, view: BoardView, *, final: bool) -> SlackMessage:
    """The parent of a team, pipeline or comparison: the task, one line per part with its
    status, and (while live) a Stop button that stops every part."""
    lines = [
        f"{BOARD_ICONS[item.status]} {item.label}" + (f" — _{item.detail}_" if item.detail else "")
        for item in view.items
    ]
    blocks: Blocks = [
        _context(asked_line(run.user_id, run.prompt, command=run.command)),
        _section(f"*{view.title}* · {view.phase}"),
    ]
    if lines:
        blocks.append(_section(tail_that_fits("\n".join(lines), SECTION_BYTES)))
    notice = None
    if final and run.status is not RunStatus.SUCCEEDED:
        notice = status_notice(run, answer_above=False)
    if final and run.status is RunStatus.SUCCEEDED and run.error:
        notice = f"⚠️ {run.error}."  # e.g. some subtasks failed but the team still answered
    if notice:
        blocks.append(_section(notice))
    if final:
        blocks.append(_context(f"{view.summary or ''} · answers in the thread ↓".lstrip(" ·")))
    else:
        blocks.append(_stop_button(run.id))
    return SlackMessage(text=_notification(f"{view.title}: {view.phase}"), blocks=blocks)
