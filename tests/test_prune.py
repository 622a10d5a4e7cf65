"""Prune safety on real SQLite files and a real PostgreSQL server.

``SQLStore.prune`` lists entries older than the cutoff a page at a time and
deletes each page with the age checked again in the ``DELETE`` itself, so an
entry read or rewritten after it was listed survives. That window is made
deterministic here: a SQLAlchemy ``before_cursor_execute`` listener on the
pruning store's engine (the real engine, no code of ours replaced) lets a
second store read and rewrite entries at the moment the ``DELETE`` is about
to run, after the page was listed.

The CLI tests check what ``cachedvec prune`` keeps: the union of every
``--index`` given, together with ``--older-than``, and that ``--dry-run``
deletes nothing and reports the count a real run then deletes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import cachedvec
from cachedvec import open_store
from cachedvec.index import VectorIndex
from cachedvec.keys import KeyEncoder
from cachedvec.stores import redact_url
from cachedvec.stores.sql import SQLStore
from cachedvec.testing import FakeEmbeddings
from tests.test_cli import cli, cli_json
from tests.test_sql_store import age_entries, times

DAY = 86_400


@pytest.fixture(params=["sqlite", "postgres"])
def sql_url(request: pytest.FixtureRequest, make_store_url: Callable[[str], str]) -> str:
    return make_store_url(request.param)


@pytest.fixture
def store(sql_url: str) -> Iterator[SQLStore]:
    with SQLStore(sql_url) as opened:
        yield opened


def keys_of(n: int, word: str = "text") -> list[str]:
    return KeyEncoder("model:abc", "doc").keys([f"{word} {i}" for i in range(n)])


def entries(store: SQLStore) -> set[str]:
    return set(store.yield_keys())


# ----------------------------------------------------------------- the store


def test_entries_read_or_rewritten_before_prune_survive_it(store: SQLStore) -> None:
    keys = keys_of(10)
    store.mset([(k, b"v") for k in keys])
    age_entries(store, 3 * DAY)
    read, same, changed = keys[:3], keys[3], keys[4]
    assert store.mget(read) == [b"v"] * 3  # a stale read time is refreshed
    store.mset([(same, b"v"), (changed, b"new")])  # an identical rewrite counts as a use
    assert store.prune(2 * DAY) == 10 - 5
    assert entries(store) == {*read, same, changed}
    assert store.mget([changed]) == [b"new"]


def test_an_entry_read_or_rewritten_after_its_age_was_checked_survives(
    store: SQLStore, sql_url: str
) -> None:
    keys = keys_of(40)
    store.mset([(k, b"v") for k in keys])
    age_entries(store, 3 * DAY)
    read, same, changed = keys[5:10], keys[20], keys[30]
    statements: list[str] = []

    def use_entries_now(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())
        if statement.lstrip().upper().startswith("DELETE") and statements.count("DELETE") == 1:
            # The page is listed; its deletion is about to run. Another client uses
            # some of its entries right now.
            with SQLStore(sql_url, create=False) as other:
                assert other.mget(read) == [b"v"] * len(read)
                other.mset([(same, b"v"), (changed, b"changed")])

    sa.event.listen(store._engine, "before_cursor_execute", use_entries_now)
    try:
        deleted = store.prune(2 * DAY)
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", use_entries_now)

    # The interleaving happened as intended: listed (SELECT), then the DELETE.
    assert statements[:2] == ["SELECT", "DELETE"]
    used = {*read, same, changed}
    assert deleted == len(keys) - len(used)
    assert entries(store) == used
    assert store.mget([same, changed]) == [b"v", b"changed"]
    assert all(times(store, k)[1] >= int(time.time()) - 60 for k in used)


def test_dry_run_deletes_nothing_and_counts_what_a_real_run_deletes(store: SQLStore) -> None:
    # More than one page of candidates (900 a page), with kept keys spread over them.
    old, fresh = keys_of(2_000, "old"), keys_of(5, "fresh")
    store.mset([(k, b"v") for k in old + fresh])
    age_entries(store, 10 * DAY, old)
    keep = set(old[::7]) | {fresh[0]}
    expected = len(old) - len(set(old[::7]))

    before = {k: times(store, k) for k in old[:3] + fresh[:1]}
    assert store.prune(7 * DAY, keep=keep, dry_run=True) == expected
    assert len(store) == len(old) + len(fresh)
    assert {k: times(store, k) for k in before} == before, "a dry run changes no time either"

    assert store.prune(7 * DAY, keep=keep) == expected
    assert entries(store) == set(old[::7]) | set(fresh)
    assert store.prune(7 * DAY, keep=keep, dry_run=True) == 0


# ----------------------------------------------------------------- the command

A_TEXTS = ["kettle descaling with citric acid", "kettle error E3 means empty", "shared note"]
B_TEXTS = ["shared note", "bees dance to share directions"]


class TwoIndexes:
    """Two indexes sharing one cache, plus entries neither uses."""

    def __init__(self, root: Path, store: str) -> None:
        self.root, self.store = root, store
        self.model = FakeEmbeddings(32)
        self.a, self.b = root / "index-a", root / "index-b"
        self._build(self.a, "corpus-a", A_TEXTS)
        self._build(self.b, "corpus-b", B_TEXTS)
        # Unused by either index: a question's vector and the vector of a
        # chunk whose file was removed (the cache keeps it, the index not).
        cachedvec.query("what is a waggle dance?", index=self.b, store=store, model=self.model)
        (root / "corpus-a" / "gone.txt").write_text("a file removed later")
        self._ingest(self.a, "corpus-a")
        (root / "corpus-a" / "gone.txt").unlink()
        self._ingest(self.a, "corpus-a")

    def _build(self, index: Path, corpus: str, texts: list[str]) -> None:
        folder = self.root / corpus
        folder.mkdir()
        for i, text in enumerate(texts):
            (folder / f"{i}.txt").write_text(text)
        self._ingest(index, corpus)

    def _ingest(self, index: Path, corpus: str) -> None:
        cachedvec.ingest([self.root / corpus], index=index, store=self.store, model=self.model)

    def keys(self, index: Path) -> set[str]:
        with VectorIndex.load(index) as vindex:
            return {r.cache_key for r in vindex.records() if r.cache_key}

    def entries(self) -> set[str]:
        with open_store(self.store, create=False) as opened:
            return set(opened.yield_keys())

    def prune(self, *args: str | Path) -> dict[str, Any]:
        return cli_json("prune", "--store", self.store, *args)

    def age(self, seconds: int, keys: set[str]) -> None:
        with SQLStore(self.store, create=False) as opened:
            age_entries(opened, seconds, sorted(keys))


@pytest.fixture
def two(tmp_path: Path, sql_url: str) -> TwoIndexes:
    return TwoIndexes(tmp_path, sql_url)


def test_prune_keeps_the_union_of_every_index(two: TwoIndexes) -> None:
    a, b = two.keys(two.a), two.keys(two.b)
    assert (len(a), len(b), len(a & b)) == (3, 2, 1)  # "shared note" is in both
    unused = two.entries() - a - b
    assert len(unused) == 2  # the question and the removed file's chunk

    # Naming one index only would drop what only the other one uses.
    only_a = two.prune("--index", two.a, "--dry-run")
    assert (only_a["pruned"], only_a["kept"]) == (len(unused) + len(b - a), len(a))

    done = two.prune("--index", two.a, "--index", two.b)
    assert (done["pruned"], done["kept"], done["dry_run"]) == (len(unused), 4, False)
    assert two.entries() == a | b
    for index in (two.a, two.b):  # every vector either index uses is still there
        assert cachedvec.reindex(index, store=two.store).computed == 0


def test_prune_index_with_older_than_drops_only_old_unused_entries(two: TwoIndexes) -> None:
    used = two.keys(two.a) | two.keys(two.b)
    unused = sorted(two.entries() - used)
    old_unused, fresh_unused = unused[0], unused[1]
    two.age(10 * 86_400, used | {old_unused})  # the indexes' own entries are old too

    dry = two.prune("--index", two.a, "--index", two.b, "--older-than", "7d", "--dry-run")
    assert (dry["pruned"], dry["dry_run"]) == (1, True)
    done = two.prune("--index", two.a, "--index", two.b, "--older-than", "7d")
    assert done["pruned"] == 1
    assert two.entries() == used | {fresh_unused}
    # Without the indexes, the same age drops their old entries as well.
    assert two.prune("--older-than", "7d", "--dry-run")["pruned"] == len(used)
    assert two.prune("--older-than", "30d")["pruned"] == 0


def test_dry_run_deletes_nothing_and_reports_the_same_count(two: TwoIndexes) -> None:
    before = two.entries()
    used = two.keys(two.a) | two.keys(two.b)
    where = ["--index", two.a, "--index", two.b]

    text = cli("prune", "--store", two.store, *where, "--dry-run")
    assert text.exit_code == 0, text.output
    assert text.stdout.strip() == f"would drop 2 entries; kept {len(used)} used by 2 index(es)"
    dry = two.prune(*where, "--dry-run")
    assert dry == {
        "store": redact_url(two.store),
        "pruned": 2,
        "kept": len(used),
        "dry_run": True,
        "indexes": [str(two.a), str(two.b)],
    }
    assert two.entries() == before

    real = two.prune(*where)
    assert real == {**dry, "dry_run": False}
    assert two.entries() == used
    assert two.prune(*where, "--dry-run")["pruned"] == 0


def test_older_than_alone_keeps_what_the_default_index_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unchanged chunk's vector is never read after its ingest, so it grows
    # old while its index still needs it: pruning by age alone must not drop it.
    two = TwoIndexes(tmp_path, f"sqlite:///{tmp_path / 'cache.db'}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".cachedvec").mkdir()
    two.a.rename(tmp_path / ".cachedvec" / "index")
    default = tmp_path / ".cachedvec" / "index"
    used = two.keys(default)
    two.age(10 * DAY, two.entries())

    done = two.prune("--older-than", "7d")
    assert (done["kept"], done["indexes"]) == (len(used), [".cachedvec/index"])
    assert two.entries() == used
    assert cachedvec.reindex(default, store=two.store).computed == 0
