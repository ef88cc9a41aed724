"""The command line as a user runs it: real processes, real database files."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.cli import parse_since
from bot.errors import InputError
from bot.models import RECORD_FIELDS, RunKind, RunRecord, RunStatus
from storage.db import create_engine, upgrade
from storage.repository import SqlRunStore
from tests.conftest import BOT_TOKEN, SIGNING_SECRET
from tests.processes import ROOT, base_env, bot_process


async def agentbot(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**base_env(), **(env or {})},
        cwd=cwd or ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


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


async def test_history_json_prints_run_objects_with_every_field(history_db):
    code, out, err = await agentbot("history", "--json", env={"AGENTBOT_DATABASE_URL": history_db})
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
async def test_history_filters(history_db, args, expected):
    code, out, err = await agentbot(
        "history", "--json", *args, env={"AGENTBOT_DATABASE_URL": history_db}
    )
    assert code == 0, err
    assert [r["prompt"] for r in json.loads(out)] == expected


async def test_history_table_csv_and_show(history_db):
    env = {"AGENTBOT_DATABASE_URL": history_db}
    code, out, _ = await agentbot("history", env=env)
    assert code == 0 and out.splitlines()[0].split()[:4] == ["created_at", "id", "kind", "status"]
    assert "how do we ship on Fridays?" in out
    code, out, _ = await agentbot("history", "--csv", env=env)
    assert (
        code == 0 and out.splitlines()[0] == ",".join(RECORD_FIELDS) and len(out.splitlines()) == 4
    )
    code, out, _ = await agentbot("history", "--json", "--search", "Fridays", env=env)
    parent_id = json.loads(out)[0]["id"]
    code, out, _ = await agentbot("history", "show", parent_id, "--json", env=env)
    assert code == 0 and [r["prompt"] for r in json.loads(out)] == [
        "how do we ship on Fridays?",
        "child",
    ]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve"], {}, "SLACK_BOT_TOKEN is not set"),
        (["serve"], {"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_SIGNING_SECRET is not set"),
        (["serve", "--socket"], {"SLACK_BOT_TOKEN": "xoxb-1"}, "SLACK_APP_TOKEN is not set"),
        (["history"], {"PORT": "eighty"}, "PORT:"),
        (["history", "--since", "yesterday"], {}, "--since: 'yesterday'"),
        (["history", "--status", "weird"], {}, "invalid choice"),
        (["history", "--limit", "0"], {}, "--limit must be between 1 and 1000"),
        (["history", "show", "nope"], {}, "no run with id 'nope'"),
        (
            ["serve"],
            {"SLACK_BOT_TOKEN": "x", "SLACK_SIGNING_SECRET": "y", "AGENTBOT_MODEL": "nope:x"},
            "AGENTBOT_MODEL='nope:x'",
        ),
        (["history"], {"AGENTBOT_DATABASE_URL": "mysql://nope"}, "AGENTBOT_DATABASE_URL"),
        (["nonsense"], {}, "invalid choice"),
    ],
)
async def test_bad_input_is_one_line_and_exit_2(tmp_path, args, env, message):
    env = {"AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", **env}
    code, out, err = await agentbot(*args, env=env, cwd=tmp_path)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_parse_since_forms():
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("24h", now=now) == now - timedelta(hours=24)
    assert parse_since("30m", now=now) == now - timedelta(minutes=30)
    assert parse_since("2026-11-01", now=now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(InputError):
        parse_since("soon", now=now)


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
    _, out, _ = await agentbot(
        "history", "--json", env={"AGENTBOT_DATABASE_URL": env["AGENTBOT_DATABASE_URL"]}
    )
    [run] = json.loads(out)
    assert run["status"] == "interrupted" and run["model"] == "demo"
    assert run["message_ts"] == message.ts
