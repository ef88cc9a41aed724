"""The team planner's structured output, and the prompts of a team's agents."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, Field

from bot.config import TeamSpec
from bot.models import RunRecord, RunStatus


class PlannedSubtask(BaseModel):
    role: str = Field(description="One of the roles offered, spelled exactly as given.")
    title: str = Field(description="A short title for the subtask, under 60 characters.")
    instructions: str = Field(description="What this role should do, in one or two sentences.")


class Plan(BaseModel):
    """The planner's structured output."""

    subtasks: list[PlannedSubtask] = Field(min_length=1, max_length=12)


@dataclass(frozen=True)
class Subtask:
    role: str
    title: str
    instructions: str


def planner_prompt(task: str, team: TeamSpec) -> str:
    return (
        f"Task: {task}\n\n"
        f"Roles you can assign: {', '.join(team.roles)}.\n"
        f"Split the task into at most {team.max_subtasks} subtasks, one role each."
    )


def normalise_plan(plan: Plan | None, task: str, team: TeamSpec) -> list[Subtask]:
    """The subtasks to run: the plan's (bounded, unknown roles mapped to the first role), or,
    without a usable plan (fewer than two subtasks), one subtask per configured role."""
    if plan is not None and len(plan.subtasks) >= 2:
        return [
            Subtask(
                role=item.role if item.role in team.roles else team.roles[0],
                title=" ".join(item.title.split())[:80] or item.role,
                instructions=item.instructions,
            )
            for item in plan.subtasks[: team.max_subtasks]
        ]
    return [
        Subtask(role=role, title=f"{role.capitalize()}'s view", instructions=task)
        for role in team.roles[: team.max_subtasks]
    ]


def subtask_prompt(task: str, subtask: Subtask) -> str:
    return (
        f"The team's task: {task}\n\n"
        f"Your subtask, as the {subtask.role}: {subtask.title}\n{subtask.instructions}"
    )


def synthesis_prompt(task: str, subtasks: list[Subtask], runs: list[RunRecord]) -> str:
    """Every subtask's full output (never truncated), and which ones failed."""
    parts = [f"The team's task: {task}\n", "Results of the subtasks, in full:\n"]
    for number, (subtask, run) in enumerate(zip(subtasks, runs, strict=True), start=1):
        state = "done" if run.status is RunStatus.SUCCEEDED else f"FAILED: {run.error}"
        parts.append(f"## Subtask {number} — {subtask.role}: {subtask.title} ({state})")
        parts.append(run.output or "(no output)")
        parts.append("")
    failed = [
        s.role for s, r in zip(subtasks, runs, strict=True) if r.status is not RunStatus.SUCCEEDED
    ]
    if failed:
        parts.append(f"These subtasks failed: {', '.join(failed)}. Say so in the answer.")
    parts.append("Write the team's final answer.")
    return "\n".join(parts)


_ROLE_LINE = re.compile(r"Roles you can assign: (?P<roles>[^.\n]+)\.")


def roles_in(prompt: str) -> list[str]:
    """The roles a planner prompt offers (used by the offline demo model)."""
    match = _ROLE_LINE.search(prompt)
    return [r.strip() for r in match["roles"].split(",")] if match else []
