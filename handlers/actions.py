"""Buttons: Stop cancels a run (only its requester or an admin may).

A run is live in one process. When Stop reaches another process sharing the database, that
process records a stop request in the store, and the process running the run, which polls
for requests on its live runs (`StopRequestPoller`), stops it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.models import RunRecord, RunStatus
from handlers.render import STOP_ACTION_ID

if TYPE_CHECKING:
    from bot.ports import RunStore
    from bot.runner import LiveRuns
    from handlers.app import BotDeps

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between two looks for stop requests, while runs are live
FINISHED = "This run has already finished."


def stop_reason(user_id: str) -> str:
    """What a stopped run's record and message say."""
    return f"Stopped by <@{user_id}>"


def register(app: AsyncApp, deps: BotDeps) -> None:
    @app.action(STOP_ACTION_ID)
    async def stop(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()  # the rest is quick: no need to hand it to the background
        run_id = action.get("value", "")
        user_id = (body.get("user") or {}).get("id", "")
        run = deps.runner.live.get(run_id)
        if run is None:
            await _tell(respond, await _stop_elsewhere(deps, run_id, user_id))
            return
        if not _may_stop(deps, user_id, run):
            await _tell(respond, _refusal(run))
            return
        deps.runner.live.stop(run_id, status=RunStatus.CANCELLED, reason=stop_reason(user_id))


async def _stop_elsewhere(deps: BotDeps, run_id: str, user_id: str) -> str:
    """Stop a run that is not live in this process: if the store has it still queued or
    running, another process runs it; record the request for that process. Returns what to
    tell the user."""
    try:
        run = await deps.store.get(run_id)
        if run is None or run.status.is_final:
            return FINISHED
        if not _may_stop(deps, user_id, run):
            return _refusal(run)
        if await deps.store.request_stop(run_id, by=user_id):
            log.info("run %s: stop requested by %s for the process running it", run_id, user_id)
            return "Stopping this run…"
        run = await deps.store.get(run_id)  # it finished meanwhile, or someone asked first
    except Exception:
        log.exception("run %s: could not record a stop request", run_id)
        return "Could not stop this run just now (the database did not answer). Try again."
    if run is None or run.status.is_final:
        return FINISHED
    return "This run is already being stopped."


def _may_stop(deps: BotDeps, user_id: str, run: RunRecord) -> bool:
    if user_id == run.user_id or deps.is_admin(user_id):
        return True
    log.info("user %s may not stop run %s", user_id, run.id)
    return False


def _refusal(run: RunRecord) -> str:
    return f"Only <@{run.user_id}> or an admin can stop this run."


async def _tell(respond: AsyncRespond, text: str) -> None:
    await respond(text=text, response_type="ephemeral", replace_original=False)


class StopRequestPoller:
    """Stops this process's live runs for which Stop was pressed on another process
    (`RunStore.request_stop`). One loop per process, whatever the number of runs: it asks the
    store about once every `interval` seconds, and only while runs are live."""

    def __init__(self, store: RunStore, live: LiveRuns, *, interval: float = POLL_INTERVAL) -> None:
        self._store = store
        self._live = live
        self._interval = interval

    async def run(self) -> None:
        """Poll until cancelled (at shutdown); a store that fails is logged and asked again."""
        failing = False
        while True:
            await self._live.wait_busy()
            await asyncio.sleep(self._interval)
            run_ids = self._live.stoppable()
            if not run_ids:
                continue
            try:
                requests = await self._store.stop_requests(run_ids)
            except Exception as exc:
                if not failing:
                    log.warning("cannot read stop requests, will retry: %s", exc)
                failing = True
                continue
            if failing:
                log.info("stop requests readable again")
                failing = False
            for run_id, user_id in requests.items():
                if self._live.stop(run_id, status=RunStatus.CANCELLED, reason=stop_reason(user_id)):
                    log.info("run %s: stopped by %s from another process", run_id, user_id)
