"""Composition root of the service: builds every part and serves Slack over aiohttp.

HTTP mode serves Bolt at `POST /slack/events`; Socket Mode connects out with the app token.
Both serve `GET /healthz` and `GET /metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus

import aiohttp
from aiohttp import web
from pydantic_ai.models import Model
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.agents import AgentRegistry, ModelFactory
from bot.config import AppConfig, Settings
from bot.limits import Admission, Guard
from bot.live import LiveRuns
from bot.mcp import McpServers
from bot.metrics import Metrics, watch_loop_lag
from bot.models import RunStatus, utcnow
from bot.runner import Runner
from bot.tasks import BackgroundTasks
from bot.team import Orchestrator
from handlers import render
from handlers.actions import LEASE_RENEW_EVERY, POLL_INTERVAL, LiveRunsPoller
from handlers.app import BotDeps, build_app
from handlers.incoming import RawBodyVerifier, Rejected, bolt_request
from handlers.pacer import Budget, Pacer, PacerConfig, SlackCallFailed
from handlers.thread_reader import SlackThreadReader
from storage.db import create_engine, upgrade
from storage.repository import SqlRunStore

log = logging.getLogger(__name__)

INTERRUPTED_BY_RESTART = "the bot restarted while this run was in progress"
INTERRUPTED_BY_SHUTDOWN = "the bot was shut down while this run was in progress"
FINAL_WRITE_GRACE = 15.0
# Seconds after which a run whose lease was not renewed (nor the run created) is taken for
# left by a process that died: five renewals (`LEASE_RENEW_EVERY`) missed. Short enough
# that a lone process restarting after a crash marks its old runs interrupted within
# seconds (`Service.recover_later`).
LEASE_STALE_AFTER = 10.0
# slack_sdk applies its own 30 s timeout only to the sessions it makes; ours carries it instead.
SLACK_CALL_TIMEOUT = 30.0


@dataclass
class Parts:
    """Everything the service is made of, for tests and the playground to reach into."""

    settings: Settings
    engine: AsyncEngine
    store: SqlRunStore
    metrics: Metrics
    client: AsyncWebClient
    pacer: Pacer
    runner: Runner
    agents: AgentRegistry
    bolt: AsyncApp
    background: BackgroundTasks
    mcp: McpServers
    http: aiohttp.ClientSession  # every Slack Web API call goes through it, kept alive

    async def close(self) -> None:
        """Release what `build_parts` opened: the pacer, MCP servers, connections, database."""
        await self.pacer.close()
        await self.mcp.stop()
        await self.http.close()
        await self.engine.dispose()


async def build_parts(
    settings: Settings, config: AppConfig, *, model: Model | ModelFactory | None = None
) -> Parts:
    """Build and connect every part; creates or upgrades the database schema.

    `model`, when given, replaces every agent's model (tests and benchmarks).
    """
    mcp = McpServers(config.mcp_servers)
    agents = AgentRegistry(config, settings, model=model, mcp=mcp)
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
    except BaseException:
        await engine.dispose()
        raise
    store = SqlRunStore(engine)
    metrics = Metrics()
    # One session per process: without it slack_sdk opens (and closes) a connection per call.
    # Bolt's per-request clients copy `session` from this client, so they share it too.
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SLACK_CALL_TIMEOUT))
    # No rate-limit retry handler: the pacer owns 429s.
    client = AsyncWebClient(
        token=settings.slack_bot_token,
        base_url=settings.slack_api_url,
        session=http,
        timeout=int(SLACK_CALL_TIMEOUT),
    )
    pacer = Pacer(
        client,
        config=PacerConfig(
            interval=settings.update_interval,
            chat_update=Budget(per_minute=settings.chat_update_per_minute, burst=5),
        ),
        metrics=metrics,
    )
    admission = Admission(capacity=settings.max_concurrent_runs)
    metrics.runs_waiting.set_function(lambda: admission.waiting)
    runner = Runner(
        store=store,
        metrics=metrics,
        live=LiveRuns(),
        admission=admission,
        checkpoint_interval=settings.checkpoint_interval,
        fetch_policy=config.fetch,
        thread_reader=SlackThreadReader(pacer),
    )
    background = BackgroundTasks()
    orchestrator = Orchestrator(runner=runner, agents=agents, store=store)
    deps = BotDeps(
        settings=settings,
        config=config,
        agents=agents,
        runner=runner,
        store=store,
        pacer=pacer,
        background=background,
        orchestrator=orchestrator,
        guard=Guard(
            allowed_users=settings.allowed_users,
            allowed_channels=settings.allowed_channels,
            runs_per_user_per_minute=settings.user_runs_per_minute,
        ),
    )
    bolt = build_app(deps, client)
    try:
        await mcp.start()  # a server that cannot start is a ConfigError: one line, exit 2
    except BaseException:
        await http.close()
        await engine.dispose()
        raise
    return Parts(
        settings, engine, store, metrics, client, pacer, runner, agents, bolt, background, mcp, http
    )


class Service:
    """The running bot: HTTP endpoints, optional Socket Mode, recovery, the poller for Stop
    requests made on other processes (which also renews the leases of our live runs), and
    graceful shutdown.

    Several processes may share the database. Recovery takes only the runs nobody carries
    out any more: those whose lease is older than `lease_stale_after` seconds.
    """

    def __init__(
        self,
        parts: Parts,
        *,
        lease_stale_after: float = LEASE_STALE_AFTER,
        lease_renew_every: float = LEASE_RENEW_EVERY,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        """The timings are for tests; keep `lease_stale_after` several times
        `lease_renew_every` (and `poll_interval`)."""
        self.parts = parts
        self._draining = False
        self._web: web.AppRunner | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._lease_stale_after = lease_stale_after
        self._live_poller = LiveRunsPoller(
            parts.store, parts.runner.live, interval=poll_interval, renew_every=lease_renew_every
        )
        self._polling: asyncio.Task[None] | None = None
        self._recovering_later: asyncio.Task[None] | None = None
        self._watching_lag: asyncio.Task[None] | None = None
        self.recoveries = 0  # recovery passes made (start-up's included)
        self._recovered = asyncio.Event()
        self.port: int | None = None
        secret = parts.settings.slack_signing_secret
        self._verifier = RawBodyVerifier(secret) if secret else None

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/slack/events", self._slack_events)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(
        self,
        *,
        host: str,
        port: int,
        socket_mode: bool = False,
        app: web.Application | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """Recover from an earlier crash, then listen on `host:port` (0 picks a free port),
        or on `sock` when given: a socket already bound (the playground binds first, to
        learn its port before it builds the parts).

        Recovery runs now, then every `lease_stale_after` seconds (`recover_later`)."""
        await self.recover()
        self._watching_lag = asyncio.create_task(
            watch_loop_lag(self.parts.metrics), name="event-loop-lag"
        )
        self._web = web.AppRunner(app or self.web_app(), handle_signals=False, access_log=None)
        await self._web.setup()
        site = web.TCPSite(self._web, host, port) if sock is None else web.SockSite(self._web, sock)
        await site.start()
        self.port = self._web.addresses[0][1]
        if socket_mode:
            token = self.parts.settings.slack_app_token
            self._socket = AsyncSocketModeHandler(self.parts.bolt, token)
            await self._socket.connect_async()
        # Stop pressed on another process reaches our runs, and our runs keep their leases, here.
        self._polling = asyncio.create_task(self._live_poller.run(), name="live-runs-poller")
        self._recovering_later = asyncio.create_task(self.recover_later(), name="recover-left-runs")
        log.info(
            "agentbot listening on http://%s:%s (%s)",
            host,
            self.port,
            "Socket Mode" if socket_mode else "HTTP",
        )

    async def recover(self) -> None:
        """Mark runs a crash left `running` as interrupted and say so in their messages.

        Only runs no process carries out: a live run's process renews its lease every few
        seconds, so a run whose lease (or, before its first renewal, its creation) is older
        than `lease_stale_after` was left by a process that died. Runs live in other
        processes sharing the database are left alone, and this process's own runs are never
        taken, whatever their lease says (it may not have been renewed while the database was
        out of reach).
        """
        stale_before = utcnow() - timedelta(seconds=self._lease_stale_after)
        interrupted = await self.parts.store.mark_interrupted(
            INTERRUPTED_BY_RESTART,
            stale_before=stale_before,
            carried=self.parts.runner.live.ids(),
        )
        for run in interrupted:
            if not (run.channel_id and run.message_ts):
                continue
            first = render.final_messages(run)[0]
            try:
                await self.parts.pacer.workspace(run.team_id).call(
                    "chat.update",
                    channel=run.channel_id,
                    ts=run.message_ts,
                    text=first.text,
                    blocks=first.blocks,
                )
            except SlackCallFailed as exc:
                log.warning("could not mark run %s interrupted in Slack: %s", run.id, exc)
        self.recoveries += 1
        self._recovered.set()

    async def wait_recoveries(self, count: int) -> None:
        """Return once `count` recovery passes have been made, start-up's included."""
        while self.recoveries < count:
            self._recovered.clear()
            await self._recovered.wait()

    async def recover_later(self) -> None:
        """Recover again every `lease_stale_after` seconds, for as long as the bot runs.

        A process restarting after a crash finds its own earlier runs with leases still
        fresh (renewed up to the crash), so `recover` at start-up leaves them; the first
        pass after the stale age takes them. Later passes take the runs of another process
        that died while this one runs. Each pass is one UPDATE that finds nothing when all
        is well. Cancelled at shutdown; a failed pass is logged and tried again next time.
        """
        while True:
            await asyncio.sleep(self._lease_stale_after)
            try:
                await self.recover()
            except Exception:
                log.exception("recovering runs left by a process that died failed")

    async def stop(self, *, grace: float) -> None:
        """Stop taking requests, let live runs finish for `grace` seconds, interrupt the rest."""
        self._draining = True
        if self._recovering_later is not None:
            self._recovering_later.cancel()
            await asyncio.wait([self._recovering_later])
        if self._socket is not None:
            await self._socket.close_async()
        work = self.parts.background
        if not await work.wait(grace):
            live = self.parts.runner.live
            stopped = live.stop_all(status=RunStatus.INTERRUPTED, reason=INTERRUPTED_BY_SHUTDOWN)
            log.info("interrupting %d run(s) still live after %.0f s", stopped, grace)
            await work.wait(FINAL_WRITE_GRACE)
        # Final records the database refused so far get one last try.
        if lost := await self.parts.runner.records.flush():
            log.error("%d final record(s) could not be saved before shutdown", lost)
        for task in (self._polling, self._watching_lag):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        if self._web is not None:
            await self._web.cleanup()
        await self.parts.close()

    async def _slack_events(self, request: web.Request) -> web.Response:
        if self._draining:
            # Slack retries unacknowledged requests: another instance, or this one restarted,
            # takes it.
            return web.Response(status=503, text="shutting down")
        try:
            # The signature is checked on the raw bytes before anything parses them.
            bolt = bolt_request(
                await request.read(),
                headers=request.headers,
                query=request.query_string,
                verifier=self._verifier,
            )
        except Rejected as rejected:
            log.warning(
                "refused a request to /slack/events from %s (HTTP %d): %s",
                request.remote,
                rejected.status,
                rejected.reason,
            )
            return web.Response(status=rejected.status, text=HTTPStatus(rejected.status).phrase)
        response = await self.parts.bolt.async_dispatch(bolt)
        return await to_aiohttp_response(response)

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._draining:
            return web.json_response({"ok": False, "reason": "shutting down"}, status=503)
        try:
            await asyncio.wait_for(self.parts.store.ping(), timeout=2.0)
        except Exception as exc:
            return web.json_response(
                {"ok": False, "reason": f"database: {type(exc).__name__}"}, status=503
            )
        if problems := await self.parts.mcp.problems(timeout=2.0):
            reason = "; ".join(f"MCP server {name!r}: {why}" for name, why in problems.items())
            return web.json_response({"ok": False, "reason": reason}, status=503)
        return web.json_response({"ok": True, "live_runs": len(self.parts.runner.live)})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.parts.metrics.render(),
            headers={"Content-Type": self.parts.metrics.content_type},
        )
