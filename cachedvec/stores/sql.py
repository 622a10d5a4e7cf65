"""The SQL byte store: SQLite for one machine, PostgreSQL for a shared cache.

One table, ``cachedvec_entries`` (see :mod:`cachedvec.stores.sql_schema`),
whose schema belongs to the Alembic scripts in ``migrations/``.

Hot paths (``mget``, ``mset``) use the DBAPI connection SQLAlchemy pools,
with parameterised SQL written per dialect: SQLAlchemy's per-statement
compilation costs more than a cached-vector read itself. Everything else
(key listing, statistics, pruning) goes through SQLAlchemy Core.

- **SQLite**: WAL journal (readers never wait for the writer),
  ``synchronous=NORMAL`` (a commit is durable at the next checkpoint; a power
  cut may lose the last commits but never corrupts), memory-mapped reads,
  16 KiB pages for new files (about 1.27x raw float32 per 384-d vector on
  disk, against 1.42x with 4 KiB pages), a busy timeout plus retries so
  concurrent writers queue instead of failing. Writes take the write lock up
  front (``BEGIN IMMEDIATE``) and upsert. Async methods run the sync ones in
  a worker thread: SQLite has no network round trip to overlap.
- **PostgreSQL** (psycopg 3): reads with ``key = ANY(...)`` (one prepared
  statement whatever the batch size) fetching binary results, writes with one
  ``INSERT ... SELECT FROM unnest(...) ON CONFLICT`` per chunk of 2,000
  rows (several chunks share one transaction), keys sorted so concurrent
  writers lock rows in the same order and cannot deadlock. Key and value
  arrays travel in binary. Commits do not wait for the WAL flush
  (``synchronous_commit=off``). A connection pool; async methods on a
  SQLAlchemy async engine.

``durable=True`` makes every commit wait for the disk on both databases.

Lifetimes: a write of a new or changed value stamps ``created_at`` and
``accessed_at``; a read, or a rewrite of an identical value, refreshes
``accessed_at`` only when it is older than ``touch_interval`` (a day), so a
warm cache reads without writing. :meth:`SQLStore.prune` deletes
entries unread for a given time.

Schema: SQLite files cachedvec creates (or finds empty) are created and
upgraded automatically. Any other database must be prepared with
``cachedvec migrate --store URL``; opening it before, or with a schema newer
than this code, raises :class:`~cachedvec.errors.SchemaError` saying so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from cachedvec.errors import (
    InvalidKeyError,
    InvalidURLError,
    InvalidValueError,
    SchemaError,
    StoreError,
    check_count,
)
from cachedvec.stores import redact_url
from cachedvec.stores.base import (
    OTHER_KEYS,
    CachedVecStore,
    NamespaceStats,
    check_flag,
    check_seconds,
    prune_cutoff,
)
from cachedvec.stores.sql_schema import (
    SCHEMA_REVISION,
    SQLITE_APPLICATION_ID,
    VERSION_TABLE,
    entries,
)

__all__ = ["SQLStore", "describe_connection_error", "make_engine"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DAY = 86_400
_MIGRATE_HINT = "run: cachedvec migrate --store {url}"
_TOUCH_WAIT = 1.0  # seconds a read waits to record read times on a busy SQLite file
_SQLITE_CHUNK = 900  # under SQLite's historical 999-variable limit
_PG_CHUNK = 2_000  # keys per read or write statement
_PAGE = 900  # keys per page when listing or pruning (an IN list of them too)
_SQLITE_PAGE_SIZE = 16_384
_SQLITE_MMAP_SIZE = 1 << 30
_HEX_DIGITS = "0123456789abcdef"
# SQLite keeps its busy timeout in milliseconds in a C int: a longer one
# silently becomes 0 (no waiting at all).
_MAX_BUSY_TIMEOUT = 2_147_483  # about 24 days
# Far beyond any use, and small enough that "now - touch_interval" stays a
# 64-bit integer, which both databases compare with their timestamps.
_MAX_TOUCH_INTERVAL = 2**32


# --------------------------------------------------------------------- URLs


def _normalise_url(url: str) -> sa.URL:
    """Parse a store URL into the SQLAlchemy URL of a supported driver."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise InvalidURLError(f"malformed SQL store URL {redact_url(url)!r}: {exc}") from exc
    except ValueError as exc:
        # int() of the port: its message quotes the text, which can be the
        # tail of a password holding an unescaped "@".
        raise InvalidURLError(
            f"malformed SQL store URL {redact_url(url)!r}: the port is not a number"
        ) from exc
    # Read the scheme ourselves: SQLAlchemy's get_driver_name() imports the
    # dialect, and an unknown one ("postgres", "SQLITE") fails with an
    # ImportError-like message instead of a URL error.
    backend, _, driver = parsed.drivername.lower().partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if parsed.host or parsed.port or parsed.username or parsed.password:
            # sqlite://host/x.db: SQLAlchemy would refuse it only when
            # connecting, and read the path as x.db meanwhile.
            raise InvalidURLError(
                f"{redact_url(url)!r}: a SQLite URL names a file, never a host: write "
                "sqlite:///relative/path.db (three slashes) or sqlite:////absolute/path.db (four)"
            )
        if not parsed.database or parsed.database == ":memory:":
            raise InvalidURLError(
                f"{redact_url(url)!r} names no file: use sqlite:///relative.db or "
                "sqlite:////absolute.db (memory:// is the in-process store)"
            )
        if parsed.query:
            # The sqlite3 driver would ignore most of them with only a warning:
            # a misspelt or misplaced option must not pass silently.
            raise InvalidURLError(
                f"{redact_url(url)!r}: SQLite store URLs take no parameters (got "
                f"{', '.join(sorted(parsed.query))}); the store's options (busy_timeout, "
                "touch_interval, durable) are keywords of open_store() in Python, with no "
                "command-line form"
            )
        # "~" as in file:// and diskcache:// URLs (sqlite3 would make a folder named "~").
        return parsed.set(drivername="sqlite", database=os.path.expanduser(parsed.database))
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        if "@" in (parsed.host or ""):
            # The URL ends the password at its first "@"; the rest would go to
            # the server as a host name, and back in its error message.
            raise InvalidURLError(
                f"{redact_url(url)!r}: the password holds an '@'; write it as %40"
            )
        if not parsed.database:
            raise InvalidURLError(f"{redact_url(url)!r} names no database")
        return parsed.set(drivername="postgresql+psycopg")
    raise InvalidURLError(
        f"unsupported SQL store URL {redact_url(url)!r}: use sqlite:///path.db or "
        "postgresql+psycopg://user:password@host:port/database"
    )


def make_engine(
    url: str,
    *,
    for_migrations: bool = False,
    pool_size: int = 5,
    durable: bool = False,
    busy_timeout: float = 30.0,
) -> sa.Engine:
    """A SQLAlchemy engine set up the way cachedvec uses the database.

    Store engines run in autocommit mode: the store issues its own
    transactions. Migration engines are transactional; on SQLite every
    transaction starts with ``BEGIN IMMEDIATE`` so that DDL is atomic and two
    processes upgrading one file at once run one after the other.
    ``durable`` is described in :class:`SQLStore`.
    """
    parsed = _normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(parsed, connect_args={"timeout": busy_timeout})
        synchronous = "FULL" if durable else "NORMAL"

        def configure(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            _configure_sqlite_connection(dbapi_conn, synchronous)

        sa.event.listen(engine, "connect", configure)
        if for_migrations:
            sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    options: dict[str, Any] = {
        "connect_args": postgres_connect_args(parsed, durable=durable or for_migrations),
        "pool_size": pool_size,
    }
    if not for_migrations:
        options["isolation_level"] = "AUTOCOMMIT"
    _require("psycopg", url)
    return sa.create_engine(parsed, **options)


def _require(module: str, url: str) -> None:
    """Fail with an install hint when an optional PostgreSQL dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise StoreError(
            f"cannot open store {redact_url(url)}: PostgreSQL support needs the "
            f"'{module}' package: pip install 'cachedvec[postgres]'"
        )


def postgres_connect_args(parsed: sa.URL, *, durable: bool) -> dict[str, Any]:
    """libpq settings for a store connection, kept on top of the URL's own."""
    args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        args["connect_timeout"] = 10  # libpq waits forever by default
    # Not durable: a commit returns before its WAL reaches the disk. A server
    # crash can lose the last few hundred milliseconds of cache writes (they
    # are recomputed), never corrupt anything; each write gets ~2x faster.
    own = parsed.query.get("options", "")
    args["options"] = f"{own} -c synchronous_commit={'on' if durable else 'off'}".strip()
    return args


def _enable_wal(cur: sqlite3.Cursor, attempts: int = 100) -> None:
    """Switch a file to WAL (persistent, so usually already done).

    The switch needs an exclusive lock and SQLite may answer "locked" at once,
    without its busy handler, while another process holds or converts the
    file: processes creating one cache together retry with backoff.
    """
    for attempt in range(attempts):
        if cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.005 * (attempt + 1), 0.1))


def _may_change_journal_mode(cur: sqlite3.Cursor) -> bool:
    """Whether a SQLite file is cachedvec's: empty, stamped as ours or migrated.

    The journal mode is stored in the file, so switching someone else's file
    to WAL would change it for good, even though the store then refuses the
    file for its missing tables.
    """
    if cur.execute("PRAGMA application_id").fetchone()[0] == SQLITE_APPLICATION_ID:
        return True
    tables, ours = cur.execute(
        "SELECT count(*), total(name = ?) FROM sqlite_master", (VERSION_TABLE,)
    ).fetchone()
    return tables == 0 or ours > 0


def _configure_sqlite_connection(dbapi_conn: sqlite3.Connection, synchronous: str) -> None:
    # Autocommit at the driver level: the store and SQLAlchemy's "begin"
    # hook issue BEGIN themselves (the sqlite3 module's implicit transactions
    # do not cover DDL and start writes as deferred, which fails under
    # contention instead of waiting).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        if cur.execute("PRAGMA page_count").fetchone()[0] == 0:
            cur.execute(f"PRAGMA page_size={_SQLITE_PAGE_SIZE}")  # only a new file takes it
        if _may_change_journal_mode(cur):
            _enable_wal(cur)
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA mmap_size={_SQLITE_MMAP_SIZE}")
    finally:
        cur.close()


# ------------------------------------------------------------------ errors


# libpq says "could not translate host", psycopg's own DNS lookup "failed to resolve host".
_UNREACHABLE = (
    "connection refused",
    "could not translate host",
    "failed to resolve host",
    "timeout",
)


def describe_connection_error(url: str, exc: BaseException) -> str:
    """One line saying why a database could not be reached and what to do."""
    original = getattr(exc, "orig", None) or exc
    reason = " ".join(str(original).split()) or type(original).__name__
    low = reason.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        hint = "check the user name and password in the URL"
    elif "does not exist" in low and "database" in low:
        hint = "create the database first (for example: createdb NAME)"
    elif any(sign in low for sign in _UNREACHABLE):
        hint = "check that the server is running and the host and port are right"
    elif "unable to open database file" in low:
        hint = "check that the folder exists and is writable"
    elif "file is not a database" in low:
        hint = "the file is not a SQLite database; point the URL at another file"
    else:
        hint = "check the URL and the server"
    return f"cannot open store {redact_url(url)}: {reason} ({hint})"


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


@lru_cache(maxsize=64)
def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _after_prefix(prefix: str) -> str | None:
    """The smallest string above every string that starts with ``prefix``.

    Both SQLite (``BINARY``) and PostgreSQL (``COLLATE "C"``) order keys by
    their UTF-8 bytes, which is code point order, so ``prefix <= key <
    _after_prefix(prefix)`` selects exactly the keys with that prefix and
    uses the primary key index (``LIKE`` would need escaping and, on
    SQLite, is case-insensitive).
    """
    for i in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[i]) + 1
        if code <= 0x10FFFF:
            if 0xD800 <= code <= 0xDFFF:  # surrogates cannot be encoded
                code = 0xE000
            return prefix[:i] + chr(code)
    return None


def _is_missing_table(exc: BaseException) -> bool:
    """Whether a driver error says a table does not exist (SQLite; PostgreSQL 42P01)."""
    if isinstance(exc, sqlite3.OperationalError):
        return str(exc).startswith("no such table")
    return getattr(exc, "sqlstate", None) == "42P01"


# Errors that say a database will never take our writes: a read-only
# transaction (standby, default_transaction_read_only) or missing privileges.
_PG_READ_ONLY_STATES = ("25006", "42501")


def _refuses_writes(exc: BaseException | None) -> bool:
    """Whether a failed write means this database never takes our writes."""
    if isinstance(exc, sqlite3.Error):
        return "readonly" in str(exc)  # SQLITE_READONLY: read-only file, folder or mount
    return getattr(exc, "sqlstate", None) in _PG_READ_ONLY_STATES


def _checked_rows(pairs: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    """The pairs as a dict (the last value of a repeated key wins), validated."""
    rows = dict(pairs)
    for key, value in rows.items():
        if not isinstance(key, str):
            raise TypeError(f"store keys must be str, got {type(key).__name__}")
        if "\x00" in key:
            raise InvalidKeyError(f"store key {key!r} contains a NUL character")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise InvalidValueError(
                f"store values must be bytes, got {type(value).__name__} for key {key!r}"
            )
    return rows


def _pg_upserts(rows: dict[str, bytes], now: int, cutoff: int) -> list[dict[str, Any]]:
    """The parameters of each ``_PG_UPSERT`` statement that writes ``rows``.

    Keys go in sorted order, so concurrent writers lock rows in the same
    order and cannot deadlock. A single statement runs without BEGIN and
    COMMIT (the store's connections autocommit, and one statement is atomic
    on its own): two fewer round trips on every model batch the cache writes,
    about 5% of a cold write on a loopback server. Several statements share
    one transaction.
    """
    ordered = sorted(rows)
    return [
        {"now": now, "cutoff": cutoff, "keys": chunk, "values": [rows[k] for k in chunk]}
        for chunk in _chunks(ordered, _PG_CHUNK)
    ]


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------- store

_SQLITE_SELECT = "SELECT key, value, accessed_at FROM cachedvec_entries WHERE key IN ({})"
# An identical value counts as a read: it refreshes accessed_at once per
# touch interval (the last parameter is that cutoff) and keeps created_at.
# See _PG_UPSERT for why it is not always rewritten.
_SQLITE_UPSERT = (
    "INSERT INTO cachedvec_entries AS e (key, value, created_at, accessed_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
    "created_at = CASE WHEN e.value = excluded.value THEN e.created_at "
    "ELSE excluded.created_at END, accessed_at = excluded.accessed_at "
    "WHERE e.value <> excluded.value OR e.accessed_at < ?"
)
_SQLITE_DELETE = "DELETE FROM cachedvec_entries WHERE key IN ({})"
_SQLITE_TOUCH = "UPDATE cachedvec_entries SET accessed_at = ? WHERE key IN ({}) AND accessed_at < ?"

# %b: arrays go to the server in binary; psycopg's text format escapes every
# element with a regex, which costs more than the query.
_PG_SELECT = "SELECT key, value, accessed_at FROM cachedvec_entries WHERE key = ANY(%b)"
# Rewriting an identical value counts as a read: it only refreshes a stale
# accessed_at, like mget (on PostgreSQL every update leaves a dead row version
# behind, and concurrent workers often write the same key), and keeps
# created_at, the time the value was written.
_PG_UPSERT = (
    "INSERT INTO cachedvec_entries AS e (key, value, created_at, accessed_at) "
    "SELECT k, v, %(now)s, %(now)s FROM unnest(%(keys)b::text[], %(values)b::bytea[]) AS u(k, v) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
    "created_at = CASE WHEN e.value = excluded.value THEN e.created_at "
    "ELSE excluded.created_at END, accessed_at = excluded.accessed_at "
    "WHERE e.value <> excluded.value OR e.accessed_at < %(cutoff)s"
)
_PG_DELETE = "DELETE FROM cachedvec_entries WHERE key = ANY(%b)"
_PG_TOUCH = "UPDATE cachedvec_entries SET accessed_at = %s WHERE key = ANY(%b) AND accessed_at < %s"


class SQLStore(CachedVecStore):
    """A byte store in one SQL table, on SQLite or PostgreSQL.

    Args:
        url: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
            ``postgresql+psycopg://user:password@host:port/database`` (also
            ``postgresql://``); a PostgreSQL URL's query is passed to the
            driver (for example ``?sslmode=require&connect_timeout=5``), a
            SQLite URL takes none.
        create: create a missing SQLite file (and its folder). With
            ``False`` a missing file is an error. PostgreSQL databases are
            never created or migrated implicitly.
        busy_timeout: seconds a SQLite writer waits for another writer
            before giving up (above 0, at most 2,147,483: SQLite's limit).
        touch_interval: a read refreshes an entry's last-read time only when
            it is older than this many seconds; ``0`` never refreshes it.
        pool_size: connections kept open to a PostgreSQL server.
        durable: make every write durable before it returns (SQLite
            ``synchronous=FULL``, PostgreSQL ``synchronous_commit=on``). By
            default a power cut (SQLite) or a server crash (PostgreSQL) may
            lose the last moments of writes, which are recomputed, and never
            corrupts the store; writes are much faster.

    A numeric option that is NaN, infinite, negative, a bool or not a number
    is a :class:`~cachedvec.errors.ConfigError` naming it, before anything
    is opened.
    """

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        busy_timeout: float = 30.0,
        touch_interval: float = DAY,
        pool_size: int = 5,
        durable: bool = False,
    ) -> None:
        busy_timeout = check_seconds(
            "busy_timeout", busy_timeout, maximum=_MAX_BUSY_TIMEOUT, zero=False
        )
        touch_interval = check_seconds(
            "touch_interval", touch_interval, maximum=_MAX_TOUCH_INTERVAL
        )
        pool_size = check_count("pool_size", pool_size)
        check_flag("create", create)
        check_flag("durable", durable)
        self.url = redact_url(url)
        self._raw_url = url
        self._sa_url = _normalise_url(url)
        self.dialect = self._sa_url.get_backend_name()
        self._busy_timeout = busy_timeout
        self._pool_size = pool_size
        self._touch_interval = int(touch_interval)
        self._touch_enabled = touch_interval > 0
        self._async_engine: Any = None
        self._async_loop: Any = None
        self._own: Any = None  # see _checkout
        self._own_lock = threading.Lock()
        self._pid = os.getpid()
        if self.dialect == "sqlite":
            self._prepare_sqlite_file(create)
        self._durable = durable
        self._engine = make_engine(
            url, pool_size=pool_size, durable=durable, busy_timeout=busy_timeout
        )
        if self.dialect == "sqlite":
            self._driver_errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        else:
            import psycopg

            self._driver_errors = (psycopg.Error,)
        try:
            self._ensure_schema(create)
        except BaseException:
            # A file left without tables is harmless (the next open migrates
            # it), while deleting it could pull it from under another process
            # that is creating the same cache at the same moment.
            self._engine.dispose()
            raise

    # ------------------------------------------------------------ opening

    def _prepare_sqlite_file(self, create: bool) -> bool:
        """Check the path; make its folder for a new file. Whether the file is new."""
        path = Path(self._sa_url.database or "")
        if path.exists():
            if path.is_dir():
                raise StoreError(f"cannot open store {self.url}: {path} is a folder, not a file")
            return False
        if not create:
            raise StoreError(
                f"cannot open store {self.url}: {path} does not exist "
                "(no cache has been written there)"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot open store {self.url}: {exc.strerror}: {path.parent}"
            ) from exc
        return True

    def _ensure_schema(self, create: bool) -> None:
        """Check the schema revision; create or upgrade SQLite files that are ours."""
        try:
            revision, has_entries, owned = self._read_schema_state()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(describe_connection_error(self._raw_url, exc)) from exc
        if revision == SCHEMA_REVISION and has_entries:
            return
        from cachedvec import migrate

        if revision is not None and not migrate.is_known_revision(revision):
            raise SchemaError(
                f"store {self.url} has cachedvec schema revision {revision!r}, unknown to "
                f"this cachedvec (which knows up to {SCHEMA_REVISION}): it was made by a "
                "newer cachedvec, or not by cachedvec; upgrade cachedvec to use it"
            )
        if self.dialect == "sqlite" and owned and create:
            # Processes racing to create one file all get here: the migration
            # takes the write lock first, so the first creates the tables and
            # the others find them at the head revision. It also repairs a
            # dropped table or a lost revision row.
            log.info("creating or upgrading the cachedvec tables in %s", self.url)
            migrate.upgrade(self._raw_url)
            return
        hint = self._migrate_hint()
        if revision is None and has_entries:
            if self._entries_table_is_foreign():
                # migrate would refuse it too: no hint to run it.
                raise migrate.foreign_table_error(self._raw_url, [entries.name])
            raise SchemaError(
                f"store {self.url} has a table {entries.name} but no recorded cachedvec "
                f"schema revision ({hint})"
            )
        if revision is None:
            raise SchemaError(f"store {self.url} has no cachedvec tables ({hint})")
        if revision == SCHEMA_REVISION:
            raise SchemaError(
                f"store {self.url} records cachedvec schema revision {revision} but its "
                f"table {entries.name} is missing ({hint})"
            )
        raise SchemaError(
            f"store {self.url} has cachedvec schema revision {revision}, "
            f"this cachedvec needs {SCHEMA_REVISION} ({hint})"
        )

    def _entries_table_is_foreign(self) -> bool:
        """Whether the entries table, found without a revision, is not cachedvec's schema."""
        from cachedvec import migrate

        try:
            with self._engine.connect() as conn:
                return migrate.differs_from_newest_schema(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(describe_connection_error(self._raw_url, exc)) from exc

    def _read_schema_state(self) -> tuple[str | None, bool, bool]:
        """(the schema revision or None, whether the entries table exists,
        whether cachedvec may migrate it itself)."""
        with self._engine.connect() as conn:
            owned = False
            if self.dialect == "sqlite":
                app_id = conn.exec_driver_sql("PRAGMA application_id").scalar()
                tables = conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
                owned = app_id == SQLITE_APPLICATION_ID or (app_id == 0 and tables == 0)
            inspector = sa.inspect(conn)
            has_entries = inspector.has_table(entries.name)
            if not inspector.has_table(VERSION_TABLE):
                return None, has_entries, owned
            version = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar()
            return version, has_entries, owned

    # ------------------------------------------------------- sync helpers

    def _migrate_hint(self) -> str:
        hint = _MIGRATE_HINT.format(url=self.url)
        # The URL shown has its password hidden: pasted as it is, it would fail.
        return hint if self.url == self._raw_url else f"{hint}, with the real password"

    def _store_error(self, action: str, exc: BaseException) -> StoreError:
        original = getattr(exc, "orig", None) or exc
        reason = " ".join(str(original).split())
        if _is_missing_table(original):  # dropped behind an open store's back
            return SchemaError(
                f"cannot {action} store {self.url}: {reason} ({self._migrate_hint()})"
            )
        return StoreError(f"cannot {action} store {self.url}: {reason}")

    def _bad_key_error(self, action: str, exc: UnicodeEncodeError) -> InvalidKeyError:
        # A Python str may hold lone surrogates, which no database text can;
        # the drivers find out while encoding, before anything is written.
        return InvalidKeyError(
            f"cannot {action} store {self.url}: key {exc.object!r:.80} is not valid Unicode"
        )

    def _checkout(self) -> Any:
        """A pooled connection: the store's own one unless another thread holds it.

        Checking a connection out of SQLAlchemy's pool costs about 11 us, as
        much as reading one cached vector from SQLite; a single-threaded
        caller skips it. Threads that find the store's connection busy take
        one from the pool.
        """
        if self._pid != os.getpid():
            self._forget_connections_after_fork()
        if self._own_lock.acquire(blocking=False):
            if self._own is None:
                try:
                    self._own = self._pooled()
                except BaseException:
                    self._own_lock.release()
                    raise
            return self._own
        return self._pooled()

    def _pooled(self) -> Any:
        # The pool passes on the driver's own error when it cannot connect.
        errors: tuple[type[BaseException], ...] = (sa.exc.SQLAlchemyError, *self._driver_errors)
        try:
            return self._engine.raw_connection()
        except errors as exc:
            raise StoreError(describe_connection_error(self._raw_url, exc)) from exc

    def _checkin(self, fairy: Any, *, broken: bool = False) -> None:
        if broken:
            _renew_pool(self._engine.pool, fairy)
            fairy.invalidate()
        if fairy is self._own:
            if broken:
                fairy.close()
                self._own = None
            self._own_lock.release()
        else:
            fairy.close()

    def _forget_connections_after_fork(self) -> None:
        # A forked child must not touch its parent's sockets or SQLite
        # handles: drop them without closing and open its own. The async
        # engine is dropped, not disposed, for the same reason (psycopg does
        # not close a connection that another process opened when it is
        # garbage collected).
        self._engine.dispose(close=False)
        self._own, self._own_lock, self._pid = None, threading.Lock(), os.getpid()
        self._async_engine = None

    def _run(self, action: str, work: Callable[[Any], T]) -> T:
        """Run ``work(driver_connection)`` on a pooled connection.

        A PostgreSQL connection that broke (server restart, idle timeout) is
        dropped with every other connection opened before it, and the work
        retried once on a fresh one.
        """
        for attempt in range(2):
            fairy = self._checkout()
            broken = False
            try:
                return work(fairy.driver_connection)
            except UnicodeEncodeError as exc:
                raise self._bad_key_error(action, exc) from exc
            except self._driver_errors as exc:
                broken = self.dialect == "postgresql" and fairy.driver_connection.broken
                if not broken or attempt:
                    raise self._store_error(action, exc) from exc
            finally:
                self._checkin(fairy, broken=broken)
        raise AssertionError("unreachable")  # pragma: no cover

    def _sqlite_write(
        self, work: Callable[[sqlite3.Connection], T], timeout: float | None = None
    ) -> T:
        """Run ``work`` in one write transaction, retrying while the file is busy.

        The busy timeout already makes BEGIN IMMEDIATE wait for another
        writer; the retry covers the cases where SQLite reports busy without
        waiting (WAL recovery or checkpoint in another process). ``timeout``
        replaces the store's busy timeout for this write.
        """
        wait = self._busy_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        delay = 0.002
        while True:
            fairy = self._checkout()
            try:
                db: sqlite3.Connection = fairy.driver_connection
                if timeout is not None:
                    db.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(db)
                    db.execute("COMMIT")
                    return result
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise self._store_error("write to", exc) from exc
            except sqlite3.Error as exc:
                raise self._store_error("write to", exc) from exc
            except UnicodeEncodeError as exc:
                raise self._bad_key_error("write to", exc) from exc
            finally:
                if timeout is not None:
                    fairy.driver_connection.execute(
                        f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}"
                    )
                self._checkin(fairy)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.25)

    # ------------------------------------------------------ ByteStore API

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        cutoff = int(time.time()) - self._touch_interval
        found: dict[str, bytes] = {}
        stale: list[str] = []

        def read_sqlite(db: sqlite3.Connection) -> None:
            for chunk in _chunks(keys, _SQLITE_CHUNK):
                sql = _SQLITE_SELECT.format(_placeholders(len(chunk)))
                for key, value, accessed_at in db.execute(sql, chunk):
                    found[key] = value
                    if accessed_at < cutoff:
                        stale.append(key)

        def read_postgres(pg: Any) -> None:
            with pg.cursor(binary=True) as cur:
                for chunk in _chunks(list(keys), _PG_CHUNK):
                    cur.execute(_PG_SELECT, (chunk,))
                    for key, value, accessed_at in cur.fetchall():
                        found[key] = value
                        if accessed_at < cutoff:
                            stale.append(key)

        try:
            self._run("read from", read_sqlite if self.dialect == "sqlite" else read_postgres)
        except StoreError:
            storable = self._storable_keys(keys)
            if storable is None:
                raise
            values = dict(zip(storable, self.mget(storable), strict=True))
            return [values.get(k) for k in keys]
        if stale and self._touch_enabled:
            self._touch(stale)
        get = found.get
        return [get(k) for k in keys]

    def _storable_keys(self, keys: Sequence[str]) -> list[str] | None:
        """After a failed PostgreSQL read or delete: the keys without a NUL, if any had one.

        PostgreSQL text cannot hold NUL, so such a key is never stored: as on
        SQLite, it reads as missing and deleting it does nothing. Looked for
        only once a call has failed, to keep the scan off the normal path.
        """
        if self.dialect != "postgresql" or not any("\x00" in k for k in keys):
            return None
        return [k for k in keys if "\x00" not in k]

    def _raise_if_key_too_long(self, exc: StoreError, keys: Collection[str]) -> None:
        """Turn a PostgreSQL write that failed on the key index size limit into InvalidKeyError."""
        cause = exc.__cause__
        if getattr(cause, "sqlstate", None) == "54000" and "index row" in str(cause):
            longest = max(keys, key=len)
            raise InvalidKeyError(
                f"cannot write to store {self.url}: key {longest!r:.80} is "
                f"{len(longest.encode())} bytes, too long for PostgreSQL's index "
                "(about 2,700 bytes at most)"
            ) from cause

    def _touch(self, keys: list[str]) -> None:
        """Record that ``keys`` were read; best effort, a read never fails for it."""
        now = int(time.time())
        cutoff = now - self._touch_interval
        try:
            if self.dialect == "sqlite":

                def touch_sqlite(db: sqlite3.Connection) -> None:
                    for chunk in _chunks(keys, _SQLITE_CHUNK - 2):
                        sql = _SQLITE_TOUCH.format(_placeholders(len(chunk)))
                        db.execute(sql, (now, *chunk, cutoff))

                # Best effort: a read waits for another writer only briefly.
                self._sqlite_write(touch_sqlite, timeout=_TOUCH_WAIT)
            else:

                def touch_postgres(pg: Any) -> None:
                    with pg.cursor() as cur:
                        cur.execute(_PG_TOUCH, (now, sorted(keys), cutoff))

                self._run("update read times in", touch_postgres)
        except StoreError as exc:
            self._touch_failed(exc)

    def _touch_failed(self, exc: StoreError) -> None:
        """Skip one failed read-time update; stop trying only if it can never work."""
        if _refuses_writes(exc.__cause__):
            # A read-only file or a user without UPDATE rights: keep reading.
            log.warning("not recording read times in %s: %s", self.url, exc)
            self._touch_enabled = False
        else:
            # Busy, a lock timeout, a dropped connection: the next read of
            # these keys tries again, so prune still sees them as used.
            log.debug("skipped recording read times in %s: %s", self.url, exc)

    def _rewrite_cutoff(self, now: int) -> int:
        """An identical rewrite refreshes accessed_at only if older than this.

        As for reads: once per touch interval, and never when it is 0
        (every identical rewrite would otherwise leave a dead row version).
        """
        return now - self._touch_interval if self._touch_interval > 0 else -1

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        rows = _checked_rows(key_value_pairs)
        if not rows:
            return
        now = int(time.time())
        cutoff = self._rewrite_cutoff(now)
        if self.dialect == "sqlite":
            params = [(k, v, now, now, cutoff) for k, v in rows.items()]
            self._sqlite_write(lambda db: db.executemany(_SQLITE_UPSERT, params))
            return
        statements = _pg_upserts(rows, now, cutoff)

        def write_postgres(pg: Any) -> None:
            atomic = pg.transaction() if len(statements) > 1 else contextlib.nullcontext()
            with atomic, pg.cursor() as cur:
                for params in statements:
                    cur.execute(_PG_UPSERT, params)

        try:
            self._run("write to", write_postgres)
        except StoreError as exc:
            self._raise_if_key_too_long(exc, rows)
            raise

    def mdelete(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        unique = sorted(set(keys))
        if self.dialect == "sqlite":

            def delete_sqlite(db: sqlite3.Connection) -> None:
                for chunk in _chunks(unique, _SQLITE_CHUNK):
                    db.execute(_SQLITE_DELETE.format(_placeholders(len(chunk))), chunk)

            self._sqlite_write(delete_sqlite)
            return

        def delete_postgres(pg: Any) -> None:
            with pg.transaction(), pg.cursor() as cur:
                for chunk in _chunks(unique, _PG_CHUNK):
                    cur.execute(_PG_DELETE, (chunk,))

        try:
            self._run("delete from", delete_postgres)
        except StoreError:
            storable = self._storable_keys(unique)
            if storable is None:
                raise
            self.mdelete(storable)

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        """Every key (with ``prefix``, if given) in key order.

        Keys are read a page at a time without holding a transaction open, so
        the caller may write or delete while iterating; keys written meanwhile
        may or may not be seen.
        """
        key = entries.c.key
        lower, upper = prefix or "", _after_prefix(prefix) if prefix else None
        query = sa.select(key).order_by(key).limit(_PAGE)
        if upper is not None:
            query = query.where(key < upper)
        page = query.where(key >= lower)
        while True:
            keys = [row[0] for row in self._query("list keys of", page)]
            yield from keys
            if len(keys) < _PAGE:
                return
            page = query.where(key > keys[-1])

    def _query(self, action: str, statement: sa.Executable) -> list[tuple[Any, ...]]:
        """Run one statement through SQLAlchemy (autocommit); its rows, if any.

        On a broken connection SQLAlchemy renews the whole pool itself (as
        :func:`_renew_pool` does) and says so: the statement is retried once.
        """
        for attempt in range(2):
            try:
                with self._engine.connect() as conn:
                    result = conn.execute(statement)
                    return [tuple(row) for row in result] if result.returns_rows else []
            except sa.exc.DBAPIError as exc:
                if not exc.connection_invalidated or attempt:
                    raise self._store_error(action, exc) from exc
            except sa.exc.SQLAlchemyError as exc:
                raise self._store_error(action, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def __len__(self) -> int:
        query = sa.select(sa.func.count()).select_from(entries)
        return int(self._query("count entries of", query)[0][0])

    # -------------------------------------------------------- maintenance

    def namespace_stats(self) -> dict[str, NamespaceStats]:
        """Entries, bytes and newest write/read time per key namespace.

        A namespace is a key without its digest: ``cv1:<slug>:<fp>:<kind>:``
        (the same string as ``KeyEncoder.prefix``, usable as the ``prefix``
        of :meth:`yield_keys` and :meth:`prune`). Keys not written by
        cachedvec are counted under :data:`OTHER_KEYS`.
        """
        key = entries.c.key
        # Digests are lower-case hex and namespaces end in ':', so trimming
        # hex digits off the right leaves exactly the namespace; both SQLite
        # and PostgreSQL have a two-argument rtrim.
        namespace = sa.case(
            (sa.func.substr(key, 1, 4) == "cv1:", sa.func.rtrim(key, _HEX_DIGITS)),
            else_=OTHER_KEYS,
        ).label("namespace")
        query = sa.select(
            namespace,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.func.length(entries.c.value)), 0),
            sa.func.max(entries.c.created_at),
            sa.func.max(entries.c.accessed_at),
        ).group_by(namespace)
        return {
            ns: NamespaceStats(int(n), int(size), int(written), int(read))
            for ns, n, size, written, read in sorted(self._query("read statistics of", query))
        }

    def entry_times(self, keys: Sequence[str]) -> list[tuple[float, float]]:
        """``(written, last read)`` Unix times per key; ``(0, 0)`` for a missing key.

        The read time is as recorded: refreshed at most once per
        ``touch_interval``.
        """
        found: dict[str, tuple[float, float]] = {}
        for chunk in _chunks(list(keys), _SQLITE_CHUNK):
            query = sa.select(entries.c.key, entries.c.created_at, entries.c.accessed_at).where(
                entries.c.key.in_(chunk)
            )
            for key, written, read in self._query("read entry times of", query):
                found[key] = (float(written), float(read))
        return [found.get(k, (0.0, 0.0)) for k in keys]

    def prune(
        self,
        older_than: float,
        *,
        prefix: str | None = None,
        keep: Collection[str] | None = None,
        dry_run: bool = False,
    ) -> int:
        """Delete entries neither written nor read in the last ``older_than`` seconds.

        Args:
            older_than: age in seconds; ``0`` selects every entry.
            prefix: only consider keys starting with it (a namespace).
            keep: keys never to delete (for example those an index uses).
            dry_run: count what would be deleted, delete nothing.

        Returns the number of entries deleted (or that would be).

        Read times are recorded at most once per ``touch_interval``, so an
        entry last read up to that long after the cutoff may still count as
        older; choose ``older_than`` well above ``touch_interval`` (a day).
        An entry read or rewritten while pruning runs is kept.
        """
        oldest = prune_cutoff(older_than)
        if oldest is None:
            return 0
        cutoff = math.ceil(oldest)
        key, accessed_at = entries.c.key, entries.c.accessed_at
        base = sa.select(key).where(accessed_at < cutoff).order_by(key).limit(_PAGE)
        if prefix:
            base = base.where(key >= prefix)
            upper = _after_prefix(prefix)
            if upper is not None:
                base = base.where(key < upper)
        count, page = 0, base
        while True:
            keys = [row[0] for row in self._query("prune", page)]
            doomed = [k for k in keys if not keep or k not in keep]
            if doomed and dry_run:
                count += len(doomed)
            elif doomed:
                # Re-check the age: another process may have read the entry
                # since the page was listed.
                delete = (
                    entries.delete().where(key.in_(doomed), accessed_at < cutoff).returning(key)
                )
                count += len(self._query("prune", delete))
            if len(keys) < _PAGE:
                return count
            page = base.where(key > keys[-1])

    # ---------------------------------------------------------- async API

    def _async_engine_for_loop(self) -> Any:
        """The async engine of the running event loop (PostgreSQL only).

        Pooled async connections belong to the loop that opened them, so a
        store used from a second loop (another ``asyncio.run``) gets a fresh
        engine and the old one is closed.
        """
        import asyncio

        if self._pid != os.getpid():
            self._forget_connections_after_fork()  # never dispose the parent's engine
        loop = asyncio.get_running_loop()
        if self._async_engine is None or self._async_loop is not loop:
            _require("greenlet", self._raw_url)  # SQLAlchemy's asyncio layer runs on it
            from sqlalchemy.ext.asyncio import create_async_engine

            if self._async_engine is not None:
                _dispose_async_engine(self._async_engine)
            self._async_engine = create_async_engine(
                self._sa_url,
                isolation_level="AUTOCOMMIT",
                pool_size=self._pool_size,
                connect_args=postgres_connect_args(self._sa_url, durable=self._durable),
            )
            self._async_loop = loop
        return self._async_engine

    async def _arun(self, action: str, work: Callable[[Any], Any]) -> Any:
        """Async twin of :meth:`_run` for PostgreSQL."""
        engine = self._async_engine_for_loop()
        for attempt in range(2):
            fairy: Any = None
            try:
                conn = await engine.connect()
            except sa.exc.SQLAlchemyError as exc:
                raise StoreError(describe_connection_error(self._raw_url, exc)) from exc
            try:
                fairy = await conn.get_raw_connection()
                return await work(fairy.driver_connection)
            except UnicodeEncodeError as exc:
                raise self._bad_key_error(action, exc) from exc
            except self._driver_errors as exc:
                broken = fairy is not None and fairy.driver_connection.broken
                if broken:
                    _renew_pool(engine.sync_engine.pool, fairy)
                    await conn.invalidate()
                if not broken or attempt:
                    raise self._store_error(action, exc) from exc
            finally:
                await conn.close()
        raise AssertionError("unreachable")  # pragma: no cover

    async def amget(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.dialect == "sqlite":
            return await super().amget(keys)
        if not keys:
            return []
        cutoff = int(time.time()) - self._touch_interval
        found: dict[str, bytes] = {}
        stale: list[str] = []

        async def read(pg: Any) -> None:
            async with pg.cursor(binary=True) as cur:
                for chunk in _chunks(list(keys), _PG_CHUNK):
                    await cur.execute(_PG_SELECT, (chunk,))
                    for key, value, accessed_at in await cur.fetchall():
                        found[key] = value
                        if accessed_at < cutoff:
                            stale.append(key)

        try:
            await self._arun("read from", read)
        except StoreError:
            storable = self._storable_keys(keys)
            if storable is None:
                raise
            values = dict(zip(storable, await self.amget(storable), strict=True))
            return [values.get(k) for k in keys]
        if stale and self._touch_enabled:
            await self._atouch(stale)
        get = found.get
        return [get(k) for k in keys]

    async def _atouch(self, keys: list[str]) -> None:
        now = int(time.time())

        async def touch(pg: Any) -> None:
            async with pg.cursor() as cur:
                await cur.execute(_PG_TOUCH, (now, sorted(keys), now - self._touch_interval))

        try:
            await self._arun("update read times in", touch)
        except StoreError as exc:
            self._touch_failed(exc)

    async def amset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        if self.dialect == "sqlite":
            return await super().amset(key_value_pairs)
        rows = _checked_rows(key_value_pairs)
        if not rows:
            return None
        now = int(time.time())
        statements = _pg_upserts(rows, now, self._rewrite_cutoff(now))

        async def write(pg: Any) -> None:
            atomic = pg.transaction() if len(statements) > 1 else contextlib.nullcontext()
            async with atomic, pg.cursor() as cur:
                for params in statements:
                    await cur.execute(_PG_UPSERT, params)

        try:
            await self._arun("write to", write)
        except StoreError as exc:
            self._raise_if_key_too_long(exc, rows)
            raise
        return None

    async def amdelete(self, keys: Sequence[str]) -> None:
        if self.dialect == "sqlite":
            return await super().amdelete(keys)
        if not keys:
            return None
        unique = sorted(set(keys))

        async def delete(pg: Any) -> None:
            async with pg.transaction(), pg.cursor() as cur:
                for chunk in _chunks(unique, _PG_CHUNK):
                    await cur.execute(_PG_DELETE, (chunk,))

        try:
            await self._arun("delete from", delete)
        except StoreError:
            storable = self._storable_keys(unique)
            if storable is None:
                raise
            await self.amdelete(storable)
        return None

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        if self.dialect == "sqlite":
            async for key in super().ayield_keys(prefix=prefix):
                yield key
            return
        lower, upper = prefix or "", _after_prefix(prefix) if prefix else None
        last: str | None = None
        while True:
            bound = "key > %(last)s" if last is not None else "key >= %(lower)s"
            sql = (
                f"SELECT key FROM cachedvec_entries WHERE {bound}"
                + (" AND key < %(upper)s" if upper is not None else "")
                + f" ORDER BY key LIMIT {_PAGE}"
            )
            params = {"last": last, "lower": lower, "upper": upper}

            async def page(pg: Any, sql: str = sql, params: dict = params) -> list[str]:
                async with pg.cursor() as cur:
                    await cur.execute(sql, params)
                    return [row[0] for row in await cur.fetchall()]

            keys = await self._arun("list keys of", page)
            for key in keys:
                yield key
            if len(keys) < _PAGE:
                return
            last = keys[-1]

    # ------------------------------------------------------------- closing

    def close(self) -> None:
        if self._pid != os.getpid():
            self._forget_connections_after_fork()
        if self._own is not None:
            self._own.close()
            self._own = None
        self._engine.dispose()
        if self._async_engine is not None:
            _dispose_async_engine(self._async_engine)
            self._async_engine = None


def _renew_pool(pool: sa.pool.Pool, broken: Any) -> None:
    """Have the pool replace every connection opened before ``broken`` broke.

    A connection breaks when the server restarts or drops its clients, which
    kills all the others opened before it too: replaced at their next
    checkout, they do not each fail a call first. A connection opened after
    the last renewal leaves the others alone. This is what SQLAlchemy does on
    a disconnect in its own statements; it has no public API for it.
    """
    pool._invalidate(broken, _checkin=False)


def _dispose_async_engine(engine: Any) -> None:
    """Close an async engine's pooled connections from sync code.

    Closing a psycopg async connection awaits no I/O, so any event loop can
    do it, including after the loop that opened them has ended: run the
    dispose on a fresh loop (in a helper thread if this one runs a loop).
    """
    import asyncio
    import threading

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(engine.dispose())
        return
    worker = threading.Thread(target=asyncio.run, args=(engine.dispose(),))
    worker.start()
    worker.join()
