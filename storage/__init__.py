"""Everything SQL: the engine, the `runs` table, migrations and the SQL run store."""

from storage.db import check, create_engine, upgrade
from storage.repository import SqlRunStore

__all__ = ["SqlRunStore", "check", "create_engine", "upgrade"]
