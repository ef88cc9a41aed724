"""Prompt search that stays fast at a million runs.

`prompt ILIKE '%words%'` is the meaning of a search everywhere; on its own it reads every
prompt in range when few match. On SQLite migration 0003 adds an FTS5 trigram index
(`runs_search`, keyed through `run_search_keys`): every run whose prompt contains the text
contains all of its trigrams, so the index gives a superset of the matches in a few ms, and
the ILIKE then checks each. When the text is shorter than three characters, or so common
that the candidates would number more than `MAX_CANDIDATES`, the plain scan is the faster
way (a common word fills a page of newest runs quickly) and is used instead.

On PostgreSQL the pg_trgm GIN index of migration 0003, when present, serves `ILIKE`
directly and needs nothing here.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bot.query import clean_words

log = logging.getLogger(__name__)

MAX_CANDIDATES = 5000
MAX_TRIGRAMS = 32
SEARCH_TABLE = "runs_search"
KEYS_TABLE = "run_search_keys"
TRIGGERS = ("runs_search_insert", "runs_search_update", "runs_search_delete")
PG_TRIGRAM_INDEX = "ix_runs_prompt_trgm"


def is_search_object(name: str | None) -> bool:
    """Whether a table or index belongs to the search index (kept out of `Base.metadata`
    because it exists on one backend only; schema comparisons skip it)."""
    if not name:
        return False
    return name in (KEYS_TABLE, PG_TRIGRAM_INDEX) or name.startswith(SEARCH_TABLE)


async def sqlite_search_ready(conn: AsyncConnection) -> bool:
    """Whether the FTS index and the three triggers that keep it current are all there.

    A later migration that rebuilds `runs` (Alembic's batch mode on SQLite) drops the
    triggers with the table; the index is then stale, and searches scan instead.
    """
    names = {
        row[0]
        for row in await conn.execute(
            text("SELECT name FROM sqlite_master WHERE name IN (:t, :a, :b, :c)"),
            {"t": SEARCH_TABLE, "a": TRIGGERS[0], "b": TRIGGERS[1], "c": TRIGGERS[2]},
        )
    }
    ready = names == {SEARCH_TABLE, *TRIGGERS}
    if SEARCH_TABLE in names and not ready:
        log.warning("the prompt search index has lost its triggers: searches will scan")
    return ready


def trigram_query(words: str) -> str | None:
    """An FTS5 query that every text containing `words` matches (all its trigrams), or None
    when `words` has fewer than three characters. Bound as a parameter, never spliced.
    A NUL or lone surrogate is left out, as `storage.history.prompt_contains` does."""
    words = clean_words(words)
    grams = list(dict.fromkeys(words[i : i + 3] for i in range(len(words) - 2)))
    if not grams:
        return None
    return " AND ".join('"' + gram.replace('"', '""') + '"' for gram in grams[:MAX_TRIGRAMS])


async def candidate_ids(session: AsyncSession, words: str) -> list[str] | None:
    """Ids of the runs whose prompts may contain `words` (a superset of the matches), or
    None when the index cannot narrow the search usefully."""
    match = trigram_query(words)
    if match is None:
        return None
    matching = f"SELECT rowid FROM {SEARCH_TABLE} WHERE {SEARCH_TABLE} MATCH :match"
    # Counting first is ~10x cheaper than looking up thousands of ids for a common word.
    counted = text(f"SELECT count(*) FROM ({matching} LIMIT :cap)")
    found = (await session.execute(counted, {"match": match, "cap": MAX_CANDIDATES + 1})).scalar()
    if found is None or found > MAX_CANDIDATES:
        return None
    ids = text(f"SELECT k.run_id FROM {KEYS_TABLE} AS k WHERE k.key IN ({matching})")
    return list((await session.execute(ids, {"match": match})).scalars())
