"""One conformance suite for every byte store, plus LangChain's own suites."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from langchain_tests.integration_tests import BaseStoreAsyncTests, BaseStoreSyncTests

from cachedvec import open_store
from cachedvec.errors import (
    ConfigError,
    InvalidKeyError,
    InvalidURLError,
    InvalidValueError,
    StoreError,
)
from cachedvec.stores import redact_url
from cachedvec.stores.base import OTHER_KEYS, CachedVecStore
from tests.conftest import PERSISTENT_KINDS, STORE_KINDS
from tests.conftest import store_url as make_local_url

MakeURL = Callable[[str], str]


def test_missing_is_none_and_order_is_kept(any_store: CachedVecStore) -> None:
    any_store.mset([("b", b"2"), ("a", b"1")])
    assert any_store.mget(["a", "zz", "b", "a"]) == [b"1", None, b"2", b"1"]
    assert any_store.mget([]) == []


def test_overwrite_and_delete(any_store: CachedVecStore) -> None:
    any_store.mset([("k", b"old")])
    any_store.mset([("k", b"new")])
    assert any_store.mget(["k"]) == [b"new"]
    any_store.mdelete(["k", "never-there"])
    assert any_store.mget(["k"]) == [None]
    any_store.mdelete([])


def test_binary_values_survive_exactly(any_store: CachedVecStore) -> None:
    blobs = [bytes(range(256)), b"", b"\x00" * 5000, os.urandom(70_000)]
    pairs = [(f"k{i}", b) for i, b in enumerate(blobs)]
    any_store.mset(pairs)
    assert any_store.mget([k for k, _ in pairs]) == blobs


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_a_value_that_is_not_bytes_is_refused_and_writes_nothing(
    kind: str, make_store_url: MakeURL
) -> None:
    # One error type everywhere: a StoreError (cachedvec's tree) and a
    # TypeError (Python's convention for a wrong type).
    with open_store(make_store_url(kind)) as store:
        with pytest.raises(InvalidValueError, match="must be bytes, got str") as caught:
            store.mset([("a", b"ok"), ("k", "str")])  # type: ignore[list-item]
        assert isinstance(caught.value, StoreError) and isinstance(caught.value, TypeError)
        assert store.mget(["a", "k"]) == [None, None]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_bytearray_and_memoryview_values_come_back_as_bytes(
    kind: str, make_store_url: MakeURL
) -> None:
    with open_store(make_store_url(kind)) as store:
        store.mset([("a", bytearray(b"12")), ("b", memoryview(b"34")), ("c", b"56")])
        got = store.mget(["a", "b", "c"])
        assert got == [b"12", b"34", b"56"] and all(type(v) is bytes for v in got)


def test_yield_keys_with_prefix(any_store: CachedVecStore) -> None:
    keys = ["cv1:m:ab:doc:1", "cv1:m:ab:doc:2", "cv1:m:ab:query:1", "other"]
    any_store.mset([(k, b"x") for k in keys])
    assert sorted(any_store.yield_keys()) == sorted(keys)
    assert sorted(any_store.yield_keys(prefix="cv1:m:ab:doc:")) == keys[:2]
    assert list(any_store.yield_keys(prefix="nothing")) == []


def test_odd_keys_round_trip(any_store: CachedVecStore) -> None:
    keys = ["../../etc/passwd", "/abs", ".", "..", "a/b\\c", "%2E", "ключ", "a" * 60, ".tmp-x"]
    any_store.mset([(k, k.encode()) for k in keys])
    assert any_store.mget(keys) == [k.encode() for k in keys]
    assert sorted(any_store.yield_keys()) == sorted(keys)


@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
def test_a_key_that_is_not_valid_unicode_is_refused_and_writes_nothing(
    kind: str, make_store_url: MakeURL
) -> None:
    # A lone surrogate: a valid Python str that no file name or database
    # text can hold. It sorts last, so on PostgreSQL it falls in the third
    # of three statements, which must take the first two back with it.
    bad = "z\ud800"
    pairs = [(f"k{i:05d}", b"v") for i in range(5_000)] + [(bad, b"v")]
    with open_store(make_store_url(kind)) as store:
        for attempt in (lambda: store.mset(pairs), lambda: store.mget([bad])):
            with pytest.raises(InvalidKeyError, match="not valid Unicode"):
                attempt()
        assert list(store.yield_keys()) == []
        store.mset([("k00000", b"v")])
        with pytest.raises(InvalidKeyError):
            store.mdelete(["k00000", bad])
        assert store.mget(["k00000"]) == [b"v"]


def test_large_batches(any_store: CachedVecStore) -> None:
    pairs = [(f"key-{i}", i.to_bytes(4, "little")) for i in range(3000)]
    any_store.mset(pairs)
    got = any_store.mget([k for k, _ in pairs])
    assert got == [v for _, v in pairs]


async def test_async_twins(any_store: CachedVecStore) -> None:
    await any_store.amset([("a", b"1"), ("b", b"2")])
    assert await any_store.amget(["b", "a", "c"]) == [b"2", b"1", None]
    await any_store.amdelete(["a"])
    assert sorted([k async for k in any_store.ayield_keys()]) == ["b"]


@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
def test_persistent_stores_survive_reopening(kind: str, make_store_url: MakeURL) -> None:
    url = make_store_url(kind)
    with open_store(url) as store:
        store.mset([("a", b"1")])
    with open_store(url) as store:
        assert store.mget(["a"]) == [b"1"]


@pytest.mark.parametrize("kind", ["file", "sqlite", "diskcache"])
def test_create_false_refuses_a_store_that_does_not_exist(kind: str, tmp_path: Path) -> None:
    url = make_local_url(kind, tmp_path / "typo" / "nested")
    with pytest.raises(StoreError, match="no cache has been written there"):
        open_store(url, create=False)
    assert not (tmp_path / "typo").exists()
    open_store(url).close()  # created on purpose...
    open_store(url, create=False).close()  # ...then it opens


def test_file_store_keys_cannot_escape_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_store(f"file://{root}") as store:
        store.mset([("../../escape", b"x"), ("/etc/x", b"y"), ("..", b"z")])
        store.mdelete(["../../root"])
    inside = {p.resolve() for p in root.rglob("*")}
    outside = {p.resolve() for p in tmp_path.rglob("*")} - inside - {root.resolve()}
    assert outside == set()
    with open_store(f"file://{root}") as store, pytest.raises(InvalidKeyError):
        store.mset([("x" * 300, b"too long")])


def test_file_store_ignores_foreign_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with open_store(f"file://{root}") as store:
        store.mset([("a", b"1")])
        (root / "index.pkl").write_bytes(b"not ours")
        (root / "zz").mkdir()
        (root / "ab").mkdir(exist_ok=True)
        (root / "ab" / ".tmp-leftover").mkdir()
        assert list(store.yield_keys()) == ["a"]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("nope", "'nope' is not a store URL"),
        ("ftp://x/y", "scheme 'ftp'"),
        ("redis://localhost", "scheme 'redis'"),
        ("file://", "names no folder: use file:///"),
        ("diskcache://", "names no folder: use diskcache:///"),
        ("diskcache:///tmp/x?eviction_policy=random", "eviction_policy 'random'"),
        ("diskcache:///tmp/x?size_limit=lots", "size_limit=lots in"),
        ("diskcache:///tmp/x?colour=blue", "option 'colour'"),
        ("diskcache:///tmp/x?size_limit=1", "size_limit=1 "),
        ("diskcache:///tmp/x?size_limit=-5GB", "size_limit=-5GB"),
        ("diskcache:///tmp/x?cull_limit=-1", "cull_limit"),
    ],
)
def test_bad_urls_raise_clear_errors(url: str, fragment: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        open_store(url)
    message = str(info.value)
    assert fragment in message and "\n" not in message


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_an_unknown_option_is_a_config_error_naming_it(kind: str, make_store_url: MakeURL) -> None:
    url = make_store_url(kind)
    with pytest.raises(ConfigError, match="'foo'") as info:
        open_store(url, foo=1)
    # The URL is fine: the option is at fault, and the message names the store type.
    assert not isinstance(info.value, InvalidURLError)
    assert url.split("://")[0].split("+")[0] in str(info.value)


def test_sqlite_urls_refuse_query_parameters_instead_of_ignoring_them(tmp_path: Path) -> None:
    # SQLAlchemy's sqlite driver only warns about most of them: a diskcache
    # option on a sqlite URL (or a misspelt one) would silently do nothing.
    url = f"sqlite:///{tmp_path}/cache.db?size_limit=1GB"
    with pytest.raises(InvalidURLError, match="size_limit"):
        open_store(url)
    assert not (tmp_path / "cache.db").exists()


def test_diskcache_url_is_the_whole_configuration(tmp_path: Path) -> None:
    # diskcache keeps settings in its folder; an option left out of the URL
    # must mean its default, not whatever an earlier opening chose.
    with open_store(f"diskcache://{tmp_path}?size_limit=2MB") as store:
        assert store.cache.size_limit == 2 * 10**6
    with open_store(f"diskcache://{tmp_path}") as store:
        assert store.cache.size_limit == 2**30
        store.mset([("k", b"v")])
        assert store.mget(["k"]) == [b"v"]


def test_unreachable_paths_raise_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for url in (
        f"file://{blocker}/sub",
        f"diskcache://{blocker}/sub",
        f"sqlite:///{blocker}/sub/cache.db",
    ):
        with pytest.raises(StoreError, match="a-file"):
            open_store(url)


def test_passwords_are_hidden_in_messages() -> None:
    url = "postgresql+psycopg://bob:hunter2@localhost:1/db"
    assert "hunter2" not in redact_url(url)
    assert "bob:***@localhost" in redact_url(url)


# --- LangChain's standard store suites, run against every backend ----------


class _Backends:
    @pytest.fixture(params=STORE_KINDS)
    def kv_store(self, request: pytest.FixtureRequest, make_store_url: MakeURL):  # type: ignore[override]
        with open_store(make_store_url(request.param)) as store:
            yield store

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:  # type: ignore[override]
        return b"foo", b"bar", b"buzz"


class TestLangChainSync(_Backends, BaseStoreSyncTests[bytes]):
    pass


class TestLangChainAsync(_Backends, BaseStoreAsyncTests[bytes]):
    pass


# --- lifetimes and ages, the same on every store -----------------------------


@pytest.mark.parametrize("age", [float("nan"), -1, -0.5])
def test_a_negative_or_nan_prune_age_is_a_config_error(
    any_store: CachedVecStore, age: float
) -> None:
    any_store.mset([("k", b"v")])
    with pytest.raises(ConfigError, match="older_than"):
        any_store.prune(age)
    assert any_store.mget(["k"]) == [b"v"]


@pytest.mark.parametrize("age", [float("inf"), 1e20, pytest.param(10**400, id="10**400")])
def test_a_huge_prune_age_finds_nothing_that_old(any_store: CachedVecStore, age: float) -> None:
    any_store.mset([("k", b"v")])
    assert any_store.prune(age) == 0 and any_store.prune(age, dry_run=True) == 0
    assert any_store.mget(["k"]) == [b"v"]


def test_a_nul_in_a_key_reads_as_missing_everywhere(any_store: CachedVecStore) -> None:
    any_store.mset([("k", b"v")])
    assert any_store.mget(["a\x00b", "k"]) == [None, b"v"]
    any_store.mdelete(["a\x00b"])
    assert any_store.mget(["k"]) == [b"v"]


def test_file_store_statistics_do_not_count_as_reads(tmp_path: Path) -> None:
    with open_store(f"file://{tmp_path}/fs") as store:
        store.mset([("k", b"value")])
        path = store._path("k")  # type: ignore[attr-defined]
        then = time.time() - 10 * 86_400
        os.utime(path, (then, then))
        assert store.namespace_stats()[OTHER_KEYS].bytes == 5
        assert store.entry_times(["k"])[0][1] == pytest.approx(then)
        assert store.prune(86_400) == 1


def _backdate_diskcache(store: CachedVecStore, days: float) -> None:
    then = time.time() - days * 86_400
    store.cache._sql("UPDATE Cache SET store_time = ?, access_time = ?", (then, then))  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", ["least-recently-stored", "least-frequently-used", "none"])
def test_diskcache_records_reads_for_prune(tmp_path: Path, policy: str) -> None:
    with open_store(f"diskcache://{tmp_path}/dc?eviction_policy={policy}") as store:
        store.mset([("read", b"v"), ("unread", b"v")])
        _backdate_diskcache(store, 10)
        assert store.namespace_stats()[OTHER_KEYS].entries == 2  # looking is no use
        assert store.mget(["read"]) == [b"v"]
        assert store.prune(86_400) == 1
        assert list(store.yield_keys()) == ["read"]


def test_diskcache_warm_reads_do_not_write(tmp_path: Path) -> None:
    with open_store(f"diskcache://{tmp_path}/dc") as store:
        store.mset([("k", b"v")])
        before = store.entry_times(["k"])
        blocker = sqlite3.connect(tmp_path / "dc" / "cache.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # a writer holds the lock: reads must not need it
        try:
            assert store.mget(["k", "missing"]) == [b"v", None]
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        assert store.entry_times(["k"]) == before


def test_diskcache_lru_and_lfu_bookkeeping_still_happens(tmp_path: Path) -> None:
    with open_store(f"diskcache://{tmp_path}/lru?eviction_policy=least-recently-used") as lru:
        lru.mset([("k", b"v")])
        _, read_before = lru.entry_times(["k"])[0]
        time.sleep(0.01)
        lru.mget(["k"])
        assert lru.entry_times(["k"])[0][1] > read_before, "LRU orders by every read"
    with open_store(f"diskcache://{tmp_path}/lfu?eviction_policy=least-frequently-used") as lfu:
        lfu.mset([("k", b"v")])
        lfu.mget(["k"])
        lfu.mget(["k", "missing"])
        count = lfu.cache._sql("SELECT access_count FROM Cache").fetchone()[0]  # type: ignore[attr-defined]
        assert count == 2, "one count per read"


def test_diskcache_refuses_a_value_larger_than_the_cache(tmp_path: Path) -> None:
    with open_store(f"diskcache://{tmp_path}/dc?size_limit=1MiB") as store:
        with pytest.raises(StoreError, match="more than the whole cache") as info:
            store.mset([("small", b"v"), ("big", bytes(3 * 2**20))])
        assert "size_limit=1,048,576" in str(info.value)
        assert store.mget(["small", "big"]) == [None, None]
