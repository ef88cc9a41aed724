"""Alembic environment for agentbot; run through `storage.db.upgrade`, which passes the
connection in `config.attributes["connection"]` (there is no alembic.ini)."""

from __future__ import annotations

from alembic import context

from storage.search import is_search_object
from storage.tables import Base

config = context.config
target_metadata = Base.metadata


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Leave the one-backend search index (storage/search.py) out of autogenerate."""
    return not is_search_object(name)


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: print the SQL for the URL given as `sqlalchemy.url`."""
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("offline migrations need sqlalchemy.url set in the Alembic config")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "no database connection: run migrations with `agentbot db upgrade` "
            "(storage.db.upgrade), which passes one in config.attributes['connection']"
        )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
