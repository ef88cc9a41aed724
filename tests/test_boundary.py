"""The bot's boundary with Slack: junk requests, odd characters, giant prompts, and who may
press Stop where. Real signed (or unsigned) HTTP requests into the running bot."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

import aiohttp
import pytest

from tests.conftest import SIGNING_SECRET
from tests.scripted import ScriptedModel

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
