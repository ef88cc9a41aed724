"""`agentbot stats`, `agentbot history --all` and the shared time spans, as a user runs them
(in this process, on real database files); plus a smoke run of the history benchmark."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from bot.models import RECORD_FIELDS, RunKind, RunRecord, RunStatus
from bot.query import ListRuns, parse_history, parse_since
from storage.db import create_engine, upgrade
from storage.tables import RunRow, row_values
from tests.processes import ROOT, InProcess, base_env

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def agentbot(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> InProcess:
    """`await agentbot(*args, env=...)`: exit status, stdout and stderr of `agentbot ARGS`."""
    return InProcess(monkeypatch, capsys, cwd=tmp_path)


async def fill(url: str, runs: list[RunRecord]) -> None:
    engine = create_engine(url)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(insert(RunRow), [row_values(run) for run in runs])
    finally:
        await engine.dispose()


def known_runs() -> list[RunRecord]:
    """Five runs in T1 over the last three days (durations 1..4 s), one in T2, one too old."""

    def run(name: str, days_ago: float, **fields) -> RunRecord:
        fields.setdefault("kind", RunKind.ASK)
        fields.setdefault("team_id", "T1")
        fields.setdefault("status", RunStatus.SUCCEEDED)
        return RunRecord(
            id=name, prompt=f"prompt {name}", created_at=NOW - timedelta(days=days_ago), **fields
        )

    return [
        run("a", 2, user_id="U1", duration_ms=1000, input_tokens=10, output_tokens=100),
        run("b", 2, user_id="U2", duration_ms=4000, status=RunStatus.FAILED, input_tokens=5),
        run("c", 1, user_id="U1", duration_ms=2000, kind=RunKind.TEAM, output_tokens=50),
        run("d", 0, user_id="U1", duration_ms=3000, kind=RunKind.SUBTASK, parent_id="c"),
        run("e", 0, user_id=None, status=RunStatus.RUNNING),
        run("x", 0, user_id="U9", team_id="T2", duration_ms=9000),
        run("old", 40, user_id="U1", duration_ms=99_000),
    ]


@pytest.fixture
async def stats_db(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'stats.db'}"
    await fill(url, known_runs())
    return {"AGENTBOT_DATABASE_URL": url}


async def test_stats_json_numbers(stats_db, agentbot):
    code, out, err = await agentbot("stats", "--team", "T1", "--json", env=stats_db)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["team_id"] == "T1" and stats["since"].endswith("Z")
    # Requests: the team run "c" counts once, its subtask "d" not at all.
    assert stats["total"] == 4
    assert stats["by_status"] == {"succeeded": 2, "failed": 1, "running": 1}
    assert list(stats["by_status"]) == ["succeeded", "failed", "running"]
    assert stats["by_kind"] == {"ask": 3, "team": 1}
    assert stats["top_users"] == [{"user_id": "U1", "runs": 2}, {"user_id": "U2", "runs": 1}]
    assert stats["users"] == 2
    assert (stats["input_tokens"], stats["output_tokens"]) == (15, 150)
    assert (stats["p50_ms"], stats["p95_ms"]) == (2000, 4000)
    days = {(NOW - timedelta(days=n)).date().isoformat(): runs for n, runs in ((2, 2), (1, 1),
                                                                               (0, 1))}  # fmt: skip
    assert {d["day"]: d["runs"] for d in stats["per_day"]} == days


async def test_stats_text_and_scopes(stats_db, agentbot):
    code, out, err = await agentbot("stats", env=stats_db)
    assert code == 0, err
    assert "all workspaces: 5 by 3 people" in out
    assert "succeeded 3 (60%) · failed 1 (20%) · running 1 (20%)" in out
    assert "top users  U1 2 · U2 1 · U9 1" in out
    assert "duration   p50 2.0 s · p95 9.0 s" in out
    [chart] = [line for line in out.splitlines() if line.startswith("per day")]
    bars = chart.removeprefix("per day").strip().split("  (")[0]
    assert bars.endswith("█") and set(bars) <= set(" ▁▂▃▄▅▆▇█")

    code, out, _ = await agentbot("stats", "--since", "60d", "--json", env=stats_db)
    assert code == 0 and json.loads(out)["total"] == 6
    code, out, _ = await agentbot("stats", "--team", "nobody", env=stats_db)
    assert code == 0 and "workspace nobody: 0" in out


async def test_history_team_filter(stats_db, agentbot):
    code, out, err = await agentbot("history", "--team", "T2", "--json", env=stats_db)
    assert code == 0, err
    assert [run["id"] for run in json.loads(out)] == ["x"]


async def test_refused_requests_are_their_own_status_not_failures(start_bot, tmp_path, agentbot):
    """Requests the bot turned away (empty, too long, over the user's rate) are counted as
    `refused` in the stats, not as failures, and take no part in the duration percentiles."""
    from tests.scripted import ScriptedModel

    bot = await start_bot(
        ScriptedModel.words("answered").model(),
        AGENTBOT_MAX_PROMPT_CHARS=100,
        AGENTBOT_USER_RUNS_PER_MINUTE=3,
    )
    await bot.command("hello")
    await bot.wait_for_run()
    for text in ("", "z" * 101, "over the rate"):  # empty, too long, the 4th in a minute
        _, body, _ = await bot.command(text)
        assert body, "a refused request is answered"
    await bot.wait_for_run(count=4)
    env = {"AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'agentbot.db'}"}

    code, out, err = await agentbot("stats", "--json", env=env)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["total"] == 4
    assert stats["by_status"] == {"refused": 3, "succeeded": 1}
    [answered] = await bot.runs(status=RunStatus.SUCCEEDED)
    assert stats["p50_ms"] == stats["p95_ms"] == answered.duration_ms
    code, out, err = await agentbot("stats", env=env)
    assert code == 0 and "refused 3 (75%) · succeeded 1 (25%)" in out, out
    assert "failed" not in out

    code, out, err = await agentbot("history", "--status", "refused", "--json", env=env)
    assert code == 0, err
    refused = json.loads(out)
    assert [r["prompt"][:10] for r in refused] == ["over the r", "z" * 10, ""]
    assert {r["status"] for r in refused} == {"refused"}
    assert "limit is 3" in refused[0]["error"] and refused[2]["error"] == "Your request is empty."


@pytest.fixture
async def export_db(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'export.db'}"
    runs = [
        RunRecord(
            id=f"r{i:05d}",
            kind=RunKind.ASK,
            prompt=f'question {i}, with a comma and "quotes"\nand a line',
            team_id="T1",
            status=RunStatus.FAILED if i % 10 == 0 else RunStatus.SUCCEEDED,
            created_at=NOW - timedelta(seconds=i),
        )
        for i in range(2500)
    ]
    await fill(url, runs)
    return {"AGENTBOT_DATABASE_URL": url}


async def test_export_all_as_json_and_csv(export_db, agentbot):
    code, out, err = await agentbot("history", "--all", "--json", env=export_db)
    assert code == 0 and err.startswith("database: ")  # not a terminal: no progress bar
    assert len(err.splitlines()) == 1
    runs = json.loads(out)
    assert [run["id"] for run in runs] == [f"r{i:05d}" for i in range(2500)]
    assert all(list(run) == list(RECORD_FIELDS) for run in runs)
    assert out == json.dumps(runs, ensure_ascii=False, indent=2) + "\n"

    code, out, _ = await agentbot("history", "--all", "--csv", "--status", "failed", env=export_db)
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 250 and list(rows[0]) == list(RECORD_FIELDS)
    assert rows[0]["prompt"] == 'question 0, with a comma and "quotes"\nand a line'

    code, out, _ = await agentbot(
        "history", "--all", "--json", "--search", "nothing", env=export_db
    )
    assert code == 0 and out == "[]\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_long_export_shows_progress_on_a_terminal_only(export_db, agentbot, monkeypatch):
    stderr = Terminal()
    with monkeypatch.context() as patch:  # undone before capsys puts its own stderr back
        patch.setattr(sys, "stderr", stderr)
        code, out, _ = await agentbot("history", "--all", "--csv", env=export_db)
    terminal = stderr.getvalue()
    assert code == 0 and len(out.splitlines()) == 2501 + 2500
    assert "1,000/2,500 runs" in terminal and "2,500/2,500 runs" in terminal
    assert "\r[" in terminal


async def test_bad_stats_input_is_one_line(tmp_path, agentbot):
    env = {"AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"}
    code, _, err = await agentbot("stats", "--since", "soonish", env=env)
    assert code == 2 and err.strip() == (
        "agentbot: --since: 'soonish' is not like 7d, 24h, 30m or 2026-11-01"
    )


def test_slack_and_cli_share_one_time_parser():
    import bot.cli

    assert bot.cli.parse_since is parse_since
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    for text in ("7d", "24h", "30m", "2w", "2026-11-01", "2026-11-01T08:00:00+02:00"):
        listed = parse_history(f"since:{text}", now=now)
        assert isinstance(listed, ListRuns)
        assert listed.query.since == parse_since(text, now=now)
    assert parse_since("2026-11-01T08:00:00+02:00") == datetime(2026, 11, 1, 6, tzinfo=UTC)


async def test_history_bench_smoke(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.history", "--runs", "2000", "--repeat", "2",
        "--db", str(tmp_path / "bench.db"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=base_env(), cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    table = out.decode().split("| query | p50 ms | p95 ms |")[1]
    for name in ("latest (team)", "search rare", "stats, 30 days", "show run + children"):
        assert f"| {name}" in table
