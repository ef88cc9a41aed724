"""Prompt search through the store on SQLite and PostgreSQL: every alphabet is matched
without regard to case, and characters no database can bind (NUL, lone surrogates) are left
out of the search rather than breaking it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.models import RunKind, RunQuery, RunRecord
from storage.repository import SqlRunStore

BASE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PROMPTS = {
    "a": "Un CAFÉ noir, s'il vous plaît",
    "b": "un café crème",
    "c": "ÉTÉ À PARIS",
    "d": "cafe without an accent",
    "e": "ΣΟΦΙΑ and straße",
    "f": "50% été",
}


@pytest.fixture
async def store(store_on_each_database: SqlRunStore) -> SqlRunStore:
    for minute, (name, prompt) in enumerate(PROMPTS.items()):
        created = BASE + timedelta(minutes=minute)
        await store_on_each_database.create(
            RunRecord(id=name, kind=RunKind.ASK, prompt=prompt, created_at=created)
        )
    return store_on_each_database


async def found(store: SqlRunStore, words: str) -> list[str]:
    runs = await store.query(RunQuery(search=words))
    assert await store.count(RunQuery(search=words)) == len(runs)
    return sorted(run.id for run in runs)


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("café", ["a", "b"]),  # three characters and more: through the SQLite search index
        ("CAFÉ", ["a", "b"]),
        ("Café Noir", ["a"]),
        ("été", ["c", "f"]),
        ("É", ["a", "b", "c", "f"]),  # too short for the index: a scan
        ("à paris", ["c"]),
        ("sofia", []),
        ("σοφια", ["e"]),
        ("STRASSE", []),  # lower(), as PostgreSQL's ILIKE: ß is not "ss"
        ("STRAßE", ["e"]),
        ("% é", ["f"]),  # LIKE's wildcards stay literal beside accents
        ("_é", []),
        ("cafe", ["d"]),
    ],
)
async def test_search_ignores_case_in_every_alphabet(
    store: SqlRunStore, words: str, expected: list[str]
) -> None:
    assert await found(store, words) == expected


async def test_accented_searches_in_turn_get_their_own_answers(store: SqlRunStore) -> None:
    # The same statement, cached, with another pattern each time.
    assert [await found(store, w) for w in ("CAFÉ", "ÉTÉ", "crème", "CAFÉ")] == [
        ["a", "b"], ["c", "f"], ["b"], ["a", "b"]
    ]  # fmt: skip


@pytest.mark.parametrize("words", ["caf\x00é", "\x00café", "café\ud800", "caf\udcffé"])
async def test_unbindable_characters_are_left_out_of_a_search(
    store: SqlRunStore, words: str
) -> None:
    assert await found(store, words) == ["a", "b"]
