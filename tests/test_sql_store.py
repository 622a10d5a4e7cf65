"""The SQL byte store on real SQLite files and a real PostgreSQL server.

The generic store behaviour is also covered by ``tests/test_stores.py``;
this file runs LangChain's store suites on both dialects and checks what is
SQL-specific: schema checks and their messages, lifetimes, pruning,
statistics and connection failures.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from langchain_tests.integration_tests import BaseStoreAsyncTests, BaseStoreSyncTests

from cachedvec import migrate, open_store
from cachedvec.errors import (
    ConfigError,
    InvalidKeyError,
    InvalidURLError,
    SchemaError,
    StoreError,
)
from cachedvec.keys import KeyEncoder
from cachedvec.stores.base import OTHER_KEYS, CachedVecStore
from cachedvec.stores.sql import SQLStore
from cachedvec.stores.sql_schema import SCHEMA_REVISION, SQLITE_APPLICATION_ID, VERSION_TABLE
from tests.postgres import PostgresServer

DIALECTS = ["sqlite", "postgres"]


@pytest.fixture(params=DIALECTS)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty, migrated store on each dialect."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_store_url"))
    return f"sqlite:///{tmp_path}/cache.db"


@pytest.fixture
def store(sql_url: str) -> Iterator[SQLStore]:
    with SQLStore(sql_url) as opened:
        yield opened


def age_entries(store: SQLStore, seconds: int, keys: list[str] | None = None) -> None:
    """Pretend entries were written and last read ``seconds`` ago."""
    import sqlalchemy as sa

    from cachedvec.stores.sql_schema import entries

    then = int(time.time()) - seconds
    update = entries.update().values(created_at=then, accessed_at=then)
    if keys is not None:
        update = update.where(entries.c.key.in_(keys))
    with store._engine.connect() as conn:  # test-only peek at the pool
        conn.execute(update)
        conn.commit()
    assert isinstance(update, sa.Update)


def times(store: SQLStore, key: str) -> tuple[int, int]:
    import sqlalchemy as sa

    from cachedvec.stores.sql_schema import entries

    query = sa.select(entries.c.created_at, entries.c.accessed_at).where(entries.c.key == key)
    with store._engine.connect() as conn:
        row = conn.execute(query).one()
    return int(row[0]), int(row[1])


# --- LangChain's standard suites on both dialects --------------------------


class _SQLBackends:
    @pytest.fixture
    def kv_store(self, sql_url: str) -> Iterator[SQLStore]:  # type: ignore[override]
        with SQLStore(sql_url) as opened:
            yield opened

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:  # type: ignore[override]
        return b"foo", b"\x00bar\xff", b"buzz" * 1000


class TestLangChainSyncSQL(_SQLBackends, BaseStoreSyncTests[bytes]):
    pass


class TestLangChainAsyncSQL(_SQLBackends, BaseStoreAsyncTests[bytes]):
    pass


# --- reads and writes -------------------------------------------------------


def test_batches_larger_than_a_chunk_round_trip(store: SQLStore) -> None:
    pairs = [(f"k{i:05d}", i.to_bytes(3, "big") * 50) for i in range(12_000)]
    store.mset(pairs)
    keys = [k for k, _ in pairs]
    assert store.mget(keys[::-1] + ["missing"]) == [v for _, v in pairs][::-1] + [None]
    assert len(store) == 12_000
    store.mdelete(keys[:11_000])
    assert len(store) == 1_000


def test_repeated_key_in_one_write_keeps_the_last_value(store: SQLStore) -> None:
    store.mset([("k", b"first"), ("j", b"x"), ("k", b"last")])
    assert store.mget(["k", "j"]) == [b"last", b"x"]


def test_bad_keys_and_values_are_rejected_before_writing(store: SQLStore) -> None:
    with pytest.raises(TypeError):
        store.mset([("k", "not bytes")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        store.mset([(1, b"v")])  # type: ignore[list-item]
    with pytest.raises(InvalidKeyError):
        store.mset([("ok", b"v"), ("nul\x00key", b"v")])
    assert store.mget(["ok", "k"]) == [None, None]


def test_bytearray_and_memoryview_values_come_back_as_bytes(store: SQLStore) -> None:
    store.mset([("a", bytearray(b"12")), ("b", memoryview(b"34"))])
    got = store.mget(["a", "b"])
    assert got == [b"12", b"34"] and all(type(v) is bytes for v in got)


def test_yield_keys_pages_and_allows_deletes_while_iterating(store: SQLStore) -> None:
    store.mset([(f"p:{i:05d}", b"v") for i in range(2_500)] + [("q", b"v")])
    seen = []
    for key in store.yield_keys(prefix="p:"):
        seen.append(key)
        store.mdelete([key])
    assert seen == [f"p:{i:05d}" for i in range(2_500)]
    assert list(store.yield_keys()) == ["q"]


def test_prefix_scan_is_exact_for_unusual_prefixes(store: SQLStore) -> None:
    keys = ["a%", "a%b", "a_b", "ab", "A_B", "a\U0010ffff", "a\U0010ffffz", "b", "ключ", "ключи"]
    store.mset([(k, b"v") for k in keys])
    for prefix in ["a%", "a_", "a", "A", "a\U0010ffff", "ключ", "zzz"]:
        expected = sorted(k for k in keys if k.startswith(prefix))
        assert sorted(store.yield_keys(prefix=prefix)) == expected, prefix


def test_async_methods_work_from_two_event_loops(store: SQLStore) -> None:
    async def round_trip(value: bytes) -> list[bytes | None]:
        await store.amset([("k", value)])
        return await store.amget(["k", "none"])

    assert asyncio.run(round_trip(b"1")) == [b"1", None]
    assert asyncio.run(round_trip(b"2")) == [b"2", None]


# --- lifetimes --------------------------------------------------------------


def test_writes_stamp_both_times_and_fresh_reads_do_not_write(store: SQLStore) -> None:
    before = int(time.time())
    store.mset([("k", b"v")])
    created, accessed = times(store, "k")
    assert before <= created == accessed <= int(time.time())
    age_entries(store, 3_600)  # an hour: younger than the one-day touch interval
    aged = times(store, "k")
    assert aged[1] <= created - 3_600 + 5
    assert store.mget(["k"]) == [b"v"]
    assert times(store, "k") == aged, "a fresh read writes nothing"


def test_a_read_refreshes_a_stale_read_time_once(store: SQLStore) -> None:
    store.mset([("old", b"v"), ("new", b"v")])
    age_entries(store, 3 * 86_400, ["old"])
    old_created, _ = times(store, "old")
    store.mget(["old", "new", "missing"])
    created, accessed = times(store, "old")
    assert created == old_created, "a read never changes the write time"
    assert accessed >= int(time.time()) - 5


def test_touch_interval_zero_never_records_reads(sql_url: str) -> None:
    with SQLStore(sql_url, touch_interval=0) as store:
        store.mset([("k", b"v")])
        age_entries(store, 10 * 86_400)
        store.mget(["k"])
        assert times(store, "k")[1] <= int(time.time()) - 10 * 86_400 + 5


def test_rewriting_a_different_value_restamps_it(store: SQLStore) -> None:
    store.mset([("k", b"v1")])
    age_entries(store, 5 * 86_400)
    store.mset([("k", b"v2")])
    assert times(store, "k")[0] >= int(time.time()) - 5


def test_prune_deletes_only_entries_unused_for_long_enough(store: SQLStore) -> None:
    encoder = KeyEncoder("model:abc", "doc")
    old = encoder.keys([f"old {i}" for i in range(1_500)])
    fresh = encoder.keys([f"fresh {i}" for i in range(10)])
    store.mset([(k, b"v") for k in old + fresh] + [("other-ns", b"v")])
    age_entries(store, 40 * 86_400, old + ["other-ns"])
    kept = set(old[:7])

    assert store.prune(30 * 86_400, keep=kept, dry_run=True) == 1_500 - 7 + 1
    assert len(store) == 1_511, "a dry run deletes nothing"
    assert store.prune(30 * 86_400, prefix=encoder.prefix, keep=kept) == 1_500 - 7
    remaining = set(store.yield_keys())
    assert remaining == kept | set(fresh) | {"other-ns"}
    assert store.prune(50 * 86_400) == 0
    assert store.prune(0) == len(remaining)
    assert len(store) == 0
    with pytest.raises(ConfigError):
        store.prune(-1)


def test_prune_spares_an_entry_read_since_the_cutoff(store: SQLStore) -> None:
    store.mset([("k", b"v")])
    age_entries(store, 40 * 86_400)
    assert store.mget(["k"]) == [b"v"]  # refreshes the stale read time
    assert store.prune(30 * 86_400) == 0


def test_namespace_stats_group_by_key_prefix(store: SQLStore) -> None:
    docs, queries = KeyEncoder("m:0123", "doc"), KeyEncoder("m:0123", "query")
    other = KeyEncoder("other-model:ff00", "doc", algorithm="blake2b")
    store.mset(
        [(k, b"x" * 10) for k in docs.keys(["a", "b", "c"])]
        + [(k, b"x" * 7) for k in queries.keys(["q"])]
        + [(k, b"") for k in other.keys(["z"])]
        + [("langchain-key", b"12345")]
    )
    stats = store.namespace_stats()
    assert set(stats) == {docs.prefix, queries.prefix, other.prefix, OTHER_KEYS}
    assert stats[docs.prefix][:2] == (3, 30)
    assert stats[queries.prefix][:2] == (1, 7)
    assert stats[other.prefix][:2] == (1, 0)
    assert stats[OTHER_KEYS][:2] == (1, 5)
    assert stats[docs.prefix].last_written >= int(time.time()) - 5
    assert sorted(store.yield_keys(prefix=docs.prefix)) == sorted(docs.keys(["a", "b", "c"]))


# --- opening: URLs, files and schema ---------------------------------------


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "mysql://u@h/db", "postgresql+asyncpg://u@h/db",
     "postgresql://u@h", "postgresql+psycopg2://u@h/db", "postgresql://u:pw@h:abc/db",
     "sqlitex:///x.db"],
)  # fmt: skip
def test_unsupported_sql_urls_are_rejected(url: str) -> None:
    with pytest.raises(InvalidURLError) as caught:
        SQLStore(url)
    assert "pw" not in str(caught.value)


def test_scheme_spellings_and_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Upper-case schemes and the short "postgres" name parse as SQLAlchemy's
    # own spellings would; "~" is the home folder, as in file:// URLs.
    monkeypatch.setenv("HOME", str(tmp_path))
    with SQLStore("SQLITE:///~/cache.db") as store:
        store.mset([("k", b"v")])
    assert (tmp_path / "cache.db").is_file()
    with SQLStore("sqlite+pysqlite:///~/cache.db") as store:
        assert store.mget(["k"]) == [b"v"]
    with pytest.raises(StoreError, match="connection") as caught:
        SQLStore("postgres://u:pw@127.0.0.1:1/db")
    assert "pw" not in str(caught.value) and not isinstance(caught.value, InvalidURLError)


def test_open_store_opens_sqlite(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/x.db") as store:
        assert isinstance(store, SQLStore)
        assert store.url == f"sqlite:///{tmp_path}/x.db"


def test_new_file_gets_wal_big_pages_and_our_application_id(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "cache.db"
    SQLStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 16_384
        assert conn.execute("PRAGMA application_id").fetchone()[0] == SQLITE_APPLICATION_ID
        assert conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()[0] == "0001"


def test_create_false_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        SQLStore(f"sqlite:///{tmp_path}/missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_a_folder_or_a_non_database_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="folder"):
        SQLStore(f"sqlite:///{tmp_path}/dir.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a database"):
        SQLStore(f"sqlite:///{junk}")
    assert junk.read_bytes() == b"this is not a database" * 100


def test_someone_elses_sqlite_database_is_not_migrated_silently(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    url = f"sqlite:///{path}"
    with pytest.raises(SchemaError, match=r"run: cachedvec migrate --store sqlite:///"):
        SQLStore(url)
    migrate.upgrade(url)  # what the message says to do
    with SQLStore(url) as store:
        store.mset([("k", b"v")])
        assert store.mget(["k"]) == [b"v"]


def test_our_own_file_is_upgraded_automatically(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    SQLStore(url).close()
    migrate.downgrade(url, "base")
    with SQLStore(url) as store:
        store.mset([("k", b"v")])
    assert migrate.current(url) == "0001"


def test_a_schema_newer_than_the_code_is_refused(sql_url: str) -> None:
    SQLStore(sql_url).close()
    stamp_revision(sql_url, "9999")
    with pytest.raises(SchemaError, match="'9999', unknown to this cachedvec") as info:
        SQLStore(sql_url)
    assert "made by a newer cachedvec, or not by cachedvec" in str(info.value)
    assert "upgrade cachedvec" in str(info.value)
    stamp_revision(sql_url, "0001")


@pytest.mark.postgres
def test_a_dropped_table_says_how_to_repair_it(fresh_postgres_url: str) -> None:
    migrate.upgrade(fresh_postgres_url)
    drop_entries(fresh_postgres_url)
    with pytest.raises(
        SchemaError, match="table cachedvec_entries is missing .run: cachedvec migrate"
    ):
        SQLStore(fresh_postgres_url)
    migrate.upgrade(fresh_postgres_url)
    with SQLStore(fresh_postgres_url) as store:
        assert store.mget(["k"]) == [None]


def test_a_dropped_table_in_a_cachedvec_sqlite_file_is_recreated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    SQLStore(url).close()
    drop_entries(url)
    with SQLStore(url) as store:
        store.mset([("k", b"v")])
        assert store.mget(["k"]) == [b"v"]


@pytest.fixture(params=DIALECTS)
def fresh_sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a new database without cachedvec's tables, on each dialect."""
    if request.param == "postgres":
        return str(request.getfixturevalue("fresh_postgres_url"))
    return f"sqlite:///{tmp_path}/cache.db"


def test_a_table_dropped_while_open_is_a_schema_error(fresh_sql_url: str) -> None:
    url = fresh_sql_url
    migrate.upgrade(url)
    with SQLStore(url) as store:
        store.mset([("k", b"v")])
        drop_entries(url)
        with pytest.raises(SchemaError, match="run: cachedvec migrate --store") as info:
            store.mget(["k"])
    # A hint with the password hidden would fail if pasted as it is.
    has_password = url.startswith("postgresql")
    assert str(info.value).endswith(", with the real password)") == has_password


def drop_entries(url: str) -> None:
    import sqlalchemy as sa

    from cachedvec.stores.sql import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text("DROP TABLE cachedvec_entries"))
        conn.commit()
    engine.dispose()


def stamp_revision(url: str, revision: str) -> None:
    import sqlalchemy as sa

    from cachedvec.stores.sql import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": revision})
        conn.commit()
    engine.dispose()


# --- PostgreSQL connection failures ---------------------------------------


@pytest.mark.postgres
def test_postgres_without_the_schema_says_how_to_migrate(fresh_postgres_url: str) -> None:
    with pytest.raises(SchemaError, match="has no cachedvec tables") as info:
        SQLStore(fresh_postgres_url)
    message = str(info.value)
    assert "run: cachedvec migrate --store postgresql+psycopg://postgres:***@" in message
    assert fresh_postgres_url.split(":")[2].split("@")[0] not in message  # the password


@pytest.mark.postgres
def test_postgres_connection_failures_are_one_clear_line(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    password = postgres_server.password
    cases = {
        "check the user name and password": postgres_server.url("cachedvec", password="wrong"),
        "create the database first": postgres_server.url("no_such_db"),
        "check that the server is running": postgres_url.replace(
            f":{postgres_server.port}/", f":{_closed_port()}/"
        ),
    }
    for hint, url in cases.items():
        with pytest.raises(StoreError) as info:
            SQLStore(url)
        message = str(info.value)
        assert hint in message and "\n" not in message
        assert password not in message and "wrong" not in message
        assert "postgresql+psycopg://postgres:***@127.0.0.1" in message


@pytest.mark.postgres
def test_postgres_store_survives_a_dropped_connection(
    postgres_server: PostgresServer, postgres_store_url: str
) -> None:
    with SQLStore(postgres_store_url, pool_size=1) as store:
        store.mset([("k", b"v")])
        with psycopg.connect(postgres_server.dsn("cachedvec"), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'cachedvec' AND pid <> pg_backend_pid()"
            )
        assert store.mget(["k"]) == [b"v"]


@pytest.mark.postgres
def test_postgres_urls_without_driver_use_psycopg(postgres_server: PostgresServer) -> None:
    url = postgres_server.url("cachedvec").replace("postgresql+psycopg://", "postgresql://")
    with open_store(url) as store:
        assert isinstance(store, SQLStore) and store.dialect == "postgresql"


def _closed_port() -> int:
    from tests.postgres import _free_port

    return _free_port()  # nothing listens there once the probe socket closed


def test_entry_times_match_the_generic_prune(store: SQLStore) -> None:
    store.mset([("a", b"1"), ("b", b"2")])
    age_entries(store, 2 * 86_400, ["a"])
    (a_written, a_read), (b_written, _), missing = store.entry_times(["a", "b", "zz"])
    assert a_written == a_read <= time.time() - 2 * 86_400 + 5
    assert b_written >= time.time() - 5 and missing == (0.0, 0.0)
    generic = CachedVecStore.prune(store, 86_400, dry_run=True)
    assert generic == store.prune(86_400, dry_run=True) == 1


def test_sqlite_durability_setting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    for durable, level in ((False, 1), (True, 2)):  # NORMAL, FULL
        with SQLStore(url, durable=durable) as store:
            fairy = store._checkout()
            try:
                assert fairy.driver_connection.execute("PRAGMA synchronous").fetchone() == (level,)
            finally:
                store._checkin(fairy)


@pytest.mark.postgres
def test_postgres_durability_setting_keeps_the_urls_own_options(postgres_url: str) -> None:
    url = postgres_url + "?options=-c%20application_name%3Dmine"
    for durable, expected in ((False, "off"), (True, "on")):
        with SQLStore(url, durable=durable) as store:
            fairy = store._checkout()
            try:
                with fairy.driver_connection.cursor() as cur:
                    cur.execute(
                        "SELECT current_setting('synchronous_commit'), "
                        "current_setting('application_name')"
                    )
                    assert cur.fetchone() == (expected, "mine")
            finally:
                store._checkin(fairy)


def test_missing_postgres_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a)
    )
    with pytest.raises(StoreError, match=r"pip install 'cachedvec\[postgres\]'") as info:
        SQLStore("postgresql://bob:hunter2@localhost/db")
    assert "hunter2" not in str(info.value)


def test_a_new_file_whose_setup_fails_is_set_up_by_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The half-made file is kept on purpose: deleting it could pull it from
    # under another process creating the same cache at the same moment.
    def broken_upgrade(url: str, revision: str = "head") -> None:
        raise StoreError("disk full, say")

    url = f"sqlite:///{tmp_path}/new.db"
    with monkeypatch.context() as patch:
        patch.setattr(migrate, "upgrade", broken_upgrade)
        with pytest.raises(StoreError, match="disk full"):
            SQLStore(url)
    with SQLStore(url) as store:
        store.mset([("k", b"v")])
        assert store.mget(["k"]) == [b"v"]
    assert migrate.current(url) == SCHEMA_REVISION


def test_a_sqlite_writer_waits_for_another_and_gives_up_clearly(tmp_path: Path) -> None:
    import threading

    url = f"sqlite:///{tmp_path}/busy.db"
    SQLStore(url).close()
    blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    with SQLStore(url, busy_timeout=0.2) as impatient:
        with pytest.raises(StoreError, match="locked"):
            impatient.mset([("k", b"never")])
    errors: list[BaseException] = []
    with SQLStore(url, busy_timeout=30) as patient:

        def write() -> None:
            try:
                patient.mset([("k", b"v")])  # waits for the lock instead of failing
            except BaseException as exc:  # reported by the main thread below
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            writer.join(0.5)
            assert writer.is_alive(), "the patient write waits while the lock is held"
        finally:
            blocker.execute("COMMIT")
            writer.join(30)
        assert not writer.is_alive() and errors == []
        assert patient.mget(["k"]) == [b"v"]
    blocker.close()


# --- reviewer's defects: pool recovery, transient failures, lifetimes -----


def _terminate_other_backends(server: PostgresServer) -> None:
    """What a server restart does to every client connection."""
    with psycopg.connect(server.dsn("cachedvec"), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = 'cachedvec' AND pid <> pg_backend_pid()"
        )


@pytest.mark.postgres
def test_postgres_pool_is_renewed_when_every_connection_dropped(
    postgres_server: PostgresServer, postgres_store_url: str
) -> None:
    import threading

    with SQLStore(postgres_store_url, pool_size=5) as store:
        store.mset([("k", b"v")])
        barrier = threading.Barrier(5)

        def reader() -> None:  # five threads at once: five pooled connections
            barrier.wait()
            for _ in range(50):
                store.mget(["k"])

        threads = [threading.Thread(target=reader) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _terminate_other_backends(postgres_server)
        for _ in range(3):
            assert store.mget(["k"]) == [b"v"]
            assert list(store.yield_keys()) == ["k"] and len(store) == 1

        async def async_calls() -> None:
            await asyncio.gather(*[store.amget(["k"]) for _ in range(5)])
            _terminate_other_backends(postgres_server)
            for _ in range(6):
                assert await store.amget(["k"]) == [b"v"]

        asyncio.run(async_calls())


@pytest.mark.postgres
def test_postgres_call_with_the_database_gone_is_one_clear_store_error(
    fresh_postgres_url: str, postgres_server: PostgresServer
) -> None:
    migrate.upgrade(fresh_postgres_url)
    with SQLStore(fresh_postgres_url) as store:
        store.mset([("k", b"v")])
        postgres_server.drop_database(fresh_postgres_url.rsplit("/", 1)[1])
        with pytest.raises(StoreError, match="does not exist") as info:
            store.mget(["k"])
        assert postgres_server.password not in str(info.value)
        assert "\n" not in str(info.value)


def test_a_busy_moment_skips_one_read_time_update_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/busy.db"
    with SQLStore(url, busy_timeout=0.1) as store:
        store.mset([("a", b"1"), ("b", b"2")])
        age_entries(store, 10 * 86_400)
        blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
        aged = times(store, "a")
        blocker.execute("BEGIN IMMEDIATE")  # another process writing meanwhile
        assert store.mget(["a"]) == [b"1"]  # its read time cannot be recorded now
        assert times(store, "a") == aged, "nothing was written while blocked"
        blocker.execute("COMMIT")
        blocker.close()
        assert store.mget(["b"]) == [b"2"]
        assert times(store, "b")[1] >= int(time.time()) - 5, "later reads are still recorded"
        assert store.mget(["a"]) == [b"1"]
        assert times(store, "a")[1] >= int(time.time()) - 5, "the skipped one is retried"
        assert times(store, "a")[0] == aged[0]


def test_a_read_waits_only_briefly_to_record_its_read_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/busy.db"
    with SQLStore(url, busy_timeout=30) as store:
        store.mset([("a", b"1")])
        age_entries(store, 10 * 86_400)
        blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
        aged = times(store, "a")
        blocker.execute("BEGIN IMMEDIATE")  # a writer holding the lock for long
        started = time.monotonic()
        assert store.mget(["a"]) == [b"1"]
        # Not the 30 s a write would wait (the bound is loose for a noisy machine).
        assert time.monotonic() - started < 15
        assert times(store, "a") == aged, "the read time is skipped, not recorded"
        blocker.execute("COMMIT")
        blocker.close()
        store.mset([("b", b"2")])  # writes still wait as configured, and work


@pytest.mark.postgres
def test_a_read_only_postgres_session_stops_recording_reads(
    postgres_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with SQLStore(postgres_store_url) as writer:
        writer.mset([("k", b"v")])
        age_entries(writer, 10 * 86_400)
        aged = times(writer, "k")
    read_only = postgres_store_url + "?options=-c%20default_transaction_read_only%3Don"
    with caplog.at_level(logging.DEBUG, logger="cachedvec"), SQLStore(read_only) as store:
        for _ in range(3):
            assert store.mget(["k"]) == [b"v"]
        assert asyncio.run(store.amget(["k"])) == [b"v"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, "one warning, then reads stop trying to record"
    assert "not recording read times" in warnings[0].getMessage()
    with SQLStore(postgres_store_url) as writer:
        assert times(writer, "k") == aged


def test_an_identical_rewrite_counts_as_a_use(store: SQLStore) -> None:
    store.mset([("k", b"v")])
    age_entries(store, 5 * 86_400)
    written, _ = times(store, "k")
    store.mset([("k", b"v")])
    assert times(store, "k")[0] == written, "the value is as old as it was"
    assert times(store, "k")[1] >= int(time.time()) - 5
    assert store.prune(86_400) == 0 and store.mget(["k"]) == [b"v"]
    age_entries(store, 3_600)  # recorded an hour ago: the rewrite changes nothing
    before = times(store, "k")
    asyncio.run(store.amset([("k", b"v")]))
    assert times(store, "k") == before


def test_with_touch_interval_0_an_identical_rewrite_writes_nothing(sql_url: str) -> None:
    with SQLStore(sql_url, touch_interval=0) as store:
        store.mset([("k", b"v")])
        age_entries(store, 5 * 86_400)
        before = times(store, "k")
        store.mset([("k", b"v")])
        if store.dialect == "postgresql":
            asyncio.run(store.amset([("k", b"v")]))
        assert times(store, "k") == before


def test_someone_elses_sqlite_file_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    content = path.read_bytes()
    for create in (True, False):
        with pytest.raises(SchemaError):
            SQLStore(f"sqlite:///{path}", create=create)
    assert path.read_bytes() == content
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    migrate.upgrade(f"sqlite:///{path}")
    SQLStore(f"sqlite:///{path}").close()  # once migrated, it is ours: WAL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_dns_failure_gets_the_unreachable_host_hint() -> None:
    from cachedvec.stores.sql import describe_connection_error

    error = psycopg.OperationalError(
        'connection failed: failed to resolve host "db.invalid": [Errno -2] Name not known'
    )
    message = describe_connection_error("postgresql://u:pw@db.invalid/x", error)
    assert "check that the server is running and the host and port are right" in message
    assert "pw" not in message


# --- fork: a child never closes the parent's connections -------------------


def _in_child(work: Callable[[], object]) -> int:
    """Run ``work`` in a forked child; its exit status (0: no exception)."""
    import os

    pid = os.fork()
    if pid == 0:
        try:
            work()
        except BaseException:
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.postgres
def test_a_forked_child_closing_the_store_leaves_the_parents_connections(
    postgres_store_url: str,
) -> None:
    with SQLStore(postgres_store_url, pool_size=1) as store:
        store.mset([("k", b"v")])
        assert list(store.yield_keys()) == ["k"]  # a connection in the pool
        assert _in_child(store.close) == 0
        for _ in range(2):
            assert list(store.yield_keys()) == ["k"] and store.mget(["k"]) == [b"v"]


@pytest.mark.postgres
def test_a_forked_child_using_async_leaves_the_parents_connections(
    postgres_store_url: str,
) -> None:
    with SQLStore(postgres_store_url) as store:
        store.mset([("k", b"v")])

        async def three_reads() -> list[list[bytes | None]]:  # three pooled connections
            return await asyncio.gather(*[store.amget(["k"]) for _ in range(3)])

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(three_reads())
            assert _in_child(lambda: asyncio.run(store.amget(["k"]))) == 0
            for _ in range(3):
                assert loop.run_until_complete(store.amget(["k"])) == [b"v"]
        finally:
            loop.close()


# --- keys PostgreSQL cannot hold --------------------------------------------


def test_a_nul_key_is_simply_absent(store: SQLStore) -> None:
    store.mset([("k", b"v")])
    assert store.mget(["a\x00b", "k"]) == [None, b"v"]
    store.mdelete(["a\x00b"])
    assert asyncio.run(store.amget(["k", "a\x00b"])) == [b"v", None]
    asyncio.run(store.amdelete(["a\x00b", "k"]))
    assert store.mget(["k"]) == [None]


@pytest.mark.postgres
def test_a_key_over_postgres_index_limit_is_an_invalid_key(postgres_store_url: str) -> None:
    import os

    long_key = os.urandom(5_000).hex()
    with SQLStore(postgres_store_url) as store:
        for write in (
            lambda: store.mset([("ok", b"v"), (long_key, b"v")]),
            lambda: asyncio.run(store.amset([(long_key, b"v")])),
        ):
            with pytest.raises(InvalidKeyError, match="too long for PostgreSQL's index"):
                write()
        assert store.mget([long_key, "ok"]) == [None, None]
