"""Composition root of the command line: `agentbot serve | history | stats | db upgrade`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import json
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bot.config import AppConfig, Settings, load_config, load_settings, require
from bot.errors import BotError, ConfigError, InputError
from bot.models import RunCursor, RunKind, RunQuery, RunStatus, StatsQuery, iso_utc
from bot.query import DEFAULT_STATS_SINCE, clean_words, parse_since
from bot.report import ProgressBar, RunWriter, run_text, stats_text
from bot.text import one_line

if TYPE_CHECKING:
    from bot.models import RunRecord
    from storage.repository import SqlRunStore

__all__ = ["build_parser", "main", "parse_since"]

log = logging.getLogger("agentbot")


PROG = "agentbot"
SIGPIPE_STATUS = 141  # what a shell reports for a process killed by SIGPIPE (128 + 13)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every other bad input
        command = self.prog.removeprefix(PROG).strip()  # main adds the one `agentbot:`
        raise InputError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Run pydantic-ai agents inside Slack.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the bot (HTTP mode, or Socket Mode with --socket)")
    serve.add_argument("--port", type=int, help="HTTP port (default $PORT or 3000)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument(
        "--socket", action="store_true", help="use Socket Mode (needs SLACK_APP_TOKEN)"
    )

    history = sub.add_parser("history", help="list recorded runs, newest first; `history show ID`")
    history.add_argument(
        "show",
        nargs="*",
        metavar="show RUN_ID",
        help="show one run in full, with its parts; the first characters of the id will do",
    )
    history.add_argument("--user", help="only runs of this Slack user (ID, e.g. U0123)")
    history.add_argument("--channel", help="only runs in this channel (ID, e.g. C0123)")
    history.add_argument(
        "--status", choices=[s.value for s in RunStatus], help="only runs with this status"
    )
    history.add_argument(
        "--kind", choices=[k.value for k in RunKind], help="only runs of this kind"
    )
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
    db_sub = db.add_subparsers(
        dest="db_command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    db_sub.add_parser("upgrade", help="create or upgrade the schema")
    return parser


def _version() -> str:
    try:
        return version(PROG)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run `agentbot ARGV` (default: the process's arguments) and return its exit status:
    0 done; 2 for bad input, a bad setting or no command (one `agentbot: …` line, or the
    usage, on stderr); 130 on Ctrl-C; 141 when the reader of stdout went away."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help or --version: printed already
            return exc.code if isinstance(exc.code, int) else 0
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
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
    except BotError as exc:
        print(f"{PROG}: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `agentbot history | head`: stop quietly, as `cat` would. Closing stdout now keeps
        # the interpreter from failing again when it flushes stdout at exit.
        with suppress(OSError):
            sys.stdout.close()
        return SIGPIPE_STATUS
    raise AssertionError(f"unknown command {args.command!r}")


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
    _check_listen(args.host, port)
    asyncio.run(
        _serve_until_signal(settings, config, host=args.host, port=port, socket_mode=socket_mode)
    )
    return 0


async def _serve_until_signal(
    settings: Settings, config: AppConfig, *, host: str, port: int, socket_mode: bool
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
    except OSError as exc:  # taken since `_check_listen` looked
        await service.stop(grace=0)
        raise _cannot_listen(host, port, exc) from None
    await stop.wait()
    log.info("shutting down: letting live runs finish for up to %.0f s", settings.shutdown_grace)
    await service.stop(grace=settings.shutdown_grace)


def _port(args: argparse.Namespace, settings: Settings) -> int:
    port = args.port if args.port is not None else settings.port
    if not 0 <= port <= 65535:
        raise InputError(f"--port: {port} is not a port number")
    return port


def _check_listen(host: str, port: int) -> None:
    """Raise `ConfigError` (suggesting `--port` when the port is taken) unless `host:port`
    can be listened on: checked before anything starts, so that nothing is half started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the server will: a port left in TIME_WAIT by a previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise _cannot_listen(host, port, exc) from None


def _cannot_listen(host: str, port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"port {port} on {host} is in use: stop what uses it, or choose another with --port"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(f"not allowed to listen on port {port}: choose another with --port")
    return ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


# -- playground ----------------------------------------------------------------------------


PLAYGROUND_HOST = "127.0.0.1"  # where `run_playground` listens: the page is for this machine


def _playground(settings: Settings, args: argparse.Namespace) -> int:
    from bot.playground.app import run_playground

    port = _port(args, settings)
    _check_listen(PLAYGROUND_HOST, port)
    return run_playground(settings, load_config(settings), port=port)


# -- history and stats ---------------------------------------------------------------------

EXPORT_PAGE = 1000


async def _history(settings: Settings, args: argparse.Namespace) -> int:
    run_id = _show_argument(args.show)
    query = None if run_id is not None else _query_from_args(args)
    async with _store(settings) as (store, where):
        if query is None:
            return await _show(store, run_id or "", args, where=where)
        if args.all:  # written page by page, as the pages come
            _name_database(where)
            writer = RunWriter(sys.stdout, as_json=args.json, as_csv=args.csv)
            await _export(store, query, writer)
            writer.close()
            return 0
        runs = await store.query(query)
    _name_database(where)
    writer = RunWriter(sys.stdout, as_json=args.json, as_csv=args.csv)
    writer.write(runs)
    writer.close()
    return 0


def _show_argument(words: list[str]) -> str | None:
    """The run id of `history show RUN_ID`; None for a listing (no words)."""
    if not words:
        return None
    if words[0] != "show":
        raise InputError(
            f"history: unexpected {words[0]!r} (filters are options such as --user; "
            "one run is `agentbot history show RUN_ID`)"
        )
    if len(words) != 2 or not words[1].strip():
        raise InputError("history show: give one run id (or its first characters)")
    return words[1].strip()


async def _show(store: SqlRunStore, given: str, args: argparse.Namespace, *, where: str) -> int:
    """The run `given` names and its parts, in full (as text, JSON with tool calls, or CSV)."""
    run = await _find_run(store, given, where=where)
    runs = [run, *await store.children(run.id)]
    _name_database(where)
    if args.json:
        objects = [{**r.to_dict(), "tool_calls": r.tool_calls or []} for r in runs]
        json.dump(objects, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif args.csv:
        writer = RunWriter(sys.stdout, as_csv=True)
        writer.write(runs)
        writer.close()
    else:
        sys.stdout.write(run_text(run, runs[1:]))
    return 0


async def _find_run(store: SqlRunStore, given: str, *, where: str) -> RunRecord:
    """The run whose id is `given`, else the only run whose id starts with `given`."""
    run = await store.get(given) if _may_be_id(given) else None
    if run is not None:
        return run
    ids = await store.ids_starting_with(given, limit=3) if _may_be_id(given) else []
    if len(ids) > 1:
        some = ", ".join(ids[:2]) + (", …" if len(ids) > 2 else "")
        raise InputError(f"{given!r} starts more than one run id ({some}): give more of it")
    run = await store.get(ids[0]) if ids else None
    if run is None:  # (or deleted in between)
        raise InputError(f"no run with an id starting {given!r} in {where}")
    return run


def _may_be_id(text: str) -> bool:
    # Run ids are ASCII; a byte the terminal could not decode (a lone surrogate) or a control
    # character would only make the database driver fail.
    return text.isascii() and text.isprintable()


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
    async with _store(settings) as (store, where):
        stats = await store.stats(StatsQuery(team_id=args.team, since=since))
    _name_database(where)
    if args.json:
        out = {"since": iso_utc(since), "team_id": args.team, **stats.to_dict()}
        json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(stats_text(stats, since=since, today=now.date(), team_id=args.team))
    return 0


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[tuple[SqlRunStore, str]]:
    """The run store for a command that only reads (`history`, `stats`), and the database's
    name: the database must exist and be at the latest schema, and is left as it is
    (nothing created, nothing migrated)."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage.db import SETTING, create_engine, first_line, require_current
    from storage.repository import SqlRunStore

    where, sqlite_file = _database_name(settings.database_url)
    if sqlite_file is not None and not sqlite_file.exists():
        raise ConfigError(
            f"no database at {where}: nothing was recorded there "
            f"(point {SETTING} at the database `agentbot serve` uses)"
        )
    engine = create_engine(settings.database_url)
    try:
        await require_current(engine)
        yield SqlRunStore(engine), where
    except SQLAlchemyError as exc:  # locked for too long, corrupt, gone: not a bug of ours
        raise ConfigError(f"{SETTING}: reading {where} failed: {first_line(exc)}") from None
    finally:
        await engine.dispose()


def _name_database(where: str) -> None:
    """Say which database the output comes from: one line on stderr, so that stdout stays
    data (`--json`, `--csv`); printed once the answer is there, so a refusal stays one line."""
    print(f"database: {where}", file=sys.stderr, flush=True)


def _database_name(url: str) -> tuple[str, Path | None]:
    """How to name the database at `url` to a person (a SQLite file's absolute path, else the
    URL without its password), and the SQLite file if it is one."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url, None  # `create_engine` says what is wrong with it
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return parsed.render_as_string(hide_password=True), None
    if database.startswith("file:"):  # an SQLite URI: opened as it says, named as given
        return url, None
    path = Path(database).expanduser().absolute()
    return str(path), path


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
    print(f"database is up to date: {_database_name(settings.database_url)[0]}")
    return 0
