"""Store defects found in review: URLs, option checks and schema errors that misled.

Each test pins one message or refusal: an error names what is wrong (the
URL, an option, a foreign table) and what to do, in one line, and points
only at remedies that work.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cachedvec import migrate, open_store
from cachedvec.cli import main
from cachedvec.errors import ConfigError, InvalidURLError, SchemaError
from cachedvec.stores.sql import SQLStore, make_engine
from cachedvec.stores.sql_schema import VERSION_TABLE
from tests.conftest import execute_sql

NAN, INF = float("nan"), float("inf")


def cli_error(*args: str) -> str:
    """The one ``error:`` line of a failing ``cachedvec`` command."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- a SQLite URL with a host -------------------------------------------------


@pytest.mark.parametrize(
    "url", ["sqlite://host/x.db", "sqlite://x.db", "sqlite://u:pw@host/x.db", "sqlite://:5/x.db"]
)
def test_a_sqlite_url_with_a_host_is_refused_in_one_line(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for create in (True, False):
        with pytest.raises(InvalidURLError) as caught:
            open_store(url, create=create)
        message = str(caught.value)
        assert "\n" not in message and "pw" not in message
        assert "never a host" in message
        assert "sqlite:///relative/path.db" in message and "sqlite:////absolute/path.db" in message
    assert list(tmp_path.iterdir()) == [], "nothing is created"


def test_the_cli_refuses_a_sqlite_host_instead_of_ignoring_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.db").touch()  # what the host-less path would have named
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    for args in (
        ("stats", "--store", "sqlite://host/x.db"),
        ("ingest", str(folder), "--store", "sqlite://host/x.db", "--index", "ix"),
    ):
        line = cli_error(*args)
        assert "never a host" in line and "does not exist" not in line
    assert (tmp_path / "x.db").stat().st_size == 0


# --- numeric options ----------------------------------------------------------

BAD_NUMBERS = [NAN, INF, -INF, -1, True, "3"]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("option", ["busy_timeout", "touch_interval", "pool_size"])
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_every_numeric_sql_store_option_refuses_nonsense_naming_itself(
    kind: str, option: str, value: Any, tmp_path: Path
) -> None:
    # Checked before anything is opened: no file, no connection (port 1).
    url = f"sqlite:///{tmp_path}/c.db" if kind == "sqlite" else "postgresql://u:pw@127.0.0.1:1/db"
    with pytest.raises(ConfigError, match=f"^{option} must be") as caught:
        open_store(url, **{option: value})
    assert not isinstance(caught.value, InvalidURLError), "the URL is fine"
    assert not (tmp_path / "c.db").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("busy_timeout", 0), ("busy_timeout", 3e6), ("touch_interval", 10**400), ("pool_size", 2.5)],
)
def test_sql_store_options_out_of_range(option: str, value: Any, tmp_path: Path) -> None:
    # SQLite would silently turn a busy timeout over ~24 days into no waiting at all.
    with pytest.raises(ConfigError, match=f"^{option} must be"):
        open_store(f"sqlite:///{tmp_path}/c.db", **{option: value})


def test_sql_store_options_take_any_real_number(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    options = {
        "busy_timeout": np.float32(2.5),
        "touch_interval": np.int64(0),
        "pool_size": np.int64(2),
    }
    with open_store(f"sqlite:///{tmp_path}/c.db", **options) as store:
        store.mset([("k", b"v")])
        assert store.mget(["k"]) == [b"v"]


@pytest.mark.parametrize("value", [NAN, INF, -1, True, "-5GB", "lots", [1], 10**30])
@pytest.mark.parametrize("option", ["size_limit", "cull_limit"])
def test_every_numeric_diskcache_option_refuses_nonsense_naming_itself(
    option: str, value: Any, tmp_path: Path
) -> None:
    if option == "cull_limit" and value == "lots":
        value = "1.5"
    with pytest.raises(ConfigError, match=f"^{option}=") as caught:
        open_store(f"diskcache://{tmp_path}/dc", **{option: value})
    assert not isinstance(caught.value, InvalidURLError), "the URL is fine"
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "dc").exists(), "nothing is created"


@pytest.mark.parametrize(
    "query", ["size_limit=nan", "size_limit=1e30", "cull_limit=1.5", "cull_limit=1e99"]
)
def test_a_diskcache_url_option_out_of_range_blames_the_url(query: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidURLError, match=f"^{query.split('=')[0]}="):
        open_store(f"diskcache://{tmp_path}/dc?{query}")
    assert not (tmp_path / "dc").exists()


def test_a_diskcache_option_given_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="size_limit is given twice"):
        open_store(f"diskcache://{tmp_path}/dc?size_limit=2MB", size_limit="3MB")


def test_a_small_diskcache_size_with_a_unit_is_not_told_to_add_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidURLError) as caught:
        open_store(f"diskcache://{tmp_path}/dc?size_limit=1MB")
    message = str(caught.value)
    assert "1,000,000 bytes, below the minimum of 1 MiB (1,048,576 bytes)" in message
    assert "with a unit" not in message and "without a unit" not in message
    with pytest.raises(InvalidURLError, match="a number without a unit counts bytes"):
        open_store(f"diskcache://{tmp_path}/dc?size_limit=1000")
    with open_store(f"diskcache://{tmp_path}/dc?size_limit=1MiB&cull_limit=3") as store:
        assert (store.cache.size_limit, store.cache.cull_limit) == (2**20, 3)


# --- SQLite query parameters --------------------------------------------------


def test_the_sqlite_query_error_says_where_options_go_for_cli_users(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db?timeout=3"
    with pytest.raises(InvalidURLError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "take no parameters (got timeout)" in message
    assert "keywords of open_store() in Python, with no command-line form" in message
    line = cli_error("stats", "--store", url)
    assert "no command-line form" in line
    assert not (tmp_path / "c.db").exists()


# --- a foreign cachedvec_entries table ----------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("fresh_postgres_url"))
    return f"sqlite:///{tmp_path}/app.db"


def rows(url: str) -> list[tuple[Any, ...]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text("SELECT * FROM cachedvec_entries"))]
    finally:
        engine.dispose()


def test_a_foreign_entries_table_is_named_without_sending_the_user_to_migrate(
    empty_db_url: str,
) -> None:
    execute_sql(
        empty_db_url,
        "CREATE TABLE cachedvec_entries (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO cachedvec_entries VALUES (1, 'theirs')",
    )
    for create in (True, False):
        with pytest.raises(SchemaError) as caught:
            SQLStore(empty_db_url, create=create)
        message = str(caught.value)
        assert "has a table cachedvec_entries that cachedvec did not create" in message
        assert "another database" in message and "rename or drop" in message
        assert "cachedvec migrate" not in message
    with pytest.raises(SchemaError) as refused:
        migrate.upgrade(empty_db_url)
    assert str(refused.value) == message, "migrate says the same"
    assert rows(empty_db_url) == [(1, "theirs")], "the table is kept as it was"


def test_a_foreign_table_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE cachedvec_entries (id INTEGER)")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    url = f"sqlite:///{path}"
    ingest = cli_error("ingest", str(folder), "--store", url, "--index", str(tmp_path / "ix"))
    assert "did not create" in ingest and "cachedvec migrate" not in ingest
    assert cli_error("migrate", "--store", url) == ingest
    with sqlite3.connect(path) as db:  # not switched to WAL: not our file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_cachedvec_tables_without_their_revision_still_point_to_migrate(
    empty_db_url: str,
) -> None:
    # Exactly cachedvec's table, its revision row lost: migrate repairs it.
    migrate.upgrade(empty_db_url)
    execute_sql(empty_db_url, f"DELETE FROM {VERSION_TABLE}")
    if empty_db_url.startswith("sqlite"):  # not stamped as ours: not repaired on opening
        execute_sql(empty_db_url, "PRAGMA application_id=0")
    with pytest.raises(SchemaError, match=r"no recorded cachedvec schema revision \(run: "):
        SQLStore(empty_db_url, create=False)
    migrate.upgrade(empty_db_url)
    with SQLStore(empty_db_url, create=False) as store:
        assert store.mget(["k"]) == [None]


# --- flags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "flag"),
    # diskcache stores take no durable option.
    [("sqlite", "create"), ("sqlite", "durable"), ("file", "create"), ("file", "durable")]
    + [("diskcache", "create"), ("memory", "create")],
)
def test_a_flag_that_is_not_a_bool_is_refused_before_anything_is_made(
    kind: str, flag: str, tmp_path: Path
) -> None:
    url = {
        "sqlite": f"sqlite:///{tmp_path}/c.db",
        "file": f"file://{tmp_path}/c",
        "diskcache": f"diskcache://{tmp_path}/c",
        "memory": "memory://",  # ignores create, but a typo is still a typo
    }[kind]
    # "no" would count as true: a cache written without the durability asked
    # for, or created where the caller said not to.
    for value in ("no", 0, None):
        with pytest.raises(ConfigError, match=f"{flag} must be True or False"):
            open_store(url, **{flag: value})
    assert list(tmp_path.iterdir()) == []
