"""The bot's boundary with Slack: junk requests, odd characters, giant prompts, and who may
press Stop where. Real signed (or unsigned) HTTP requests into the running bot."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.models import AuditQuery, RunKind, RunQuery, RunRecord, RunStatus
from handlers.render import STOP_ACTION_ID
from storage.db import upgrade
from storage.repository import SqlRunStore
from tests.conftest import SIGNING_SECRET, socket_mode_service, wait_until
from tests.databases import PG_DSN, postgres_engine, sqlite_engine
from tests.scripted import ScriptedModel
from tests.test_ask import SIXTY_WORDS, answer_text
from tests.test_conversations import ask_first, turns

FORM = "application/x-www-form-urlencoded"


def _signed_headers(body: bytes, *, content_type: str, timestamp: str | None = None) -> dict:
    """Slack's v0 signature over the raw bytes of `body`, as Slack computes it."""
    stamp = str(int(time.time())) if timestamp is None else timestamp
    base = b"v0:" + stamp.encode() + b":" + body
    digest = hmac.new(SIGNING_SECRET.encode(), base, hashlib.sha256).hexdigest()
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
    }


async def _post(url: str, body: bytes, headers: dict) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers=headers) as response:
            return response.status, await response.text()


# (name, body, content type): bodies Bolt cannot parse.
JUNK = [
    ("bad utf-8", b'{"type":"event_callback","x":"\xff\xfe"}', "application/json"),
    ("bad json", b'{"type": "event_callback", ', "application/json"),
    ("json that is not an object", b"[1, 2, 3]", "application/json"),
    ("payload that is not json", b"payload=%7Bnot+json", FORM),
    ("payload that is not an object", b"payload=%5B1%5D", FORM),
    ("json nested too deep", b"[" * 100_000 + b"]" * 100_000, "application/json"),
]


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]


def _server_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "bot.server" and r.levelno == logging.WARNING
    ]


@pytest.mark.parametrize(("name", "body", "content_type"), JUNK, ids=[j[0] for j in JUNK])
async def test_unsigned_junk_is_401_with_one_line_and_no_traceback(
    start_bot, emulator, caplog, name, body, content_type
):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model())
    headers = _signed_headers(body, content_type=content_type)
    headers["X-Slack-Signature"] = "v0=" + "0" * 64
    with caplog.at_level(logging.INFO):
        status, _ = await _post(bot.url, body, headers)
    assert status == 401
    _no_traceback(caplog)
    assert len(_server_warnings(caplog)) == 1
    assert script.calls == [] and await bot.runs() == []
    assert emulator.calls_to("chat.postMessage") == []


@pytest.mark.parametrize(
    "timestamp", ["not-a-number", "", "1e9", "99999999999999999999999"], ids=repr
)
async def test_a_timestamp_that_is_not_a_number_is_401(start_bot, emulator, caplog, timestamp):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model())
    body = b"command=%2Fask&text=hi&user_id=U123&channel_id=C123&team_id=T0001"
    headers = _signed_headers(body, content_type=FORM, timestamp=timestamp)
    with caplog.at_level(logging.INFO):
        status, _ = await _post(bot.url, body, headers)
    assert status == 401
    _no_traceback(caplog)
    assert len(_server_warnings(caplog)) == 1
    assert script.calls == [] and await bot.runs() == []


async def test_a_request_without_signature_headers_is_401(start_bot, emulator, caplog):
    bot = await start_bot(ScriptedModel(["never"]).model())
    with caplog.at_level(logging.INFO):
        status, _ = await _post(bot.url, b"{}", {"Content-Type": "application/json"})
    assert status == 401
    _no_traceback(caplog)
    assert len(_server_warnings(caplog)) == 1


@pytest.mark.parametrize(("name", "body", "content_type"), JUNK, ids=[j[0] for j in JUNK])
async def test_signed_junk_is_400_with_one_line_and_no_traceback(
    start_bot, emulator, caplog, name, body, content_type
):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model())
    with caplog.at_level(logging.INFO):
        status, _ = await _post(bot.url, body, _signed_headers(body, content_type=content_type))
    assert status == 400
    _no_traceback(caplog)
    assert len(_server_warnings(caplog)) == 1
    assert script.calls == [] and await bot.runs() == []
    assert emulator.calls_to("chat.postMessage") == []


async def test_a_body_over_aiohttps_limit_is_413_without_traceback(start_bot, emulator, caplog):
    bot = await start_bot(ScriptedModel(["never"]).model())
    body = b"x" * (2 * 1024 * 1024)
    with caplog.at_level(logging.INFO):
        status, _ = await _post(bot.url, body, _signed_headers(body, content_type=FORM))
    assert status == 413
    _no_traceback(caplog)


async def test_a_signed_request_after_junk_is_still_answered(start_bot, emulator):
    script = ScriptedModel.words("still here")
    bot = await start_bot(script.model())
    for _, body, content_type in JUNK:
        await _post(bot.url, body, _signed_headers(body, content_type=content_type))
    status, _, _ = await bot.command("hello")
    assert status == 200
    [run] = await bot.wait_for_run()
    assert run.output == "still here"


# -- Odd characters: cleaned once where they come in, and the run goes on ----------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_unreachable: str | None
) -> AsyncIterator[str]:
    """The bot's database: a SQLite file, or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'odd.db'}"
        return
    if postgres_unreachable:
        pytest.skip(postgres_unreachable)
    import asyncpg

    name = f"agentbot_t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


LONE_SURROGATE = "\ud800"  # JSON can carry it ("\\ud800"); no UTF-8 encoder accepts it


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_store_writes_odd_text_cleaned(tmp_path, postgres_unreachable, backend):
    odd = f"a\x00b {LONE_SURROGATE} \ud83d\ude00"  # a NUL, a lone and a split pair
    opened = sqlite_engine(tmp_path / "s.db") if backend == "sqlite" else None
    async with opened or postgres_engine(postgres_unreachable) as engine:
        await upgrade(engine)
        store = SqlRunStore(engine)
        run = RunRecord(kind=RunKind.ASK, prompt=odd, command=odd)
        await store.create(run)
        run.output, run.error, run.status = odd, odd, RunStatus.FAILED
        await store.save(run)
        stored = await store.get(run.id)
    clean = "ab \ufffd \U0001f600"
    assert (stored.prompt, stored.command, stored.output, stored.error) == (clean,) * 4


async def test_a_nul_in_a_slash_command_is_answered_and_recorded(start_bot, emulator, database_url):
    script = ScriptedModel.words("answered")
    bot = await start_bot(script.model(), AGENTBOT_DATABASE_URL=database_url)
    status, _, _ = await bot.command("what\x00 is this?")  # sent as %00
    assert status == 200
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.prompt == "what is this?" and run.output == "answered"
    assert turns(script.calls[0]) == [("user", "what is this?")]


async def test_a_lone_surrogate_in_a_mention_is_answered_and_recorded(
    start_bot, emulator, database_url
):
    script = ScriptedModel.words("answered")
    bot = await start_bot(script.model(), AGENTBOT_DATABASE_URL=database_url)
    said = emulator.post_user_message("C123", "U123", f"<@UBOT> odd {LONE_SURROGATE} text\x00")
    event = emulator.message_event(said, mention=True)
    delivery = await emulator.send_event(bot.url, event)  # JSON: "\\ud800" and "\\u0000"
    assert delivery.status == 200
    [run] = await bot.wait_for_run(kind=RunKind.MENTION)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.prompt == "odd \ufffd text" and run.output == "answered"
    assert turns(script.calls[0]) == [("user", "odd \ufffd text")]


async def test_odd_characters_in_a_thread_follow_up_keep_the_conversation(
    start_bot, emulator, database_url
):
    script = ScriptedModel.words("Paris")
    bot = await start_bot(script.model(), AGENTBOT_DATABASE_URL=database_url)
    answer_ts = await ask_first(bot, emulator, script)
    reply = emulator.post_user_message(
        "C123", "U123", f"and\x00 Italy {LONE_SURROGATE}?", thread_ts=answer_ts
    )
    await emulator.send_event(bot.url, emulator.message_event(reply))
    [followup] = await bot.wait_for_run(kind=RunKind.FOLLOWUP)
    assert followup.status is RunStatus.SUCCEEDED, followup.error
    assert followup.prompt == "and Italy \ufffd?"
    assert turns(script.calls[1])[-1] == ("user", "and Italy \ufffd?")


async def test_a_nul_in_the_models_output_is_saved_and_the_run_succeeds(
    start_bot, emulator, database_url
):
    script = ScriptedModel(["a NUL\x00 ", "in the\x00 middle"])
    bot = await start_bot(script.model(), AGENTBOT_DATABASE_URL=database_url)
    await bot.command("hello")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output == "a NUL in the middle"
    stored = await bot.store.get(run.id)
    assert stored.output == "a NUL in the middle" and stored.messages_json


async def test_a_lone_surrogate_in_the_models_output_is_saved_and_the_run_succeeds(
    start_bot, emulator, database_url
):
    # pydantic-ai keeps its own copy of the text: its messages must be written cleaned too.
    script = ScriptedModel(["half a pair ", f"{LONE_SURROGATE} here"])
    bot = await start_bot(script.model(), AGENTBOT_DATABASE_URL=database_url)
    await bot.command("hello")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED, run.error
    stored = await bot.store.get(run.id)
    assert stored.output == "half a pair \ufffd here"
    assert stored.messages_json and "\ufffd here" in stored.messages_json.decode()


async def test_a_nul_in_a_history_search_is_cleaned_and_the_search_answers(
    start_bot, emulator, database_url
):
    bot = await start_bot(AGENTBOT_ADMINS="UADMIN", AGENTBOT_DATABASE_URL=database_url)
    await bot.store.create(
        RunRecord(kind=RunKind.ASK, prompt="Summarise the Q3 report", team_id="T0001")
    )
    status, _, _ = await bot.command("Summ\x00arise", command="/history", user_id="UADMIN")
    assert status == 200
    await emulator.wait_for(lambda: bool(emulator.responses))
    [answer] = emulator.responses
    shown = json.dumps(answer)
    assert "could not be read" not in shown and "Summarise the Q3 report" in shown
    [audit] = await bot.store.audit_log(AuditQuery())
    assert audit.text == "Summarise"


async def test_a_lone_surrogate_in_a_slash_command_over_socket_mode_is_answered(emulator, tmp_path):
    # Over Socket Mode a slash command is JSON, so it can carry a lone surrogate.
    script = ScriptedModel.words("answered over the socket")
    async with socket_mode_service(emulator, tmp_path, script.model()) as service:
        await emulator.send_slash_command(None, "/ask", f"odd {LONE_SURROGATE}\x00 text")
        runs = []

        async def finished() -> bool:
            nonlocal runs
            runs = await service.parts.store.query(RunQuery())
            return bool(runs) and runs[0].status.is_final and not len(service.parts.background)

        await wait_until(finished, emulator)
        [run] = runs
        assert run.status is RunStatus.SUCCEEDED, run.error
        assert run.prompt == "odd \ufffd text"
        assert answer_text(emulator.messages("C123")[0]) == "answered over the socket"


# -- Refused prompts: stored cut, and counted against the user's rate ---------------------


async def test_an_oversized_prompt_is_refused_and_stored_cut_to_the_limit(start_bot, emulator):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model(), AGENTBOT_MAX_PROMPT_CHARS=100)
    prompt = "start " + "x" * 99_994  # 100,000 characters
    status, body, _ = await bot.command(prompt)
    assert status == 200 and "100,000 characters" in body and "limit is 100" in body
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.REFUSED and "limit is 100" in run.error
    assert len(run.prompt) <= 100
    assert run.prompt.startswith("start xxx") and "cut" in run.prompt and "100,000" in run.prompt
    assert script.calls == []


async def test_an_oversized_mention_is_refused_and_stored_cut_to_the_limit(start_bot, emulator):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model(), AGENTBOT_MAX_PROMPT_CHARS=100)
    said = emulator.post_user_message("C123", "U123", "<@UBOT> " + "y" * 5_000)
    await emulator.send_event(bot.url, emulator.message_event(said, mention=True))
    [run] = await bot.wait_for_run(kind=RunKind.MENTION)
    assert run.status is RunStatus.REFUSED and "limit is 100" in run.error
    assert len(run.prompt) <= 100 and "cut" in run.prompt
    await emulator.wait_for(lambda: bool(emulator.ephemerals("C123")))
    assert "limit is 100" in emulator.ephemerals("C123")[0].text


async def test_refused_prompts_count_against_the_users_rate_limit(start_bot, emulator):
    script = ScriptedModel(["never"])
    bot = await start_bot(
        script.model(), AGENTBOT_MAX_PROMPT_CHARS=100, AGENTBOT_USER_RUNS_PER_MINUTE=3
    )
    answers = [(await bot.command("z" * 100_000))[1] for _ in range(6)]
    assert all("limit is 100" in a for a in answers[:3]), answers
    assert all("the limit is 3" in a and "try again" in a for a in answers[3:]), answers
    runs = await bot.wait_for_run(count=6)
    assert script.calls == []
    # Every attempt is recorded, none whole: refused ones cut to the prompt limit, the
    # rate-limited ones to a short preview.
    assert all(r.status is RunStatus.REFUSED for r in runs)
    assert sum(len(r.prompt) for r in runs) <= 6 * 100
    assert len([r for r in runs if "the limit is 3" in r.error]) == 3
    # Another user is not affected.
    _, body, _ = await bot.command("z" * 101, user_id="U456")
    assert "limit is 100" in body


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("/ask", "`/ask <your text>`"),
        ("/team", "Give a task to a team of agents"),
        ("/pipeline", "`/pipeline <your text>`"),
        ("/compare", "Ask several models the same thing"),
    ],
)
async def test_an_empty_command_gets_its_usage_and_is_recorded_refused(
    start_bot, emulator, command, usage
):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model())
    status, body, _ = await bot.command("  ", command=command)
    assert status == 200 and "empty" in body and usage in body, body
    [run] = await bot.wait_for_run()
    assert (run.status, run.command, run.prompt) == (RunStatus.REFUSED, command, "")
    assert run.error == "Your request is empty."
    # It never started: no start, no duration to pull the percentiles down.
    assert run.started_at is None and run.duration_ms is None and run.finished_at
    assert script.calls == [] and emulator.calls_to("chat.postMessage") == []


@pytest.mark.parametrize(
    ("channel", "thread", "usage"),
    [
        ("C123", False, "`@agentbot <your question>`"),
        ("D123", False, "Send me your question as a message"),
        ("D123", True, "Reply in this thread with your question"),
    ],
    ids=["mention", "direct message", "thread reply"],
)
async def test_an_empty_conversation_turn_gets_a_short_usage_and_is_recorded_refused(
    start_bot, emulator, channel, thread, usage
):
    script = ScriptedModel(["never"])
    bot = await start_bot(script.model())
    mention = channel.startswith("C")
    said = emulator.post_user_message(channel, "U123", "<@UBOT> " if mention else " ")
    if thread:  # a reply to the bot's answer in a direct message
        first = emulator.post_user_message(channel, "U123", "hello")
        await emulator.send_event(bot.url, emulator.message_event(first))
        await bot.wait_for_run()
        answer_ts = emulator.messages(channel)[-1].ts
        said = emulator.post_user_message(channel, "U123", " ", thread_ts=answer_ts)
    await emulator.send_event(bot.url, emulator.message_event(said, mention=mention))
    await emulator.wait_for(lambda: bool(emulator.ephemerals(channel)))
    [told] = emulator.ephemerals(channel)
    assert "empty" in told.text and usage in told.text, told.text
    runs = await bot.wait_for_run(count=2 if thread else 1)
    refused = [r for r in runs if r.status is RunStatus.REFUSED]
    assert len(refused) == 1 and refused[0].error == "Your request is empty."
    assert len(script.calls) == (1 if thread else 0)


# -- Stop stays inside its workspace --------------------------------------------------------


async def _live_run_in(bot, emulator, channel: str) -> tuple[str, str]:
    """The id and message ts of the run live in `channel`, once its Stop button shows."""

    def stop_value() -> str:
        messages = emulator.messages(channel)
        if not messages:
            return ""
        buttons = [e for b in messages[0].blocks if b["type"] == "actions" for e in b["elements"]]
        return buttons[0]["value"] if buttons else ""

    def live() -> bool:
        return bool(stop_value()) and bot.service.parts.runner.live.get(stop_value()) is not None

    await emulator.wait_for(live)
    return stop_value(), emulator.messages(channel)[0].ts


async def _press_stop(emulator, bot, *, run_id, message_ts, channel, team, user="UADMIN") -> str:
    """Press Stop as `user` of workspace `team`; the private answer, if any ("")."""
    count = len(emulator.responses)
    await emulator.send_block_action(
        bot.url,
        action_id=STOP_ACTION_ID,
        value=run_id,
        user_id=user,
        message_ts=message_ts,
        channel_id=channel,
        team_id=team,
    )
    await emulator.wait_for(lambda: len(emulator.responses) > count or not bot_live(bot, run_id))
    return emulator.responses[count]["text"] if len(emulator.responses) > count else ""


def bot_live(bot, run_id: str) -> bool:
    return bot.service.parts.runner.live.get(run_id) is not None


async def test_an_admin_stops_runs_only_in_their_own_workspace(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    bot = await start_bot(script.model(), AGENTBOT_ADMINS="UADMIN")
    await bot.command("in workspace A", team_id="TA", channel_id="CA", user_id="UA")
    await bot.command("in workspace B", team_id="TB", channel_id="CB", user_id="UB")
    run_a, ts_a = await _live_run_in(bot, emulator, "CA")
    run_b, ts_b = await _live_run_in(bot, emulator, "CB")

    # An admin of workspace A (say, in a channel shared with B) presses Stop on B's run.
    answer = await _press_stop(
        emulator, bot, run_id=run_b, message_ts=ts_b, channel="CB", team="TA"
    )
    assert "Only <@UB> or an admin" in answer
    assert bot_live(bot, run_b), "B's run goes on"

    await _press_stop(emulator, bot, run_id=run_a, message_ts=ts_a, channel="CA", team="TA")
    script.released.set()
    runs = {r.team_id: r for r in await bot.wait_for_run(count=2)}
    assert runs["TA"].status is RunStatus.CANCELLED and "UADMIN" in runs["TA"].error
    assert runs["TB"].status is RunStatus.SUCCEEDED


async def test_the_requester_stops_their_own_run_whatever_the_workspace(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    bot = await start_bot(script.model())
    await bot.command("mine", team_id="TB", channel_id="CB", user_id="UB")
    run_b, ts_b = await _live_run_in(bot, emulator, "CB")
    # Slack Connect: the same user id clicks from their home workspace's side.
    await _press_stop(
        emulator, bot, run_id=run_b, message_ts=ts_b, channel="CB", team="TA", user="UB"
    )
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.CANCELLED and "UB" in run.error


async def test_an_admin_of_another_workspace_cannot_stop_through_another_process(
    start_bot, emulator
):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=3)
    running = await start_bot(script.model())
    other = await start_bot(script.model(), AGENTBOT_ADMINS="UADMIN")  # same database
    await running.command("in workspace B", team_id="TB", channel_id="CB", user_id="UB")
    run_b, ts_b = await _live_run_in(running, emulator, "CB")

    answer = await _press_stop(
        emulator, other, run_id=run_b, message_ts=ts_b, channel="CB", team="TA"
    )
    assert "Only <@UB> or an admin" in answer
    assert await other.store.stop_requests([run_b]) == {}, "no stop request recorded"

    answer = await _press_stop(
        emulator, other, run_id=run_b, message_ts=ts_b, channel="CB", team="TB"
    )
    assert "Stopping" in answer
    [run] = await running.wait_for_run()
    assert run.status is RunStatus.CANCELLED and run.error == "Stopped by <@UADMIN>"
