"""Alembic environment of the dlvm registry.

Where the database is, in order: a connection handed over in
``config.attributes["connection"]`` (``components.registry.db.upgrade`` does this), a URL
in ``config.attributes["url"]``, ``sqlalchemy.url`` given with ``-x``/the ini file, and
finally the DLVM settings (``DLVM_DATABASE_URL``).
"""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlmodel import SQLModel

from components.registry import tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from components.registry.db import _make_engine, migration_options

config = context.config
target_metadata = SQLModel.metadata

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from components.settings import get_settings

    return get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **migration_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    # Our engines give SQLite real transactions (see db._make_engine), so its DDL is
    # transactional like PostgreSQL's: a failed migration leaves nothing behind.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        transactional_ddl=True,
        **migration_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = _make_engine(_url(), foreign_keys=False)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
