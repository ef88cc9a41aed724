"""A database that stops taking writes: while the bot runs (the process stays up and every
run is still answered in Slack), and at a restart (one line naming the problem, exit 2).

A read-only database is made the way an operator or a failing disk makes one: as root, with
`chattr +i` (root ignores file modes); otherwise with the file modes. The mid-run test needs
`chattr`, so it is skipped when not root or where the file system has no immutable flag.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.errors import ConfigError
from bot.models import RunKind, RunRecord
from bot.playground.emulator import SlackEmulator
from handlers.render import STOP_ACTION_ID
from storage.db import create_engine, upgrade
from storage.repository import SqlRunStore
from tests.conftest import BOT_TOKEN, SIGNING_SECRET
from tests.databases import PG_URL, postgres_engine
from tests.processes import BotProcess, bot_process
from tests.test_ask import all_text
from tests.test_cli import agentbot

ROOT_USER = os.geteuid() == 0


def serve_env(emulator: SlackEmulator, db: Path) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": emulator.api_url,
        "AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "AGENTBOT_CHECKPOINT_INTERVAL": "0.3",
    }


def database_files(folder: Path) -> list[Path]:
    """The database's files, a WAL index (`-shm`) first: that is the memory-mapped one."""
    return sorted(folder.iterdir(), key=lambda path: (not path.name.endswith("-shm"), path.name))


def set_read_only(path: Path, on: bool) -> None:
    """`chattr +i` as root (root ignores file modes), else the file modes."""
    if not ROOT_USER:
        writable = 0o755 if path.is_dir() else 0o644
        path.chmod((0o555 if path.is_dir() else 0o444) if on else writable)
        return
    done = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"no immutable files here: {done.stderr.decode().strip()}")


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make `paths` read-only, in order, and undo it at the end. A folder comes first, so
    that no file comes or goes (a rollback journal does), then each of its files."""
    done: list[Path] = []
    try:
        for path in paths:
            set_read_only(path, True)
            done.append(path)
            for file in database_files(path) if path.is_dir() else []:
                set_read_only(file, True)
                done.append(file)
        os.sync()  # written back: the next write to a mapped page asks the file system again
        yield
    finally:
        for path in reversed(done):
            set_read_only(path, False)


async def until_exited_or(bot: BotProcess, emulator: SlackEmulator, condition) -> None:
    """Wait until `condition()` holds; fail at once, with its log, if the process dies."""

    def settled() -> bool:
        return bot.process.returncode is not None or condition()

    await emulator.wait_for(settled, timeout=30)
    assert bot.process.returncode is None, f"the bot died ({bot.process.returncode}):\n" + "".join(
        bot.log[-30:]
    )


@pytest.mark.skipif(not ROOT_USER, reason="chattr +i needs root")
@pytest.mark.skipif(shutil.which("chattr") is None, reason="no chattr")
async def test_a_database_made_read_only_mid_run_keeps_the_bot_up(emulator, tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    env = serve_env(emulator, folder / "agentbot.db")
    async with bot_process("serve", "--host", "127.0.0.1", env=env, cwd=tmp_path) as bot:
        await emulator.send_slash_command(f"{bot.url}/slack/events", "/ask", "long answer please")
        await emulator.wait_for(lambda: len(emulator.calls_to("chat.update")) >= 1, timeout=15)
        [first] = emulator.messages("C123")
        with read_only(folder):
            await emulator.send_slash_command(f"{bot.url}/slack/events", "/ask", "and this?")

            def second_answered() -> bool:
                later = emulator.messages("C123")[1:]
                return bool(later) and "could not be recorded" in all_text(later[0])

            await until_exited_or(bot, emulator, second_answered)
            # The first run streams on to its end, and its answer is complete in Slack.
            await until_exited_or(bot, emulator, lambda: STOP_ACTION_ID not in str(first.blocks))
            assert "Demo model" in all_text(first)
            assert any("could not be recorded" in line for line in bot.log)
            bot.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(bot.process.wait(), 30)
            assert bot.process.returncode == 0, "".join(bot.log[-30:])


def assert_one_line_exit_2(code: int, out: str, err: str) -> None:
    assert code == 2, (out, err)
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("agentbot: AGENTBOT_DATABASE_URL: "), err
    assert "does not take writes" in last or "readonly" in last, err


async def test_a_restart_on_a_read_only_database_after_a_crash_is_one_line_and_exit_2(
    emulator, tmp_path
):
    folder = tmp_path / "db"
    folder.mkdir()
    env = serve_env(emulator, folder / "agentbot.db")
    # A bot killed mid-run leaves its database as it was at that moment.
    async with bot_process("serve", "--host", "127.0.0.1", env=env, cwd=tmp_path) as bot:
        await emulator.send_slash_command(f"{bot.url}/slack/events", "/ask", "long answer please")
        await emulator.wait_for(lambda: len(emulator.calls_to("chat.update")) >= 1, timeout=15)
        bot.process.send_signal(signal.SIGKILL)
        await bot.process.wait()
    with read_only(folder):
        assert_one_line_exit_2(*await agentbot("serve", "--port", "0", env=env, cwd=tmp_path))


async def test_a_read_only_database_file_stops_serve_in_one_line_but_can_be_read(
    emulator, tmp_path
):
    db = tmp_path / "agentbot.db"
    env = serve_env(emulator, db)
    engine = create_engine(env["AGENTBOT_DATABASE_URL"])
    try:
        await upgrade(engine)
        await SqlRunStore(engine).create(RunRecord(kind=RunKind.ASK, prompt="kept"))
    finally:
        await engine.dispose()
    with read_only(db):
        assert_one_line_exit_2(*await agentbot("serve", "--port", "0", env=env, cwd=tmp_path))
        code, out, err = await agentbot("history", "--json", env=env, cwd=tmp_path)
        assert code == 0, err
        assert [run["prompt"] for run in json.loads(out)] == ["kept"]


async def test_a_read_only_sqlite_connection_is_a_one_line_config_error(tmp_path):
    db = tmp_path / "agentbot.db"
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    read_only_url = f"sqlite+aiosqlite:///file:{db}?mode=ro&uri=true"
    engine = create_engine(read_only_url)
    try:
        with pytest.raises(ConfigError, match=r"^AGENTBOT_DATABASE_URL: .* does not take writes"):
            await upgrade(engine)
        await upgrade(engine, writable=False)  # to read it, nothing needs writing
    finally:
        await engine.dispose()


async def test_a_read_only_postgresql_is_a_one_line_config_error(postgres_unreachable):
    async with postgres_engine(postgres_unreachable) as engine:
        await upgrade(engine)
        async with engine.connect() as conn:
            schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
        settings = {"search_path": schema, "default_transaction_read_only": "on"}
        standby = create_engine(PG_URL, connect_args={"server_settings": settings})
        try:
            with pytest.raises(ConfigError) as caught:
                await upgrade(standby)
            message = str(caught.value)
            assert message.startswith("AGENTBOT_DATABASE_URL: ") and "\n" not in message
            assert "does not take writes" in message and "read-only transaction" in message
            await upgrade(standby, writable=False)
        finally:
            await standby.dispose()
