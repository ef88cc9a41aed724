"""How the command line prints runs and stats: a table, JSON, CSV, a stats summary, and a
progress bar for long exports. Pure output: the caller fetches, these only write."""

from __future__ import annotations

import csv
import json
import textwrap
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any, TextIO

from bot.models import RECORD_FIELDS, RunRecord, RunStats
from bot.query import bucketed, daily_series, duration, share, sparkline
from bot.text import one_line

TABLE_COLUMNS = (
    "created_at",
    "id",
    "kind",
    "status",
    "user_id",
    "channel_id",
    "model",
    "duration_ms",
    "prompt",
)


class RunWriter:
    """Writes runs as they come, page by page: one JSON array (the same text `json.dump`
    with `indent=2` gives), CSV with a header row, or a table (printed at `close`, since its
    column widths depend on every row)."""

    def __init__(self, out: TextIO, *, as_json: bool = False, as_csv: bool = False) -> None:
        self._out = out
        self._format = "json" if as_json else "csv" if as_csv else "table"
        self._count = 0
        self._table: list[dict[str, Any]] = []
        self._csv: csv.DictWriter[str] | None = None
        if self._format == "csv":
            self._csv = csv.DictWriter(out, fieldnames=list(RECORD_FIELDS))
            self._csv.writeheader()

    def write(self, runs: Iterable[RunRecord]) -> None:
        for run in runs:
            row = run.to_dict()
            if self._format == "json":
                text = json.dumps(row, ensure_ascii=False, indent=2)
                self._out.write(("[\n" if not self._count else ",\n") + _indent(text))
            elif self._csv is not None:
                self._csv.writerow(row)
            else:
                self._table.append(row)
            self._count += 1

    def close(self) -> None:
        if self._format == "json":
            self._out.write("\n]\n" if self._count else "[]\n")
        elif self._format == "table":
            print_table(self._table, self._out)
        self._out.flush()


def tool_calls_text(runs: Iterable[RunRecord]) -> str:
    """The tool calls of `runs`, one line each, under a heading ("" when there are none)."""
    lines = []
    for run in runs:
        for call in run.tool_calls or []:
            outcome = "ok" if call.get("ok") else f"failed: {call.get('error') or '?'}"
            args = f" {call['args']}" if call.get("args") else ""
            lines.append(
                f"  {run.id}  {call['name']}{args}  {call.get('duration_ms', 0)} ms  {outcome}"
            )
    return "\ntool calls:\n" + "\n".join(lines) + "\n" if lines else ""


LONG_FIELDS = ("prompt", "output", "error")


def run_text(run: RunRecord, children: Sequence[RunRecord]) -> str:
    """`history show` for a terminal: the run in full (every field of the record set, the
    prompt, output and error uncut, its tool calls), then each child the same way."""
    parts = [_one_run(run, heading=f"run {run.id}")]
    for number, child in enumerate(children, 1):
        parts.append(_one_run(child, heading=f"part {number} of {len(children)}: run {child.id}"))
    return "\n".join(parts)


def _one_run(run: RunRecord, *, heading: str) -> str:
    fields = {
        name: value
        for name, value in run.to_dict().items()
        if name not in LONG_FIELDS and name != "id" and value not in (None, "")
    }
    width = max(map(len, fields), default=0)
    lines = [_terminal(heading)]
    lines += [f"  {name.ljust(width)}  {_terminal(one_line(str(v)))}" for name, v in fields.items()]
    for name in LONG_FIELDS:
        text = getattr(run, name)
        if text:
            lines += ["", f"  {name}:", textwrap.indent(_terminal(text), "    ")]
    calls = textwrap.indent(_terminal(tool_calls_text([run])), "  ")
    return "\n".join(lines) + "\n" + calls


def _terminal(text: str) -> str:
    """`text` safe to print on a terminal: control characters (an escape sequence in a
    model's output could rewrite the screen) are shown as `\\x1b`, new lines and tabs kept."""
    return "".join(
        f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c
        for c in text
    )


def _indent(text: str) -> str:
    return textwrap.indent(text, "  ")


def print_table(rows: list[dict[str, Any]], out: TextIO) -> None:
    if not rows:
        out.write("no runs\n")
        return
    cells = [[_cell(row[col]) for col in TABLE_COLUMNS] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(TABLE_COLUMNS)]
    lines = [TABLE_COLUMNS, *cells]
    for line in lines:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        out.write("\n")


def _cell(value: object, limit: int = 60) -> str:
    text = "" if value is None else _terminal(one_line(str(value)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ProgressBar:
    """`[#####·····]  12,000/50,000 runs` on one line of a terminal, redrawn in place."""

    WIDTH = 30

    def __init__(self, total: int, out: TextIO, *, label: str = "runs") -> None:
        self._total = max(total, 1)
        self._out = out
        self._label = label
        self._done = 0

    def advance(self, count: int) -> None:
        self._done = min(self._total, self._done + count)
        filled = self.WIDTH * self._done // self._total
        bar = "#" * filled + "·" * (self.WIDTH - filled)
        self._out.write(f"\r[{bar}] {self._done:,}/{self._total:,} {self._label}")
        self._out.flush()

    def close(self) -> None:
        self._out.write("\n")
        self._out.flush()


def stats_text(stats: RunStats, *, since: datetime, today: date, team_id: str | None) -> str:
    """The stats as a few aligned lines for a terminal."""
    scope = f"workspace {team_id}" if team_id else "all workspaces"
    head = f"Runs since {since:%Y-%m-%d %H:%M} UTC, {scope}: {stats.total:,}"
    if not stats.total:
        return head + "\n"
    people = f"{stats.users} {'person' if stats.users == 1 else 'people'}"
    series = daily_series(stats.per_day, first=since.date(), last=today)
    bars, size = bucketed(series)
    unit = {1: "day", 7: "week", 30: "30 days"}.get(size, f"{size} days")
    rows = [
        ("status", " · ".join(
            f"{s.value} {n:,} ({share(n, stats.total)})" for s, n in stats.by_status.items()
        )),
        ("kind", " · ".join(f"{k.value} {n:,}" for k, n in stats.by_kind.items())),
        ("top users", " · ".join(f"{u} {n:,}" for u, n in stats.top_users) or "–"),
        ("tokens", f"{stats.input_tokens:,} in · {stats.output_tokens:,} out"),
        ("duration", f"p50 {duration(stats.p50_ms)} · p95 {duration(stats.p95_ms)}"),
        (f"per {unit}", f"{sparkline(bars)}  (busiest {unit}: {max(bars, default=0):,})"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    body = "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
    return f"{head} by {people}\n\n{body}\n"
