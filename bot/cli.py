"""Composition root of the command line: `agentbot serve | history | stats | db upgrade`."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import re
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from bot.config import Settings, load_config, load_settings, require
from bot.errors import BotError, ConfigError, InputError
from bot.models import RECORD_FIELDS, RunKind, RunQuery, RunRecord, RunStatus

log = logging.getLogger("agentbot")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise InputError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agentbot", description="Run pydantic-ai agents inside Slack.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the bot (HTTP mode, or Socket Mode with --socket)")
    serve.add_argument("--port", type=int, help="HTTP port (default $PORT or 3000)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument(
        "--socket", action="store_true", help="use Socket Mode (needs SLACK_APP_TOKEN)"
    )

    history = sub.add_parser("history", help="list recorded runs, newest first; `history show ID`")
    history.add_argument(
        "show", nargs="*", metavar="show RUN_ID", help="show one run with its children"
    )
    history.add_argument("--user")
    history.add_argument("--channel")
    history.add_argument("--status", choices=[s.value for s in RunStatus])
    history.add_argument("--kind", choices=[k.value for k in RunKind])
    history.add_argument("--since", help="7d, 24h, 30m or a date such as 2026-11-01")
    history.add_argument("--search", help="words to find in prompts")
    history.add_argument("--limit", type=int, default=50)
    fmt = history.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON array of run objects")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_sub.add_parser("upgrade", help="create or upgrade the schema")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _configure_logging(verbose=args.command == "serve")
        settings = load_settings()
        match args.command:
            case "serve":
                return _serve(settings, args)
            case "history":
                return asyncio.run(_history(settings, args))
            case "db":
                return asyncio.run(_db_upgrade(settings))
    except (BotError, ConfigError) as exc:
        print(f"agentbot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError("unreachable")


def _configure_logging(*, verbose: bool) -> None:
    """Progress logs for the server; for one-shot commands only warnings, so output stays clean."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


# -- serve ---------------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    socket_mode = args.socket or bool(
        settings.slack_app_token and not settings.slack_signing_secret
    )
    require(settings, "slack_bot_token")
    require(settings, "slack_app_token" if socket_mode else "slack_signing_secret")
    config = load_config(settings)
    port = args.port if args.port is not None else settings.port
    if not 0 <= port <= 65535:
        raise InputError(f"--port: {port} is not a port number")
    asyncio.run(
        _serve_until_signal(settings, config, host=args.host, port=port, socket_mode=socket_mode)
    )
    return 0


async def _serve_until_signal(
    settings: Settings, config, *, host: str, port: int, socket_mode: bool
) -> None:
    from bot.server import Service, build_parts

    parts = await build_parts(settings, config)
    if parts.agents.uses_demo_model:
        log.warning("AGENTBOT_MODEL is not set: agents answer with the offline demo model")
    service = Service(parts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start(host=host, port=port, socket_mode=socket_mode)
    except OSError as exc:
        await service.stop(grace=0)
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    await stop.wait()
    log.info("shutting down: letting live runs finish for up to %.0f s", settings.shutdown_grace)
    await service.stop(grace=settings.shutdown_grace)


# -- history -------------------------------------------------------------------------------

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


async def _history(settings: Settings, args: argparse.Namespace) -> int:
    from storage.db import create_engine, upgrade
    from storage.repository import SqlRunStore

    if args.show and (args.show[0] != "show" or len(args.show) != 2):
        raise InputError("usage: agentbot history show RUN_ID  (or agentbot history [filters])")
    query = None if args.show else _query_from_args(args)
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
        store = SqlRunStore(engine)
        if query is None:
            run = await store.get(args.show[1])
            if run is None:
                raise InputError(f"no run with id {args.show[1]!r}")
            runs = [run, *await store.children(run.id)]
        else:
            runs = await store.query(query)
    finally:
        await engine.dispose()
    _print_runs(runs, as_json=args.json, as_csv=args.csv)
    return 0


def _query_from_args(args: argparse.Namespace) -> RunQuery:
    if not 1 <= args.limit <= 1000:
        raise InputError("--limit must be between 1 and 1000")
    return RunQuery(
        user_id=args.user,
        channel_id=args.channel,
        status=RunStatus(args.status) if args.status else None,
        kind=RunKind(args.kind) if args.kind else None,
        since=parse_since(args.since) if args.since else None,
        search=args.search,
        limit=args.limit,
    )


_SPAN = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """`7d`, `24h`, `30m`, `2w` back from now, or an ISO date/time (UTC if no zone)."""
    now = now or datetime.now(UTC)
    match = _SPAN.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"--since: {text!r} is not like 7d, 24h, 30m or 2026-11-01") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _print_runs(runs: list[RunRecord], *, as_json: bool, as_csv: bool) -> None:
    rows = [run.to_dict() for run in runs]
    if as_json:
        json.dump(rows, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(RECORD_FIELDS))
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_table(rows)


def _print_table(rows: list[dict]) -> None:
    if not rows:
        print("no runs")
        return
    cells = [[_cell(row[col]) for col in TABLE_COLUMNS] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(TABLE_COLUMNS)]
    print("  ".join(col.ljust(w) for col, w in zip(TABLE_COLUMNS, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: object, limit: int = 60) -> str:
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- db ------------------------------------------------------------------------------------


async def _db_upgrade(settings: Settings) -> int:
    from storage.db import create_engine, upgrade

    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    print("database is up to date")
    return 0
