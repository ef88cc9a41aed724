"""Run `agentbot` for tests: in this process (`InProcess`: parsing, output and exit status,
fast), or as a real process (`agentbot`, `bot_process`: what only a process shows, such as
signals and the server's start and shutdown)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.cli import main

ROOT = Path(__file__).resolve().parent.parent
KEPT_ENV = ("PATH", "HOME", "LANG", "VIRTUAL_ENV")


def base_env() -> dict[str, str]:
    """The machine's essentials only: no Slack, agentbot or provider settings leak in."""
    env = {k: v for k, v in os.environ.items() if k in KEPT_ENV}
    env["PYTHONPATH"] = str(ROOT)
    return env


class InProcess:
    """`agentbot ARGS` as `bot.cli.main(ARGS)` in this process: with only `env` (and the
    machine's essentials) in the environment and `cwd` as the working directory, as a
    process started by `agentbot()` would see them; its stdout and stderr captured.

    `main` runs its own event loop, so an async test awaits it in a worker thread."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *, cwd: Path
    ) -> None:
        self._monkeypatch = monkeypatch
        self._capsys = capsys
        self.cwd = cwd

    async def __call__(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> tuple[int, str, str]:
        """Exit status, stdout and stderr of `agentbot ARGS` (same signature as `agentbot`)."""
        with self._monkeypatch.context() as patch:
            for name in [name for name in os.environ if name not in KEPT_ENV]:
                patch.delenv(name)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            patch.chdir(cwd or self.cwd)
            self._capsys.readouterr()
            code = await asyncio.to_thread(main, list(args))
            out, err = self._capsys.readouterr()
        return code, out, err


async def agentbot(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `python -m bot ARGS` run as a real process, with only
    `env` (and the machine's essentials) set."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**base_env(), **(env or {})},
        cwd=cwd or ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


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
