"""The Alembic scripts in migrations/: up, down, drift, atomicity, packaging."""

from __future__ import annotations

import io
import multiprocessing
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cachedvec import migrate
from cachedvec.errors import SchemaError, StoreError
from cachedvec.stores.sql import SQLStore, make_engine
from cachedvec.stores.sql_schema import SCHEMA_REVISION, VERSION_TABLE, metadata

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
    engine = make_engine(empty_db_url)
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE cachedvec_entries (mine INTEGER)"))
        conn.commit()
    engine.dispose()
    with pytest.raises(StoreError):
        migrate.upgrade(empty_db_url)
    assert tables(empty_db_url) == {"cachedvec_entries"}
    assert migrate.current(empty_db_url) is None


def test_unknown_target_revision_is_a_schema_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="9999"):
        migrate.upgrade(f"sqlite:///{tmp_path}/x.db", "9999")


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
    if "cachedvec.migrations" not in (REPO / "pyproject.toml").read_text():
        pytest.skip("pyproject.toml does not map migrations/ to cachedvec.migrations yet")
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
