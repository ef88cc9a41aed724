"""The runner on its own: a recording sink and the run store on a SQLite file, no Slack at all."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelRateLimitError

from bot.errors import InputError
from bot.metrics import Metrics
from bot.models import Progress, RunKind, RunRecord, RunStatus, utcnow
from bot.runner import LiveRuns, Runner, RunPolicy
from bot.saving import FinalRecords
from storage.repository import SqlRunStore
from tests.scripted import ScriptedModel


@dataclass
class RecordingSink:
    fail_start: Exception | None = None
    events: list[tuple[str, object]] = field(default_factory=list)
    progressed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def writes(self) -> int:
        return len(self.events)

    async def start(self, run: RunRecord) -> None:
        if self.fail_start:
            raise self.fail_start
        run.message_ts = "1.0"
        self.events.append(("start", run.status))

    def queued(self, position: int) -> None:
        self.events.append(("queued", position))

    def progress(self, text: str, progress: Progress) -> None:
        self.events.append(("progress", text))
        self.progressed.set()

    async def finish(self, run: RunRecord) -> None:
        self.events.append(("finish", run.status))


def make_runner(store: SqlRunStore) -> tuple[Runner, SqlRunStore]:
    return Runner(store=store, metrics=Metrics(), live=LiveRuns()), store


def agent_for(script: ScriptedModel) -> Agent[None, str]:
    return Agent(script.model())


async def test_stream_reaches_the_sink_in_order_and_is_recorded(sqlite_store):
    runner, store = make_runner(sqlite_store)
    script = ScriptedModel(["a", "b", "c"])
    sink = RecordingSink()
    run = await runner.run(
        agent_for(script), RunRecord(kind=RunKind.ASK, prompt="p"), sink=sink, policy=RunPolicy()
    )
    assert [e for e in sink.events if e[0] == "progress"] == [
        ("progress", "a"),
        ("progress", "ab"),
        ("progress", "abc"),
    ]
    assert sink.events[0] == ("start", RunStatus.QUEUED) and sink.events[-1] == (
        "finish",
        RunStatus.SUCCEEDED,
    )
    stored = await store.get(run.id)
    assert stored is not None and stored.status is RunStatus.SUCCEEDED and stored.output == "abc"
    assert stored.slack_writes == len(sink.events)
    assert stored.started_at <= stored.first_token_at <= stored.finished_at


async def test_run_is_recorded_before_the_sink_starts(sqlite_store):
    runner, store = make_runner(sqlite_store)
    seen: list[RunStatus | None] = []

    class Probe(RecordingSink):
        async def start(self, run: RunRecord) -> None:
            stored = await store.get(run.id)
            seen.append(stored.status if stored else None)
            await super().start(run)

    await runner.run(
        agent_for(ScriptedModel(["x"])),
        RunRecord(kind=RunKind.ASK, prompt="p"),
        sink=Probe(),
        policy=RunPolicy(),
    )
    assert seen == [RunStatus.QUEUED]


async def test_sink_refusal_fails_the_run_without_calling_the_model(sqlite_store):
    runner, store = make_runner(sqlite_store)
    script = ScriptedModel(["x"])
    sink = RecordingSink(fail_start=InputError("not in channel"))
    run = await runner.run(
        agent_for(script), RunRecord(kind=RunKind.ASK, prompt="p"), sink=sink, policy=RunPolicy()
    )
    assert run.status is RunStatus.FAILED and run.error == "not in channel"
    assert script.calls == [] and sink.events == []
    assert (await store.get(run.id)).status is RunStatus.FAILED


async def test_retries_are_bounded_and_honour_retry_after(sqlite_store):
    runner, _ = make_runner(sqlite_store)
    error = ModelRateLimitError("m", "slow down", retry_after=0.05)
    script = ScriptedModel(["x"], error=error, fail_first=10)
    policy = RunPolicy(retries=3, backoff_base=0.001)
    loop = asyncio.get_running_loop()
    started = loop.time()
    run = await runner.run(
        agent_for(script),
        RunRecord(kind=RunKind.ASK, prompt="p"),
        sink=RecordingSink(),
        policy=policy,
    )
    assert run.status is RunStatus.FAILED and "slow down" in run.error
    assert len(script.calls) == 4
    assert loop.time() - started >= 3 * 0.05


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    policy = RunPolicy(backoff_base=1.0, backoff_max=5.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0)]:
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2, "jitter spreads over the whole range"


async def test_total_timeout_is_separate_from_the_idle_timeout(sqlite_store):
    runner, _ = make_runner(sqlite_store)
    script = ScriptedModel(["tick "] * 100, delay=0.02)  # a token every 20 ms: never idle
    policy = RunPolicy(idle_timeout=0.5, total_timeout=0.3)
    run = await runner.run(
        agent_for(script),
        RunRecord(kind=RunKind.ASK, prompt="p"),
        sink=RecordingSink(),
        policy=policy,
    )
    assert run.status is RunStatus.FAILED and "did not finish within 0.3 s" in run.error
    assert run.output.startswith("tick tick")


async def test_stop_cancels_with_the_text_so_far(sqlite_store):
    runner, _ = make_runner(sqlite_store)
    script = ScriptedModel(["one ", "two ", "three"], hang_after=2)
    sink = RecordingSink()
    record = RunRecord(kind=RunKind.ASK, prompt="p")
    task = asyncio.create_task(runner.run(agent_for(script), record, sink=sink, policy=RunPolicy()))
    while len([e for e in sink.events if e[0] == "progress"]) < 2:
        sink.progressed.clear()
        await sink.progressed.wait()
    assert runner.live.stop(record.id, status=RunStatus.CANCELLED, reason="Stopped by <@U1>")
    run = await task
    assert run.status is RunStatus.CANCELLED and run.error == "Stopped by <@U1>"
    assert run.output == "one two "
    assert sink.events[-1] == ("finish", RunStatus.CANCELLED)
    assert len(runner.live) == 0
    assert not runner.live.stop(run.id, status=RunStatus.CANCELLED, reason="again")


async def test_a_run_started_after_shutdown_stopped_all_ends_at_once(sqlite_store):
    runner, store = make_runner(sqlite_store)
    assert runner.live.stop_all(status=RunStatus.INTERRUPTED, reason="shutting down") == 0
    record = RunRecord(kind=RunKind.ASK, prompt="p")
    run = await runner.run(
        agent_for(ScriptedModel(["never"])), record, sink=RecordingSink(), policy=RunPolicy()
    )
    assert (run.status, run.error, run.output) == (RunStatus.INTERRUPTED, "shutting down", "")
    assert (await store.get(run.id)).status is RunStatus.INTERRUPTED


async def test_a_run_that_cannot_be_recorded_still_tells_the_user(sqlite_store):
    runner, store = make_runner(sqlite_store)

    async def broken_create(run: RunRecord) -> None:
        raise OSError("database is locked")

    store.create = broken_create  # the store's own failure, as SQLite gives it under load
    script = ScriptedModel(["never"])
    sink = RecordingSink()
    run = await runner.run(
        agent_for(script), RunRecord(kind=RunKind.ASK, prompt="p"), sink=sink, policy=RunPolicy()
    )
    assert run.status is RunStatus.FAILED and "could not be recorded" in run.error
    assert sink.events[-1] == ("finish", RunStatus.FAILED)
    assert script.calls == []


async def test_a_final_record_the_store_refuses_is_saved_again_until_it_lands(sqlite_store):
    store, live = sqlite_store, LiveRuns()
    save, refusals, held = store.save, 12, []

    async def locked_for_a_while(run: RunRecord) -> None:
        nonlocal refusals
        if run.status.is_final and refusals:
            refusals -= 1
            held.append(run.id in live.ids())
            raise OSError("database is locked")
        await save(run)

    store.save = locked_for_a_while
    records = FinalRecords(store, live, backoff_base=0.001, backoff_max=0.01)
    runner = Runner(store=store, metrics=Metrics(), live=live, records=records)
    sink = RecordingSink()
    run = await runner.run(
        agent_for(ScriptedModel(["a", "b"])),
        RunRecord(kind=RunKind.ASK, prompt="p"),
        sink=sink,
        policy=RunPolicy(),
    )
    assert run.status is RunStatus.SUCCEEDED
    assert sink.events[-1] == ("finish", RunStatus.SUCCEEDED), "shown though not saved yet"
    await asyncio.wait_for(records.wait_saved(), timeout=10)
    assert refusals == 0 and len(held) == 12 and all(held), "its lease kept while refused"
    stored = await store.get(run.id)
    assert stored.status is RunStatus.SUCCEEDED and stored.output == "ab"
    assert stored.slack_writes == len(sink.events)
    assert live.ids() == [] and len(records) == 0


async def test_a_run_settled_by_its_model_is_not_stopped_while_it_is_shown(sqlite_store):
    runner, store = make_runner(sqlite_store)
    showing, shown = asyncio.Event(), asyncio.Event()

    class SlowSlack(RecordingSink):
        async def finish(self, run: RunRecord) -> None:
            showing.set()
            await shown.wait()
            await super().finish(run)

    record = RunRecord(kind=RunKind.ASK, prompt="p")
    script = ScriptedModel(["all ", "of it"])
    task = asyncio.create_task(
        runner.run(agent_for(script), record, sink=SlowSlack(), policy=RunPolicy())
    )
    await asyncio.wait_for(showing.wait(), timeout=10)
    assert (await store.get(record.id)).status is RunStatus.SUCCEEDED, "saved before shown"
    assert runner.live.get(record.id) is not None and runner.live.stoppable() == []
    assert not runner.live.stop(record.id, status=RunStatus.CANCELLED, reason="too late")
    assert runner.live.stop_all(status=RunStatus.INTERRUPTED, reason="shutdown") == 0
    shown.set()
    run = await task
    assert (run.status, run.error, run.output) == (RunStatus.SUCCEEDED, None, "all of it")


async def test_recovery_never_takes_the_runs_its_process_carries(sqlite_store):
    long_ago = utcnow() - timedelta(minutes=5)
    ours, theirs = (
        RunRecord(kind=RunKind.ASK, prompt=p, status=RunStatus.RUNNING, created_at=long_ago)
        for p in ("ours", "theirs")
    )
    for run in (ours, theirs):
        await sqlite_store.create(run)
    taken = await sqlite_store.mark_interrupted("gone", stale_before=utcnow(), carried=[ours.id])
    assert [run.id for run in taken] == [theirs.id]
    assert (await sqlite_store.get(ours.id)).status is RunStatus.RUNNING


async def test_final_records_back_off_within_bounds_however_long_the_outage(sqlite_store):
    records = FinalRecords(sqlite_store, LiveRuns(), backoff_base=0.25, backoff_max=5.0)
    assert 0.125 <= records._backoff(1) <= 0.25
    for failures in (6, 100, 10_000):  # hours of refused saves
        assert 2.5 <= records._backoff(failures) <= 5.0
