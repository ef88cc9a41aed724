"""The history query language, shared by Slack's `/history` and the command line.

Pure functions over text and dates: time spans (`since:7d`), the `/history` filter grammar
(with the `<@U…|name>` and `<#C…|name>` mentions that Slack sends), and the daily series and
sparkline of the stats. No Slack client, no SQL: filter values only ever become `RunQuery`
fields, which the stores bind as parameters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

from bot.errors import InputError
from bot.models import DayCount, RunKind, RunQuery, RunStatus

DEFAULT_PAGE = 20
MAX_PAGE = 40
DEFAULT_STATS_SINCE = "30d"
FILTER_KEYS = ("user", "channel", "status", "kind", "since", "limit")

_SPAN = re.compile(r"^(\d{1,7})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

# One token: `key:<…>` or a bare `<…>` (a mention, possibly with spaces in its label), a
# quoted phrase (straight or curly quotes, as phones type them), or a run of non-spaces.
_TOKEN = re.compile(r'(\w+:)?<[^<>]*>|"([^"]*)"|“([^”]*)”|(\S+)')
_USER_MENTION = re.compile(r"^<@([A-Za-z0-9]+)(?:\|[^<>]*)?>$")
_CHANNEL_MENTION = re.compile(r"^<#([A-Za-z0-9]+)(?:\|[^<>]*)?>$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]+$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]+$")
_FILTER = re.compile(r"^([A-Za-z]+):(.*)$", re.DOTALL)
_RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# A NUL, or half of a UTF-16 pair (JSON's "\ud800", or a byte that is not UTF-8 in argv):
# no database can bind it, and no stored prompt holds one.
_UNBINDABLE = re.compile(r"[\x00\ud800-\udfff]")
_E = TypeVar("_E", RunStatus, RunKind)


def parse_since(text: str, *, now: datetime | None = None, name: str = "--since") -> datetime:
    """`30m`, `24h`, `7d`, `2w` back from `now`, or an ISO date or date-time (UTC when it
    names no zone). Anything else is an `InputError` whose message starts with `name`."""
    now = now or datetime.now(UTC)
    value = text.strip()
    match = _SPAN.match(value.lower())
    try:
        if match:
            return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
        moment = datetime.fromisoformat(value)
    except OverflowError:
        raise InputError(f"{name}: {text!r} is too far back") from None
    except ValueError:
        raise InputError(f"{name}: {text!r} is not like 7d, 24h, 30m or 2026-11-01") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- /history ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ListRuns:
    """`/history [filters] [words]`: the query (no workspace yet) and the filters in words."""

    query: RunQuery
    described: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShowStats:
    """`/history stats [since:30d]`."""

    since: datetime
    span: str


@dataclass(frozen=True)
class ShowRun:
    """`/history show <run-id>`."""

    run_id: str


@dataclass(frozen=True)
class Help:
    """`/history help`, or input that could not be understood (`problem` says why)."""

    problem: str | None = None


HistoryCommand = ListRuns | ShowStats | ShowRun | Help


def parse_history(
    text: str, *, now: datetime | None = None, max_limit: int = MAX_PAGE
) -> HistoryCommand:
    """What `/history <text>` asks for. Never raises: bad input becomes `Help(problem)`."""
    now = now or datetime.now(UTC)
    tokens = _tokens(text)
    first = tokens[0] if tokens else None
    try:
        if first is not None and not first.quoted:
            match first.text.lower():
                case "help":
                    return Help()
                case "stats":
                    return _stats(tokens[1:], now=now)
                case "show":
                    return _show(tokens[1:])
        return _list(tokens, now=now, max_limit=max_limit)
    except InputError as exc:
        return Help(problem=str(exc))


@dataclass(frozen=True)
class _Token:
    text: str
    quoted: bool = False


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    for match in _TOKEN.finditer(text):
        quoted = match[2] if match[2] is not None else match[3]
        if quoted is not None:
            if quoted.strip():
                tokens.append(_Token(quoted.strip(), quoted=True))
        else:
            tokens.append(_Token(match[0]))
    return tokens


def _stats(tokens: list[_Token], *, now: datetime) -> ShowStats:
    span = DEFAULT_STATS_SINCE
    for token in tokens:
        found = _FILTER.match(token.text)
        if token.quoted or found is None or found[1].lower() != "since":
            raise InputError("`/history stats` takes only `since:`, for example `since:30d`.")
        span = found[2]
    return ShowStats(since=parse_since(span, now=now, name="since"), span=span)


def _show(tokens: list[_Token]) -> ShowRun:
    run_id = tokens[0].text.strip("`") if len(tokens) == 1 else ""
    if not _RUN_ID.match(run_id):
        raise InputError("`/history show` takes one run id, for example `/history show 3f2a…`.")
    return ShowRun(run_id)


def _list(tokens: list[_Token], *, now: datetime, max_limit: int) -> ListRuns:
    values: dict[str, str] = {}
    words: list[str] = []
    for token in tokens:
        key, value = _classify(token)
        if key is None:
            words.append(value)
        elif key in values:
            raise InputError(f"`{key}:` is given twice.")
        else:
            values[key] = value
    fields: dict[str, object] = {"limit": DEFAULT_PAGE}
    described: list[str] = []
    if "user" in values:
        fields["user_id"] = user = _user_id(values["user"])
        described.append(f"user <@{user}>")
    if "channel" in values:
        fields["channel_id"] = channel = _channel_id(values["channel"])
        described.append(f"channel <#{channel}>")
    if "status" in values:
        fields["status"] = status = _choice(RunStatus, "status", values["status"])
        described.append(f"status {status.value}")
    if "kind" in values:
        fields["kind"] = kind = _choice(RunKind, "kind", values["kind"])
        described.append(f"kind {kind.value}")
    if "since" in values:
        fields["since"] = parse_since(values["since"], now=now, name="since")
        described.append(f"since {values['since']}")
    if "limit" in values:
        fields["limit"] = _limit(values["limit"], max_limit)
    search = clean_words(" ".join(words))
    if search:
        fields["search"] = search
        described.append(f"prompt contains “{search}”")
    return ListRuns(query=RunQuery(**fields), described=tuple(described))  # type: ignore[arg-type]


def _classify(token: _Token) -> tuple[str | None, str]:
    """(filter key, value), or (None, free word)."""
    if token.quoted:
        return None, token.text
    if _USER_MENTION.match(token.text):
        return "user", token.text
    if _CHANNEL_MENTION.match(token.text):
        return "channel", token.text
    found = _FILTER.match(token.text)
    if found is None or found[2].startswith("//"):  # a URL is a word to search for
        return None, unescape(token.text)
    key, value = found[1].lower(), found[2]
    if key not in FILTER_KEYS:
        raise InputError(f"Unknown filter `{found[1]}:`.")
    if not value:
        raise InputError(f"`{key}:` needs a value, for example {_EXAMPLES[key]}.")
    return key, value


_EXAMPLES = {
    "user": "`user:@alice`",
    "channel": "`channel:#general`",
    "status": "`status:failed`",
    "kind": "`kind:team`",
    "since": "`since:7d`",
    "limit": "`limit:20`",
}


def _user_id(value: str) -> str:
    mention = _USER_MENTION.match(value)
    candidate = mention[1] if mention else value.removeprefix("@")
    if _USER_ID.match(candidate.upper()):
        return candidate.upper()
    raise InputError(
        f"`user:{value}` is not a person Slack knows: type `user:@` and pick them from the list."
    )


def _channel_id(value: str) -> str:
    mention = _CHANNEL_MENTION.match(value)
    candidate = mention[1] if mention else value.removeprefix("#")
    if _CHANNEL_ID.match(candidate.upper()):
        return candidate.upper()
    raise InputError(
        f"`channel:{value}` is not a channel Slack knows: type `channel:#` and pick it from "
        "the list."
    )


def _choice(enum: type[_E], key: str, value: str) -> _E:
    try:
        return enum(value.lower())
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise InputError(f"`{key}:{value}` is not one of {allowed}.") from None


def _limit(value: str, max_limit: int) -> int:
    if value.isdigit() and 1 <= int(value) <= max_limit:
        return int(value)
    raise InputError(f"`limit:` must be a number from 1 to {max_limit}.")


def clean_words(text: str) -> str:
    """Search words without the characters a database cannot bind (NUL, lone surrogates).
    Dropped, not replaced as `bot.text.clean_text` does: a stray half of a pair must not
    stop the rest of the words from matching."""
    return _UNBINDABLE.sub("", text)


def unescape(text: str) -> str:
    """Slack's escaped text (`&lt;`, `&gt;`, `&amp;`) as the person typed it."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# -- stats -------------------------------------------------------------------------------

BARS = "▁▂▃▄▅▆▇█"
MAX_BARS = 45


def daily_series(per_day: Sequence[DayCount], *, first: date | None, last: date) -> list[int]:
    """Runs per day from `first` (or the first day with runs) to `last`, zeros included."""
    counts = {entry.day: entry.runs for entry in per_day}
    start = first if first is not None else min(counts, default=last)
    end = max(last, max(counts, default=last))
    return [counts.get(start + timedelta(days=i), 0) for i in range((end - start).days + 1)]


def bucketed(values: Sequence[int], *, max_bars: int = MAX_BARS) -> tuple[list[int], int]:
    """`values` summed in buckets of 1, 7 or 30 days so that at most `max_bars` remain
    (the oldest bucket may be partial); returns (sums, days per bucket)."""
    for size in (1, 7, 30, 365):
        if len(values) <= max_bars * size or size == 365:
            break
    first = len(values) % size or size
    sums = [sum(values[:first])] if values else []
    sums += [sum(values[i : i + size]) for i in range(first, len(values), size)]
    return sums, size


def sparkline(values: Sequence[int]) -> str:
    """One character per value, ▁ (least) to █ (most); a space for zero."""
    top = max(values, default=0)
    if top <= 0:
        return " " * len(values)
    return "".join(
        BARS[max(0, -(-value * len(BARS) // top) - 1)] if value > 0 else " " for value in values
    )


def compact(number: int) -> str:
    """`999`, `1.2k`, `12.3M`: a count a person takes in at a glance."""
    for limit, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if abs(number) >= limit:
            return f"{number / limit:.1f}".removesuffix(".0") + suffix
    return str(number)


def duration(ms: int | None) -> str:
    """`0.4 s`, `12.5 s`, `3 min 5 s`; `–` when unknown."""
    if ms is None:
        return "–"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"


def share(part: int, whole: int) -> str:
    """`part` as a whole percentage of `whole` (`<1%` rather than a misleading `0%`)."""
    if whole <= 0:
        return "0%"
    value = 100 * part / whole
    return "<1%" if 0 < value < 1 else f"{value:.0f}%"
