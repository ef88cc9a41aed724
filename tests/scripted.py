"""Scripted pydantic-ai models for tests: exact token streams, failures and timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel


@dataclass
class ScriptedModel:
    """Streams `chunks` with `delay` seconds between them; records every call.

    `fail_first` calls raise `error` before any text; `hang_after` stops sending (but keeps
    the stream open) after that many chunks; `fail_after` raises `error` after that many.
    """

    chunks: list[str]
    delay: float = 0.0
    error: Exception | None = None
    fail_first: int = 0
    fail_after: int | None = None
    hang_after: int | None = None
    calls: list[list[ModelMessage]] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def words(cls, text: str, **kwargs: object) -> ScriptedModel:
        words = text.split(" ")
        return cls([w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)], **kwargs)  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def model(self, name: str = "scripted") -> FunctionModel:
        return FunctionModel(stream_function=self._stream, model_name=name)

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        self.calls.append(list(messages))
        if len(self.calls) <= self.fail_first:
            assert self.error is not None
            raise self.error
        for i, chunk in enumerate(self.chunks):
            if self.fail_after is not None and i == self.fail_after:
                assert self.error is not None
                raise self.error
            if self.hang_after is not None and i == self.hang_after:
                await self.released.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            yield chunk


Predicate = Callable[[], bool]
