"""The Slack emulator, driven the way the bot drives Slack: a real slack_sdk client over HTTP,
signed requests into real receivers, and a real Bolt app over Socket Mode."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, parse_qsl

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.say.async_say import AsyncSay
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.playground.emulator import SlackEmulator
from bot.playground.state import Limit, Message, RateLimiter

SECRET = "s3cret"


@pytest.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    emulator = SlackEmulator(SECRET)
    await emulator.start()
    yield emulator
    await emulator.close()


@pytest.fixture
def client(emu: SlackEmulator) -> AsyncWebClient:
    return AsyncWebClient(token=emu.bot_token, base_url=emu.api_url)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def slack_error(call: Awaitable[object]) -> SlackApiError:
    """The SlackApiError that `call` raises (it must raise one)."""
    with pytest.raises(SlackApiError) as raised:
        await call
    return raised.value


def stored(emu: SlackEmulator, channel: str, ts: str | None) -> Message:
    """The message the emulator holds (it must exist)."""
    assert ts is not None
    message = emu.message(channel, ts)
    assert message is not None, f"no message {ts} in {channel}"
    return message


# ---- Web API: messages --------------------------------------------------------------------


async def test_start_binds_loopback_and_answers_auth_test(
    emu: SlackEmulator, client: AsyncWebClient
) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", emu.url)
    assert emu.api_url == emu.url + "/api/"
    auth = await client.auth_test()
    assert (auth["team_id"], auth["user_id"], auth["bot_id"]) == ("T0001", "UBOT", "B0001")
    assert auth["ok"] is True and auth["url"] and auth["team"] and auth["user"]
    assert emu.calls_to("auth.test")[0].ok


async def test_post_update_thread_and_read_back(emu: SlackEmulator, client: AsyncWebClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*thinking*"}}]
    posted = await client.chat_postMessage(channel="C1", text="thinking", blocks=blocks)
    ts = posted["ts"]
    assert posted["channel"] == "C1" and posted["message"]["text"] == "thinking"

    await client.chat_update(channel="C1", ts=ts, text="partial")
    updated = await client.chat_update(channel="C1", ts=ts, text="final answer", blocks=[])
    assert (updated["ts"], updated["text"]) == (ts, "final answer")

    reply = await client.chat_postMessage(channel="C1", text="more", thread_ts=ts)
    human = emu.post_user_message("C1", "U123", "thanks", thread_ts=reply["ts"])  # joins `ts`

    message = stored(emu, "C1", ts)
    assert (message.text, message.blocks, message.edits) == ("final answer", [], 2)
    assert message.history == ["thinking", "partial", "final answer"]
    assert (message.bot_id, message.user, message.reply_count) == ("B0001", "UBOT", 2)
    assert [m.ts for m in emu.messages("C1")] == [ts]
    assert [m.text for m in emu.thread("C1", ts)] == ["final answer", "more", "thanks"]
    assert emu.thread("C1", reply["ts"])[0] is message

    replies = await client.conversations_replies(channel="C1", ts=ts)
    assert [m["ts"] for m in replies["messages"]] == [ts, reply["ts"], human.ts]
    assert replies["messages"][0]["reply_count"] == 2
    assert replies["messages"][1]["thread_ts"] == ts

    second = await client.chat_postMessage(channel="C1", text="second")
    history = await client.conversations_history(channel="C1", limit=1)
    assert [m["ts"] for m in history["messages"]] == [second["ts"]]
    assert history["has_more"] is True


async def test_timestamps_are_slack_like_unique_and_increasing(
    emu: SlackEmulator, client: AsyncWebClient
) -> None:
    posted = await asyncio.gather(
        *(client.chat_postMessage(channel="C1", text=str(i)) for i in range(20))
    )
    stamps = sorted(p["ts"] for p in posted)
    assert len(set(stamps)) == 20
    assert all(re.fullmatch(r"\d{10}\.\d{6}", ts) for ts in stamps)
    assert [m.ts for m in emu.messages("C1")] == stamps


async def test_form_and_json_bodies_and_the_token_field(emu: SlackEmulator) -> None:
    client = AsyncWebClient(token=emu.bot_token, base_url=emu.api_url)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "form"}}]
    form = await client.api_call(
        "chat.postMessage", data={"channel": "C1", "text": "form", "blocks": json.dumps(blocks)}
    )
    as_json = await client.api_call("chat.postMessage", json={"channel": "C1", "text": "json"})
    assert stored(emu, "C1", form["ts"]).blocks == blocks
    assert stored(emu, "C1", as_json["ts"]).text == "json"
    assert emu.calls_to("chat.postMessage")[0].args["blocks"] == blocks

    async with aiohttp.ClientSession() as session:
        url = emu.api_url + "chat.postMessage"
        fields = {"token": emu.bot_token, "channel": "C1", "text": "token field"}
        async with session.post(url, data=fields) as response:
            assert (await response.json())["ok"] is True
        async with session.post(url, data="{not json", headers=_json_type()) as response:
            assert (await response.json())["error"] == "invalid_json"
    assert "token" not in emu.calls_to("chat.postMessage")[2].args


def _json_type() -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": "Bearer xoxb-emulator"}


async def test_ephemeral_and_delete(emu: SlackEmulator, client: AsyncWebClient) -> None:
    sent = await client.chat_postEphemeral(channel="C1", user="U123", text="only you")
    [ephemeral] = emu.ephemerals("C1")
    assert (ephemeral.ts, ephemeral.ephemeral_for, ephemeral.text) == (
        sent["message_ts"],
        "U123",
        "only you",
    )
    assert emu.ephemerals("C2") == [] and emu.messages("C1") == []
    err = await slack_error(client.chat_update(channel="C1", ts=sent["message_ts"], text="x"))
    assert err.response["error"] == "message_not_found"

    posted = await client.chat_postMessage(channel="C1", text="bye")
    await client.chat_delete(channel="C1", ts=posted["ts"])
    assert emu.message("C1", posted["ts"]) is None and emu.messages("C1") == []


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
async def test_errors_like_slack(emu: SlackEmulator, client: AsyncWebClient) -> None:
    human = emu.post_user_message("C1", "U123", "mine")
    cases = {
        "no_text": client.chat_postMessage(channel="C1"),
        "message_not_found": client.chat_update(channel="C1", ts="1.000001", text="x"),
        "cant_update_message": client.chat_update(channel="C1", ts=human.ts, text="x"),
        "cant_delete_message": client.chat_delete(channel="C1", ts=human.ts),
        "thread_not_found": client.conversations_replies(channel="C1", ts="1.000001"),
        "user_not_found": client.users_info(user="UNOBODY"),
        "unknown_method": client.api_call("chat.teleport", json={"channel": "C1"}),
        "invalid_arguments": client.chat_startStream(channel="C1", thread_ts=""),
    }
    for error, call in cases.items():
        assert (await slack_error(call)).response["error"] == error
    assert [c.error for c in emu.calls] == list(cases)
    assert all(c.status == 200 and not c.ok for c in emu.calls)


async def test_auth_errors(emu: SlackEmulator) -> None:
    wrong = AsyncWebClient(token="xoxb-wrong", base_url=emu.api_url)
    err = await slack_error(wrong.chat_postMessage(channel="C1", text="x"))
    assert err.response["error"] == "invalid_auth"
    anonymous = AsyncWebClient(base_url=emu.api_url)
    assert (await slack_error(anonymous.auth_test())).response["error"] == "not_authed"
    bot = AsyncWebClient(token=emu.bot_token, base_url=emu.api_url)
    err = await slack_error(bot.apps_connections_open(app_token=emu.bot_token))
    assert err.response["error"] == "not_allowed_token_type"
    opened = await bot.apps_connections_open(app_token=emu.app_token)
    assert opened["url"] == "ws" + emu.url.removeprefix("http") + "/link"
    assert emu.messages("C1") == []
    assert [c.error for c in emu.calls] == [
        "invalid_auth",
        "not_authed",
        "not_allowed_token_type",
        None,
    ]


async def test_not_in_channel(emu: SlackEmulator, client: AsyncWebClient) -> None:
    posted = await client.chat_postMessage(channel="C9", text="before")
    emu.not_in_channels.add("C9")
    assert "C9" not in emu.joined_channels and "C1" in emu.joined_channels
    for call in (
        client.chat_postMessage(channel="C9", text="x"),
        client.chat_update(channel="C9", ts=posted["ts"], text="x"),
        client.chat_startStream(channel="C9", thread_ts=posted["ts"]),
    ):
        assert (await slack_error(call)).response["error"] == "not_in_channel"
    assert [m.text for m in emu.messages("C9")] == ["before"]


async def test_users_info(client: AsyncWebClient, emu: SlackEmulator) -> None:
    alice = (await client.users_info(user="U123"))["user"]
    assert (alice["id"], alice["name"], alice["is_admin"]) == ("U123", "alice", False)
    assert alice["tz"] and alice["real_name"]
    emu.state.add_user("U999", "boss", is_admin=True)
    assert (await client.users_info(user="U999"))["user"]["is_admin"] is True
    assert (await client.users_info(user="UBOT"))["user"]["is_bot"] is True


# ---- native streaming ---------------------------------------------------------------------


async def test_streaming_through_slack_sdk_chat_stream(
    emu: SlackEmulator, client: AsyncWebClient
) -> None:
    parent = await client.chat_postMessage(channel="C1", text="question")
    streamer = await client.chat_stream(
        channel="C1",
        thread_ts=parent["ts"],
        recipient_user_id="U123",
        recipient_team_id="T0001",
        buffer_size=5,
    )
    await streamer.append(markdown_text="Hello ")
    message = stored(emu, "C1", streamer.ts)
    assert message.streaming and message.text == "Hello "
    await streamer.append(markdown_text="world")
    await streamer.stop(markdown_text="!", blocks=[{"type": "divider"}])

    assert (message.text, message.streaming, message.thread_ts) == (
        "Hello world!",
        False,
        parent["ts"],
    )
    assert message.blocks == [{"type": "divider"}] and message.edits == 0
    assert message.history == ["Hello ", "Hello world", "Hello world!"]
    assert [c.method for c in emu.calls[1:]] == [
        "chat.startStream",
        "chat.appendStream",
        "chat.stopStream",
    ]
    assert emu.thread("C1", parent["ts"])[1] is message


async def test_task_chunks_show_as_task_cards(emu: SlackEmulator, client: AsyncWebClient) -> None:
    parent = await client.chat_postMessage(channel="C1", text="question")
    started = await client.chat_startStream(
        channel="C1", thread_ts=parent["ts"], task_display_mode="plan", markdown_text="Looking"
    )
    ts = started["ts"]
    card = {"id": "call1", "title": "fetch_url example.com"}
    task = {"type": "task_update", **card}
    await client.chat_appendStream(
        channel="C1",
        ts=ts,
        chunks=[{"type": "markdown_text", "text": "…"}, {**task, "status": "in_progress"}],
    )
    message = stored(emu, "C1", ts)
    assert message.task_display_mode == "plan" and message.text == "Looking…"
    assert message.tasks == {"call1": {**card, "status": "in_progress"}}
    await client.chat_stopStream(
        channel="C1", ts=ts, chunks=[{**task, "status": "complete", "output": "done in 0.4 s"}]
    )
    assert message.tasks["call1"]["status"] == "complete" and message.text == "Looking…"
    assert [t["status"] for t in message.task_history] == ["in_progress", "complete"]
    assert message.to_json()["tasks"]["call1"]["output"] == "done in 0.4 s"

    other = await client.chat_startStream(channel="C1", thread_ts=parent["ts"])
    assert stored(emu, "C1", other["ts"]).task_display_mode == "timeline", "Slack's default"
    for chunk in (
        {**task, "status": "exploded"},
        {"type": "task_update", "id": "x", "status": "pending"},
        {**task, "status": "complete", "output": "x" * 257},
    ):
        call = client.chat_appendStream(channel="C1", ts=other["ts"], chunks=[chunk])
        assert (await slack_error(call)).response["error"] == "invalid_arguments"
    bad_mode = client.chat_startStream(
        channel="C1", thread_ts=parent["ts"], task_display_mode="list"
    )
    assert (await slack_error(bad_mode)).response["error"] == "invalid_arguments"


async def test_stream_ends_after_stop_or_ttl(emu: SlackEmulator, client: AsyncWebClient) -> None:
    parent = await client.chat_postMessage(channel="C1", text="q")
    started = await client.chat_startStream(channel="C1", thread_ts=parent["ts"], markdown_text="a")
    ts = started["ts"]
    await client.chat_appendStream(channel="C1", ts=ts, markdown_text="b")

    emu.stream_ttl = 0.0  # the stream is now older than its time to live
    for call in (
        client.chat_appendStream(channel="C1", ts=ts, markdown_text="c"),
        client.chat_stopStream(channel="C1", ts=ts),
    ):
        assert (await slack_error(call)).response["error"] == "message_not_in_streaming_state"
    message = stored(emu, "C1", ts)
    assert message.text == "ab" and not message.streaming

    await client.chat_update(channel="C1", ts=ts, text="ab, finished by chat.update")
    assert message.text == "ab, finished by chat.update" and message.edits == 1

    emu.stream_ttl = 300.0
    other = await client.chat_startStream(channel="C1", thread_ts=parent["ts"])
    await client.chat_stopStream(channel="C1", ts=other["ts"], markdown_text="done")
    err = await slack_error(
        client.chat_appendStream(channel="C1", ts=other["ts"], markdown_text="x")
    )
    assert err.response["error"] == "message_not_in_streaming_state"


async def test_stream_ttl_is_set_per_emulator() -> None:
    async with SlackEmulator(SECRET, stream_ttl=0.0) as emu:
        client = AsyncWebClient(token=emu.bot_token, base_url=emu.api_url)
        started = await client.chat_startStream(channel="C1", thread_ts="1.000001")
        err = await slack_error(
            client.chat_appendStream(channel="C1", ts=started["ts"], markdown_text="x")
        )
        assert err.response["error"] == "message_not_in_streaming_state"


# ---- faults -------------------------------------------------------------------------------


async def test_injected_429_carries_retry_after(emu: SlackEmulator, client: AsyncWebClient) -> None:
    emu.inject("chat.update", retry_after=3)
    posted = await client.chat_postMessage(channel="C1", text="x")
    err = await slack_error(client.chat_update(channel="C1", ts=posted["ts"], text="y"))
    assert err.response.status_code == 429
    assert err.response.headers["Retry-After"] == "3"
    assert err.response["error"] == "ratelimited"
    await client.chat_update(channel="C1", ts=posted["ts"], text="y")  # only once
    assert emu.rate_limited == {"chat.update": 1}
    assert [(c.status, c.ok) for c in emu.calls_to("chat.update")] == [(429, False), (200, True)]

    emu.inject("chat.update", retry_after=0.2)
    err = await slack_error(client.chat_update(channel="C1", ts=posted["ts"], text="z"))
    assert err.response.headers["Retry-After"] == "0.2"


async def test_injected_error_5xx_and_delay(emu: SlackEmulator, client: AsyncWebClient) -> None:
    emu.inject("chat.postMessage", error="channel_is_archived")
    emu.inject("chat.postMessage", status=503)
    emu.inject("chat.postMessage", delay=0.2)

    err = await slack_error(client.chat_postMessage(channel="C1", text="a"))
    assert (err.response.status_code, err.response["error"]) == (200, "channel_is_archived")
    err = await slack_error(client.chat_postMessage(channel="C1", text="b"))
    assert err.response.status_code == 503
    started = time.monotonic()
    await client.chat_postMessage(channel="C1", text="c")
    assert time.monotonic() - started >= 0.2
    assert [m.text for m in emu.messages("C1")] == ["c"]
    assert [(c.status, c.error) for c in emu.calls] == [
        (200, "channel_is_archived"),
        (503, "http_503"),
        (200, None),
    ]


async def test_fault_times(emu: SlackEmulator, client: AsyncWebClient) -> None:
    emu.inject("users.info", error="fatal_error", times=2)
    for _ in range(2):
        await slack_error(client.users_info(user="U123"))
    await client.users_info(user="U123")

    emu.inject("users.info", error="fatal_error", times=None)
    for _ in range(3):
        await slack_error(client.users_info(user="U123"))
    emu.clear_faults()
    await client.users_info(user="U123")


async def test_slack_sdk_retry_handler_honours_the_429(emu: SlackEmulator) -> None:
    client = AsyncWebClient(
        token=emu.bot_token,
        base_url=emu.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    emu.inject("chat.postMessage", retry_after=0)
    await client.chat_postMessage(channel="C1", text="eventually")
    assert [c.status for c in emu.calls] == [429, 200]


# ---- enforced limits ----------------------------------------------------------------------


def test_sliding_window_counts_and_frees_slots() -> None:
    limiter = RateLimiter({"chat.update": Limit(2, window=10.0)})
    assert limiter.admit("chat.update", "C1", 0.0) is None
    assert limiter.admit("chat.update", "C2", 1.0) is None  # not per channel: same window
    assert limiter.admit("chat.update", "C1", 2.0) == 8  # the first slot frees at t=10
    assert limiter.admit("chat.update", "C1", 9.5) == 1  # never below one second
    assert limiter.admit("chat.update", "C1", 10.0) is None
    assert limiter.admit("chat.other", "C1", 10.0) is None  # no limit, never counted

    per_channel = RateLimiter({"chat.postMessage": Limit(1, window=1.0, per_channel=True)})
    assert per_channel.admit("chat.postMessage", "C1", 0.0) is None
    assert per_channel.admit("chat.postMessage", "C2", 0.0) is None
    assert per_channel.admit("chat.postMessage", "C1", 0.5) == 1

    fast = RateLimiter({"chat.update": Limit(1)}, minute=0.6)  # a "minute" of 0.6 s
    assert fast.admit("chat.update", None, 0.0) is None
    assert fast.admit("chat.update", None, 0.3) == 1
    assert fast.admit("chat.update", None, 0.6) is None


async def test_default_limits_follow_slack_tiers() -> None:
    async with SlackEmulator(SECRET, enforce_limits=True) as emu:
        client = AsyncWebClient(token=emu.bot_token, base_url=emu.api_url)
        ts = (await client.chat_postMessage(channel="C1", text="x"))["ts"]
        for i in range(50):
            await client.chat_update(channel="C1", ts=ts, text=str(i))
        err = await slack_error(client.chat_update(channel="C1", ts=ts, text="too many"))
        assert err.response.status_code == 429
        assert 1 <= int(err.response.headers["Retry-After"]) <= 60
        assert emu.rate_limited["chat.update"] == 1
        assert stored(emu, "C1", ts).text == "49"
        assert {m: (lim.calls, lim.window) for m, lim in emu.limits.items()} == {
            "chat.update": (50, 60.0),
            "chat.postMessage": (5, 5.0),
            "chat.startStream": (20, 60.0),
            "chat.stopStream": (20, 60.0),
            "chat.appendStream": (100, 60.0),
        }


async def test_limits_can_be_changed_and_switched(
    emu: SlackEmulator, client: AsyncWebClient
) -> None:
    emu.set_limits(limits={"chat.postMessage": Limit(1, window=60, per_channel=True)})
    await client.chat_postMessage(channel="C1", text="a")
    await client.chat_postMessage(channel="C2", text="b")
    err = await slack_error(client.chat_postMessage(channel="C1", text="c"))
    assert err.response.status_code == 429 and err.response.headers["Retry-After"] == "60"
    assert emu.rate_limited == {"chat.postMessage": 1}

    emu.set_limits(False)
    await client.chat_postMessage(channel="C1", text="d")
    emu.set_limits(limits={"chat.update": 1})
    await client.chat_update(channel="C1", ts=emu.messages("C1")[0].ts, text="e")
    err = await slack_error(client.chat_update(channel="C1", ts=emu.messages("C1")[0].ts, text="f"))
    assert err.response.status_code == 429
    assert [m.text for m in emu.messages("C1")] == ["e", "d"]


# ---- response URLs ------------------------------------------------------------------------


async def test_response_url_posts_are_stored_and_shown(emu: SlackEmulator) -> None:
    url = emu.new_response_url("C1", "U123")
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"text": "just you"}) as response:
            assert (response.status, await response.text()) == (200, "ok")
            assert response.content_type == "text/plain"
        body = {"text": "everyone", "response_type": "in_channel"}
        async with session.post(url, json=body) as response:
            assert response.status == 200
        async with session.post(url + "x", json=body) as response:
            assert response.status == 404

    rid = url.rsplit("/", 1)[1]
    assert emu.responses == [
        {"text": "just you", "response_url_id": rid},
        {**body, "response_url_id": rid},
    ]
    assert [(m.text, m.ephemeral_for) for m in emu.ephemerals("C1")] == [("just you", "U123")]
    assert [m.text for m in emu.messages("C1")] == ["everyone"]


async def test_response_url_replaces_the_clicked_message(
    emu: SlackEmulator, client: AsyncWebClient
) -> None:
    posted = await client.chat_postMessage(channel="C1", text="running… [Stop]")
    url = emu.new_response_url("C1", "U123", message_ts=posted["ts"])
    async with aiohttp.ClientSession() as session:
        replace = {"replace_original": True, "text": "stopped"}
        async with session.post(url, json=replace) as response:
            assert response.status == 200
        emu.inject("response_url", status=500)
        async with session.post(url, json=replace) as response:
            assert response.status == 500
        async with session.post(url, json={"delete_original": True}) as response:
            assert response.status == 200
    assert emu.message("C1", posted["ts"]) is None
    assert len(emu.responses) == 2


# ---- acting as Slack: signed requests -----------------------------------------------------


@dataclass
class Receiver:
    """A tiny bot endpoint that records what it got and checks Slack's signature."""

    url: str
    got: list[tuple[dict[str, str], str]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    verifier = SignatureVerifier(SECRET)
    got: list[tuple[dict[str, str], str]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.text()
        got.append((dict(request.headers), body))
        if not verifier.is_valid_request(body, dict(request.headers)):
            return web.Response(status=401, text="invalid signature")
        return web.json_response({"text": "got it"})

    app = web.Application()
    app.router.add_post("/slack/events", handle)
    runner, url = await serve(app)
    yield Receiver(url + "/slack/events", got)
    await runner.cleanup()


async def test_slash_command_is_signed_and_formed_like_slack(
    emu: SlackEmulator, receiver: Receiver
) -> None:
    delivery = await emu.send_slash_command(receiver.url, "/ask", "what is 2+2?")
    status, body, latency = delivery
    assert (status, json.loads(body)) == (200, {"text": "got it"}) and latency > 0
    headers, raw = receiver.got[0]
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    fields = dict(parse_qsl(raw, keep_blank_values=True))
    assert list(fields) == [
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    ]
    assert (fields["command"], fields["text"], fields["user_id"]) == (
        "/ask",
        "what is 2+2?",
        "U123",
    )
    assert (fields["channel_id"], fields["team_id"]) == ("C123", "T0001")
    assert fields["response_url"].startswith(emu.url + "/response/")

    bad = await emu.send_slash_command(receiver.url, "/ask", "x", signing_secret="wrong")
    stale = await emu.send_slash_command(
        receiver.url, "/ask", "x", timestamp=int(time.time()) - 600
    )
    assert (bad.status, stale.status) == (401, 401)


async def test_block_action_carries_the_stored_message(
    emu: SlackEmulator, client: AsyncWebClient, receiver: Receiver
) -> None:
    posted = await client.chat_postMessage(
        channel="C123", text="running", blocks=[{"type": "divider"}]
    )
    delivery = await emu.send_block_action(
        receiver.url, action_id="stop", value="run-1", message_ts=posted["ts"], block_id="ctl"
    )
    assert delivery.status == 200
    payload = json.loads(parse_qs(receiver.got[0][1])["payload"][0])
    assert payload["type"] == "block_actions"
    assert payload["user"]["id"] == "U123" and payload["channel"]["id"] == "C123"
    assert payload["container"]["message_ts"] == posted["ts"]
    assert payload["message"]["text"] == "running" and payload["message"]["bot_id"] == "B0001"
    [action] = payload["actions"]
    assert (action["type"], action["action_id"], action["block_id"], action["value"]) == (
        "button",
        "stop",
        "ctl",
        "run-1",
    )
    assert payload["response_url"].startswith(emu.url + "/response/") and payload["trigger_id"]


async def test_event_envelope_and_retry_headers(emu: SlackEmulator, receiver: Receiver) -> None:
    said = emu.post_user_message("C123", "U123", "<@UBOT> hi")
    event = emu.message_event(said, mention=True)
    await emu.send_event(receiver.url, event, event_id="Ev1")
    await emu.send_event(receiver.url, event, event_id="Ev1", retry_num=1)

    (first_headers, first), (retry_headers, retry) = receiver.got
    envelope = json.loads(first)
    assert first_headers["Content-Type"] == "application/json"
    assert (envelope["type"], envelope["event_id"], envelope["team_id"]) == (
        "event_callback",
        "Ev1",
        "T0001",
    )
    assert envelope["event"] == {
        "type": "app_mention",
        "user": "U123",
        "text": "<@UBOT> hi",
        "ts": said.ts,
        "team": "T0001",
        "channel": "C123",
        "event_ts": said.ts,
    }
    assert envelope["authorizations"][0]["user_id"] == "UBOT"
    assert "X-Slack-Retry-Num" not in first_headers
    assert (retry_headers["X-Slack-Retry-Num"], retry_headers["X-Slack-Retry-Reason"]) == (
        "1",
        "http_timeout",
    )
    assert json.loads(retry)["event_id"] == "Ev1"


async def test_signed_requests_pass_bolt_over_http(emu: SlackEmulator) -> None:
    app = AsyncApp(
        client=AsyncWebClient(token=emu.bot_token, base_url=emu.api_url), signing_secret=SECRET
    )

    @app.command("/ask")
    async def ask(ack: AsyncAck, command: dict[str, str], say: AsyncSay) -> None:
        await ack()
        await say(f"answer to {command['text']}")

    runner, url = await serve(app.web_app())
    try:
        delivery = await emu.send_slash_command(url + "/slack/events", "/ask", "hi")
        assert delivery.status == 200

        def answered() -> bool:
            return [m.text for m in emu.messages("C123")] == ["answer to hi"]

        await emu.wait_for(answered)
        bad = await emu.send_slash_command(url + "/slack/events", "/ask", "x", signing_secret="no")
        assert bad.status == 401
    finally:
        await runner.cleanup()


# ---- Socket Mode --------------------------------------------------------------------------


async def test_socket_mode_round_trip_with_bolt(emu: SlackEmulator) -> None:
    app = AsyncApp(
        client=AsyncWebClient(token=emu.bot_token, base_url=emu.api_url), signing_secret=SECRET
    )

    @app.command("/ask")
    async def ask(ack: AsyncAck, command: dict[str, str], say: AsyncSay) -> None:
        await ack("on it")
        await say(f"answer to {command['text']}")

    @app.event("app_mention")
    async def mention(event: dict[str, str], say: AsyncSay) -> None:
        await say("hello in thread", thread_ts=event["ts"])

    handler = AsyncSocketModeHandler(app, app_token=emu.app_token)
    await handler.connect_async()
    try:
        await emu.socket_connected()
        assert emu.socket_count == 1
        delivery = await emu.send_slash_command(None, "/ask", "hello")
        assert (delivery.status, delivery.json()) == (200, {"text": "on it"})
        assert emu.acks[0]["payload"] == {"text": "on it"}

        def answered() -> bool:
            return [m.text for m in emu.messages("C123")] == ["answer to hello"]

        await emu.wait_for(answered)

        said = emu.post_user_message("C123", "U123", "<@UBOT> hi")
        delivery = await emu.send_event(None, emu.message_event(said, mention=True))
        assert (delivery.status, delivery.body) == (200, "")

        def replied() -> bool:
            return [m.text for m in emu.thread("C123", said.ts)[1:]] == ["hello in thread"]

        await emu.wait_for(replied)
        assert [c.method for c in emu.calls][:2] == ["apps.connections.open", "auth.test"]
    finally:
        await handler.close_async()

    def disconnected() -> bool:
        return emu.socket_count == 0

    await emu.wait_for(disconnected)
    with pytest.raises(RuntimeError, match="Socket Mode"):
        await emu.send_slash_command(None, "/ask", "nobody listens")


async def test_socket_envelopes_and_a_client_that_leaves_before_acking(
    emu: SlackEmulator,
) -> None:
    async with aiohttp.ClientSession() as session:
        opened = await AsyncWebClient(base_url=emu.api_url).apps_connections_open(
            app_token=emu.app_token
        )
        async with session.ws_connect(opened["url"]) as ws:
            hello = await ws.receive_json()
            assert hello["type"] == "hello" and hello["num_connections"] == 1
            await emu.socket_connected()
            sending = asyncio.create_task(
                emu.send_block_action(None, action_id="stop", value="r1", message_ts="1.000001")
            )
            envelope = await ws.receive_json()
            assert (envelope["type"], envelope["accepts_response_payload"]) == (
                "interactive",
                False,
            )
            assert envelope["payload"]["actions"][0]["action_id"] == "stop"
            assert envelope["envelope_id"]
        with pytest.raises(ConnectionError):
            await sending
    assert emu.acks == []


# ---- waiting, live feed, snapshot ---------------------------------------------------------


async def test_wait_for_wakes_on_change_and_names_what_timed_out(
    emu: SlackEmulator, client: AsyncWebClient
) -> None:
    def posted() -> bool:
        return len(emu.messages("C1")) == 1

    waiter = asyncio.create_task(emu.wait_for(posted))
    await client.chat_postMessage(channel="C1", text="x")
    await waiter

    with pytest.raises(TimeoutError, match=r"<lambda>.*test_emulator\.py"):
        await emu.wait_for(lambda: False, timeout=0.05)


async def test_subscription_gets_changes_and_drops_oldest(
    emu: SlackEmulator, client: AsyncWebClient
) -> None:
    feed = emu.subscribe(maxsize=2)
    await client.chat_postMessage(channel="C1", text="hi")  # a message, then a call
    await client.auth_test()  # one more call: the oldest event is dropped
    first, second = await feed.get(), await feed.get()
    assert first is not None and second is not None
    assert (first["type"], first["call"]["method"]) == ("call", "chat.postMessage")
    assert (second["type"], second["call"]["method"]) == ("call", "auth.test")
    assert feed.dropped == 1
    emu.unsubscribe(feed)
    assert [event async for event in feed] == []


async def test_server_sent_events_and_state_snapshot(
    emu: SlackEmulator, client: AsyncWebClient
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(emu.url + "/emulator/events") as feed:
            assert feed.content_type == "text/event-stream"
            assert await feed.content.readline() == b": connected\n"
            posted = await client.chat_postMessage(channel="C1", text="live")
            events = []
            async with asyncio.timeout(5):
                while len(events) < 2:
                    line = await feed.content.readline()
                    if line.startswith(b"data: "):
                        events.append(json.loads(line.removeprefix(b"data: ")))
            assert events[0]["type"] == "message" and events[0]["change"] == "posted"
            assert events[0]["message"]["text"] == "live"
            assert events[1]["type"] == "call" and events[1]["call"]["ok"] is True

        await client.chat_postMessage(channel="C1", text="reply", thread_ts=posted["ts"])
        async with session.get(emu.url + "/emulator/state") as response:
            state = await response.json()
    [top] = state["channels"]["C1"]
    assert top["text"] == "live" and [r["text"] for r in top["replies"]] == ["reply"]
    assert [c["method"] for c in state["calls"]] == ["chat.postMessage", "chat.postMessage"]
    assert state["socket_connected"] is False


async def test_routes_mount_on_another_app() -> None:
    emu = SlackEmulator(SECRET)
    app = web.Application()
    emu.add_routes(app)
    runner, url = await serve(app)
    try:
        emu.url = url
        client = AsyncWebClient(token=emu.bot_token, base_url=emu.api_url)
        await client.chat_postMessage(channel="C1", text="mounted")
        assert [m.text for m in emu.messages("C1")] == ["mounted"]
    finally:
        await emu.close()
        await runner.cleanup()
