"""A small OpenAI-compatible Chat Completions server on loopback, streaming like the real one.

It lets tests cover the real provider path (`openai-chat:` + `OPENAI_BASE_URL`) offline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeOpenAI:
    chunks: list[str]
    prompt_tokens: int = 11
    completion_tokens: int = 7
    fail_status: int | None = None
    fail_first: int | None = None  # how many requests get `fail_status`; None: every one
    retry_after: str | None = None  # a `Retry-After` header sent with each failure
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() of each request
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.arrived.append(time.monotonic())
        failing = self.fail_first is None or len(self.requests) <= self.fail_first
        if self.fail_status is not None and failing:
            return web.json_response(
                {"error": {"message": "scripted failure", "type": "server_error", "code": None}},
                status=self.fail_status,
                headers={"Retry-After": self.retry_after} if self.retry_after else None,
            )
        assert body.get("stream") is True, "agentbot streams every answer"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }
        first = {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
        await self._send(response, first)
        for chunk in self.chunks:
            await self._send(
                response,
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": chunk}, "finish_reason": None}],
                },
            )
        await self._send(
            response, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        )
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        await self._send(response, {**base, "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(payload)}\n\n".encode())
