"""The command line: parsing, output and exit status in this process (`InProcess`: fast), and
what only a real process shows (the console script, an exit status and stderr through a
process, `serve` answering and shutting down on SIGTERM). Real database files throughout."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import signal
import socket
import sys
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from bot.cli import build_parser, parse_since
from bot.errors import InputError
from bot.models import RECORD_FIELDS, RunKind, RunQuery, RunRecord, RunStatus
from storage.db import MIGRATIONS_DIR, create_engine, upgrade
from storage.repository import SqlRunStore
from tests.conftest import BOT_TOKEN, SIGNING_SECRET
from tests.processes import InProcess, agentbot, base_env, bot_process

__all__ = ["agentbot"]  # other test files run `agentbot` as a real process from here


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    return InProcess(monkeypatch, capsys, cwd=tmp_path)


@pytest.fixture
async def history_db(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    store = SqlRunStore(engine)
    now = datetime.now(UTC)
    parent = RunRecord(
        kind=RunKind.ASK,
        prompt="how do we ship on Fridays?",
        user_id="U1",
        channel_id="C1",
        status=RunStatus.SUCCEEDED,
        output="Carefully.",
        created_at=now - timedelta(hours=1),
    )
    await store.create(parent)
    await store.create(
        RunRecord(
            kind=RunKind.ASK,
            prompt="what failed?",
            user_id="U2",
            channel_id="C2",
            status=RunStatus.FAILED,
            error="boom",
            created_at=now - timedelta(days=3),
        )
    )
    await store.create(
        RunRecord(
            kind=RunKind.SUBTASK,
            prompt="child",
            parent_id=parent.id,
            user_id="U1",
            status=RunStatus.SUCCEEDED,
            created_at=now,
        )
    )
    await engine.dispose()
    return url


def database_file(url: str) -> Path:
    return Path(url.removeprefix("sqlite+aiosqlite:///"))


def one_line(err: str) -> str:
    """The only line on stderr (fails if there are more, or a traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- history, in this process --------------------------------------------------------------


async def test_history_json_prints_run_objects_with_every_field(history_db, cli):
    code, out, err = await cli("history", "--json", env={"AGENTBOT_DATABASE_URL": history_db})
    assert code == 0, err
    runs = json.loads(out)
    assert [r["prompt"] for r in runs] == ["child", "how do we ship on Fridays?", "what failed?"]
    assert all(list(r) == list(RECORD_FIELDS) for r in runs)
    assert runs[1]["created_at"].endswith("Z") and runs[1]["status"] == "succeeded"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--user", "U2"], ["what failed?"]),
        (["--status", "failed"], ["what failed?"]),
        (["--kind", "subtask"], ["child"]),
        (["--channel", "C1"], ["how do we ship on Fridays?"]),
        (["--since", "2d"], ["child", "how do we ship on Fridays?"]),
        (["--search", "FRIDAYS"], ["how do we ship on Fridays?"]),
        # A byte that is not UTF-8 reaches Python as a lone surrogate: left out, like a NUL.
        (["--search", "Fri\udcffdays"], ["how do we ship on Fridays?"]),
        (["--limit", "1"], ["child"]),
    ],
)
async def test_history_filters(history_db, cli, args, expected):
    env = {"AGENTBOT_DATABASE_URL": history_db}
    code, out, err = await cli("history", "--json", *args, env=env)
    assert code == 0, err
    assert [r["prompt"] for r in json.loads(out)] == expected


async def test_history_table_csv_and_show(history_db, cli):
    env = {"AGENTBOT_DATABASE_URL": history_db}
    code, out, _ = await cli("history", env=env)
    assert code == 0 and out.splitlines()[0].split()[:4] == ["created_at", "id", "kind", "status"]
    assert "how do we ship on Fridays?" in out
    code, out, _ = await cli("history", "--csv", env=env)
    assert (
        code == 0 and out.splitlines()[0] == ",".join(RECORD_FIELDS) and len(out.splitlines()) == 4
    )
    code, out, _ = await cli("history", "--json", "--search", "Fridays", env=env)
    parent_id = json.loads(out)[0]["id"]
    code, out, _ = await cli("history", "show", parent_id, "--json", env=env)
    assert code == 0 and [r["prompt"] for r in json.loads(out)] == [
        "how do we ship on Fridays?",
        "child",
    ]


async def test_history_names_the_database_it_read_on_stderr(history_db, cli):
    path = database_file(history_db)
    for args in (["history", "--json"], ["history", "--csv", "--all"], ["stats", "--json"]):
        code, out, err = await cli(*args, env={"AGENTBOT_DATABASE_URL": history_db})
        assert code == 0 and err == f"database: {path}\n", (args, err)
        assert out.startswith(("[", "{", "kind,")), out  # stdout holds only the data
    # A relative path (the default is ./agentbot.db) is named as the file it resolved to.
    code, _, err = await cli("history", env={"AGENTBOT_DATABASE_URL": "sqlite+aiosqlite:///x.db"},
                             cwd=path.parent)  # fmt: skip
    assert code == 2 and one_line(err).startswith(f"agentbot: no database at {path.parent}/x.db")


# -- history show --------------------------------------------------------------------------


@pytest.fixture
async def team_db(tmp_path: Path) -> dict[str, str]:
    """A team run with tool calls and two parts; ids chosen to share prefixes."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'team.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    store = SqlRunStore(engine)
    now = datetime.now(UTC)
    long_output = "The plan, in full. " * 20 + "THE END"
    await store.create(
        RunRecord(
            id="7a3f00d1",
            kind=RunKind.TEAM,
            command="/team",
            prompt="plan the release\nwith care \x1b[2J",
            output=long_output,
            status=RunStatus.SUCCEEDED,
            input_tokens=1200,
            output_tokens=345,
            requests=3,
            duration_ms=4200,
            created_at=now - timedelta(minutes=2),
            tool_calls=[
                {"name": "fetch_url", "args": "https://example.com", "duration_ms": 80, "ok": True}
            ],
        )
    )
    for number, (run_id, status, error) in enumerate(
        [("7a3f0e01", RunStatus.SUCCEEDED, None), ("7a3f0e02", RunStatus.FAILED, "model timeout")]
    ):
        await store.create(
            RunRecord(
                id=run_id,
                kind=RunKind.SUBTASK,
                parent_id="7a3f00d1",
                prompt=f"part {number}",
                output=f"part {number} answer",
                status=status,
                error=error,
                created_at=now - timedelta(minutes=1, seconds=-number),
            )
        )
    await engine.dispose()
    return {"AGENTBOT_DATABASE_URL": url}


async def test_history_show_prints_the_whole_run_by_a_unique_prefix(team_db, cli):
    code, out, err = await cli("history", "show", "7a3f00", env=team_db)
    assert code == 0, err
    assert out.startswith("run 7a3f00d1\n")
    assert "The plan, in full. " * 20 + "THE END" in out.replace("\n    ", "")  # not cut
    assert "plan the release\n    with care \\x1b[2J" in out  # a terminal escape is shown inert
    for field, value in (("input_tokens", "1200"), ("output_tokens", "345"), ("requests", "3")):
        assert re.search(rf"^  {field} +{value}$", out, re.M), field
    assert "/team" in out
    assert "fetch_url https://example.com  80 ms  ok" in out
    assert "part 1 of 2: run 7a3f0e01" in out and "part 0 answer" in out
    assert "part 2 of 2: run 7a3f0e02" in out and "model timeout" in out

    code, out, _ = await cli("history", "show", "7a3f00", "--json", env=team_db)
    runs = json.loads(out)
    assert code == 0 and [run["id"] for run in runs] == ["7a3f00d1", "7a3f0e01", "7a3f0e02"]
    assert runs[0]["tool_calls"][0]["name"] == "fetch_url" and runs[1]["tool_calls"] == []
    assert runs[0]["output"].endswith("THE END")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("7a3f0", "'7a3f0' starts more than one run id (7a3f00d1, 7a3f0e01, …): give more of it"),
        ("7a3f0e", "'7a3f0e' starts more than one run id (7a3f0e01, 7a3f0e02): give more of it"),
        ("7b", "no run with an id starting '7b' in "),
        ("7a3f%", "no run with an id starting '7a3f%' in "),  # not a LIKE wildcard
        ("\udcff", "no run with an id starting '\\udcff' in "),  # a byte not in UTF-8
    ],
)
async def test_history_show_refuses_an_ambiguous_or_unknown_prefix(team_db, cli, given, message):
    code, out, err = await cli("history", "show", given, env=team_db)
    assert code == 2 and out == ""
    assert one_line(err).startswith(f"agentbot: {message}")


# -- reading never creates or migrates -----------------------------------------------------


@pytest.mark.parametrize("args", [["history"], ["history", "show", "abc"], ["stats", "--json"]])
async def test_reading_commands_never_create_a_database(tmp_path, cli, args):
    missing = tmp_path / "not" / "yet" / "agentbot.db"
    code, out, err = await cli(
        *args, env={"AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{missing}"}
    )
    assert code == 2 and out == ""
    assert one_line(err).startswith(f"agentbot: no database at {missing}: nothing was recorded")
    assert not (tmp_path / "not").exists()


def migrate_to(revision: str):
    def run(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return run


async def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )
    finally:
        await engine.dispose()


async def test_only_db_upgrade_changes_a_schema_that_is_behind(tmp_path, cli):
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    before = script.get_revision(head).down_revision
    assert isinstance(before, str)
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(migrate_to(before))
    await engine.dispose()
    env = {"AGENTBOT_DATABASE_URL": url}

    for args in (["history"], ["history", "--json"], ["history", "show", "x"], ["stats"]):
        code, out, err = await cli(*args, env=env)
        assert code == 2 and out == ""
        line = one_line(err)
        assert f"is at schema {before}, this agentbot needs {head}" in line
        assert line.endswith("run `agentbot db upgrade`")
    assert await revision_of(url) == before  # left as it was

    code, out, err = await cli("db", "upgrade", env=env)
    assert code == 0 and out == f"database is up to date: {tmp_path / 'old.db'}\n", err
    assert await revision_of(url) == head
    code, out, _ = await cli("history", "--json", env=env)
    assert code == 0 and out == "[]\n"


async def test_a_file_without_agentbot_tables_is_refused_not_migrated(tmp_path, cli):
    empty = tmp_path / "empty.db"
    empty.touch()
    code, _, err = await cli("stats", env={"AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{empty}"})
    assert code == 2
    assert one_line(err).endswith("no agentbot tables: run `agentbot db upgrade` to create them")
    assert await revision_of(f"sqlite+aiosqlite:///{empty}") is None


# -- errors, usage, version, help ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve"], {}, "SLACK_BOT_TOKEN is not set"),
        (["serve"], {"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_SIGNING_SECRET is not set"),
        (["serve", "--socket"], {"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_APP_TOKEN is not set"),
        (["history"], {"PORT": "eighty"}, "PORT:"),
        (["history", "--since", "yesterday"], {}, "--since: 'yesterday'"),
        (["history", "--status", "weird"], {}, "history: argument --status: invalid choice"),
        (["history", "--limit", "0"], {}, "--limit must be between 1 and 1000"),
        (["history", "show"], {}, "history show: give one run id"),
        (["history", "shwo", "x"], {}, "history: unexpected 'shwo'"),
        (
            ["serve", "--host", "127.0.0.1", "--port", "0"],
            {"SLACK_BOT_TOKEN": "x", "SLACK_SIGNING_SECRET": "y", "AGENTBOT_MODEL": "nope:x"},
            "AGENTBOT_MODEL='nope:x'",
        ),
        (["history"], {"AGENTBOT_DATABASE_URL": "mysql://nope"}, "AGENTBOT_DATABASE_URL"),
        (["nonsense"], {}, "argument COMMAND: invalid choice: 'nonsense'"),
        (["db"], {}, "db: the following arguments are required: COMMAND"),
        (["stats", "--since", "soonish"], {}, "--since: 'soonish' is not like 7d"),
        (
            ["serve", "--port", "70000"],
            {"SLACK_BOT_TOKEN": "x", "SLACK_SIGNING_SECRET": "y"},
            "--port: 70000 is not a port number",
        ),
    ],
)
async def test_bad_input_is_one_line_with_one_prefix_and_exit_2(tmp_path, cli, args, env, message):
    env = {"AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", **env}
    code, out, err = await cli(*args, env=env)
    assert code == 2 and out == "", (out, err)
    assert one_line(err).startswith(f"agentbot: {message}")  # one prefix, then the message


async def test_no_arguments_prints_usage_and_exits_2(cli):
    code, out, err = await cli()
    assert code == 2 and out == ""
    assert err.startswith("usage: agentbot ")
    for name in ("serve", "history", "stats", "playground", "db"):
        assert f"\n    {name} " in err or f"\n    {name}\n" in err, name


async def test_version_comes_from_the_package_metadata(cli):
    code, out, err = await cli("--version")
    assert code == 0 and err == ""
    assert out == f"agentbot {version('agentbot')}\n"


def test_every_option_has_help():
    missing = []

    def visit(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    visit(sub)
            elif not action.help:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")

    visit(build_parser())
    assert missing == []


def test_parse_since_forms():
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("24h", now=now) == now - timedelta(hours=24)
    assert parse_since("30m", now=now) == now - timedelta(minutes=30)
    assert parse_since("2026-11-01", now=now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(InputError):
        parse_since("soon", now=now)


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--host", "127.0.0.1"],
        ["playground"],
    ],
)
async def test_a_port_in_use_suggests_another_with_port(tmp_path, cli, args):
    env = {
        "SLACK_BOT_TOKEN": "x",
        "SLACK_SIGNING_SECRET": "y",
        "AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await cli(*args, "--port", str(port), env=env)
    assert code == 2 and out == ""
    assert one_line(err) == (
        f"agentbot: port {port} on 127.0.0.1 is in use: "
        "stop what uses it, or choose another with --port"
    )
    assert not (tmp_path / "serve.db").exists()  # refused before anything started


class ClosedPipe(io.StringIO):
    """stdout whose reader went away after the first line (`agentbot history | head -1`)."""

    def write(self, text: str) -> int:
        if self.tell():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


async def test_a_reader_that_goes_away_ends_the_output_quietly(history_db, cli, monkeypatch):
    pipe = ClosedPipe()
    env = {"AGENTBOT_DATABASE_URL": history_db}
    with monkeypatch.context() as patch:  # undone before capsys puts its own stdout back
        patch.setattr(sys, "stdout", pipe)
        code, _, err = await cli("history", "--all", "--csv", env=env)
    assert code == 141 and pipe.closed
    assert err == f"database: {database_file(history_db)}\n"  # and no traceback


# -- real processes ------------------------------------------------------------------------


async def test_the_console_script_and_an_exit_status_through_a_process(tmp_path):
    script = Path(sys.executable).parent / "agentbot"
    console = await asyncio.create_subprocess_exec(
        script, "--version", stdout=asyncio.subprocess.PIPE, env=base_env(), cwd=tmp_path
    )
    (code, out, err), (version_out, _) = await asyncio.gather(
        agentbot("history", "--status", "weird", env={}, cwd=tmp_path),
        asyncio.wait_for(console.communicate(), 60),
    )
    assert console.returncode == 0 and version_out.decode() == f"agentbot {version('agentbot')}\n"
    assert code == 2 and out == ""
    assert one_line(err).startswith("agentbot: history: argument --status: invalid choice")


async def test_serve_process_answers_and_shuts_down_gracefully(emulator, tmp_path):
    """`agentbot serve` as a real process: /ask with the demo model, then SIGTERM mid-stream."""
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": emulator.api_url,
        "AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
        "AGENTBOT_SHUTDOWN_GRACE": "0.5",
    }
    async with bot_process("serve", "--host", "127.0.0.1", env=env, cwd=tmp_path) as bot:
        status, _, _ = await emulator.send_slash_command(f"{bot.url}/slack/events", "/ask", "hi")
        assert status == 200
        # The demo model streams for several seconds; stop the process while it does.
        await emulator.wait_for(lambda: len(emulator.calls_to("chat.update")) >= 1, timeout=15)
        bot.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(bot.process.wait(), 30)
        assert bot.process.returncode == 0
    [message] = emulator.messages("C123")
    assert "Interrupted" in str(message.blocks) and "shut down" in str(message.blocks)
    assert "Demo model" in str(message.blocks)
    engine = create_engine(env["AGENTBOT_DATABASE_URL"])
    try:
        [run] = await SqlRunStore(engine).query(RunQuery())
    finally:
        await engine.dispose()
    assert run.status is RunStatus.INTERRUPTED and run.model == "demo"
    assert run.message_ts == message.ts
