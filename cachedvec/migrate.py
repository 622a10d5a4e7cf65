"""Create, upgrade and downgrade cachedvec's tables in a SQL database.

The schema belongs to the Alembic scripts in the repository's ``migrations/``
folder, which a wheel installs as ``cachedvec/migrations``. This module runs
them through Alembic's Python API, so no ``alembic.ini`` is needed::

    from cachedvec import migrate
    migrate.upgrade("postgresql+psycopg://user:pw@host/db")   # what `cachedvec migrate` runs
    migrate.current("sqlite:///cache.db")                      # -> "0001" or None
    migrate.downgrade("sqlite:///cache.db", "base")            # drops cachedvec's tables

Each call runs in one transaction (SQLite and PostgreSQL both roll DDL back),
and concurrent upgrades of one database wait for each other, so a failure or
a race never leaves a half-migrated schema. To write a new revision::

    from alembic import command
    command.revision(migrate.alembic_config(), message="add ...")
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from cachedvec.errors import SchemaError, StoreError
from cachedvec.stores import redact_url
from cachedvec.stores.sql import describe_connection_error, make_engine
from cachedvec.stores.sql_schema import SQLITE_APPLICATION_ID, VERSION_TABLE

__all__ = [
    "alembic_config",
    "current",
    "downgrade",
    "head",
    "is_known_revision",
    "move_to",
    "script_location",
    "upgrade",
]


def script_location() -> Path:
    """The folder of Alembic scripts: installed package data, else the checkout's."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StoreError(
        f"cachedvec's migration scripts are missing (looked in {package / 'migrations'}): "
        "reinstall cachedvec"
    )


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` for cachedvec's scripts (and ``url``, for offline SQL)."""
    config = Config()
    # ConfigParser interpolation: a literal '%' in the path must be doubled.
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    if url is not None:
        config.attributes["url"] = url
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision this cachedvec knows."""
    revision = _scripts().get_current_head()
    assert revision is not None, "the migrations folder has no revision"
    return revision


def is_known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this cachedvec's migration scripts."""
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def current(url: str) -> str | None:
    """The revision a database is at, or ``None`` if it has no cachedvec tables."""
    engine = make_engine(url, for_migrations=True)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(describe_connection_error(url, exc)) from exc
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> str | None:
    """Upgrade a database to ``revision`` (default: the newest); return where it is now.

    A new or empty SQLite file is also marked as created by cachedvec, so
    later versions of cachedvec upgrade it without being asked.
    """
    return _run(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> str | None:
    """Downgrade a database to ``revision`` (``"base"`` drops every cachedvec table)."""
    return _run(url, "downgrade", revision)


def move_to(url: str, revision: str) -> str | None:
    """Upgrade or downgrade a database to ``revision``, whichever way it lies.

    ``"base"``, or any revision older than the database's, downgrades (``"base"``
    drops every cachedvec table); anything else upgrades.
    """
    at = current(url)
    if revision == "base" or (at is not None and revision != at and _is_older(revision, at)):
        return downgrade(url, revision)
    return upgrade(url, revision)


def _is_older(revision: str, than: str) -> bool:
    try:
        return any(r.revision == revision for r in _scripts().iterate_revisions(than, "base"))
    except CommandError:
        return False  # not one of ours: upgrade() says so


def _run(url: str, direction: str, revision: str) -> str | None:
    engine = make_engine(url, for_migrations=True)
    config = alembic_config(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                _mark_new_sqlite_file(conn)
            config.attributes["connection"] = conn
            if direction == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
        return current(url)
    except CommandError as exc:
        raise SchemaError(
            f"cannot {direction} store {redact_url(url)} to {revision!r}: {exc}"
        ) from exc
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(describe_connection_error(url, exc)) from exc
    finally:
        engine.dispose()


def _mark_new_sqlite_file(conn: sa.Connection) -> None:
    """Stamp cachedvec's application id into a SQLite file that holds nothing yet."""
    if conn.exec_driver_sql("PRAGMA application_id").scalar() != 0:
        return
    if conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar() == 0:
        conn.exec_driver_sql(f"PRAGMA application_id={SQLITE_APPLICATION_ID}")
