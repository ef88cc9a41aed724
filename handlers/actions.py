"""Buttons: Stop cancels a live run (only its requester or an admin may)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.models import RunStatus
from handlers.render import STOP_ACTION_ID

if TYPE_CHECKING:
    from handlers.app import BotDeps

log = logging.getLogger(__name__)


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
            await _tell(respond, "This run has already finished.")
            return
        if user_id != run.user_id and not deps.is_admin(user_id):
            log.info("user %s may not stop run %s", user_id, run_id)
            await _tell(respond, f"Only <@{run.user_id}> or an admin can stop this run.")
            return
        deps.runner.live.stop(run_id, status=RunStatus.CANCELLED, reason=f"Stopped by <@{user_id}>")


async def _tell(respond: AsyncRespond, text: str) -> None:
    await respond(text=text, response_type="ephemeral", replace_original=False)
