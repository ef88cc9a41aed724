"""The pacer against the emulator: interval, shared budget, finals first, 429 pauses."""

from __future__ import annotations

import asyncio
import itertools

from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import Metrics
from handlers.pacer import (
    MAX_RATELIMITED,
    Budget,
    DeliveryTimeout,
    PacerConfig,
    PostWindow,
    SlackCallFailed,
    TokenBucket,
    WorkspacePacer,
)
from tests.conftest import BOT_TOKEN


def make_pacer(emulator, **config) -> WorkspacePacer:
    client = AsyncWebClient(token=BOT_TOKEN, base_url=emulator.api_url)
    return WorkspacePacer(client, config=PacerConfig(**config), metrics=Metrics())


async def post(pacer: WorkspacePacer, channel: str = "C1") -> str:
    return (await pacer.post(channel, text="live"))["ts"]


def test_token_bucket_never_lets_a_minute_hold_more_than_the_budget():
    now = [0.0]
    bucket = TokenBucket(Budget(per_minute=62, burst=2), lambda: now[0])
    bucket.take()
    bucket.take()
    assert bucket.wait_time() == 1.0  # (62 - 2) a minute after the burst: one a second
    now[0] = 0.5
    assert bucket.wait_time() == 0.5
    sent = 2
    while True:  # greedy for the rest of the minute
        now[0] += bucket.wait_time()
        if now[0] >= 60:
            break
        bucket.take()
        sent += 1
    assert sent <= 62
    now[0] = 1000.0
    bucket.take()
    bucket.take()
    assert bucket.wait_time() > 0, "capacity is the burst, not the idle time"


def test_a_channels_posts_go_in_bursts_but_never_above_one_a_second_in_any_window():
    now = [0.0]
    window = PostWindow(Budget(per_minute=60, burst=5), lambda: now[0])
    sent = []
    while now[0] < 60:  # greedy for a minute
        now[0] += window.wait_time()
        window.take()
        sent.append(now[0])
    assert sent[:5] == [0.0] * 5, "a team's replies go out at once"
    # Slack allows about one a second: no 5 s window (the emulator's) holds more than 5,
    # and no minute more than 60. (The old token bucket let 9 through in the first 5 s.)
    assert all(sum(1 for t in sent if start <= t < start + 5) <= 5 for start in sent)
    assert len([t for t in sent if t < 60]) <= 60


async def test_only_the_latest_text_is_sent_at_the_interval(emulator):
    pacer = make_pacer(emulator, interval=0.3)
    ts = await post(pacer)
    live = pacer.track("C1", ts)
    for i in range(200):  # a burst of tokens inside one interval
        live.set(f"text {i}", [])
    live.set("the end", [], final=True)
    await live.wait_delivered()
    updates = emulator.calls_to("chat.update")
    assert len(updates) <= 2, "no edit per token"
    assert emulator.message("C1", ts).text == "the end"
    await pacer.close()


async def test_interval_is_kept_between_edits_of_one_message(emulator):
    pacer = make_pacer(emulator, interval=0.2)
    ts = await post(pacer)
    live = pacer.track("C1", ts)
    for i in range(6):
        live.set(f"v{i}", [])
        await emulator.wait_for(lambda i=i: emulator.message("C1", ts).text == f"v{i}")
    at = [c.at for c in emulator.calls_to("chat.update")]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert min(gaps) >= 0.19
    await pacer.close()


async def test_budget_is_shared_fairly_and_finals_go_first(emulator):
    # 120 updates a minute with no burst: one every 0.5 s for the whole workspace.
    pacer = make_pacer(emulator, interval=0.01, chat_update=Budget(per_minute=120, burst=1))
    live = [pacer.track("C1", await post(pacer)) for _ in range(4)]
    for round_ in range(3):
        for i, message in enumerate(live):
            message.set(f"m{i} r{round_}", [])
    # Four dirty messages, one token every 0.5 s: each gets one edit before any gets two.
    await emulator.wait_for(lambda: len(emulator.calls_to("chat.update")) >= 4, timeout=5)
    first_four = [c.args["ts"] for c in emulator.calls_to("chat.update")[:4]]
    assert sorted(first_four) == sorted(m.ts for m in live)
    # A final jumps the queue.
    for i, message in enumerate(live[:3]):
        message.set(f"m{i} later", [])
    live[3].set("m3 final", [], final=True)
    await live[3].wait_delivered()
    after = emulator.calls_to("chat.update")[4:]
    assert after[0].args["ts"] == live[3].ts
    await pacer.close()


async def test_429_pauses_the_method_then_sends_the_latest_text(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    ts = await post(pacer)
    live = pacer.track("C1", ts)
    emulator.inject("chat.update", status=429, retry_after=1, times=1)
    live.set("first", [])
    await emulator.wait_for(lambda: len(emulator.calls_to("chat.update")) == 1)
    live.set("newer", [])
    live.set("newest", [], final=True)
    await live.wait_delivered()
    calls = emulator.calls_to("chat.update")
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].args["text"] == "newest", "after the pause the latest text, not a stale one"
    assert calls[1].at - calls[0].at >= 0.95
    # chat.postMessage was not paused by chat.update's 429.
    assert (await pacer.post("C1", text="still posting"))["ok"]
    await pacer.close()


async def test_server_errors_are_retried_and_permanent_ones_give_up(emulator):
    pacer = make_pacer(emulator, interval=0.01)
    ts = await post(pacer)
    live = pacer.track("C1", ts)
    emulator.inject("chat.update", status=500, times=2)
    live.set("made it", [], final=True)
    await live.wait_delivered()
    assert emulator.message("C1", ts).text == "made it"

    gone = pacer.track("C1", "1.000000")  # a message that does not exist
    gone.set("lost", [], final=True)
    try:
        await asyncio.wait_for(gone.wait_delivered(), 5)
    except SlackCallFailed as exc:
        assert exc.error == "message_not_found"
    else:
        raise AssertionError("expected the pacer to give up")
    await pacer.close()


async def test_posts_to_one_channel_are_spaced(emulator):
    pacer = make_pacer(emulator, post_per_channel=Budget(per_minute=600, burst=1))
    for i in range(4):
        await pacer.post("C1", text=f"p{i}")
    at = [c.at for c in emulator.calls_to("chat.postMessage")]
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(at))
    assert [m.text for m in emulator.messages("C1")] == ["p0", "p1", "p2", "p3"]
    await pacer.close()


async def test_a_render_that_raises_fails_only_its_own_message(emulator):
    pacer = make_pacer(emulator, interval=0.05)
    good = pacer.track("C1", await post(pacer))
    broken = pacer.track("C1", await post(pacer))

    def render() -> tuple[str, list]:
        raise ValueError("a bug in one message's render")

    broken.set_rendered(render)
    good.set("good 1", [])
    await asyncio.wait_for(_raises(broken.wait_delivered(), SlackCallFailed), 5)
    assert broken.error == "render_failed"
    # The workspace's sender goes on: the other message still gets its edits and its final.
    good.set("good 2", [])
    await emulator.wait_for(lambda: emulator.message("C1", good.ts).text == "good 2")
    good.set("good final", [], final=True)
    await asyncio.wait_for(good.wait_delivered(), 5)
    assert emulator.message("C1", good.ts).text == "good final"
    # A message set after the failure is still sent.
    later = pacer.track("C1", await post(pacer))
    later.set("later final", [], final=True)
    await asyncio.wait_for(later.wait_delivered(), 5)
    await pacer.close()


async def test_a_sender_that_ended_is_started_again_by_the_next_text(emulator):
    pacer = make_pacer(emulator, interval=0.01)
    live = pacer.track("C1", await post(pacer))
    sender = pacer._sender
    sender.cancel()  # however it ended, live messages must not stall
    await asyncio.wait([sender])
    live.set("still delivered", [], final=True)
    await asyncio.wait_for(live.wait_delivered(), 5)
    assert emulator.message("C1", live.ts).text == "still delivered"
    await pacer.close()


async def test_a_huge_retry_after_is_capped_and_freezes_nothing_beyond_the_cap(emulator):
    pacer = make_pacer(emulator, interval=0.05, max_retry_after=0.5)
    first = pacer.track("C1", await post(pacer))
    other = pacer.track("C2", await post(pacer, "C2"))
    emulator.inject("chat.update", status=429, retry_after=3600, times=1)
    first.set("first final", [], final=True)
    await emulator.wait_for(lambda: emulator.rate_limited["chat.update"] == 1)
    other.set("other final", [], final=True)
    await asyncio.wait_for(first.wait_delivered(), 5)
    await asyncio.wait_for(other.wait_delivered(), 5)
    limited, *after = emulator.calls_to("chat.update")
    assert limited.status == 429 and [c.status for c in after] == [200, 200]
    assert 0.45 <= after[0].at - limited.at < 3, "paused for the cap, not for an hour"
    await pacer.close()


async def test_a_message_refused_again_and_again_fails_instead_of_waiting_forever(emulator):
    pacer = make_pacer(emulator, interval=0.01, max_retry_after=0.05)
    live = pacer.track("C1", await post(pacer))
    emulator.inject("chat.update", status=429, retry_after=0.05, times=None)
    live.set("never shown", [], final=True)
    error = await asyncio.wait_for(_raises(live.wait_delivered(), SlackCallFailed), 10)
    assert error.error == "ratelimited"
    assert emulator.rate_limited["chat.update"] == MAX_RATELIMITED
    await pacer.close()


async def test_a_post_refused_again_and_again_fails_instead_of_waiting_forever(emulator):
    pacer = make_pacer(emulator, max_retry_after=0.05)
    emulator.inject("chat.postMessage", status=429, retry_after=3600, times=None)
    error = await asyncio.wait_for(_raises(post(pacer), SlackCallFailed), 10)
    assert error.error == "ratelimited"
    assert emulator.rate_limited["chat.postMessage"] == MAX_RATELIMITED
    await pacer.close()


async def test_waiting_for_a_final_is_bounded_and_the_final_still_arrives_later(emulator):
    pacer = make_pacer(emulator, interval=0.01, max_retry_after=1.0)
    live = pacer.track("C1", await post(pacer))
    emulator.inject("chat.update", status=429, retry_after=3600, times=1)
    live.set("the end", [], final=True)
    error = await asyncio.wait_for(_raises(live.wait_delivered(timeout=0.2), DeliveryTimeout), 5)
    assert error.error == "timeout"
    # Nothing is dropped: once the (capped) pause is over, the final is written.
    await emulator.wait_for(lambda: emulator.message("C1", live.ts).text == "the end", timeout=5)
    await asyncio.wait_for(live.wait_delivered(), 5)
    await pacer.close()


async def test_a_post_renders_its_content_when_its_turn_comes(emulator):
    pacer = make_pacer(emulator, post_per_channel=Budget(per_minute=600, burst=1))
    content = {"text": "queued"}
    first = asyncio.create_task(pacer.post("C1", text="ahead"))
    second = asyncio.create_task(pacer.post("C1", render=lambda: (content["text"], [])))
    content["text"] = "newer, by the time it is sent"
    await first
    posted = await second
    assert emulator.message("C1", posted["ts"]).text == "newer, by the time it is sent"
    await pacer.close()


async def _raises(awaitable, kind: type[Exception]) -> Exception:
    try:
        await awaitable
    except kind as exc:
        return exc
    raise AssertionError(f"expected {kind.__name__}")
