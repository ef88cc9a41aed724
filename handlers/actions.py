"""Buttons: Stop cancels a run (only its requester, or an admin of the run's workspace).

A run is live in one process. When Stop reaches another process sharing the database, that
process records a stop request in the store, and the process running the run, which polls
for requests on its live runs (`LiveRunsPoller`), stops it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.models import RunRecord, RunStatus
from handlers.render import STOP_ACTION_ID

if TYPE_CHECKING:
    from bot.live import LiveRuns
    from bot.ports import RunStore
    from handlers.app import BotDeps

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between two looks for stop requests, while runs are live
# Seconds between two renewals of this process's run leases, while runs are live; well
# below the age at which start-up recovery takes a lease for stale (`bot.server`).
LEASE_RENEW_EVERY = 2.0
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
        user = body.get("user") or {}
        user_id = user.get("id", "")
        # The workspace the click comes from, as /history reads it.
        team_id = (body.get("team") or {}).get("id") or user.get("team_id") or ""
        run = deps.runner.live.get(run_id)
        if run is None:
            await _tell(respond, await _stop_elsewhere(deps, run_id, user_id, team_id))
            return
        if not _may_stop(deps, user_id, team_id, run):
            await _tell(respond, _refusal(run))
            return
        reason = stop_reason(user_id)
        if not deps.runner.live.stop(run_id, status=RunStatus.CANCELLED, reason=reason):
            await _tell(respond, FINISHED)  # it has its outcome, being delivered now


async def _stop_elsewhere(deps: BotDeps, run_id: str, user_id: str, team_id: str) -> str:
    """Stop a run that is not live in this process: if the store has it still queued or
    running, another process runs it; record the request for that process. Returns what to
    tell the user."""
    try:
        run = await deps.store.get(run_id)
        if run is None or run.status.is_final:
            return FINISHED
        if not _may_stop(deps, user_id, team_id, run):
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


def _may_stop(deps: BotDeps, user_id: str, team_id: str, run: RunRecord) -> bool:
    """The run's requester may stop it; an admin only in the run's own workspace (an admin
    is trusted in their workspace, not in every workspace the bot serves)."""
    if user_id == run.user_id:
        return True
    if deps.is_admin(user_id) and team_id and team_id == run.team_id:
        return True
    log.info("user %s of workspace %s may not stop run %s", user_id, team_id or "?", run.id)
    return False


def _refusal(run: RunRecord) -> str:
    return f"Only <@{run.user_id}> or an admin of its workspace can stop this run."


async def _tell(respond: AsyncRespond, text: str) -> None:
    await respond(text=text, response_type="ephemeral", replace_original=False)


class LiveRunsPoller:
    """Stops this process's live runs for which Stop was pressed on another process
    (`RunStore.request_stop`), and renews their leases (`RunStore.renew_leases`) so that
    another process starting up does not take them for a crashed process's runs.

    One loop per process, whatever the number of runs, awake only while runs are live: it
    asks the store for stop requests about once every `interval` seconds, and renews the
    leases of all live runs at most once every `renew_every` seconds (one statement). A run
    is leased from its creation on (`RunStore.mark_interrupted`), so its first renewal may
    wait for the next turn.
    """

    def __init__(
        self,
        store: RunStore,
        live: LiveRuns,
        *,
        interval: float = POLL_INTERVAL,
        renew_every: float = LEASE_RENEW_EVERY,
    ) -> None:
        self._store = store
        self._live = live
        self._interval = interval
        self._renew_every = renew_every
        self._renewed_at: float | None = None  # when (loop time)
        self._failing = {"read stop requests": False, "renew run leases": False}

    async def run(self) -> None:
        """Poll until cancelled (at shutdown); a store that fails is logged and asked again."""
        while True:
            await self._live.wait_busy()
            await asyncio.sleep(self._interval)
            await self._renew()
            run_ids = self._live.stoppable()
            if not run_ids:
                continue
            try:
                requests = await self._store.stop_requests(run_ids)
            except Exception as exc:
                self._failed("read stop requests", exc)
                continue
            self._answered("read stop requests")
            for run_id, user_id in requests.items():
                if self._live.stop(run_id, status=RunStatus.CANCELLED, reason=stop_reason(user_id)):
                    log.info("run %s: stopped by %s from another process", run_id, user_id)

    async def _renew(self) -> None:
        """Renew the leases of every run this process carries when due: live ones, those
        being stopped (they may still be writing their end to Slack), and ended ones whose
        final record is not saved yet."""
        run_ids = self._live.ids()
        now = asyncio.get_running_loop().time()
        due = self._renewed_at is None or now - self._renewed_at >= self._renew_every
        if not run_ids or not due:
            return
        try:
            await self._store.renew_leases(sorted(run_ids))
        except Exception as exc:
            self._failed("renew run leases", exc)
            return
        self._answered("renew run leases")
        self._renewed_at = now

    def _failed(self, what: str, exc: Exception) -> None:
        if not self._failing[what]:
            log.warning("cannot %s, will retry: %s", what, exc)
        self._failing[what] = True

    def _answered(self, what: str) -> None:
        if self._failing[what]:
            log.info("can %s again", what)
        self._failing[what] = False
