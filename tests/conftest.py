"""Shared fixtures: one URL per store backend, temp folders, the slow switch."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cachedvec import open_store
from cachedvec.stores.base import CachedVecStore
from cachedvec.stores.sql import make_engine

# Never reach a model hub from a test, whatever the machine has cached.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.postgres"] if (Path(__file__).parent / "postgres.py").exists() else []

PERSISTENT_KINDS = ["file", "sqlite", "diskcache", "postgres"]
STORE_KINDS = ["memory", *PERSISTENT_KINDS]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long soak tests too")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow soak test: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def execute_sql(url: str, *statements: str) -> None:
    """Change a SQL database behind cachedvec's back (tests of what it then does)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def store_url(kind: str, folder: Path) -> str:
    """A fresh store URL of the given kind under ``folder``."""
    return {
        "memory": "memory://",
        "file": f"file://{folder}/files",
        "sqlite": f"sqlite:///{folder}/cache.db",
        "diskcache": f"diskcache://{folder}/dc",
    }[kind]


@pytest.fixture
def make_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """``kind -> URL`` of an empty store; PostgreSQL gets the throwaway server."""

    def make(kind: str) -> str:
        if kind == "postgres":
            return str(request.getfixturevalue("postgres_store_url"))
        return store_url(kind, tmp_path)

    return make


@pytest.fixture(params=STORE_KINDS)
def any_store(
    request: pytest.FixtureRequest, make_store_url: Callable[[str], str]
) -> Iterator[CachedVecStore]:
    """Every backend in turn, each fresh and closed afterwards."""
    with open_store(make_store_url(request.param)) as store:
        yield store
