"""Shared fixtures: the Slack emulator, a running bot pointed at it, and clean settings."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import models
from pydantic_ai.models import Model

from bot.config import AppConfig, Settings
from bot.models import RunKind, RunQuery, RunRecord
from bot.playground.emulator import SlackEmulator
from bot.server import Service, build_parts
from storage.db import upgrade
from storage.repository import SqlRunStore
from tests.databases import postgres_engine, postgres_unreachable_reason, sqlite_engine

models.ALLOW_MODEL_REQUESTS = False

SIGNING_SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-emulator"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see none of the machine's Slack, agentbot or provider settings."""
    for name in list(os.environ):
        if name.startswith(("SLACK_", "AGENTBOT_", "OPENAI_", "ANTHROPIC_")) or name == "PORT":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used in this session's tests, or None."""
    return postgres_unreachable_reason()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqlRunStore]:
    """The real run store on a fresh SQLite file (fast enough that tests need no fake)."""
    async with sqlite_engine(tmp_path / "runs.db") as engine:
        await upgrade(engine)
        yield SqlRunStore(engine)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_on_each_database(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_unreachable: str | None
) -> AsyncIterator[SqlRunStore]:
    """The real run store, upgraded, on SQLite and on PostgreSQL (that case skips when no
    server answers)."""
    if request.param == "sqlite":
        opened = sqlite_engine(tmp_path / "runs.db")
    else:
        opened = postgres_engine(postgres_unreachable)
    async with opened as engine:
        await upgrade(engine)
        yield SqlRunStore(engine)


@pytest.fixture
async def emulator() -> AsyncIterator[SlackEmulator]:
    emu = SlackEmulator(signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.close()


def make_settings(emulator: SlackEmulator, db_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": emulator.api_url,
        "AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
        "AGENTBOT_UPDATE_INTERVAL": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def socket_mode_service(
    emulator: SlackEmulator, tmp_path: Path, model: Model
) -> AsyncIterator[Service]:
    """A bot in Socket Mode (no signing secret, an app token) connected to the emulator."""
    settings = make_settings(
        emulator, tmp_path / "s.db", SLACK_SIGNING_SECRET=None, SLACK_APP_TOKEN="xapp-emulator"
    )
    service = Service(await build_parts(settings, AppConfig(), model=model))
    await service.start(host="127.0.0.1", port=0, socket_mode=True)
    try:
        await emulator.socket_connected()
        yield service
    finally:
        await service.stop(grace=0)


@dataclass
class Bot:
    """A running bot (real aiohttp server on 127.0.0.1) wired to the emulator."""

    emulator: SlackEmulator
    service: Service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}/slack/events"

    @property
    def store(self):
        return self.service.parts.store

    async def command(self, text: str, *, command: str = "/ask", **kwargs: Any):
        return await self.emulator.send_slash_command(self.url, command, text, **kwargs)

    async def runs(self, **filters: Any) -> list[RunRecord]:
        return await self.store.query(RunQuery(**filters))

    async def wait_for_run(
        self, *, count: int = 1, kind: RunKind | None = None, timeout: float = 15.0
    ) -> list[RunRecord]:
        """Wait (on emulator activity) until `count` runs (of `kind`) have finished and
        their work is over; return the runs (of `kind`)."""
        runs: list[RunRecord] = []

        async def done() -> bool:
            nonlocal runs
            runs = await self.runs(kind=kind)
            finished = len([r for r in runs if r.status.is_final]) >= count
            return finished and len(self.service.parts.background) == 0

        await wait_until(done, self.emulator, timeout=timeout)
        return runs


async def wait_until(
    check: Callable[[], Awaitable[bool]], emulator: SlackEmulator, *, timeout: float = 15.0
) -> None:
    """Re-check an async condition each time the emulator's state changes, until it holds.

    A finished run writes to Slack before it is saved, so the check also runs after a short
    bounded series of loop turns without Slack activity (no fixed sleeps).
    """
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"condition {check.__name__} not met within {timeout} s")
        seen = len(emulator.calls)
        try:
            await emulator.wait_for(
                lambda seen=seen: len(emulator.calls) > seen, timeout=min(remaining, 0.5)
            )
        except TimeoutError:
            pass


BotFactory = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def start_bot(emulator: SlackEmulator, tmp_path: Path) -> AsyncIterator[BotFactory]:
    services: list[Service] = []

    async def start(
        model: Model | None = None,
        *,
        config: AppConfig | None = None,
        service_options: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Bot:
        """A bot on the test's database file; `overrides` are settings (env names),
        `service_options` go to `Service` (lease timings)."""
        settings = make_settings(emulator, tmp_path / "agentbot.db", **overrides)
        parts = await build_parts(settings, config or AppConfig(), model=model)
        service = Service(parts, **(service_options or {}))
        await service.start(host="127.0.0.1", port=0)
        services.append(service)
        return Bot(emulator=emulator, service=service)

    yield start
    for service in services:
        await service.stop(grace=0)
