"""Several agents on one request: a team (plan → concurrent subtasks → synthesis), a pipeline
(stages in order, each feeding the next) and a comparison (one prompt, several models).

Each is a parent run with child runs. The parent shows itself on a `Board`; every child
streams into its own reply in the board's thread through the ordinary `Runner`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from bot.agents import AgentRegistry, BuiltAgent
from bot.board import BoardItem, BoardView, ItemStatus
from bot.config import PipelineSpec, TeamSpec
from bot.errors import BotError, ConfigError
from bot.live import LiveRun, StopReason
from bot.models import RunKind, RunRecord, RunStatus, utcnow
from bot.plan import Plan, Subtask, normalise_plan, planner_prompt, subtask_prompt, synthesis_prompt
from bot.ports import Board, RunStore
from bot.runner import Runner, RunPolicy

log = logging.getLogger(__name__)


def policy_for(built: BuiltAgent) -> RunPolicy:
    spec = built.spec
    return RunPolicy(
        idle_timeout=spec.idle_timeout,
        total_timeout=spec.total_timeout,
        retries=spec.retries,
        token_budget=spec.token_budget,
        tool_limits=spec.tool_limits,
    )


class Orchestrator:
    """Runs teams, pipelines and comparisons; records the parent and its children."""

    def __init__(self, *, runner: Runner, agents: AgentRegistry, store: RunStore) -> None:
        self._runner = runner
        self._agents = agents
        self._store = store

    # -- team --------------------------------------------------------------------------------

    async def team(self, parent: RunRecord, team: TeamSpec, board: Board) -> RunRecord:
        view = BoardView(title="Team task", phase="planning…")

        async def work(crew: Crew) -> None:
            subtasks = await self._plan(parent, team)
            view.items = [BoardItem(label=f"*{s.role.capitalize()}* — {s.title}") for s in subtasks]
            view.phase = f"{len(subtasks)} agents working at once…"
            board.show(view)
            limit = asyncio.Semaphore(team.concurrency)

            async def one(index: int, subtask: Subtask) -> RunRecord:
                async with limit:
                    return await crew.child(
                        self._agents.get(subtask.role),
                        kind=RunKind.SUBTASK,
                        prompt=subtask_prompt(parent.prompt, subtask),
                        heading=f"*{subtask.role.capitalize()}* — {subtask.title}",
                        item=view.items[index],
                    )

            results = await crew.gather([one(i, s) for i, s in enumerate(subtasks)])
            if not any(r.status is RunStatus.SUCCEEDED for r in results):
                raise BotError("every subtask failed, so there is nothing to synthesise")
            view.items.append(BoardItem(label="*Coordinator* — synthesis"))
            view.phase = "writing the synthesis…"
            board.show(view)
            synthesis = await crew.child(
                self._agents.get(team.coordinator),
                kind=RunKind.SYNTHESIS,
                prompt=synthesis_prompt(parent.prompt, subtasks, results),
                heading="🧩 *Coordinator* — synthesis",
                item=view.items[-1],
                last=True,
            )
            parent.output = synthesis.output
            failed = [r.agent or "?" for r in results if r.status is not RunStatus.SUCCEEDED]
            if synthesis.status is not RunStatus.SUCCEEDED:
                raise BotError(f"the synthesis failed: {synthesis.error}")
            if failed:
                parent.error = (
                    f"{len(failed)} of {len(results)} subtasks failed: {', '.join(failed)}"
                )

        return await self._orchestrate(parent, board, view, work)

    async def _plan(self, parent: RunRecord, team: TeamSpec) -> list[Subtask]:
        planner = self._agents.get(team.planner)
        plan: Plan | None = None
        try:
            prompt = planner_prompt(parent.prompt, team)
            async with (
                asyncio.timeout(planner.spec.total_timeout),
                planner.agent.run_stream(prompt, output_type=Plan) as result,
            ):
                plan = await result.get_output()
                usage = result.usage
            parent.input_tokens += usage.input_tokens or 0
            parent.output_tokens += usage.output_tokens or 0
            parent.requests += usage.requests or 0
        except Exception as exc:  # any planner failure falls back to one subtask per role
            log.warning("run %s: planner failed (%s); one subtask per role", parent.id, exc)
        return normalise_plan(plan, parent.prompt, team)

    # -- pipeline ----------------------------------------------------------------------------

    async def pipeline(self, parent: RunRecord, pipeline: PipelineSpec, board: Board) -> RunRecord:
        stages = pipeline.stages
        view = BoardView(
            title="Pipeline",
            phase="starting…",
            items=[
                BoardItem(label=f"*{n}. {s.name}* ({s.agent})") for n, s in enumerate(stages, 1)
            ],
        )

        async def work(crew: Crew) -> None:
            previous = parent.prompt
            for number, (stage, item) in enumerate(zip(stages, view.items, strict=True), start=1):
                view.phase = f"stage {number} of {len(stages)}: {stage.name}…"
                board.show(view)
                run = await crew.child(
                    self._agents.get(stage.agent),
                    kind=RunKind.STAGE,
                    prompt=stage.prompt.format(input=parent.prompt, previous=previous),
                    heading=f"*Stage {number}: {stage.name}* ({stage.agent})",
                    item=item,
                    last=number == len(stages),
                )
                if run.status is not RunStatus.SUCCEEDED:
                    for later in view.items[number:]:
                        later.status = ItemStatus.SKIPPED
                    raise BotError(f"stage {number} ({stage.name}) failed: {run.error}")
                previous = run.output
            parent.output = previous

        return await self._orchestrate(parent, board, view, work)

    # -- compare -----------------------------------------------------------------------------

    async def compare(
        self, parent: RunRecord, agent: str, models: list[str], board: Board
    ) -> RunRecord:
        view = BoardView(
            title="Model comparison",
            phase=f"{len(models)} models answering at once…",
            items=[BoardItem(label=f"`{model}`") for model in models],
        )

        async def one(crew: Crew, model: str, item: BoardItem) -> RunRecord:
            try:
                built = self._agents.with_model(agent, model)
            except ConfigError as exc:  # a bad model string fails that model alone
                item.status, item.detail = ItemStatus.FAILED, str(exc)
                return await crew.could_not_start(
                    kind=RunKind.COMPARE, prompt=parent.prompt, model=model, error=str(exc)
                )
            run = await crew.child(
                built,
                kind=RunKind.COMPARE,
                prompt=parent.prompt,
                heading=f"🤖 `{model}`",
                item=item,
            )
            item.detail = speed_line(run)
            return run

        async def work(crew: Crew) -> None:
            results = await crew.gather(
                [one(crew, model, item) for model, item in zip(models, view.items, strict=True)]
            )
            parent.output = "\n".join(
                f"{m}: {speed_line(r)}" for m, r in zip(models, results, strict=True)
            )
            if not any(r.status is RunStatus.SUCCEEDED for r in results):
                raise BotError("no model answered")

        return await self._orchestrate(parent, board, view, work)

    # -- the frame every kind shares -------------------------------------------------------

    async def _orchestrate(
        self,
        parent: RunRecord,
        board: Board,
        view: BoardView,
        work: Callable[[Crew], Awaitable[None]],
    ) -> RunRecord:
        parent.status = RunStatus.RUNNING
        parent.started_at = utcnow()
        started = time.monotonic()
        await self._store.create(parent)
        crew = Crew(self, parent, board, view)
        with self._runner.live.track(parent) as live:
            crew.parent_live = live
            try:
                await board.open(parent, view)
                await self._store.save(parent)
                await work(crew)
                live.settle()  # its outcome is decided: a Stop from now on changes nothing
                parent.status = RunStatus.SUCCEEDED
            except asyncio.CancelledError:
                if live.stop_reason is None:
                    raise
                live.absorb_stop()
                await crew.stop(live)
            except BotError as exc:
                parent.status, parent.error = RunStatus.FAILED, str(exc)
            except Exception as exc:  # a bug must still leave an honest record and message
                log.exception("run %s crashed", parent.id)
                parent.status, parent.error = (
                    RunStatus.FAILED,
                    f"internal error ({type(exc).__name__})",
                )
            live.settle()
            crew.add_usage()
            parent.finished_at = utcnow()
            parent.duration_ms = round((time.monotonic() - started) * 1000)
            view.phase = PHASES[parent.status]
            view.summary = totals_line(parent)
            await self._runner.save_final(parent)  # saved first, as a run's (`Runner.run`)
            if parent.message_ts is not None:
                try:
                    await board.close(parent, view)
                except Exception:
                    log.exception("run %s: could not show the final state", parent.id)
            parent.slack_writes = board.writes
            await self._runner.save_final(parent)
        return parent


PHASES = {
    RunStatus.SUCCEEDED: "done",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "stopped",
    RunStatus.INTERRUPTED: "interrupted",
    RunStatus.RUNNING: "running",
    RunStatus.QUEUED: "queued",
}


class Crew:
    """The children of one parent run: started as tasks of their own, so that stopping the
    parent can stop each child and wait for it to record and show its end. Once the parent
    is stopped no child starts: one whose turn comes later is recorded as stopped."""

    def __init__(
        self, orchestrator: Orchestrator, parent: RunRecord, board: Board, view: BoardView
    ) -> None:
        self._orchestrator = orchestrator
        self._parent = parent
        self._board = board
        self._view = view
        self._tasks: list[asyncio.Task[RunRecord]] = []
        self._gathered: list[asyncio.Future[RunRecord]] = []
        self._stopped: StopReason | None = None
        self.parent_live: LiveRun | None = None  # set once the parent is tracked
        self.runs: list[RunRecord] = []

    async def child(
        self,
        built: BuiltAgent,
        *,
        kind: RunKind,
        prompt: str,
        heading: str,
        item: BoardItem,
        last: bool = False,
    ) -> RunRecord:
        """Run one child in its own task, keeping its board item current. `last`: the
        parent's answer is this child's; once it succeeds the parent is settled too (a Stop
        then changes neither)."""
        run = self._new_run(kind, prompt, agent=built.name, model=built.model_name)
        if self._stopped is not None:  # the parent was stopped before this child's turn
            return await self._never_started(run, item)
        self.runs.append(run)
        item.status = ItemStatus.RUNNING
        self._board.show(self._view)
        runner = self._orchestrator._runner
        task = asyncio.create_task(
            runner.run(
                built.agent,
                run,
                sink=self._board.reply(heading),
                policy=policy_for(built),
                on_settled=self._settle_parent if last else None,
            ),
            name=f"run-{run.id}",
        )
        self._tasks.append(task)
        # Waiting through `wait` keeps a stop of the parent from cancelling the child itself.
        await asyncio.wait([task])
        item.status = ItemStatus.of(run.status)
        if run.status is not RunStatus.SUCCEEDED and not item.detail:
            item.detail = run.error or ""
        self._board.show(self._view)
        return run

    def _settle_parent(self, run: RunRecord) -> None:
        if run.status is RunStatus.SUCCEEDED and self.parent_live is not None:
            self.parent_live.settle()

    async def _never_started(self, run: RunRecord, item: BoardItem) -> RunRecord:
        """Record a child that the parent's stop reached before it started."""
        assert self._stopped is not None
        run.status, run.error = self._stopped
        run.finished_at = utcnow()
        run.duration_ms = 0
        self.runs.append(run)
        item.status = ItemStatus.of(run.status)
        try:
            await self._orchestrator._store.create(run)
        except Exception as exc:
            log.warning("run %s: could not record a child that never started: %s", run.id, exc)
        return run

    async def could_not_start(
        self, *, kind: RunKind, prompt: str, model: str, error: str
    ) -> RunRecord:
        """Record a child that could not start at all (a model string of the operator's
        configuration that does not build): `failed`, unlike a user's request turned away
        (`refused`), since it is a fault to fix and belongs in the failure counts."""
        run = self._new_run(kind, prompt, agent=None, model=model)
        run.status, run.error = RunStatus.FAILED, error
        run.started_at = run.finished_at = utcnow()
        run.duration_ms = 0
        await self._orchestrator._store.create(run)
        return run

    def _new_run(self, kind: RunKind, prompt: str, *, agent: str | None, model: str) -> RunRecord:
        parent = self._parent
        return RunRecord(
            kind=kind,
            prompt=prompt,
            parent_id=parent.id,
            command=parent.command,
            agent=agent,
            model=model,
            team_id=parent.team_id,
            channel_id=parent.channel_id,
            user_id=parent.user_id,
        )

    async def gather(self, children: list[Awaitable[RunRecord]]) -> list[RunRecord]:
        tasks = [asyncio.ensure_future(child) for child in children]
        self._gathered += tasks
        await asyncio.wait(tasks)
        return [task.result() for task in tasks]

    async def stop(self, live: LiveRun) -> None:
        """Stop every child the same way the parent was stopped, those still waiting for
        their turn too; wait for them all to end."""
        status, reason = self._stopped = live.stop_reason or (RunStatus.CANCELLED, "stopped")
        live_runs = self._orchestrator._runner.live
        for run in self.runs:
            live_runs.stop_soon(run.id, status=status, reason=reason)  # its task may be starting
        if self._tasks or self._gathered:
            await asyncio.wait([*self._tasks, *self._gathered])
        live_runs.forget_stops(run.id for run in self.runs)
        for item in self._view.items:
            if item.status in (ItemStatus.PLANNED, ItemStatus.RUNNING):
                item.status = ItemStatus.CANCELLED

    def add_usage(self) -> None:
        for run in self.runs:
            self._parent.input_tokens += run.input_tokens
            self._parent.output_tokens += run.output_tokens
            self._parent.requests += run.requests
            self._parent.usage_estimated |= run.usage_estimated


def speed_line(run: RunRecord) -> str:
    """Time to first token, tokens/s and tokens, for a comparison."""
    if run.status is not RunStatus.SUCCEEDED:
        return f"{run.status.value}: {run.error or ''}".strip()
    ttft = (
        (run.first_token_at - run.started_at).total_seconds()
        if run.first_token_at and run.started_at
        else 0.0
    )
    seconds = (run.duration_ms or 0) / 1000
    rate = run.output_tokens / seconds if seconds else 0.0
    return f"first token {ttft:.1f} s · {rate:.0f} tok/s · {run.output_tokens} tokens"


def totals_line(run: RunRecord) -> str:
    seconds = (run.duration_ms or 0) / 1000
    about = "~" if run.usage_estimated else ""  # some child's tokens are estimated
    return f"{seconds:.1f} s · {about}{run.input_tokens} in / {about}{run.output_tokens} out tokens"
