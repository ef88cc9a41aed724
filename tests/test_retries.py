"""The one retry policy: a failed model request is sent again, not the whole run."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelUnavailableError
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from bot.models import RunKind, RunRecord, RunStatus
from bot.runner import RunPolicy
from tests.test_runner import RecordingSink, make_runner


async def test_a_retry_after_a_tool_call_sends_only_the_failed_request_again(sqlite_store):
    model_calls: list[int] = []
    lookups: list[str] = []

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        model_calls.append(len(messages))
        returned = any(
            isinstance(part, ToolReturnPart)
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
        )
        if not returned:
            yield {0: DeltaToolCall(name="lookup", json_args='{"key": "k"}', tool_call_id="c1")}
            return
        if len(model_calls) == 2:  # the request after the tool call fails once, before any text
            raise ModelUnavailableError("m", "busy")
        yield "found it"

    agent = Agent(FunctionModel(stream_function=stream))

    @agent.tool_plain
    def lookup(key: str) -> str:
        """Look a key up."""
        lookups.append(key)
        return "value"

    runner, _ = make_runner(sqlite_store)
    run = await runner.run(
        agent,
        RunRecord(kind=RunKind.ASK, prompt="p"),
        sink=RecordingSink(),
        policy=RunPolicy(retries=2, backoff_base=0.001),
    )
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output == "found it"
    assert lookups == ["k"], "the tool ran once: the run was not started over"
    assert len(model_calls) == 3
