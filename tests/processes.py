"""Run `agentbot` as a real process for tests: wait for it to be ready by reading its log."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def base_env() -> dict[str, str]:
    """The machine's essentials only: no Slack, agentbot or provider settings leak in."""
    keep = ("PATH", "HOME", "LANG", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = str(ROOT)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BotProcess:
    process: asyncio.subprocess.Process
    port: int
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def bot_process(
    *args: str, env: dict[str, str], cwd: Path, ready: str = "listening on", timeout: float = 30
) -> AsyncIterator[BotProcess]:
    """Start `python -m bot ARGS --port P`; yield once its log says `ready`; kill it at the end
    if the test has not stopped it."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, "--port", str(port),
        env={**base_env(), **env}, cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    running = BotProcess(process=process, port=port)
    up = asyncio.Event()

    async def read_log() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            line = raw.decode(errors="replace")
            running.log.append(line)
            if ready in line:
                up.set()

    reader = asyncio.create_task(read_log())
    try:
        exited = asyncio.create_task(process.wait())
        started = asyncio.create_task(up.wait())
        await asyncio.wait({exited, started}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if not up.is_set():
            raise AssertionError("agentbot did not start:\n" + "".join(running.log))
        yield running
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await reader
