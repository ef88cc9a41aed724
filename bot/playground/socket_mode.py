"""The emulator's Socket Mode: the WebSocket a Socket Mode client opens, and its envelopes.

`SocketMode` is a part of `SlackEmulator`: `apps.connections.open` hands the client the
`/link` URL; the emulator greets it with `hello`, sends it envelopes (`send_envelope`) and
matches the acks that come back.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
from aiohttp import web

from bot.playground import slack_client
from bot.playground.state import JsonDict, Workspace


class SocketMode:
    """Socket Mode, as a part of `SlackEmulator` (which sets the attributes below)."""

    state: Workspace
    _sockets: list[web.WebSocketResponse]
    _pending_acks: dict[str, asyncio.Future[JsonDict]]

    @property
    def socket_count(self) -> int:
        """How many Socket Mode clients are connected."""
        return len(self._sockets)

    async def socket_connected(self, *, timeout: float = 10.0) -> None:
        """Wait until a Socket Mode client is connected."""

        def socket_client_connected() -> bool:
            return bool(self._sockets)

        await self.state.wait_for(socket_client_connected, timeout=timeout)

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()  # answers the client's pings (autoping)
        await ws.prepare(request)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets) + 1,
                "debug_info": {"host": "applink-emulator", "approximate_connection_time": 18060},
                "connection_info": {"app_id": slack_client.API_APP_ID},
            }
        )
        self._sockets.append(ws)
        self.state.changed(lambda: {"type": "socket", "connected": True})
        try:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    self._receive_ack(frame.data)
        finally:
            self._sockets.remove(ws)
            if not self._sockets:
                self._fail_pending_acks("the Socket Mode client left before acking")
            self.state.changed(lambda: {"type": "socket", "connected": False})
        return ws

    def _fail_pending_acks(self, reason: str) -> None:
        for pending in self._pending_acks.values():
            if not pending.done():
                pending.set_exception(ConnectionError(reason))

    def _receive_ack(self, raw: str) -> None:
        try:
            ack = json.loads(raw)
        except ValueError:
            return
        if not isinstance(ack, dict) or "envelope_id" not in ack:
            return
        self.state.record_ack(ack)
        pending = self._pending_acks.pop(ack["envelope_id"], None)
        if pending is not None and not pending.done():
            pending.set_result(ack)

    async def send_envelope(
        self,
        envelope_type: str,
        payload: JsonDict,
        *,
        accepts_response_payload: bool = False,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
        timeout: float = 10.0,
    ) -> JsonDict:
        """Send one Socket Mode envelope to the newest connected client; return its ack.

        Raises RuntimeError when no client is connected, TimeoutError when no ack comes in
        time, ConnectionError when the client leaves first.
        """
        if not self._sockets:
            raise RuntimeError("no bot_url given and no Socket Mode client connected")
        envelope: JsonDict = {
            "envelope_id": str(uuid.uuid4()),
            "type": envelope_type,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        if envelope_type == "events_api":
            envelope["retry_attempt"] = retry_attempt or 0
            envelope["retry_reason"] = retry_reason or ""
        acked: asyncio.Future[JsonDict] = asyncio.get_running_loop().create_future()
        self._pending_acks[envelope["envelope_id"]] = acked
        try:
            await self._sockets[-1].send_json(envelope)
            async with asyncio.timeout(timeout):
                return await acked
        except TimeoutError:
            message = f"no ack for the {envelope_type} envelope within {timeout} s"
            raise TimeoutError(message) from None
        finally:
            self._pending_acks.pop(envelope["envelope_id"], None)
