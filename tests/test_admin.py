"""`/history` end to end: real signed requests into the real server, the emulator as Slack.

Runs are seeded straight into the bot's store; every answer is read from what the emulator
received on the command's response URL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.models import AuditOutcome, AuditQuery, RunKind, RunRecord, RunStatus
from bot.query import Help, ListRuns, ShowRun, ShowStats, parse_history
from handlers.admin import WorkspaceRoles
from handlers.admin_render import MORE_ACTION_ID, SHOW_ACTION_ID
from tests.conftest import Bot

TEAM = "T0001"  # the emulator's workspace
OTHER_TEAM = "T0OTHER"
ADMIN = "UADMIN"
NOW = datetime.now(UTC).replace(microsecond=0)


def seeded_runs() -> list[RunRecord]:
    """Eight runs in this workspace (one a team run with two parts) and two in another."""

    def run(name: str, hours_ago: float, **fields: Any) -> RunRecord:
        fields.setdefault("kind", RunKind.ASK)
        fields.setdefault("team_id", TEAM)
        fields.setdefault("status", RunStatus.SUCCEEDED)
        return RunRecord(id=name, created_at=NOW - timedelta(hours=hours_ago), **fields)

    return [
        run("r1", 100, user_id="U1", channel_id="C1", prompt="Summarise the Q3 report",
            duration_ms=1000, input_tokens=10, output_tokens=100),
        run("r2", 90, user_id="U2", channel_id="C1", prompt="draft <!channel> an email",
            status=RunStatus.FAILED, error="model timeout", duration_ms=2000),
        run("team1", 50, user_id="U1", channel_id="C2", prompt="Plan the offsite",
            kind=RunKind.TEAM, duration_ms=3000, input_tokens=20, output_tokens=200),
        run("sub1", 49.9, user_id="U1", channel_id="C2", prompt="research venues",
            kind=RunKind.SUBTASK, parent_id="team1", duration_ms=4000),
        run("sub2", 49.8, user_id="U1", channel_id="C2", prompt="check budget",
            kind=RunKind.SUBTASK, parent_id="team1", status=RunStatus.FAILED, error="boom",
            duration_ms=5000),
        run("r3", 20, user_id="U2", channel_id="C2", prompt="what is in the REPORT?",
            duration_ms=6000),
        run("r4", 2, user_id="U3", channel_id="C1", prompt="status:failed is a word here",
            status=RunStatus.CANCELLED, duration_ms=7000),
        run("r5", 1, user_id="U1", channel_id="C1", prompt="latest question", duration_ms=None,
            status=RunStatus.RUNNING),
        run("x1", 1, user_id="U1", channel_id="C1", prompt="Summarise the other report",
            team_id=OTHER_TEAM, duration_ms=9000),
        run("x2", 0.5, user_id="UX", channel_id="CX", prompt="secret of the other team",
            team_id=OTHER_TEAM, status=RunStatus.FAILED),
    ]  # fmt: skip


@pytest.fixture
async def bot(start_bot) -> Bot:
    started = await start_bot(AGENTBOT_ADMINS=ADMIN)
    for record in seeded_runs():
        await started.store.create(record)
    return started


async def history(
    bot: Bot, text: str, *, user_id: str = ADMIN, team_id: str | None = None
) -> dict[str, Any]:
    """Send `/history text`; check the ack is at once and empty; return the answer."""
    emulator = bot.emulator
    seen = len(emulator.responses)
    status, body, latency = await bot.command(
        text, command="/history", user_id=user_id, team_id=team_id
    )
    assert status == 200 and body == ""
    assert latency < 3.0
    await emulator.wait_for(lambda: len(emulator.responses) > seen)
    [answer] = emulator.responses[seen:]
    check_limits(answer)
    return answer


async def click(bot: Bot, answer: dict[str, Any], action_id: str, *, user_id: str = ADMIN,
                value: str | None = None) -> dict[str, Any]:  # fmt: skip
    emulator = bot.emulator
    button = next(b for b in buttons(answer) if b["action_id"] == action_id)
    seen = len(emulator.responses)
    status, _, _ = await emulator.send_block_action(
        bot.url,
        action_id=action_id,
        value=button["value"] if value is None else value,
        message_ts="1.000001",
        user_id=user_id,
    )
    assert status == 200
    await emulator.wait_for(lambda: len(emulator.responses) > seen)
    [reply] = emulator.responses[seen:]
    check_limits(reply)
    return reply


def check_limits(answer: dict[str, Any]) -> None:
    assert answer.get("response_type") == "ephemeral"
    blocks = answer.get("blocks") or []
    assert len(blocks) <= 50
    for block in blocks:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
    for button in buttons(answer):
        assert len(button["value"]) <= 2000


def text_of(answer: dict[str, Any]) -> str:
    parts = [answer.get("text") or ""]
    for block in answer.get("blocks") or []:
        if block["type"] == "section":
            parts.append(block["text"]["text"])
        elif block["type"] == "context":
            parts.extend(e.get("text", "") for e in block["elements"])
    return "\n".join(parts)


def buttons(answer: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for block in answer.get("blocks") or []:
        if "accessory" in block:
            found.append(block["accessory"])
        if block["type"] == "actions":
            found.extend(block["elements"])
    return found


def shown_ids(answer: dict[str, Any]) -> list[str]:
    return [b["value"] for b in buttons(answer) if b["action_id"] == SHOW_ACTION_ID]


# --- who may see what ---------------------------------------------------------------------


async def test_non_admin_is_refused_politely_with_no_data_and_audited(bot):
    answer = await history(bot, "status:failed", user_id="U123")
    text = text_of(answer)
    assert "only for agentbot admins" in text
    assert buttons(answer) == []
    for record in seeded_runs():
        assert record.id not in text and record.prompt not in text
    [entry] = await bot.store.audit_log(AuditQuery())
    assert (entry.user_id, entry.command, entry.text) == ("U123", "/history", "status:failed")
    assert (entry.team_id, entry.channel_id) == (TEAM, "C123")
    assert entry.outcome is AuditOutcome.REFUSED
    assert abs((entry.at - datetime.now(UTC)).total_seconds()) < 60


async def test_admin_sees_only_this_workspaces_runs_newest_first(bot):
    answer = await history(bot, "")
    assert shown_ids(answer) == ["r5", "r4", "r3", "sub2", "sub1", "team1", "r2", "r1"]
    text = text_of(answer)
    assert "secret of the other team" not in text and "x1" not in text
    # A prompt cannot ping anyone from the history.
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    [entry] = await bot.store.audit_log(AuditQuery())
    assert entry.outcome is AuditOutcome.ALLOWED and entry.user_id == ADMIN


async def test_another_workspace_sees_only_its_own_runs(bot):
    answer = await history(bot, "", team_id=OTHER_TEAM)
    assert shown_ids(answer) == ["x2", "x1"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user:<@U2|bob>", ["r3", "r2"]),
        ("user:@U2", ["r3", "r2"]),
        ("<@U3>", ["r4"]),
        ("channel:<#C2|planning>", ["r3", "sub2", "sub1", "team1"]),
        ("channel:#C1 user:U1", ["r5", "r1"]),
        ("<#C1|general> status:failed", ["r2"]),
        ("status:FAILED", ["sub2", "r2"]),
        ("kind:subtask", ["sub2", "sub1"]),
        ("since:24h", ["r5", "r4", "r3"]),
        ("limit:2", ["r5", "r4"]),
        ("report", ["r3", "r1"]),
        ("Q3 report", ["r1"]),
        ('"status:failed"', ["r4"]),
        ("kind:team budget", []),
        (f"since:{(NOW - timedelta(hours=60)).date().isoformat()} kind:subtask", ["sub2", "sub1"]),
    ],
)
async def test_filters(bot, text, expected):
    answer = await history(bot, text)
    assert shown_ids(answer) == expected
    if not expected:
        assert "No runs match" in text_of(answer)


async def test_search_folds_accents_and_leaves_out_a_nul(bot):
    await bot.store.create(RunRecord(id="cafe1", kind=RunKind.ASK, team_id=TEAM, user_id="U1",
                                     prompt="Un CAFÉ noir", created_at=NOW))  # fmt: skip
    assert shown_ids(await history(bot, "café")) == ["cafe1"]
    # A NUL (Slack's JSON and forms can carry one) is no reason to fail the query.
    answer = await history(bot, "rep\x00ort")
    assert shown_ids(answer) == ["r3", "r1"]
    assert "could not be read" not in text_of(answer)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("colour:blue", "Unknown filter `colour:`"),
        ("since:yesterday", "since: 'yesterday' is not like 7d"),
        ("since:2026-13-45", "is not like 7d"),
        ("status:exploded", "is not one of queued, running"),
        ("limit:500", "from 1 to 40"),
        ("user:@alice", "not a person Slack knows"),
        ("show", "takes one run id"),
        ("stats kind:team", "takes only `since:`"),
    ],
)
async def test_bad_filters_get_short_help_and_are_audited(bot, text, problem):
    answer = await history(bot, text)
    body = text_of(answer)
    assert problem in body and "/history stats" in body
    assert shown_ids(answer) == []
    [entry] = await bot.store.audit_log(AuditQuery())
    assert entry.outcome is AuditOutcome.INVALID and entry.text == text
    assert problem.split("`")[0] in (entry.detail or "")


async def test_more_button_pages_with_a_cursor(bot):
    first = await history(bot, "limit:3 channel:#C1")
    assert shown_ids(first) == ["r5", "r4", "r2"]
    second = await click(bot, first, MORE_ACTION_ID)
    assert shown_ids(second) == ["r1"]
    assert MORE_ACTION_ID not in [b["action_id"] for b in buttons(second)]
    outcomes = [e.detail for e in await bot.store.audit_log(AuditQuery())]
    assert outcomes == ["page after r2", None]


async def test_buttons_do_not_let_a_non_admin_in(bot):
    first = await history(bot, "limit:1")
    for action_id in (MORE_ACTION_ID, SHOW_ACTION_ID):
        reply = await click(bot, first, action_id, user_id="U123")
        assert "only for agentbot admins" in text_of(reply) and shown_ids(reply) == []
    forged = await click(bot, first, MORE_ACTION_ID, value="{not json")
    assert "out of date" in text_of(forged)


async def test_show_a_run_with_its_parts(bot):
    answer = await history(bot, "show team1")
    text = text_of(answer)
    assert "Plan the offsite" in text and "*Parts (2)*" in text
    assert shown_ids(answer) == ["sub1", "sub2"]
    assert "20 in / 200 out tokens" in text
    detail = await click(bot, answer, SHOW_ACTION_ID)  # the first part's Details button
    assert "research venues" in text_of(detail) and "Part of `team1`" in text_of(detail)


async def test_show_refuses_a_run_of_another_workspace(bot):
    answer = await history(bot, "show x2")
    assert "No run `x2` in this workspace" in text_of(answer)
    assert "secret" not in text_of(answer)


async def test_stats_against_known_runs(bot):
    answer = await history(bot, "stats since:7d")
    text = text_of(answer)
    # Requests: the team run counts once, its two parts not at all.
    assert "*6 runs* in the last 7 days by 3 people" in text
    assert "✅ succeeded 3 (50%)" in text and "⚠️ failed 1 (17%)" in text
    assert "cancelled 1 (17%)" in text and "running 1 (17%)" in text
    assert "ask 5 · team 1" in text
    assert "<@U1> 3 · <@U2> 2 · <@U3> 1" in text
    assert "30 in · 300 out" in text
    # Durations 1, 2, 3, 6, 7 s: nearest-rank p50 is the 3rd, p95 the 5th.
    assert "p50 3.0 s · p95 7.0 s" in text
    [chart] = [line for line in text.splitlines() if line.startswith("*Runs per day*")]
    bars = chart.split("`")[1]
    assert len(bars) == 8 and set(bars) <= set("_▁▂▃▄▅▆▇█") and "█" in bars
    assert "x1" not in text


async def test_refused_requests_are_listed_and_counted_apart_from_failures(bot):
    _, body, _ = await bot.command("   ", user_id="U1")  # a real refusal: an empty /ask
    assert "empty" in body
    [refused] = await bot.runs(status=RunStatus.REFUSED)

    listed = await history(bot, "status:refused")
    assert shown_ids(listed) == [refused.id]
    assert "🚫 *ask*" in text_of(listed) and "Your request is empty." in text_of(listed)
    detail = await click(bot, listed, SHOW_ACTION_ID)
    assert "· refused" in text_of(detail)

    stats = text_of(await history(bot, "stats since:7d"))
    assert "*7 runs*" in stats
    assert "🚫 refused 1 (14%)" in stats and "⚠️ failed 1 (14%)" in stats
    # The refusal never ran: durations 1, 2, 3, 6, 7 s as before.
    assert "p50 3.0 s · p95 7.0 s" in stats


def test_every_status_has_an_icon_a_board_state_and_an_ending_line():
    from bot.board import ItemStatus
    from handlers.admin_render import ICONS
    from handlers.render import status_notice

    for status in RunStatus:
        assert ICONS[status] and isinstance(ItemStatus.of(status), ItemStatus), status
        if status.is_final and status is not RunStatus.SUCCEEDED:
            run = RunRecord(kind=RunKind.ASK, prompt="p", status=status, error="why.")
            assert status_notice(run), status


async def test_stats_with_nothing_to_show(bot):
    answer = await history(bot, "stats since:30m")
    assert "No runs in this workspace in the last 30 minutes" in text_of(answer)


async def test_stats_since_a_date(bot):
    # The midnight that starts this day is 51 to 75 hours ago, whatever the time now: it
    # cuts between r2 (90 hours ago) and the team run (50 hours ago).
    day = (NOW - timedelta(hours=51)).date().isoformat()
    answer = await history(bot, f"stats since:{day}")
    assert f"*4 runs* since {day} by 3 people" in text_of(answer)  # not r1, r2, nor the parts


async def test_help(bot):
    answer = await history(bot, "help")
    assert "/history show <run-id>" in text_of(answer)


async def test_workspace_admins_allowed_when_configured(start_bot, emulator):
    emulator.state.add_user("UBOSS", "boss", is_admin=True)
    emulator.state.add_user("UOWNER", "owner", is_owner=True)
    bot = await start_bot(AGENTBOT_HISTORY_WORKSPACE_ADMINS="true")
    await bot.store.create(RunRecord(kind=RunKind.ASK, prompt="hello", id="h1", team_id=TEAM))
    for user in ("UBOSS", "UOWNER", "UBOSS"):
        assert shown_ids(await history(bot, "", user_id=user)) == ["h1"]
    assert "only for agentbot admins" in text_of(await history(bot, "", user_id="U123"))
    asked = [call.args.get("user") for call in emulator.calls_to("users.info")]
    assert asked == ["UBOSS", "UOWNER", "U123"], "answers are cached"


async def test_workspace_admins_not_allowed_by_default(start_bot, emulator):
    emulator.state.add_user("UBOSS", "boss", is_admin=True)
    bot = await start_bot()
    assert "only for agentbot admins" in text_of(await history(bot, "", user_id="UBOSS"))
    assert emulator.calls_to("users.info") == []


async def test_role_cache_expires(emulator):
    from slack_sdk.web.async_client import AsyncWebClient

    emulator.state.add_user("UBOSS", "boss", is_admin=True)
    client = AsyncWebClient(token="xoxb-emulator", base_url=emulator.api_url)
    clock = [0.0]
    roles = WorkspaceRoles(ttl=10, clock=lambda: clock[0])
    assert await roles.is_admin(client, team_id=TEAM, user_id="UBOSS")
    emulator.state.add_user("UBOSS", "boss", is_admin=False)
    clock[0] = 9.9
    assert await roles.is_admin(client, team_id=TEAM, user_id="UBOSS")
    clock[0] = 10.0
    assert not await roles.is_admin(client, team_id=TEAM, user_id="UBOSS")
    assert not await roles.is_admin(client, team_id=TEAM, user_id="UNOBODY")  # user_not_found


# --- the filter language (no Slack) ---------------------------------------------------------


def test_parse_history_forms():
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    listed = parse_history("user:<@U1|a> <#C9> status:failed kind:team since:7d limit:5 a  b",
                           now=now)  # fmt: skip
    assert isinstance(listed, ListRuns)
    query = listed.query
    assert (query.user_id, query.channel_id, query.search, query.limit) == ("U1", "C9", "a b", 5)
    assert query.status is RunStatus.FAILED and query.kind is RunKind.TEAM
    assert query.since == now - timedelta(days=7) and query.team_id is None
    assert parse_history("&lt;b&gt; &amp; https://x.io/a", now=now).query.search == (
        "<b> & https://x.io/a"
    )
    assert parse_history("show abc123") == ShowRun("abc123")
    assert parse_history("stats", now=now) == ShowStats(now - timedelta(days=30), "30d")
    assert parse_history("  HELP ") == Help()
    assert isinstance(parse_history("user:U1 user:U2"), Help)
    assert parse_history("“quoted phrase”").query.search == "quoted phrase"


def test_more_button_value_round_trips():
    from handlers.admin_render import more_value, parse_more_value

    record = RunRecord(kind=RunKind.ASK, prompt="p", id="abc", created_at=NOW)
    value = more_value("user:U1 words", NOW, record)
    assert value is not None and json.loads(value)["q"] == "user:U1 words"
    text, now, cursor = parse_more_value(value)
    assert (text, now, cursor.created_at, cursor.id) == ("user:U1 words", NOW, NOW, "abc")
    assert more_value("x" * 2000, NOW, record) is None
