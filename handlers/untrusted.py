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
  entity becomes `&amp;`; a link whose label names another address is broken up into text,
  `[label] (target)`, which shows its real target. `>` quotes, emphasis, lists, code and
  ordinary links keep working.

User mentions (`<@U…>`) are escaped too: a fetched page could have the model ping anyone whose
ID it read in a thread, and the bot's own heading already names the person who asked.

Both also put a word joiner (U+2060, invisible) after the `@` of `@channel`, `@here`,
`@everyone` and `@group`: Slack documents such words as plain text unless `link_names` is
set (we never set it), but nothing documents how `markdown` blocks treat them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

WORD_JOINER = "\u2060"

_BROADCAST_WORD = re.compile(r"(?<![\w@])@(?=(?:channel|here|everyone|group)\b)", re.IGNORECASE)
_ENTITY_LIKE = re.compile(r"&(?=#?\w+;)")
_SLACK_REF_IN_CODE = re.compile(
    r"<(?=!(?:channel|here|everyone|group|subteam)\b|[@#]|[a-z][a-z0-9+.-]*:[^\s<>|]*\|)",
    re.IGNORECASE,
)
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^\s<>()\[\]|]+)>", re.IGNORECASE)
_FENCE = re.compile(r"[ \t]*(`{3,}|~{3,})")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_BACKTICKS = re.compile(r"`+")
_REFERENCE_DEFINITION = re.compile(r"^( {0,3}\[(?:\\.|[^\]\\])*\]):", re.MULTILINE)
_LINK_SYNTAX = re.compile(r"\\[\s\S]|[\[\]()]|\n[ \t]*\n")
_ADDRESS = re.compile(
    r"(?<![\w.@-])(?:[a-z][a-z0-9+.-]*://)?(?:[a-z0-9-]+\.)+[a-z]{2,}(?::\d+)?"
    r"(?:[/?#][^\s)\]>]*)?",
    re.IGNORECASE,
)
_OPEN_TOKEN = re.compile(r"(?:<[^\s<>]*|&#?\w*|@\w*)\Z")
MAX_LABEL = 500
"""The longest link label or target judged; a longer link is broken up (shown as text)."""

Region = tuple[int, int, bool]
"""(start, end, is_code) of a piece of Markdown."""


def mrkdwn(text: str) -> str:
    """`text` shown as typed in an mrkdwn field: nobody pinged, no link disguised."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _neutral_words(escaped)


def cut_clear(cut: str) -> str:
    """`cut`, the start of some escaped mrkdwn, without an escape (`&am`) or a reference
    (`<@U1`) left half-open at its end."""
    for opener, closer in (("&", ";"), ("<", ">")):
        at = cut.rfind(opener)
        if at > cut.rfind(closer):
            cut = cut[:at]
    return cut


def markdown(text: str) -> str:
    """`text` as Markdown that pings nobody and shows where each disguised link goes."""
    text = _break_misleading_links(text)
    out = [
        _code(text[start:end]) if code else _prose(text[start:end])
        for start, end, code in _Scan(text).regions
    ]
    return _neutral_words("".join(out))


def stable_end(text: str) -> int:
    """How much of `text`, a Markdown answer still growing, `markdown` can escape now: the
    escape of `text[:stable_end(text)]` begins every later escape of `text` + more.

    Held back: a link target not closed yet (`[label](https://…`), a run of backticks not
    closed yet (a code span or fence being written), and a `<…`, `&…` or `@…` being written.
    """
    scan = _Scan(text)
    holds = [len(text), *scan.open_backticks]
    for pairs in (_Pairs(text), _Pairs(text, code=scan.code)):
        holds += [at for at in pairs.open_parens if text.startswith("](", at - 1)]
    token = _OPEN_TOKEN.search(text, scan.last_paragraph)
    if token:
        holds.append(token.start())
    return min(holds)


def fit(text: str, limit: int, escape: Callable[[str], str], *, cut: str = "…") -> str:
    """The escape of `text`, or of its longest beginning (marked with `cut`) whose escape is
    at most `limit` characters."""
    safe = escape(text)
    keep = len(text)
    while len(safe) > limit and keep > 0:
        keep = max(0, min(keep - 1, keep - (len(safe) - limit)))
        safe = escape(text[:keep] + cut)
    return safe if len(safe) <= limit else ""


# -- pieces --------------------------------------------------------------------------------


def _neutral_words(text: str) -> str:
    return _BROADCAST_WORD.sub("@" + WORD_JOINER, text)


def _prose(text: str) -> str:
    if "<" not in text and "&" not in text:
        return text
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
    return _SLACK_REF_IN_CODE.sub("&lt;", text) if "<" in text else text


class _Scan:
    """Where the code is in Markdown: fenced blocks (an open one runs to the end) and inline
    code spans (a run of backticks up to the next run of the same length in its paragraph)."""

    def __init__(self, text: str) -> None:
        self.regions: list[Region] = []
        self.open_backticks: list[int] = []  # runs that nothing closes (yet)
        self.last_paragraph = 0
        for blank in _BLANK_LINE.finditer(text):
            self.last_paragraph = blank.end()
        prose_from, fence, fence_from, at = 0, "", 0, 0
        for line in text.splitlines(keepends=True):
            opener = _FENCE.match(line)
            if not fence and opener:
                self._inline(text, prose_from, at)
                fence, fence_from = opener[1], at
            elif fence and opener and opener[1][0] == fence[0] and len(opener[1]) >= len(fence):
                if not line[opener.end() :].strip():
                    self.regions.append((fence_from, at + len(line), True))
                    fence, prose_from = "", at + len(line)
            at += len(line)
        if fence:
            self.regions.append((fence_from, len(text), True))
        else:
            self._inline(text, prose_from, len(text))
        self.regions = [r for r in self.regions if r[0] < r[1]]

    @property
    def code(self) -> list[Region]:
        return [r for r in self.regions if r[2]]

    def _inline(self, text: str, start: int, end: int) -> None:
        prose_from = start
        for paragraph_start, paragraph_end in _paragraphs(text, start, end):
            runs = list(_BACKTICKS.finditer(text, paragraph_start, paragraph_end))
            following: dict[int, int] = {}  # run → the next run of the same length
            latest: dict[int, int] = {}
            for index in range(len(runs) - 1, -1, -1):
                size = len(runs[index][0])
                if size in latest:
                    following[index] = latest[size]
                latest[size] = index
            index = 0
            while index < len(runs):
                closer = following.get(index)
                if closer is None:
                    if paragraph_end == len(text):
                        self.open_backticks.append(runs[index].start())
                    index += 1
                    continue
                self.regions.append((prose_from, runs[index].start(), False))
                self.regions.append((runs[index].start(), runs[closer].end(), True))
                prose_from = runs[closer].end()
                index = closer + 1
        self.regions.append((prose_from, end, False))


def _paragraphs(text: str, start: int, end: int) -> list[tuple[int, int]]:
    cuts = [start, *(m.end() for m in _BLANK_LINE.finditer(text, start, end)), end]
    return list(itertools.pairwise(cuts))


# -- links ---------------------------------------------------------------------------------


class _Pairs:
    """Which `[` each `]` closes and which `)` each `(` opens, paragraph by paragraph (the
    balanced reading Markdown uses for link labels and targets), ignoring what is in `code`."""

    def __init__(self, text: str, *, code: Sequence[Region] = ()) -> None:
        self.brackets: dict[int, int | None] = {}  # `]` → its `[` (None: it has none)
        self.parens: dict[int, int] = {}  # `(` → its `)`
        squares: list[int] = []
        rounds: list[int] = []
        skip = iter(code)
        region = next(skip, None)
        for found in _LINK_SYNTAX.finditer(text):
            at, token = found.start(), found[0]
            while region is not None and region[1] <= at:
                region = next(skip, None)
            if (region is not None and region[0] <= at) or token[0] == "\\":
                continue
            if token == "[":
                squares.append(at)
            elif token == "]":
                self.brackets[at] = squares.pop() if squares else None
            elif token == "(":
                rounds.append(at)
            elif token == ")":
                if rounds:
                    self.parens[rounds.pop()] = at
            else:  # a blank line: no link spans paragraphs
                squares.clear()
                rounds.clear()
        self.open_parens = rounds  # in the last paragraph, not closed (yet)


def _break_misleading_links(text: str) -> str:
    """A link whose label names an address its target is not at is broken up into text,
    `[label] (target)`, so that the target shows; so is a link too long to judge, a `](`
    without its `[`, and every reference definition (`[1]: https://…`), so that no label can
    point to a hidden one. The code is read both as code and as text, so that no difference
    between this reading and Slack's can hide a link."""
    text = _REFERENCE_DEFINITION.sub(r"\1 :", text)
    if "](" not in text:
        return text
    broken: set[int] = set()  # positions of `]` to part from their `(`
    for pairs in (_Pairs(text), _Pairs(text, code=_Scan(text).code)):
        for close, opener in pairs.brackets.items():
            if not text.startswith("(", close + 1):
                continue
            end = pairs.parens.get(close + 1)
            if opener is None:
                broken.add(close)
            elif end is None:
                continue  # not a link: its target never closes
            elif close - opener > MAX_LABEL or end - close > MAX_LABEL:
                broken.add(close)
            elif _misleads(text[opener + 1 : close], text[close + 2 : end]):
                broken.add(close)
    if not broken:
        return text
    pieces, at = [], 0
    for close in sorted(broken):
        pieces.append(text[at : close + 1])
        at = close + 1
    pieces.append(text[at:])
    return " ".join(pieces)


def _misleads(label: str, target: str) -> bool:
    """True when the label names an address that the target is not at."""
    plain = re.sub(r"[`*_~\\]", "", label)
    words = target.split()
    target_host, target_rest = _host_and_rest(words[0].strip("<>") if words else "")
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
