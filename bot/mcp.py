"""MCP servers as agent toolsets: started once at app start, shared by every run,
restarted when they die.

Each server lives in a task of its own, which opens and closes its session: the MCP client
(anyio) must be exited by the task that entered it, so a run that finds the server dead
asks that task to restart it instead of doing it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from typing import Any, Self

from fastmcp.client.transports import StdioTransport
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_ai import ModelRetry, RunContext, ToolFailed
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.toolsets import AbstractToolset, ToolsetTool

from bot.errors import ConfigError

log = logging.getLogger(__name__)

RETRY_START_AFTER = 30.0
"""Seconds before a run tries again to start a server that failed to start."""


class McpServerSpec(BaseModel):
    """One MCP server: `command` (+ `args`, `env`, `cwd`) runs it over stdio, `url`
    (+ `headers`) reaches it over streamable HTTP."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Added to a minimal environment (PATH, HOME…): the bot's own secrets are not passed on."""
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    tool_prefix: str | None = None
    """Shown to the model as `<prefix>_<tool>`, to keep names of several servers apart."""
    start_timeout: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (stdio) or `url` (streamable HTTP)")
        if self.url is not None:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("`url` must be an http(s) URL")
            if self.args or self.env or self.cwd:
                raise ValueError("`args`, `env` and `cwd` go with `command`, not `url`")
        elif self.headers:
            raise ValueError("`headers` go with `url`, not `command`")
        return self


def build_mcp_toolset(spec: McpServerSpec, *, name: str) -> MCPToolset[Any]:
    """The pydantic-ai toolset for `spec`, not yet connected. A tool error on the server is a
    failed tool result for the model (`tool_error_behavior="failed"`), not a retry."""
    if spec.command is not None:
        transport = StdioTransport(
            command=spec.command,
            args=list(spec.args),
            env=dict(spec.env) or None,
            cwd=spec.cwd,
            keep_alive=False,  # closing the session ends the process: a restart is a new one
        )
        return MCPToolset(
            transport, id=name, tool_error_behavior="failed", init_timeout=spec.start_timeout
        )
    assert spec.url is not None
    return MCPToolset(
        spec.url,
        id=name,
        headers=dict(spec.headers) or None,
        tool_error_behavior="failed",
        init_timeout=spec.start_timeout,
    )


class McpServers:
    """The configured MCP servers. `start()` (or `async with`) at app start; `toolset(name)`
    gives what to put in an agent's `toolsets`, valid before and after a restart."""

    def __init__(self, specs: Mapping[str, McpServerSpec]) -> None:
        self._servers = {name: _Server(name, spec) for name, spec in specs.items()}

    async def start(self) -> None:
        """Start every server; a server that cannot start is a `ConfigError` (the others
        are stopped), within its `start_timeout`."""
        results = await asyncio.gather(
            *(server.start() for server in self._servers.values()), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self._servers.values()))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def toolset(self, name: str) -> AbstractToolset[Any]:
        try:
            server = self._servers[name]
        except KeyError:
            raise ConfigError(f"unknown MCP server {name!r}") from None
        toolset: AbstractToolset[Any] = _ServerToolset(server)
        return toolset.prefixed(server.spec.tool_prefix) if server.spec.tool_prefix else toolset

    def toolsets(self, names: Sequence[str]) -> list[AbstractToolset[Any]]:
        return [self.toolset(name) for name in names]

    async def problems(self, *, timeout: float = 2.0) -> dict[str, str]:
        """Servers that do not answer now, with the reason (for `/healthz`); each is asked
        for its tools within `timeout`, all at once. A server found down is restarted in the
        background (a dead session at once, one that failed to start at most every
        `RETRY_START_AFTER` s), so that it comes back even while no run asks for it: a
        failing health check may be what keeps the runs away."""
        found = await asyncio.gather(*(s.check(timeout) for s in self._servers.values()))
        return {name: why for name, why in zip(self._servers, found, strict=True) if why}


class _Server:
    """One server and the task that owns its session."""

    def __init__(self, name: str, spec: McpServerSpec) -> None:
        self.name = name
        self.spec = spec
        self.toolset: MCPToolset[Any] | None = None
        self.problem: str | None = None
        self._failed_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._pending: asyncio.Future[MCPToolset[Any]] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._calls = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._restarting: asyncio.Task[object] | None = None  # a restart a health check began

    async def start(self) -> None:
        async with self._lock:
            if self.toolset is None:
                await self._launch()

    async def revive(self, broken: MCPToolset[Any] | None) -> None:
        """Restart the server unless someone did since `broken` was seen; `ConfigError`."""
        async with self._lock:
            if self.toolset is not None and self.toolset is not broken:
                return
            await self._launch()

    async def running(self) -> MCPToolset[Any] | None:
        """The live session, starting it (again) if it is down and has not failed lately."""
        if self.toolset is None and not self._stopping:
            if time.monotonic() - self._failed_at >= RETRY_START_AFTER:
                with contextlib.suppress(ConfigError):
                    await self.revive(None)
        return self.toolset

    async def alive(self, toolset: MCPToolset[Any]) -> bool:
        if toolset is not self.toolset:
            return False
        try:
            async with asyncio.timeout(5):
                await toolset.client.list_tools()
        except Exception:
            return False
        return True

    async def check(self, timeout: float) -> str | None:
        """None when the server lists its tools within `timeout`; else why not, once a
        restart is under way if one is due (for a session that fails to answer, by the rule
        runs follow: no answer within `alive`'s limit)."""
        toolset = self.toolset
        if toolset is None:
            if self._stopping:
                return self.problem or "not started"
            self._restart_soon(self.running())
            return self.problem or "starting"
        try:
            async with asyncio.timeout(timeout):
                await toolset.client.list_tools()
        except Exception as exc:
            if self.toolset is not None and self.toolset is not toolset:
                return None  # restarted meanwhile
            self._restart_soon(self._restart_if_dead(toolset))
            if isinstance(exc, TimeoutError):
                return f"did not answer within {timeout:g} s"
            return f"stopped ({_describe(exc)})"
        return None

    def _restart_soon(self, restart: Coroutine[Any, Any, object]) -> None:
        # One restart at a time, and none once stopping: a check in flight at shutdown
        # must not start a server again.
        if self._stopping or (self._restarting is not None and not self._restarting.done()):
            restart.close()
            return
        self._restarting = asyncio.create_task(restart, name=f"mcp-{self.name}-restart")

    async def _restart_if_dead(self, toolset: MCPToolset[Any]) -> None:
        if await self.alive(toolset):
            return
        log.warning("MCP server %s stopped; restarting it", self.name)
        with contextlib.suppress(ConfigError):  # kept in `problem` for the next check
            await self.revive(toolset)

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Marks a request in flight: a restart waits for them to end before closing, so the
        session is never closed last by a run's task."""
        self._calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._calls -= 1
            if not self._calls:
                self._idle.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._restarting is not None:
            self._restarting.cancel()
            await asyncio.wait({self._restarting})
            self._restarting = None
        task, self._task = self._task, None
        if task is None:
            return
        self._wake.set()
        _, pending = await asyncio.wait({task}, timeout=10)
        if pending:
            task.cancel()
            await asyncio.wait({task})

    async def _launch(self) -> MCPToolset[Any]:
        """Have the server's task (re)open the session; wait for it. Holds `_lock`."""
        self._stopping = False
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._own_session(), name=f"mcp-{self.name}")
        future: asyncio.Future[MCPToolset[Any]] = asyncio.get_running_loop().create_future()
        self._pending = future
        self._wake.set()
        try:
            async with asyncio.timeout(self.spec.start_timeout + 2):
                return await future
        except TimeoutError:
            raise self._failed(f"did not start within {self.spec.start_timeout:g} s") from None

    async def _own_session(self) -> None:
        current: MCPToolset[Any] | None = None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if current is not None:
                    self.toolset = None
                    await self._close(current, drain=True)
                    current = None
                if self._stopping:
                    return
                future = self._pending
                try:
                    current = await self._open()
                except ConfigError as exc:
                    if future is not None and not future.done():
                        future.set_exception(exc)
                    continue
                self.toolset, self.problem = current, None
                if future is not None and not future.done():
                    future.set_result(current)
        finally:
            self.toolset = None
            if current is not None:
                await self._close(current, drain=False)

    async def _open(self) -> MCPToolset[Any]:
        toolset = build_mcp_toolset(self.spec, name=self.name)
        try:
            async with asyncio.timeout(self.spec.start_timeout):
                await toolset.__aenter__()
        except TimeoutError:
            raise self._failed(f"did not start within {self.spec.start_timeout:g} s") from None
        except Exception as exc:
            raise self._failed(f"could not start: {_describe(exc)}") from None
        log.info("MCP server %s started", self.name)
        return toolset

    def _failed(self, why: str) -> ConfigError:
        self.problem = why
        self._failed_at = time.monotonic()
        what = self.spec.command or self.spec.url
        return ConfigError(f"MCP server {self.name!r} ({what}) {why}")

    async def _close(self, toolset: MCPToolset[Any], *, drain: bool) -> None:
        if drain:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._idle.wait()
        try:
            await toolset.__aexit__(None, None, None)
        except Exception:
            log.warning("MCP server %s did not close cleanly", self.name, exc_info=True)


class _ServerToolset(AbstractToolset[Any]):
    """What agents hold: the tools of whichever session of the server is live."""

    def __init__(self, server: _Server) -> None:
        self._server = server

    @property
    def id(self) -> str:
        return self._server.name

    @property
    def label(self) -> str:
        return f"MCP server {self._server.name!r}"

    async def __aenter__(self) -> Self:
        return self  # the session belongs to `McpServers`, not to the run

    async def __aexit__(self, *args: Any) -> bool | None:
        return None

    async def get_instructions(self, ctx: RunContext[Any]) -> str | None:
        server = self._server
        if server.toolset is None and server.problem:
            return f"The tools of MCP server {server.name!r} are unavailable: {server.problem}."
        return None

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        toolset = await self._server.running()
        if toolset is None:
            return {}
        async with self._server.call():
            return await toolset.get_tools(ctx)

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        server = self._server
        toolset = server.toolset
        if toolset is None:
            raise ToolFailed(f"MCP server {server.name!r} is not running ({server.problem})")
        try:
            async with server.call():
                return await toolset.call_tool(name, tool_args, ctx, tool)
        except ModelRetry:  # how pydantic-ai reports a protocol or transport error
            if await server.alive(toolset):
                raise
        log.warning("MCP server %s stopped; restarting it", server.name)
        try:
            await server.revive(toolset)
        except ConfigError as exc:
            raise ToolFailed(f"the MCP server stopped and could not be restarted: {exc}") from None
        raise ToolFailed("the MCP server had stopped and was restarted: call the tool again")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    return " ".join(str(exc).split()) or type(exc).__name__
