"""Engines, sessions and schema migrations of the registry database.

SQLite (the embedded default) and PostgreSQL are both first-class. The schema is only
ever created by Alembic (``upgrade``), never by ``metadata.create_all``, so that the
migrations are exercised everywhere the registry runs.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from components.registry.tables import UTCDateTime
from components.settings import Settings, get_settings

PACKAGE_DIR = Path(__file__).resolve().parent
ALEMBIC_INI = PACKAGE_DIR / "alembic.ini"
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"

# Any constant will do: it only has to be the same for every dlvm process.
_PG_MIGRATION_LOCK = 0x646C766D

_engines: dict[tuple[str, bool], Engine] = {}
_at_head: set[str] = set()
_lock = threading.Lock()


def _sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _make_engine(url: str, *, foreign_keys: bool = True, immediate: bool = True) -> Engine:
    """A new engine; for SQLite with real transactions, FK enforcement, WAL and a busy timeout.

    SQLite transactions start with ``BEGIN IMMEDIATE``: writers queue up on the busy
    timeout instead of failing later with "database is locked" when a read snapshot
    goes stale, which also makes "next version number" reads safe. Keep sessions short.
    """
    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    path = _sqlite_path(url)
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    if path is None:
        kwargs["poolclass"] = StaticPool  # one shared in-memory database
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # pysqlite's own transaction handling skips BEGIN before DDL and breaks
        # SAVEPOINT; take it over (the SQLAlchemy-documented recipe) so that
        # migrations and promotions are really atomic.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA busy_timeout=30000")
        if path is not None:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # Readers (immediate=False) take a plain deferred BEGIN: under WAL they read a
        # snapshot without queueing behind writers or each other.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def engine_for(url: str, *, read_only: bool = False) -> Engine:
    """The process-wide engine for ``url`` (created on first use); ``read_only`` engines
    are for sessions that never write (the API's reads)."""
    with _lock:
        engine = _engines.get((url, read_only))
        if engine is None:
            engine = _engines[(url, read_only)] = _make_engine(url, immediate=not read_only)
        return engine


def dispose_engines() -> None:
    """Close every cached engine (tests, forked workers)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _at_head.clear()


def alembic_config(url: str | None = None) -> Config:
    """Alembic config of the packaged migrations; ``url`` travels as a config attribute."""
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.attributes["url"] = url
    return cfg


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render our UTCDateTime as a plain DateTime: migrations must not import app code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def migration_options() -> dict[str, Any]:
    """Options env.py and the schema check both give Alembic, so they agree on diffs."""
    return {"render_as_batch": True, "compare_type": True, "render_item": _render_item}


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the registry has no migrations"
    return head


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: empty database)."""
    with engine_for(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _migrate(url: str, step: Callable[[Config], None]) -> None:
    """Run one Alembic command on ``url`` in a single transaction, serialized against other processes."""
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    if is_sqlite and _sqlite_path(url) is None:
        engine, own = engine_for(url), False  # in-memory: must be the shared connection
    elif is_sqlite:
        # SQLite's own advice for schema changes: foreign keys off while tables are
        # rebuilt (batch mode), then check them before committing.
        engine, own = _make_engine(url, foreign_keys=False), True
    else:
        engine, own = _make_engine(url), True
    try:
        with engine.connect() as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            cfg.attributes["configure_logging"] = False  # leave the host process's logging alone
            step(cfg)
            if is_sqlite:
                bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if bad:
                    raise RuntimeError(f"migration left foreign key violations: {bad[:5]}")
    finally:
        if own:
            engine.dispose()
    with _lock:
        _at_head.discard(url)


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``; a no-op when already there.

    Concurrent callers are serialized (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an
    advisory lock), and all of it is one transaction on both: a failure leaves the
    database as it was.
    """
    _migrate(url, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` ("base": drop every registry table)."""
    _migrate(url, lambda cfg: command.downgrade(cfg, revision))


def ensure_schema(settings: Settings | None = None) -> None:
    """Upgrade the registry database to head unless it is there already (checked once per process)."""
    url = (settings or get_settings()).database_url
    if url in _at_head:
        return
    if current_revision(url) != head_revision():
        upgrade(url)
    with _lock:
        _at_head.add(url)


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error.

    The schema is brought to head on first use. Objects stay readable after the
    block (``expire_on_commit=False``), so ids and fields can be used by the caller.
    """
    settings = settings or get_settings()
    ensure_schema(settings)
    session = Session(engine_for(settings.database_url), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_session(settings: Settings | None = None) -> Iterator[Session]:
    """A session for reads only: never committed, always rolled back, and on SQLite it
    does not take the writer lock that ``session_scope`` takes."""
    settings = settings or get_settings()
    ensure_schema(settings)
    session = Session(engine_for(settings.database_url, read_only=True), expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()  # ends the transaction; loaded rows stay readable (no expiry)
