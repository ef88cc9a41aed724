"""Untrusted text (a model's answer, a prompt, tool arguments, errors) made safe for Slack.

Slack reads `<…>` as a control sequence: `<!channel>`, `<!here>`, `<!everyone>` and
`<!subteam^ID>` ping a crowd, `<@U…>` pings a person, `<url|label>` shows a label in place
of its address. Slack's own escapes (`&lt;`, `&gt;`, `&amp;`) turn any of them into plain
text. A Markdown link can lie about its address as well: `[https://sso.example](https://evil)`.

One function per kind of field; every piece of untrusted text goes through one of them
exactly once, after it is cut to size (escaping the piece that is sent keeps every message
safe on its own, however it was cut):

- `mrkdwn(text)` for mrkdwn (section and context texts, a message's `text`): Slack's three
  escapes. `*bold*`, `_italic_` and code are untouched.
- `markdown(text)` for Markdown (`markdown` blocks, `markdown_text`): every `<` outside code,
  and in code a `<` that opens a Slack reference, becomes `&lt;`; an `&` that would read as an
  entity becomes `&amp;`; a link whose label names another address shows its real target.
  `>` quotes, emphasis, lists, code and ordinary links keep working.

User mentions (`<@U…>`) are escaped too: a fetched page could have the model ping anyone whose
ID it read in a thread, and the bot's own heading already names the person who asked.

Both also put a word joiner (U+2060, invisible) after the `@` of `@channel`, `@here`,
`@everyone` and `@group`: Slack documents such words as plain text unless `link_names` is
set (we never set it), but nothing documents how `markdown` blocks treat them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

WORD_JOINER = "\u2060"

_BROADCAST_WORD = re.compile(r"(?<![\w@])@(?=(?:channel|here|everyone|group)\b)", re.IGNORECASE)
_ENTITY_LIKE = re.compile(r"&(?=#?\w+;)")
_SLACK_REF_IN_CODE = re.compile(
    r"<(?=!(?:channel|here|everyone|group|subteam)\b|[@#]|[a-z][a-z0-9+.-]*:[^\s<>|]*\|)",
    re.IGNORECASE,
)
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^\s<>()\[\]|]+)>", re.IGNORECASE)
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_BACKTICKS = re.compile(r"`+")
_REFERENCE_DEFINITION = re.compile(r"^( {0,3}\[[^\]\n]+\]):", re.MULTILINE)
_LINK_CLOSE = re.compile(r"(?<!\\)\]\(")
_ADDRESS = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://)?(?:[a-z0-9-]+\.)+[a-z]{2,}(?::\d+)?(?:[/?#][^\s)\]>]*)?",
    re.IGNORECASE,
)
_OPEN_TOKEN = re.compile(r"(?:<[^\s<>]*|&#?\w*|@\w*)\Z")
MAX_LABEL = 2000
"""How far back a link's `[` is looked for; a `](` whose `[` is further is broken up."""


def mrkdwn(text: str) -> str:
    """`text` shown as typed in an mrkdwn field: nobody pinged, no link disguised."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _neutral_words(escaped)


def markdown(text: str) -> str:
    """`text` as Markdown that pings nobody and shows where each disguised link goes."""
    text = _unmask_links(text)
    out: list[str] = []
    for start, end, code in _regions(text):
        part = text[start:end]
        out.append(_code(part) if code else _prose(part))
    return _neutral_words("".join(out))


def stable_end(text: str) -> int:
    """How much of `text`, a Markdown answer still growing, `markdown` can escape now: the
    escape of `text[:stable_end(text)]` starts every later escape of `text` + more.

    Held back: an open link (`[` not yet followed by a complete `](…)` or by something else),
    an unclosed code span, and a `<`, `&` or `@` word still being written. Nothing is held
    across a blank line, as none of these spans paragraphs.
    """
    paragraph = max((m.end() for m in _BLANK_LINE.finditer(text)), default=0)
    end = len(text)
    tail = text[paragraph:]
    for hold in (_open_link(tail), _open_code_span(text, paragraph), _open_token(tail)):
        if hold is not None:
            end = min(end, paragraph + hold)
    return end


def fit(text: str, limit: int, escape: Callable[[str], str], *, cut: str = "…") -> str:
    """The escape of `text`, or of its longest beginning (marked with `cut`) whose escape is
    at most `limit` characters."""
    safe = escape(text)
    keep = len(text)
    while len(safe) > limit and keep > 0:
        keep = max(0, min(keep - 1, keep - (len(safe) - limit)))
        safe = escape(text[:keep] + cut)
    return safe if len(safe) <= limit else ""


# -- pieces ------------------------------------------------------------------------------


def _neutral_words(text: str) -> str:
    return _BROADCAST_WORD.sub("@" + WORD_JOINER, text)


def _prose(text: str) -> str:
    text = _ENTITY_LIKE.sub("&amp;", text)
    pieces = []
    at = 0
    for found in _AUTOLINK.finditer(text):  # `<https://…>` stays a link, written out
        pieces.append(text[at : found.start()].replace("<", "&lt;"))
        pieces.append(f"[{found[1]}]({found[1]})")
        at = found.end()
    pieces.append(text[at:].replace("<", "&lt;"))
    return "".join(pieces)


def _code(text: str) -> str:
    # Shown as written (Markdown decodes no entity in code), except what Slack would parse.
    return _SLACK_REF_IN_CODE.sub("&lt;", text)


def _regions(text: str) -> list[tuple[int, int, bool]]:
    """`text` cut into (start, end, is_code): fenced blocks and inline code spans."""
    regions: list[tuple[int, int, bool]] = []
    prose_from = 0
    fence: str | None = None
    fence_from = 0
    at = 0
    for line in text.splitlines(keepends=True):
        opener = _FENCE.match(line)
        if fence is None and opener:
            regions += _spans(text, prose_from, at)
            fence, fence_from = opener[1], at
        elif fence is not None and opener and opener[1][0] == fence[0]:
            if len(opener[1]) >= len(fence) and not line[opener.end() :].strip():
                regions.append((fence_from, at + len(line), True))
                fence, prose_from = None, at + len(line)
        at += len(line)
    if fence is not None:
        regions.append((fence_from, len(text), True))  # still open: code to the end
    else:
        regions += _spans(text, prose_from, len(text))
    return [r for r in regions if r[0] < r[1]]


def _spans(text: str, start: int, end: int) -> list[tuple[int, int, bool]]:
    """Prose between `start` and `end`, with its inline code spans (a run of backticks up to
    the next run of the same length, within a paragraph)."""
    regions: list[tuple[int, int, bool]] = []
    prose_from = at = start
    while (run := _BACKTICKS.search(text, at, end)) is not None:
        closer = _closing_run(text, run.end(), end, len(run[0]))
        if closer is None:
            at = run.end()  # literal backticks
            continue
        regions.append((prose_from, run.start(), False))
        regions.append((run.start(), closer, True))
        prose_from = at = closer
    regions.append((prose_from, end, False))
    return regions


def _closing_run(text: str, start: int, end: int, size: int) -> int | None:
    blank = _BLANK_LINE.search(text, start, end)
    stop = blank.start() if blank else end
    for run in _BACKTICKS.finditer(text, start, stop):
        if len(run[0]) == size:
            return run.end()
    return None


# -- links ---------------------------------------------------------------------------------


def _unmask_links(text: str) -> str:
    """Every link whose label names an address other than its target becomes
    `label (target)`, so that each address shown is where it leads; reference definitions
    (`[1]: https://…`) are broken up, so no label can point to one."""
    text = _REFERENCE_DEFINITION.sub(r"\1 :", text)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    for close in _LINK_CLOSE.finditer(text):
        opener = _link_opener(text, close.start())
        target = _link_target(text, close.end()) if opener != _FAR else ""
        if opener == _FAR or target == _FAR:
            edits.append((close.start(), close.end(), "] ("))  # too long to judge: no link
        elif opener is not None and target is not None:
            if _misleads(text[opener + 1 : close.start()], target):
                edits.append((opener, opener + 1, ""))
                edits.append((close.start(), close.end(), " ("))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


_FAR = -1
"""A link part longer than `MAX_LABEL`: the link is broken up rather than judged."""


def _link_opener(text: str, close: int) -> int | None:
    """Where the `[` of the label that ends at `close` is: None when the paragraph has none,
    `_FAR` when it is further than `MAX_LABEL`."""
    depth = 0
    paragraph = _paragraph_start(text, close)
    floor = max(paragraph, close - MAX_LABEL)
    for at in range(close - 1, floor - 1, -1):
        char = text[at]
        if char not in "[]" or (at > 0 and text[at - 1] == "\\"):
            continue
        if char == "]":
            depth += 1
        elif depth:
            depth -= 1
        else:
            return at
    return None if floor == paragraph else _FAR


def _link_target(text: str, start: int) -> str | int | None:
    """The destination of a link whose `(` ends at `start`: None when the paragraph ends
    first, `_FAR` when it is longer than `MAX_LABEL`."""
    depth = 0
    blank = _BLANK_LINE.search(text, start, start + MAX_LABEL + 2)
    stop = blank.start() if blank else min(len(text), start + MAX_LABEL)
    for at in range(start, stop):
        char = text[at]
        if char == "(":
            depth += 1
        elif char == ")":
            if not depth:
                inside = text[start:at].split()
                return inside[0].strip("<>") if inside else ""
            depth -= 1
    return _FAR if stop == start + MAX_LABEL else None


def _paragraph_start(text: str, at: int) -> int:
    floor = max(0, at - MAX_LABEL - 2)
    blanks = list(_BLANK_LINE.finditer(text, floor, at))
    return blanks[-1].end() if blanks else 0 if floor == 0 else floor


def _misleads(label: str, target: str) -> bool:
    """True when the label names an address that the target is not at."""
    plain = re.sub(r"[`*_~\\]", "", label)
    target_host, target_rest = _host_and_rest(target)
    for found in _ADDRESS.finditer(plain):
        host, rest = _host_and_rest(found[0])
        if host is None:
            continue
        if target_host is None or not (target_host == host or target_host.endswith("." + host)):
            return True
        if rest and not (target_host == host and _within(target_rest, rest)):
            return True
    return False


def _host_and_rest(address: str) -> tuple[str | None, str]:
    """The host (lower case, without `www.`) and the rest (path, query) of an address."""
    if address.lower().startswith("mailto:"):
        domain = address.partition("?")[0].rpartition("@")[2].lower()
        return domain.removeprefix("www.") or None, ""
    if "://" not in address:
        address = "//" + address
    try:
        parts = urlsplit(address)
        host = parts.hostname
    except ValueError:
        return None, ""
    rest = parts.path.rstrip("/") + (f"?{parts.query}" if parts.query else "")
    return (host.removeprefix("www.") if host else None), rest


def _within(target_rest: str, shown_rest: str) -> bool:
    """True when the target's path is the one shown, or below it."""
    if not target_rest.startswith(shown_rest):
        return False
    return len(target_rest) == len(shown_rest) or target_rest[len(shown_rest)] in "/?#"


# -- streaming -----------------------------------------------------------------------------


def _open_link(paragraph: str) -> int | None:
    """Where the earliest link that may still change begins, in the paragraph being written:
    a `[` not closed yet, or closed at the very end, or followed by a `(…` not closed yet."""
    openers: list[int] = []
    earliest: int | None = None
    at = 0
    while at < len(paragraph):
        char = paragraph[at]
        if char == "\\":
            at += 2
            continue
        if char == "[":
            openers.append(at)
        elif char == "]" and openers:
            opener = openers.pop()
            rest = paragraph[at + 1 : at + 2]
            if not rest or (rest == "(" and _link_target(paragraph, at + 2) is None):
                earliest = opener if earliest is None else min(earliest, opener)
        at += 1
    if openers:
        earliest = openers[0] if earliest is None else min(earliest, openers[0])
    return earliest


def _open_code_span(text: str, paragraph: int) -> int | None:
    """Where a run of backticks begins that no run of the same length closes yet (outside
    fenced code): an inline code span, or a fence, still being written."""
    for start, end, code in _regions(text):
        if code or end <= paragraph:
            continue
        for run in _BACKTICKS.finditer(text, max(start, paragraph), end):
            if _closing_run(text, run.end(), len(text), len(run[0])) is None:
                return run.start()
    return None


def _open_token(paragraph: str) -> int | None:
    """Where a `<…`, `&…` or `@…` still being written begins."""
    found = _OPEN_TOKEN.search(paragraph)
    return found.start() if found else None
