"""The offline demo models: pydantic-ai `FunctionModel`s that stream labelled answers.

They let agentbot run on a fresh machine with no API key; every answer says it is a demo.
They show each feature a real model would: a long answer (continued in thread replies), a
follow-up that uses the earlier turns, a tool call (`current_time`, when the agent has it and
the prompt asks for the time), a team plan, and two speeds for `/compare`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    RetryPromptPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from bot.config import DEMO_FAST_MODEL, DEMO_MODEL
from bot.plan import roles_in

DEMO_SPEEDS: dict[str, float] = {DEMO_MODEL: 25.0, DEMO_FAST_MODEL: 100.0}
"""Steps per second of each demo model, by model string: a word at each step, or
`LONG_CHUNK_WORDS` words in a long answer."""

TIME_TOOL = "current_time"
"""The built-in tool the demo calls when asked for the time (agents on a demo model get it)."""

LONG_ANSWER_CHARS = 9_000
"""A long answer's size: more than two Slack messages hold (`ANSWER_CHUNK_BYTES`, 3,900 bytes,
in handlers/render.py), so that it visibly continues in thread replies."""
LONG_CHUNK_WORDS = 6  # a long answer streams in bigger steps: seconds, not a minute

_ASKS_LONG = re.compile(
    r"\b(long|longer|lengthy|essay|story|detailed|in depth|in detail|article|everything)\b",
    re.IGNORECASE,
)
_ASKS_TIME = re.compile(
    r"\b(what time|time is it|the time|current time|what date|the date|today's date|"
    r"what day|clock)\b",
    re.IGNORECASE,
)
_ZONE = re.compile(r"\b([A-Z][a-z]+/[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_]+)?)\b")
_SHOWN_CHARS = 200


def demo_model(name: str = DEMO_MODEL, *, steps_per_second: float | None = None) -> FunctionModel:
    """The demo model called `name` (a key of `DEMO_SPEEDS`): answers every prompt with a
    clearly labelled demo text, word by word, at its own speed (or `steps_per_second`)."""
    pace = steps_per_second or DEMO_SPEEDS.get(name, DEMO_SPEEDS[DEMO_MODEL])

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        prompt = last_prompt(messages)
        if info.output_tools:  # a structured answer is wanted: the team planner's plan
            tool = info.output_tools[0]
            yield {0: DeltaToolCall(name=tool.name, json_args=json.dumps(demo_plan(prompt)))}
            return
        tools = {tool.name for tool in info.function_tools}
        result = tool_result(messages, TIME_TOOL)
        if result is None and TIME_TOOL in tools and asks_for_time(prompt):
            args = json.dumps({"timezone": _zone_in(prompt)})
            yield {0: DeltaToolCall(name=TIME_TOOL, json_args=args, tool_call_id="demo-time")}
            return
        text = demo_answer(
            prompt, model=name, earlier=earlier_prompts(messages), tool_result=result
        )
        per_chunk = LONG_CHUNK_WORDS if asks_for_long(prompt) else 1
        words = text.split(" ")
        for start in range(0, len(words), per_chunk):
            piece = " ".join(words[start : start + per_chunk])
            yield piece if start + per_chunk >= len(words) else piece + " "
            await asyncio.sleep(1 / pace)

    return FunctionModel(stream_function=stream, model_name=name)


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


def demo_answer(
    prompt: str,
    *,
    model: str = DEMO_MODEL,
    earlier: Sequence[str] = (),
    tool_result: str | None = None,
) -> str:
    """The demo's answer to `prompt`: what was asked, the `earlier` prompts of the
    conversation when there are some, the time tool's `tool_result` when it was called, and
    a long text when the prompt asks for something long."""
    parts = [
        f"*Demo model* (`{model}`) — no `AGENTBOT_MODEL` is configured, so this answer is "
        "generated offline.",
        f"You asked: “{_shown(prompt)}”",
    ]
    if earlier:
        turns = "; then ".join(f"“{_shown(text, 80)}”" for text in earlier[-3:])
        more = f" ({len(earlier) - 3} more before that)" if len(earlier) > 3 else ""
        parts.append(
            f"This is turn {len(earlier) + 1} of our conversation: I was given the earlier "
            f"turns. Before this you asked {turns}{more}."
        )
    if tool_result is not None:
        parts.append(f"I called the `{TIME_TOOL}` tool. It says: {tool_result}")
    if asks_for_long(prompt):
        parts.append(_long_text(prompt))
    parts.append(
        "A real model would answer here. This demo streams at a steady pace so that you can "
        "watch agentbot edit its message as tokens arrive, see the live footer count tokens, "
        "and try the *Stop* button. Try a follow-up in the thread, `/ask write a long essay`, "
        "`/ask what time is it?`, `/team` or `/compare`. Set `AGENTBOT_MODEL` (for example "
        "`openai-chat:gpt-4o-mini`) and the provider's API key to use a real model."
    )
    return "\n\n".join(parts)


def asks_for_long(prompt: str) -> bool:
    return _ASKS_LONG.search(prompt) is not None


def asks_for_time(prompt: str) -> bool:
    return _ASKS_TIME.search(prompt) is not None


def last_prompt(messages: Sequence[ModelMessage]) -> str:
    """The text of the latest user prompt in `messages` ("" if none)."""
    prompts = _prompts(messages)
    return prompts[-1] if prompts else ""


def earlier_prompts(messages: Sequence[ModelMessage]) -> list[str]:
    """The user prompts of the earlier turns in `messages` (all but the latest), oldest first."""
    return _prompts(messages)[:-1]


def tool_result(messages: Sequence[ModelMessage], tool: str) -> str | None:
    """What `tool` returned (or why it failed) since the latest user prompt, if it was called."""
    for message in reversed(messages):
        if not isinstance(message, ModelRequest):
            continue
        for part in message.parts:
            if isinstance(part, ToolReturnPart) and part.tool_name == tool:
                return str(part.content)
            if isinstance(part, RetryPromptPart) and part.tool_name == tool:
                return f"(it failed: {part.model_response()})"
            if isinstance(part, UserPromptPart):
                return None
    return None


def _prompts(messages: Sequence[ModelMessage]) -> list[str]:
    return [
        part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, UserPromptPart) and isinstance(part.content, str)
    ]


def _shown(text: str, limit: int = _SHOWN_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _zone_in(prompt: str) -> str:
    found = _ZONE.search(prompt)
    return found[1] if found else "UTC"


def _long_text(prompt: str) -> str:
    """Numbered sections of filler prose, `LONG_ANSWER_CHARS` long or a little more."""
    topic = _shown(prompt, 60)
    sections: list[str] = []
    size = 0
    number = 0
    while size < LONG_ANSWER_CHARS:
        number += 1
        section = (
            f"**Part {number}.** This is part {number} of a long demo answer about “{topic}”. "
            "A real model would develop one idea per part, with facts, examples and caveats. "
            "The demo writes plain filler instead, long enough that the whole answer cannot "
            "fit in one Slack message: agentbot shows the first part in the message and "
            "continues in thread replies, in order, without dropping a word. While it streams, "
            "the message shows the latest text that fits and a live footer with the tokens "
            "so far and the time spent."
        )
        sections.append(section)
        size += len(section) + 2
    sections.append(f"**End of the long answer** ({number} parts).")
    return "\n\n".join(sections)
