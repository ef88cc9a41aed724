"""Totals count each request once: a /team, /pipeline or /compare is one request, whose
tokens already include its children's. Real runs through the bot, then `/history stats` in
Slack and `agentbot stats --json` on the same database."""

from __future__ import annotations

import json

from bot.models import RunKind, RunRecord, RunStatus
from bot.query import compact
from tests.test_admin import ADMIN, history, text_of
from tests.test_cli import agentbot
from tests.test_team import PLAN, Crew

KINDS = {"/team": RunKind.TEAM, "/pipeline": RunKind.PIPELINE, "/compare": RunKind.COMPARE}


async def test_a_team_pipeline_and_comparison_count_once_with_their_childrens_tokens(
    start_bot, emulator, tmp_path
):
    crew = Crew(plan=PLAN[:2], output_size=400)
    bot = await start_bot(crew.factory, AGENTBOT_ADMINS=ADMIN, AGENTBOT_COMPARE_MODELS="m-a,m-b")
    parents: list[RunRecord] = []
    for command, kind in KINDS.items():
        await bot.command("solar panels", command=command)
        await bot.wait_for_run(kind=kind, count=1 if kind is not RunKind.COMPARE else 3,
                               timeout=60)  # fmt: skip
        [parent] = [r for r in await bot.runs(kind=kind) if r.parent_id is None]
        assert parent.status is RunStatus.SUCCEEDED
        children = await bot.store.children(parent.id)
        assert len(children) >= 2 and children[0].output_tokens > 0
        # The parent's tokens include its children's (and a team's planner's).
        own = (parent.input_tokens - sum(c.input_tokens for c in children),
               parent.output_tokens - sum(c.output_tokens for c in children))  # fmt: skip
        assert own >= (0, 0) if kind is RunKind.TEAM else own == (0, 0), kind
        parents.append(parent)
    tokens_in = sum(p.input_tokens for p in parents)
    tokens_out = sum(p.output_tokens for p in parents)

    code, out, err = await agentbot(
        "stats",
        "--json",
        env={"AGENTBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'agentbot.db'}"},
    )
    assert code == 0, err
    stats = json.loads(out)
    assert stats["total"] == 3
    assert (stats["input_tokens"], stats["output_tokens"]) == (tokens_in, tokens_out)
    assert stats["by_status"] == {"succeeded": 3}
    assert stats["by_kind"] == {"compare": 1, "pipeline": 1, "team": 1}
    assert sum(day["runs"] for day in stats["per_day"]) == 3
    assert stats["top_users"] == [{"user_id": "U123", "runs": 3}]

    text = text_of(await history(bot, "stats"))
    assert "*3 runs*" in text
    assert f"*Tokens* {compact(tokens_in)} in · {compact(tokens_out)} out" in text
