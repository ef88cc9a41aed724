"""A conversation's history: joined from the turns stored one run at a time, and trimmed to a
token budget before each model request (a pydantic-ai `ProcessHistory` capability)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from pydantic_ai.capabilities import ProcessHistory
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    SystemPromptPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from bot.tools import ToolDeps

CHARS_PER_TOKEN = 4  # the same rough estimate as `bot.runner.estimate_tokens`

HistoryProcessor = Callable[[list[ModelMessage]], Awaitable[list[ModelMessage]]]


def join_turns(segments_newest_first: Sequence[Sequence[ModelMessage]]) -> list[ModelMessage]:
    """One history from the messages stored by each run of a conversation, newest run first.

    A run stores only its new messages; a row written before that (its messages begin with the
    same message as the run before it) holds the whole history so far, so nothing older is
    added to it. Both kinds may meet in one conversation.
    """
    joined: list[ModelMessage] = []
    segments = [segment for segment in segments_newest_first if segment]
    for index, newer in enumerate(segments):
        joined[:0] = newer
        if index + 1 < len(segments) and stored_whole(newer, older=segments[index + 1]):
            break
    return joined


def stored_whole(newer: Sequence[ModelMessage], *, older: Sequence[ModelMessage]) -> bool:
    """Whether `newer` (a run's stored messages) was stored with the whole history before it,
    as every run was before turns were stored apart: it then begins with the same message as
    the run it continued. A run's own first message (its prompt, with its time and pydantic-ai
    run id) never equals an older run's."""
    return bool(newer) and bool(older) and newer[0] == older[0]


def estimate_message_tokens(message: ModelMessage) -> int:
    """About how many tokens `message` costs to send (four characters a token)."""
    chars = 0
    for part in message.parts:
        if isinstance(part, ToolCallPart):
            chars += len(part.tool_name) + len(part.args_as_json_str())
        elif isinstance(part, ToolReturnPart):
            chars += len(part.tool_name) + len(part.model_response_str())
        else:
            content = getattr(part, "content", "")
            chars += len(content if isinstance(content, str) else str(content))
    return -(-chars // CHARS_PER_TOKEN)


def trim_to_budget(messages: Sequence[ModelMessage], budget: int) -> list[ModelMessage]:
    """The newest whole turns of `messages` that fit in `budget` tokens, after the system
    prompt (always kept) and the current turn (always kept, whatever its size).

    A turn starts at a request with a user prompt and no tool return, so a tool call is never
    parted from its return. Turns are kept newest first and the first that does not fit ends
    the history: the model never sees a gap in the conversation.
    """
    starts = [i for i, message in enumerate(messages) if _starts_turn(message)]
    if len(starts) <= 1:
        return list(messages)
    head = list(messages[: starts[0]])
    system = [
        part for message in messages[: starts[0] + 1] for part in message.parts
        if isinstance(part, SystemPromptPart)
    ]  # fmt: skip
    bounds = list(zip(starts, [*starts[1:], len(messages)], strict=True))
    current_from = bounds[-1][0]
    used = sum(estimate_message_tokens(m) for m in messages[current_from:])
    used += -(-sum(len(p.content) for p in system) // CHARS_PER_TOKEN)
    keep_from = current_from
    for start, end in reversed(bounds[:-1]):
        cost = sum(estimate_message_tokens(m) for m in messages[start:end])
        if used + cost > budget:
            break
        used += cost
        keep_from = start
    if keep_from == starts[0]:
        return list(messages)
    kept = list(messages[keep_from:])
    dropped = [p for p in messages[starts[0]].parts if isinstance(p, SystemPromptPart)]
    if dropped:  # it was in the first turn's request, now left out: keep it on its own
        head.append(ModelRequest(parts=dropped))
    return [*head, *kept]


def budget_processor(budget: int) -> HistoryProcessor:
    """A history processor keeping `trim_to_budget(messages, budget)`."""

    async def keep_within_budget(messages: list[ModelMessage]) -> list[ModelMessage]:
        return trim_to_budget(messages, budget)

    return keep_within_budget


def history_budget(budget: int) -> ProcessHistory[ToolDeps]:
    """The capability that trims what each model request sends to `budget` tokens."""
    return ProcessHistory(budget_processor(budget))


def _starts_turn(message: ModelMessage) -> bool:
    if isinstance(message, ModelResponse):
        return False
    parts = message.parts
    answers_a_tool = any(isinstance(p, ToolReturnPart | RetryPromptPart) for p in parts)
    return not answers_a_tool and any(isinstance(p, UserPromptPart) for p in parts)
