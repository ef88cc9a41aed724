"""Limits: runs at once (with a line and its positions), per-user rate, allowlists, tokens."""

from __future__ import annotations

import asyncio

from bot.config import AgentSpec, AppConfig
from bot.limits import Admission, Guard
from bot.models import RunStatus
from tests.scripted import ScriptedModel
from tests.test_ask import SIXTY_WORDS, all_text


async def test_admission_serves_first_come_first_served_and_tells_positions():
    admission = Admission(capacity=1)
    positions: dict[str, list[int]] = {"b": [], "c": []}
    order: list[str] = []
    release = asyncio.Event()

    async def run(name: str) -> None:
        async with admission.slot(on_position=lambda p: positions.setdefault(name, []).append(p)):
            order.append(name)
            if name == "a":
                await release.wait()

    a = asyncio.create_task(run("a"))
    await asyncio.sleep(0)
    b = asyncio.create_task(run("b"))
    c = asyncio.create_task(run("c"))
    await asyncio.sleep(0)
    assert admission.running == 1 and admission.waiting == 2
    assert positions["b"] == [1] and positions["c"] == [2]
    release.set()
    await asyncio.gather(a, b, c)
    assert order == ["a", "b", "c"]
    assert positions["c"] == [2, 1], "c moved up when b was admitted"
    assert admission.running == 0


async def test_a_cancelled_waiter_leaves_the_line_and_frees_nothing_it_did_not_hold():
    admission = Admission(capacity=1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with admission.slot(on_position=lambda p: None):
            await hold.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert admission.waiting == 0 and admission.running == 1
    hold.set()
    await first
    assert admission.running == 0


def test_guard_rate_limits_each_user_over_a_sliding_minute():
    now = [0.0]
    guard = Guard(runs_per_user_per_minute=2, clock=lambda: now[0])
    assert guard.refusal(user_id="U1", channel_id="C1") is None
    assert guard.refusal(user_id="U1", channel_id="C1") is None
    refusal = guard.refusal(user_id="U1", channel_id="C1")
    assert refusal and refusal.rate_limited
    assert "limit is 2" in refusal.text and "60 s" in refusal.text
    assert guard.refusal(user_id="U2", channel_id="C1") is None, "other users are not affected"
    now[0] = 60.5
    assert guard.refusal(user_id="U1", channel_id="C1") is None


def test_guard_allowlists():
    guard = Guard(allowed_users=frozenset({"U1"}), allowed_channels=frozenset({"C1"}))
    assert guard.refusal(user_id="U1", channel_id="C1") is None
    assert "not on the list" in guard.refusal(user_id="U2", channel_id="C1").text
    assert "not enabled in this channel" in guard.refusal(user_id="U1", channel_id="C2").text


def test_guard_counts_refused_requests_but_not_rate_limited_ones():
    now = [0.0]
    guard = Guard(
        runs_per_user_per_minute=2, allowed_channels=frozenset({"C1"}), clock=lambda: now[0]
    )
    assert not guard.refusal(user_id="U1", channel_id="C9").rate_limited  # refused, counted
    now[0] = 30.0
    assert guard.refusal(user_id="U1", channel_id="C1") is None
    assert guard.refusal(user_id="U1", channel_id="C1").rate_limited
    now[0] = 60.5  # the first (refused) request has left the window; the rate-limited one
    assert guard.refusal(user_id="U1", channel_id="C1") is None  # never entered it


async def test_runs_beyond_the_cap_wait_in_line_and_are_told_their_place(start_bot, emulator):
    script = ScriptedModel.words(SIXTY_WORDS, hang_after=2)
    bot = await start_bot(script.model(), AGENTBOT_MAX_CONCURRENT_RUNS=1)
    for channel in ("C1", "C2", "C3"):
        await bot.command("hello", channel_id=channel)

    def told() -> str:
        return " ".join(str(r.get("text")) for r in emulator.responses)

    # Whichever two arrived second and third wait, and each is told its place, privately
    # through the command's response_url: no post slot or edit of the channel is spent.
    await emulator.wait_for(lambda: "number 1 in line" in told() and "number 2 in line" in told())
    assert all(r.get("response_type") == "ephemeral" for r in emulator.responses)
    assert len(script.calls) == 1, "only one run at a time reaches the model"
    assert not any(
        "position" in all_text(m) for c in ("C1", "C2", "C3") for m in emulator.messages(c)
    )
    script.released.set()
    runs = await bot.wait_for_run(count=3, timeout=30)
    assert all(r.status is RunStatus.SUCCEEDED for r in runs)
    assert len(script.calls) == 3


async def test_a_user_over_the_rate_limit_is_refused_clearly_and_recorded(start_bot, emulator):
    script = ScriptedModel.words("ok")
    bot = await start_bot(script.model(), AGENTBOT_USER_RUNS_PER_MINUTE=1)
    await bot.command("first")
    status, body, _ = await bot.command("second")
    assert status == 200 and "the limit is 1" in body
    runs = await bot.wait_for_run(count=2)
    assert sorted(r.status for r in runs) == [RunStatus.REFUSED, RunStatus.SUCCEEDED]
    assert len(script.calls) == 1


async def test_a_channel_outside_the_allowlist_is_refused(start_bot, emulator):
    script = ScriptedModel.words("ok")
    bot = await start_bot(script.model(), AGENTBOT_ALLOWED_CHANNELS="C1")
    _, body, _ = await bot.command("hello", channel_id="C9")
    assert "not enabled in this channel" in body
    assert script.calls == []
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.REFUSED and "not enabled in this channel" in run.error


async def test_a_user_outside_the_allowlist_is_refused_and_recorded_refused(start_bot, emulator):
    script = ScriptedModel.words("ok")
    bot = await start_bot(script.model(), AGENTBOT_ALLOWED_USERS="U1")
    _, body, _ = await bot.command("hello", user_id="U2")
    assert "not on the list" in body and "/ask <your text>" not in body  # no usage: not the prompt
    [run] = await bot.wait_for_run()
    assert (run.status, run.user_id, run.prompt) == (RunStatus.REFUSED, "U2", "hello")
    assert script.calls == []


async def test_a_run_over_its_token_budget_stops_and_keeps_the_text(start_bot, emulator):
    config = AppConfig(agents={**AppConfig().agents, "assistant": AgentSpec(token_budget=150)})
    script = ScriptedModel.words(" ".join(["word"] * 300))
    bot = await start_bot(script.model(), config=config)
    await bot.command("a long answer please")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.FAILED and "token budget" in run.error
    assert run.output and len(run.output) < len(script.text)
    assert "token budget" in all_text(emulator.messages("C123")[0])
