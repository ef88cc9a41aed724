"""Background work: shutdown waits for it all, including work that other work starts."""

from __future__ import annotations

import asyncio

from bot.tasks import BackgroundTasks


async def test_wait_covers_tasks_started_by_tasks() -> None:
    work = BackgroundTasks()
    release = asyncio.Event()
    finished: list[str] = []

    async def inner() -> None:
        await release.wait()
        finished.append("inner")

    async def outer() -> None:
        work.spawn(inner(), name="inner")  # as an event's handler starts its run
        finished.append("outer")

    work.spawn(outer(), name="outer")
    assert not await work.wait(0.05), "the inner task is still waiting"
    assert finished == ["outer"] and len(work) == 1
    release.set()
    assert await work.wait(5)
    assert finished == ["outer", "inner"] and len(work) == 0


async def test_wait_with_nothing_to_wait_for() -> None:
    assert await BackgroundTasks().wait(0)
