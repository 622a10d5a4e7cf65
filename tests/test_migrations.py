"""The Alembic scripts in migrations/: up, down, drift, atomicity, packaging."""

from __future__ import annotations

import io
import logging
import multiprocessing
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cachedvec import migrate
from cachedvec.errors import ConfigError, SchemaError, StoreError
from cachedvec.stores.sql import SQLStore, make_engine
from cachedvec.stores.sql_schema import SCHEMA_REVISION, VERSION_TABLE, metadata
from tests.conftest import execute_sql

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database without cachedvec's tables, on each dialect."""
    if request.param == "postgres":
        return str(request.getfixturevalue("fresh_postgres_url"))
    return f"sqlite:///{tmp_path}/migrate.db"


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def version_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one())
    finally:
        engine.dispose()


def schema_drift(url: str) -> list[object]:
    engine = make_engine(url, for_migrations=True)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_the_code_expects_the_newest_revision() -> None:
    assert migrate.head() == SCHEMA_REVISION
    assert migrate.is_known_revision(SCHEMA_REVISION)
    assert not migrate.is_known_revision("not-a-revision")


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    assert migrate.current(empty_db_url) is None
    assert migrate.upgrade(empty_db_url) == SCHEMA_REVISION
    assert {"cachedvec_entries", VERSION_TABLE} <= tables(empty_db_url)
    assert migrate.upgrade(empty_db_url) == SCHEMA_REVISION, "upgrading twice is a no-op"
    with SQLStore(empty_db_url) as store:
        store.mset([("k", b"v")])

    assert migrate.downgrade(empty_db_url, "base") is None
    assert "cachedvec_entries" not in tables(empty_db_url)

    assert migrate.upgrade(empty_db_url) == SCHEMA_REVISION
    with SQLStore(empty_db_url) as store:
        assert store.mget(["k"]) == [None]


def test_models_and_migrations_do_not_drift(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    assert schema_drift(empty_db_url) == []


def test_drift_check_notices_a_difference(tmp_path: Path) -> None:
    """The drift test above would catch a column the migrations forgot."""
    url = f"sqlite:///{tmp_path}/drift.db"
    migrate.upgrade(url)
    with sqlite3.connect(tmp_path / "drift.db") as conn:
        conn.execute("ALTER TABLE cachedvec_entries ADD COLUMN extra TEXT")
    assert schema_drift(url) != []


def test_a_failed_upgrade_leaves_nothing_behind(empty_db_url: str) -> None:
    """DDL is transactional on both dialects: no version row, no half schema."""
    # An index of that name is no table, so the migration itself runs, after
    # creating the version table, and fails at CREATE TABLE.
    execute_sql(
        empty_db_url,
        "CREATE TABLE other (x INTEGER)",
        "CREATE INDEX cachedvec_entries ON other (x)",
    )
    with pytest.raises(StoreError):
        migrate.upgrade(empty_db_url)
    assert tables(empty_db_url) == {"other"}
    assert migrate.current(empty_db_url) is None


@pytest.mark.parametrize("target", ["9999", "", "-1", "heads"])
@pytest.mark.parametrize("run", [migrate.upgrade, migrate.downgrade, migrate.move_to])
def test_an_unknown_or_empty_target_revision_is_a_config_error(
    tmp_path: Path, run: Callable[[str, str], str | None], target: str
) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    with pytest.raises(ConfigError, match=f"'{target}' is not a cachedvec schema revision"):
        run(url, target)
    assert not (tmp_path / "x.db").exists(), "refused before touching the database"


@pytest.mark.parametrize("recorded", ["0002", "deadbeef"])
def test_a_database_at_a_revision_unknown_to_the_code_is_refused(
    empty_db_url: str, recorded: str
) -> None:
    migrate.upgrade(empty_db_url)
    execute_sql(empty_db_url, f"UPDATE {VERSION_TABLE} SET version_num = '{recorded}'")
    for run in (migrate.upgrade, migrate.downgrade, migrate.move_to):
        for target in ("head", "base", SCHEMA_REVISION):
            with pytest.raises(
                SchemaError, match=f"'{recorded}', unknown to this cachedvec"
            ) as err:
                run(empty_db_url, target)
            assert "by a newer cachedvec, or not by cachedvec" in str(err.value)
    assert migrate.current(empty_db_url) == recorded
    assert "cachedvec_entries" in tables(empty_db_url)


def test_upgrade_recreates_tables_dropped_behind_its_back(
    empty_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate.upgrade(empty_db_url)
    execute_sql(empty_db_url, "DROP TABLE cachedvec_entries")
    with caplog.at_level(logging.WARNING, logger="cachedvec"):
        assert migrate.upgrade(empty_db_url) == SCHEMA_REVISION
    assert "its tables are missing: starting again from no tables" in caplog.text
    assert schema_drift(empty_db_url) == [] and version_rows(empty_db_url) == 1
    with SQLStore(empty_db_url) as store:
        store.mset([("k", b"v")])
        assert store.mget(["k"]) == [b"v"]


def test_upgrade_stamps_cachedvec_tables_whose_revision_is_missing(
    empty_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash between creating the tables and stamping them, or a deleted row."""
    migrate.upgrade(empty_db_url)
    with SQLStore(empty_db_url) as store:
        store.mset([("k", b"v")])
    execute_sql(empty_db_url, f"DELETE FROM {VERSION_TABLE}")
    assert migrate.current(empty_db_url) is None
    with caplog.at_level(logging.WARNING, logger="cachedvec"):
        assert migrate.upgrade(empty_db_url) == SCHEMA_REVISION
    assert "no recorded schema revision: recording" in caplog.text
    assert version_rows(empty_db_url) == 1
    with SQLStore(empty_db_url) as store:
        assert store.mget(["k"]) == [b"v"], "the cached values survive"


def test_a_cachedvec_sqlite_file_without_its_revision_opens_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    with SQLStore(url) as store:
        store.mset([("k", b"v")])
    execute_sql(url, f"DELETE FROM {VERSION_TABLE}")
    with SQLStore(url) as store:  # cachedvec's own file: repaired on opening
        assert store.mget(["k"]) == [b"v"]


def test_a_foreign_table_of_the_same_name_is_named_and_kept(empty_db_url: str) -> None:
    execute_sql(empty_db_url, "CREATE TABLE cachedvec_entries (id INTEGER)")
    with pytest.raises(SchemaError, match="table cachedvec_entries that cachedvec did not create"):
        migrate.upgrade(empty_db_url)
    assert tables(empty_db_url) == {"cachedvec_entries"}
    assert migrate.current(empty_db_url) is None


def test_a_dba_index_does_not_hide_cachedvec_tables(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    execute_sql(
        empty_db_url,
        "CREATE INDEX dba_created ON cachedvec_entries (created_at)",
        f"DELETE FROM {VERSION_TABLE}",
    )
    assert migrate.upgrade(empty_db_url) == SCHEMA_REVISION


@pytest.mark.postgres
def test_a_key_column_in_the_locale_collation_is_not_taken_for_ours(
    fresh_postgres_url: str,
) -> None:
    # Without "C", prefix scans (yield_keys, prune by namespace) would be wrong.
    migrate.upgrade(fresh_postgres_url)
    execute_sql(
        fresh_postgres_url,
        'ALTER TABLE cachedvec_entries ALTER COLUMN key TYPE text COLLATE "default"',
        f"DELETE FROM {VERSION_TABLE}",
    )
    with pytest.raises(SchemaError, match="that cachedvec did not create"):
        migrate.upgrade(fresh_postgres_url)


def _upgrade(url: str) -> str | None:
    return migrate.upgrade(url)


def test_processes_repairing_one_database_at_once_stamp_it_once(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    execute_sql(empty_db_url, f"DELETE FROM {VERSION_TABLE}")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        assert pool.map(_upgrade, [empty_db_url] * 4) == [SCHEMA_REVISION] * 4
    assert version_rows(empty_db_url) == 1


def test_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open store"):
        migrate.upgrade(f"sqlite:///{blocker}/sub/x.db")


def test_offline_mode_renders_the_sql() -> None:
    config = migrate.alembic_config("postgresql+psycopg://u:p@localhost/db")
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    assert "CREATE TABLE cachedvec_entries" in sql
    assert 'COLLATE "C"' in sql and VERSION_TABLE in sql


def _open_store(url: str) -> None:
    with SQLStore(url) as store:
        store.mset([("k", b"v")])


def test_processes_racing_to_create_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/race.db"
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        pool.map(_open_store, [url] * 4)
    assert migrate.current(url) == SCHEMA_REVISION
    assert schema_drift(url) == []


def test_migrations_ship_inside_the_package(tmp_path: Path) -> None:
    """A wheel carries the Alembic scripts, so a pip-installed cachedvec migrates."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert "cachedvec.migrations" in pyproject, "pyproject.toml must ship migrations/"
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("cachedvec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "cachedvec/migrations/env.py" in names
    assert "cachedvec/migrations/script.py.mako" in names
    assert any(n.startswith("cachedvec/migrations/versions/0001") for n in names)
    # An explicit package list must not forget a sub-package either.
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "cachedvec").rglob("*.py")}
    assert modules <= names
