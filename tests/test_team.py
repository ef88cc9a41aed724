"""/team, /pipeline and /compare end to end: real signed requests, the emulator as Slack."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pydantic_ai.exceptions import ModelAPIError
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from bot.config import AppConfig, TeamSpec
from bot.demo import last_prompt
from bot.models import RunKind, RunQuery, RunStatus
from handlers import untrusted
from handlers.render import STOP_ACTION_ID
from tests.holds import hold_calls, is_final_edit
from tests.test_ask import all_text, answer_text


@dataclass
class Crew:
    """Scripts every agent of a team: a plan, subtask streams, the synthesis."""

    plan: list[dict[str, str]] | None = None
    fail_roles: set[str] = field(default_factory=set)
    hang: bool = False
    output_size: int = 3000
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    together: asyncio.Barrier | None = None

    def output(self, role: str) -> str:
        body = f"{role} finding. " * (self.output_size // 20)
        return f"[{role} begins] {body}[{role} ends]"

    def factory(self, agent: str, model_string: str) -> Model:
        async def stream(
            messages: list[ModelMessage], info: AgentInfo
        ) -> AsyncIterator[str | DeltaToolCalls]:
            self.prompts[agent] = last_prompt(messages)
            if info.output_tools:
                if self.plan is None:
                    raise ModelAPIError("planner", "the planner is down")
                args = json.dumps({"subtasks": self.plan})
                yield {0: DeltaToolCall(name=info.output_tools[0].name, json_args=args)}
                return
            started = time.monotonic()
            if self.together is not None and agent != "coordinator":
                # Only subtasks that really run at the same time can all pass this barrier.
                async with asyncio.timeout(10):
                    await self.together.wait()
            if agent in self.fail_roles:
                raise ModelAPIError(agent, f"{agent} model exploded")
            text = "synthesis of everything" if agent == "coordinator" else self.output(agent)
            for i in range(0, len(text), 400):
                if self.hang and agent != "coordinator":
                    await self.released.wait()
                await asyncio.sleep(0.02)  # the model's own pace
                yield text[i : i + 400]
            self.spans[agent] = (started, time.monotonic())

        return FunctionModel(stream_function=stream, model_name=f"{agent}-model")


PLAN = [
    {"role": "researcher", "title": "Find the facts", "instructions": "List facts."},
    {"role": "analyst", "title": "Weigh the options", "instructions": "Compare."},
    {"role": "poet", "title": "Unknown role", "instructions": "Rhyme."},
    {"role": "reviewer", "title": "Check it", "instructions": "Review."},
]


async def test_team_plans_runs_subtasks_at_once_and_synthesises(start_bot, emulator):
    crew = Crew(plan=PLAN, together=asyncio.Barrier(4))
    bot = await start_bot(crew.factory)
    status, body, _ = await bot.command("plan our beta launch", command="/team")
    assert status == 200 and body == ""
    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=30)
    assert parent.status is RunStatus.SUCCEEDED, parent.error

    children = await bot.store.children(parent.id)
    kinds = [c.kind for c in children]
    assert kinds.count(RunKind.SUBTASK) == 4 and kinds[-1] is RunKind.SYNTHESIS
    assert all(c.status is RunStatus.SUCCEEDED for c in children)
    # An unknown role from the model falls back to the first role.
    assert [c.agent for c in children[:4]] == ["researcher", "analyst", "researcher", "reviewer"]

    # Each subtask and the synthesis answered in its own reply in the parent's thread.
    [message] = emulator.messages("C123")
    assert message.ts == parent.message_ts
    replies = emulator.thread("C123", message.ts)[1:]
    assert len(replies) == 5
    assert answer_text(replies[-1]) == "synthesis of everything"
    shown = {reply.ts: answer_text(reply) for reply in replies}
    assert shown == {child.message_ts: child.output for child in children}

    # They really ran at the same time: all four were inside their model call at once
    # (the barrier above), so every one started before any one finished.
    spans = [crew.spans[role] for role in ("analyst", "reviewer")]
    assert max(s for s, _ in spans) < min(e for _, e in spans)

    # The synthesis saw every subtask's full output, not a truncated one.
    synthesis_prompt = crew.prompts["coordinator"]
    for child in children[:4]:
        assert child.output in synthesis_prompt
    assert len(children[0].output) > 2500

    # The parent ends with each subtask's status and the totals.
    final = all_text(message)
    assert final.count("✅") == 5 and "done" in final and "tokens" in final
    assert parent.output_tokens > sum(c.output_tokens for c in children), "planner tokens too"
    assert parent.output == "synthesis of everything"
    assert not [b for b in message.blocks if b["type"] == "actions"]


async def test_a_failing_subtask_leaves_the_others_and_the_synthesis_intact(start_bot, emulator):
    crew = Crew(plan=PLAN[:2] + PLAN[3:], fail_roles={"analyst"})
    bot = await start_bot(crew.factory)
    await bot.command("plan our beta launch", command="/team")
    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=30)
    children = await bot.store.children(parent.id)
    by_agent = {c.agent: c for c in children}
    assert by_agent["analyst"].status is RunStatus.FAILED
    assert by_agent["researcher"].status is RunStatus.SUCCEEDED
    assert by_agent["coordinator"].status is RunStatus.SUCCEEDED
    assert "These subtasks failed: analyst" in crew.prompts["coordinator"]
    assert parent.status is RunStatus.SUCCEEDED and "analyst" in parent.error
    board = all_text(emulator.messages("C123")[0])
    assert "⚠️" in board and "analyst model exploded" in board


async def test_planner_failure_falls_back_to_one_subtask_per_role(start_bot, emulator):
    crew = Crew(plan=None)
    bot = await start_bot(crew.factory)
    await bot.command("anything", command="/team")
    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=30)
    children = await bot.store.children(parent.id)
    assert [c.agent for c in children] == [
        "researcher",
        "analyst",
        "writer",
        "reviewer",
        "coordinator",
    ]
    assert parent.status is RunStatus.SUCCEEDED


async def test_stop_on_the_parent_cancels_the_whole_team(start_bot, emulator):
    crew = Crew(plan=PLAN[:2], hang=True)
    bot = await start_bot(crew.factory)
    await bot.command("plan our beta launch", command="/team")
    await emulator.wait_for(lambda: len(emulator.calls_to("chat.postMessage")) == 3)  # parent + 2
    await press_stop_on_the_parent(bot, emulator)
    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=20)
    assert parent.status is RunStatus.CANCELLED and "Stopped by <@U123>" in parent.error
    children = await bot.store.children(parent.id)
    assert len(children) == 2 and all(c.status is RunStatus.CANCELLED for c in children), [
        (c.status, c.error) for c in children
    ]
    assert "coordinator" not in crew.prompts, "no synthesis after a stop"
    board = all_text(emulator.messages("C123")[0])
    assert "stopped" in board and board.count("⏹️") >= 2
    for reply in emulator.thread("C123", emulator.messages("C123")[0].ts)[1:]:
        assert "Stopped by" in all_text(reply)


async def press_stop_on_the_parent(bot, emulator) -> None:
    """Press the Stop button of the team's parent message (the channel's first message)."""
    parent_message = emulator.messages("C123")[0]
    run_id = next(
        element["value"]
        for block in parent_message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
    )
    await emulator.send_block_action(
        bot.url, action_id=STOP_ACTION_ID, value=run_id, message_ts=parent_message.ts
    )


@dataclass
class Stages:
    fail: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)

    def factory(self, agent: str, model_string: str) -> Model:
        async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
            self.prompts[agent] = last_prompt(messages)
            if agent == self.fail:
                raise ModelAPIError(agent, f"{agent} is down")
            yield f"<{agent} output>"

        return FunctionModel(stream_function=stream, model_name=agent)


async def test_pipeline_feeds_each_stage_the_previous_output(start_bot, emulator):
    stages = Stages()
    bot = await start_bot(stages.factory)
    await bot.command("solar panels", command="/pipeline")
    [parent] = await bot.wait_for_run(kind=RunKind.PIPELINE, timeout=30)
    assert parent.status is RunStatus.SUCCEEDED and parent.output == "<writer output>"
    children = await bot.store.children(parent.id)
    assert [(c.kind, c.agent) for c in children] == [
        (RunKind.STAGE, "researcher"),
        (RunKind.STAGE, "analyst"),
        (RunKind.STAGE, "writer"),
    ]
    assert "solar panels" in stages.prompts["researcher"]
    assert "<researcher output>" in stages.prompts["analyst"]
    assert "<analyst output>" in stages.prompts["writer"]
    replies = emulator.thread("C123", parent.message_ts)[1:]
    # In stage order, as Slack must be given them: "<" escaped, so that nothing pings.
    assert [answer_text(r) for r in replies] == [untrusted.markdown(c.output) for c in children]


async def test_a_failed_stage_stops_the_pipeline_with_the_reason(start_bot, emulator):
    stages = Stages(fail="analyst")
    bot = await start_bot(stages.factory)
    await bot.command("solar panels", command="/pipeline")
    [parent] = await bot.wait_for_run(kind=RunKind.PIPELINE, timeout=30)
    assert parent.status is RunStatus.FAILED and "stage 2 (analyze) failed" in parent.error
    assert "writer" not in stages.prompts
    board = all_text(emulator.messages("C123")[0])
    assert "⏭️" in board and "analyst is down" in board


async def test_compare_streams_every_model_and_survives_one_failing(start_bot, emulator):
    async def good(messages, info):
        for word in ("fast ", "and ", "right"):
            yield word

    async def bad(messages, info):
        raise ModelAPIError("m-bad", "model m-bad is unavailable")
        yield ""  # pragma: no cover

    def factory(agent: str, model_string: str) -> Model:
        function = bad if model_string == "m-bad" else good
        return FunctionModel(stream_function=function, model_name=model_string)

    bot = await start_bot(factory, AGENTBOT_COMPARE_MODELS="m-good,m-bad,m-other")
    await bot.command("which is best?", command="/compare")
    await bot.wait_for_run(kind=RunKind.COMPARE, count=4, timeout=30)
    [parent] = [r for r in await bot.runs(kind=RunKind.COMPARE) if r.parent_id is None]
    children = await bot.store.children(parent.id)
    assert {c.model: c.status for c in children} == {
        "m-good": RunStatus.SUCCEEDED,
        "m-bad": RunStatus.FAILED,
        "m-other": RunStatus.SUCCEEDED,
    }
    assert parent.status is RunStatus.SUCCEEDED
    board = all_text(emulator.messages("C123")[0])
    assert "first token" in board and "tok/s" in board and "m-bad is unavailable" in board
    replies = emulator.thread("C123", parent.message_ts)[1:]
    assert sorted(answer_text(r) for r in replies) == ["", "fast and right", "fast and right"]


async def test_team_records_show_up_with_children_in_history(start_bot, emulator):
    crew = Crew(plan=PLAN[:2])
    bot = await start_bot(crew.factory)
    await bot.command("small task", command="/team")
    await bot.wait_for_run(kind=RunKind.TEAM, timeout=30)
    runs = await bot.store.query(RunQuery())
    parent = next(r for r in runs if r.kind is RunKind.TEAM)
    assert {r.parent_id for r in runs if r.kind is not RunKind.TEAM} == {parent.id}
    assert parent.slack_writes >= 2


async def test_team_in_native_streaming_mode_streams_each_reply(start_bot, emulator):
    crew = Crew(plan=PLAN[:2])
    bot = await start_bot(crew.factory, AGENTBOT_STREAM_MODE="native")
    await bot.command("small task", command="/team")
    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=30)
    assert parent.status is RunStatus.SUCCEEDED
    assert len(emulator.calls_to("chat.startStream")) == 3  # two subtasks and the synthesis
    assert len(emulator.calls_to("chat.stopStream")) == 3
    children = await bot.store.children(parent.id)
    for child in children:
        reply = emulator.message("C123", child.message_ts)
        assert child.output in reply.text and not reply.streaming


async def test_stop_ends_every_subtask_of_a_team_those_waiting_for_a_place_too(start_bot, emulator):
    crew = Crew(plan=PLAN[:2], hang=True)
    one_at_a_time = AppConfig(teams={"default": TeamSpec(concurrency=1)})
    bot = await start_bot(crew.factory, config=one_at_a_time)
    await bot.command("plan our beta launch", command="/team")
    await emulator.wait_for(lambda: len(emulator.calls_to("chat.postMessage")) == 2)  # parent + 1
    await emulator.wait_for(lambda: "researcher" in crew.prompts)
    await press_stop_on_the_parent(bot, emulator)
    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=20)
    assert parent.status is RunStatus.CANCELLED
    assert "analyst" not in crew.prompts, "the subtask waiting for a place never started"
    children = await bot.store.children(parent.id)
    assert [(c.agent, c.status) for c in children] == [
        ("researcher", RunStatus.CANCELLED),
        ("analyst", RunStatus.CANCELLED),
    ]
    assert all("Stopped by <@U123>" in c.error for c in children)
    replies = emulator.thread("C123", emulator.messages("C123")[0].ts)
    assert len(replies) == 2, "no reply for the unstarted one"
    assert all_text(emulator.messages("C123")[0]).count("⏹️") >= 2
    assert len(bot.service.parts.runner.live) == 0


async def test_stop_pressed_while_a_team_shows_its_end_changes_nothing(
    start_bot, emulator, monkeypatch
):
    def parent_final_edit(args) -> bool:
        messages = emulator.messages("C123")
        return bool(messages) and args.get("ts") == messages[0].ts and is_final_edit(args)

    board_close = hold_calls(emulator, monkeypatch, "chat.update", when=parent_final_edit)
    crew = Crew(plan=PLAN[:2])
    bot = await start_bot(crew.factory)
    await bot.command("plan our beta launch", command="/team")
    await board_close.wait_held(timeout=30)
    await press_stop_on_the_parent(bot, emulator)
    await emulator.wait_for(lambda: len(emulator.responses) == 1)
    assert "already finished" in emulator.responses[0]["text"]
    [parent] = await bot.runs(kind=RunKind.TEAM)
    assert parent.status is RunStatus.SUCCEEDED, "saved before Slack shows it"
    board_close.release()

    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=20)
    assert parent.status is RunStatus.SUCCEEDED and parent.error is None
    assert parent.output == "synthesis of everything" and parent.slack_writes > 0
    board = all_text(emulator.messages("C123")[0])
    assert "done" in board and "stopped" not in board


async def test_stop_pressed_while_the_synthesis_is_shown_changes_nothing(
    start_bot, emulator, monkeypatch
):
    def synthesis_final_edit(args) -> bool:
        return is_final_edit(args) and "synthesis of everything" in json.dumps(args)

    synthesis_end = hold_calls(emulator, monkeypatch, "chat.update", when=synthesis_final_edit)
    crew = Crew(plan=PLAN[:2])
    bot = await start_bot(crew.factory)
    await bot.command("plan our beta launch", command="/team")
    await synthesis_end.wait_held(timeout=30)
    await press_stop_on_the_parent(bot, emulator)
    await emulator.wait_for(lambda: len(emulator.responses) == 1)
    assert "already finished" in emulator.responses[0]["text"]
    synthesis_end.release()

    [parent] = await bot.wait_for_run(kind=RunKind.TEAM, timeout=20)
    assert parent.status is RunStatus.SUCCEEDED and parent.error is None
    children = await bot.store.children(parent.id)
    assert [c.status for c in children] == [RunStatus.SUCCEEDED] * 3
    assert parent.output == children[-1].output == "synthesis of everything"
