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
a race never leaves a half-migrated schema. A call first repairs what was
changed behind cachedvec's back: tables dropped under a recorded revision
are created again, cachedvec's tables whose revision row is gone are
stamped, and a same-named table cachedvec did not create is refused by
name. To write a new revision::

    from alembic import command
    command.revision(migrate.alembic_config(), message="add ...")
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from cachedvec.errors import ConfigError, SchemaError, StoreError
from cachedvec.stores import redact_url
from cachedvec.stores.sql import describe_connection_error, make_engine
from cachedvec.stores.sql_schema import (
    PG_MIGRATION_LOCK,
    SQLITE_APPLICATION_ID,
    VERSION_TABLE,
    entries,
    metadata,
)

__all__ = [
    "alembic_config",
    "current",
    "differs_from_newest_schema",
    "downgrade",
    "foreign_table_error",
    "head",
    "is_known_revision",
    "move_to",
    "script_location",
    "upgrade",
]

log = logging.getLogger(__name__)


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


@lru_cache(maxsize=1)
def _revisions() -> tuple[str, ...]:
    """Every revision this cachedvec knows, newest first."""
    return tuple(script.revision for script in _scripts().walk_revisions())


def head() -> str:
    """The newest revision this cachedvec knows."""
    revision = _scripts().get_current_head()
    assert revision is not None, "the migrations folder has no revision"
    return revision


def is_known_revision(revision: str) -> bool:
    """Whether ``revision`` is the exact id of one of this cachedvec's migration scripts."""
    return revision in _revisions()


def current(url: str) -> str | None:
    """The revision a database is at, or ``None`` if it has no cachedvec tables."""
    engine = make_engine(url, for_migrations=True)
    try:
        with engine.connect() as conn:
            return _recorded_revision(conn)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(describe_connection_error(url, exc)) from exc
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> str | None:
    """Upgrade a database to ``revision`` (default: the newest); return where it is now.

    A new or empty SQLite file is also marked as created by cachedvec, so
    later versions of cachedvec upgrade it without being asked. Tables
    changed behind cachedvec's back are repaired first (see :func:`_repair`).
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
    return _run(url, None, revision)


def _run(url: str, direction: str | None, revision: str) -> str | None:
    """Move a database to ``revision``; ``direction`` None: whichever way it lies."""
    _check_target(revision)
    engine = make_engine(url, for_migrations=True)
    config = alembic_config(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                _mark_new_sqlite_file(conn)  # under BEGIN IMMEDIATE's write lock
            else:
                # Taken before the revision is read (migrations/env.py takes it
                # again), so two processes repairing one database (see _repair)
                # cannot both stamp it.
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK}
                )
            config.attributes["connection"] = conn
            at = _repair(conn, config, url, _recorded_revision(conn))
            if direction is None:
                direction = "downgrade" if _is_older(revision, at) else "upgrade"
            if direction == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
        return current(url)
    except (CommandError, RevisionError) as exc:
        raise SchemaError(
            f"cannot {direction or 'migrate'} store {redact_url(url)} to {revision!r}: {exc}"
        ) from exc
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(describe_connection_error(url, exc)) from exc
    finally:
        engine.dispose()


def _check_target(revision: str) -> None:
    if revision not in ("head", "base") and not is_known_revision(revision):
        raise ConfigError(
            f"{revision!r} is not a cachedvec schema revision: use head, base or one of "
            + ", ".join(_revisions())
        )


def _is_older(revision: str, than: str | None) -> bool:
    if revision == "base":
        return True
    if than is None or revision == than:
        return False
    return any(r.revision == revision for r in _scripts().iterate_revisions(than, "base"))


def _recorded_revision(conn: sa.Connection) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _repair(conn: sa.Connection, config: Config, url: str, at: str | None) -> str | None:
    """Make the recorded revision agree with tables changed behind cachedvec's back.

    Refuses a revision this code does not know. The newest revision with
    tables missing is forgotten, so that the upgrade creates them again;
    tables without a recorded revision (an interrupted stamp, a deleted row)
    are stamped if they are exactly cachedvec's newest schema. Returns the
    revision now recorded.
    """
    if at is not None and not is_known_revision(at):
        raise SchemaError(
            f"store {redact_url(url)} is at cachedvec schema revision {at!r}, unknown to "
            f"this cachedvec (which knows up to {head()}): it was made by a newer cachedvec, "
            "or not by cachedvec; upgrade cachedvec to use or migrate it"
        )
    if at not in (None, head()):
        return at  # which tables an older revision has, only its scripts know
    inspector = sa.inspect(conn)
    present = [name for name in metadata.tables if inspector.has_table(name)]
    if at is not None and len(present) < len(metadata.tables):
        log.warning(
            "store %s records cachedvec schema revision %s but its tables are missing: "
            "starting again from no tables",
            redact_url(url),
            at,
        )
        command.stamp(config, "base", purge=True)
        at = None
    if at is not None or not present:
        return at
    if differs_from_newest_schema(conn):
        raise foreign_table_error(url, present)
    log.warning(
        "store %s has cachedvec's tables but no recorded schema revision: recording %s",
        redact_url(url),
        head(),
    )
    command.stamp(config, "head")
    return head()


def foreign_table_error(url: str, names: list[str]) -> SchemaError:
    """The error for tables named like cachedvec's that cachedvec did not create.

    ``migrate`` refuses to touch them, so the message never suggests it.
    """
    return SchemaError(
        f"store {redact_url(url)} has a table {', '.join(names)} that cachedvec did not "
        f"create (no cachedvec revision recorded, and not cachedvec's schema {head()}): "
        "keep the cache in another database, or rename or drop that table"
    )


def differs_from_newest_schema(conn: sa.Connection) -> bool:
    """Whether cachedvec's tables in ``conn``'s database differ from its newest schema.

    An index a DBA added does not count; a PostgreSQL key column whose
    collation is not byte order does.
    """

    def ours(name: str | None, type_: str, parent_names: object) -> bool:
        return type_ != "table" or name in metadata.tables  # not the application's tables

    context = MigrationContext.configure(
        conn,
        opts={"version_table": VERSION_TABLE, "compare_type": True, "include_name": ours},
    )
    # An index a DBA added is theirs to keep; anything else differing is not ours.
    differences = [d for d in compare_metadata(context, metadata) if d[0] != "remove_index"]
    return bool(differences) or not _keys_compare_bytewise(conn)


def _keys_compare_bytewise(conn: sa.Connection) -> bool:
    """Whether PostgreSQL compares keys with the "C" collation, as prefix scans need.

    Alembic sees no difference when the column has the database's default
    collation, whose order follows its locale; that would make
    ``yield_keys(prefix=...)`` and prune's ranges wrong.
    """
    if conn.dialect.name != "postgresql":
        return True  # SQLite compares text bytewise
    collation = conn.execute(
        sa.text(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = :table "
            "AND column_name = 'key'"
        ),
        {"table": entries.name},
    ).scalar()
    return collation in ("C", "POSIX")  # PostgreSQL's two names for byte order


def _mark_new_sqlite_file(conn: sa.Connection) -> None:
    """Stamp cachedvec's application id into a SQLite file that holds nothing yet."""
    if conn.exec_driver_sql("PRAGMA application_id").scalar() != 0:
        return
    if conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar() == 0:
        conn.exec_driver_sql(f"PRAGMA application_id={SQLITE_APPLICATION_ID}")
