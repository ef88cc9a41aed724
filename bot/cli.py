"""Composition root of the command line: `agentbot serve | history | stats | db upgrade`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.config import Settings, load_config, load_settings, require
from bot.errors import BotError, ConfigError, InputError
from bot.models import RunCursor, RunKind, RunQuery, RunStatus, StatsQuery, iso_utc
from bot.query import DEFAULT_STATS_SINCE, clean_words, parse_since
from bot.report import ProgressBar, RunWriter, stats_text, tool_calls_text

if TYPE_CHECKING:
    from storage.repository import SqlRunStore

__all__ = ["build_parser", "main", "parse_since"]

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
    history.add_argument("--team", help="only this workspace (team ID)")
    history.add_argument("--limit", type=int, default=50, help="at most N runs (1-1000)")
    history.add_argument(
        "--all", action="store_true", help="every matching run (an export; ignores --limit)"
    )
    fmt = history.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON array of run objects")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")

    stats = sub.add_parser("stats", help="runs by status, kind and user; tokens; p50/p95 time")
    stats.add_argument("--since", default=DEFAULT_STATS_SINCE, help="default 30d; or a date")
    stats.add_argument("--team", help="only this workspace (team ID)")
    stats.add_argument("--json", action="store_true", help="one JSON object")

    playground = sub.add_parser(
        "playground", help="the whole bot offline in a browser: emulated Slack, no keys needed"
    )
    playground.add_argument("--port", type=int, help="HTTP port (default $PORT or 3000)")

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    db_sub.add_parser("upgrade", help="create or upgrade the schema")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _configure_logging(verbose=args.command in ("serve", "playground"))
        settings = load_settings()
        match args.command:
            case "serve":
                return _serve(settings, args)
            case "history":
                return asyncio.run(_history(settings, args))
            case "stats":
                return asyncio.run(_stats(settings, args))
            case "db":
                return asyncio.run(_db_upgrade(settings))
            case "playground":
                return _playground(settings, args)
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
    port = _port(args, settings)
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


def _port(args: argparse.Namespace, settings: Settings) -> int:
    port = args.port if args.port is not None else settings.port
    if not 0 <= port <= 65535:
        raise InputError(f"--port: {port} is not a port number")
    return port


# -- playground ----------------------------------------------------------------------------


def _playground(settings: Settings, args: argparse.Namespace) -> int:
    from bot.playground.app import run_playground

    port = _port(args, settings)
    return run_playground(settings, load_config(settings), port=port)


# -- history and stats ---------------------------------------------------------------------

EXPORT_PAGE = 1000


async def _history(settings: Settings, args: argparse.Namespace) -> int:
    if args.show and (args.show[0] != "show" or len(args.show) != 2):
        raise InputError("usage: agentbot history show RUN_ID  (or agentbot history [filters])")
    query = None if args.show else _query_from_args(args)
    async with _store(settings) as store:
        writer = RunWriter(sys.stdout, as_json=args.json, as_csv=args.csv)
        if query is None:
            run = await store.get(args.show[1])
            if run is None:
                raise InputError(f"no run with id {args.show[1]!r}")
            runs = [run, *await store.children(run.id)]
            writer.write(runs)
            if not (args.json or args.csv):
                writer.close()
                sys.stdout.write(tool_calls_text(runs))
                return 0
        elif args.all:
            await _export(store, query, writer)
        else:
            writer.write(await store.query(query))
        writer.close()
    return 0


async def _export(store: SqlRunStore, query: RunQuery, writer: RunWriter) -> None:
    """Every run matching `query`, newest first, page by page (keyset paging), with a
    progress bar on stderr when it is a terminal and the export takes more than one page."""
    total = await store.count(query)
    progress = None
    if total > EXPORT_PAGE and sys.stderr.isatty():
        progress = ProgressBar(total, sys.stderr)
    query = dataclasses.replace(query, limit=EXPORT_PAGE)
    try:
        while True:
            page = await store.query(query)
            writer.write(page)
            if progress is not None:
                progress.advance(len(page))
            if len(page) < EXPORT_PAGE:
                break
            query = dataclasses.replace(query, before=RunCursor.after(page[-1]))
    finally:
        if progress is not None:
            progress.close()


async def _stats(settings: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    since = parse_since(args.since, now=now)
    async with _store(settings) as store:
        stats = await store.stats(StatsQuery(team_id=args.team, since=since))
    if args.json:
        out = {"since": iso_utc(since), "team_id": args.team, **stats.to_dict()}
        json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(stats_text(stats, since=since, today=now.date(), team_id=args.team))
    return 0


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[SqlRunStore]:
    from storage.db import create_engine, upgrade
    from storage.repository import SqlRunStore

    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine, writable=False)  # reading a read-only database is fine
        yield SqlRunStore(engine)
    finally:
        await engine.dispose()


def _query_from_args(args: argparse.Namespace) -> RunQuery:
    if not 1 <= args.limit <= 1000:
        raise InputError("--limit must be between 1 and 1000")
    return RunQuery(
        user_id=args.user,
        channel_id=args.channel,
        team_id=args.team,
        status=RunStatus(args.status) if args.status else None,
        kind=RunKind(args.kind) if args.kind else None,
        since=parse_since(args.since) if args.since else None,
        search=clean_words(args.search or "") or None,
        limit=args.limit,
    )


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
