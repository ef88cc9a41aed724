"""Text helpers shared by the tool layer, the runner and the Slack renderers."""

from __future__ import annotations


def one_line(text: str) -> str:
    """`text` on one line: every run of white space becomes one space."""
    return " ".join(text.split())


def cap(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, a cut marked with "…"."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def preview(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters."""
    return cap(one_line(text), limit)
