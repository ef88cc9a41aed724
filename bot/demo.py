"""The offline demo model: a pydantic-ai `FunctionModel` that streams a labelled answer.

It lets agentbot run on a fresh machine with no API key; every answer says it is a demo.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from bot.plan import roles_in

WORDS_PER_SECOND = 25.0


def demo_model(*, words_per_second: float = WORDS_PER_SECOND) -> FunctionModel:
    """A model that answers every prompt with a clearly labelled demo text, word by word."""

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        prompt = last_prompt(messages)
        if info.output_tools:  # a structured answer is wanted: the team planner's plan
            tool = info.output_tools[0]
            yield {0: DeltaToolCall(name=tool.name, json_args=json.dumps(demo_plan(prompt)))}
            return
        for word in demo_answer(prompt).split(" "):
            yield word + " "
            await asyncio.sleep(1 / words_per_second)

    return FunctionModel(stream_function=stream, model_name="demo")


def demo_plan(prompt: str) -> dict[str, object]:
    """A valid plan: one subtask for each role the planner prompt offers."""
    roles = roles_in(prompt) or ["researcher", "writer"]
    return {
        "subtasks": [
            {
                "role": role,
                "title": f"Demo {role} subtask",
                "instructions": f"Contribute the {role}'s part of the task.",
            }
            for role in roles
        ]
    }


def demo_answer(prompt: str) -> str:
    shown = prompt if len(prompt) <= 200 else prompt[:200] + "…"
    return (
        "*Demo model* — no `AGENTBOT_MODEL` is configured, so this answer is generated offline.\n\n"
        f"You asked: “{shown}”\n\n"
        "A real model would answer here. This demo streams at a steady pace so that you can "
        "watch agentbot edit its message as tokens arrive, see the live footer count tokens, "
        "and try the *Stop* button. Set `AGENTBOT_MODEL` (for example "
        "`openai-chat:gpt-4o-mini`) and the provider's API key to use a real model."
    )


def last_prompt(messages: list[ModelMessage]) -> str:
    """The text of the latest user prompt in `messages` ("" if none)."""
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""
