"""Nothing cachedvec loads from disk can run code; no message shows a password."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import diskcache
import psycopg
import pytest
from click.testing import CliRunner

from cachedvec import CachedEmbeddings, open_store
from cachedvec.cli import main
from cachedvec.errors import InvalidURLError, StoreError
from cachedvec.stores import redact_url
from cachedvec.testing import FakeEmbeddings
from tests.postgres import PostgresServer

PACKAGE = Path(__file__).resolve().parent.parent / "cachedvec"
FORBIDDEN_MODULES = {"pickle", "marshal", "dill", "cloudpickle", "shelve", "joblib"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


class _Boom:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.path),))


def test_package_never_imports_pickle_or_calls_eval() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names = {node.func.id} & FORBIDDEN_CALLS
            else:
                continue
            if names & (FORBIDDEN_MODULES | FORBIDDEN_CALLS):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_planted_pickle_in_a_diskcache_store_is_never_loaded(tmp_path: Path) -> None:
    folder, marker = tmp_path / "dc", tmp_path / "code-ran"
    emb = CachedEmbeddings(FakeEmbeddings(8), f"diskcache://{folder}")
    key = emb.document_keys(["hello"])[0]
    emb.close()
    # Plant a pickled value under the key, the way plain diskcache would store it.
    with diskcache.Cache(str(folder)) as raw:
        raw.set(key, _Boom(str(marker)))
        raw.set(("tuple", "key"), b"pickled key")
    with CachedEmbeddings(FakeEmbeddings(8), f"diskcache://{folder}") as emb:
        emb.embed_documents(["hello"])
        assert emb.stats.hits == 0 and emb.stats.computed == 1
        assert sorted(emb.store.yield_keys()) == [key]
    assert not marker.exists()


def test_planted_files_in_a_file_store_are_ignored(tmp_path: Path) -> None:
    root, marker = tmp_path / "fs", tmp_path / "code-ran"
    with open_store(f"file://{root}") as store:
        store.mset([("a", b"1")])
    (root / "evil.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    (root / "00").mkdir(exist_ok=True)
    (root / "00" / "__init__.py").write_text("raise SystemExit('ran')")
    with open_store(f"file://{root}") as store:
        assert sorted(store.yield_keys()) == ["a"]
        assert store.mget(["evil.pkl"]) == [None]
    assert not marker.exists()


# ----------------------------------------------------------------- passwords in messages

PASSWORD_PIECES = ("qq", "zz", "xx")  # appear nowhere else in the URLs below
# Characters a password may hold unescaped. In a query "&" ends the value
# (for the drivers too), so query passwords are tried without it.
SEPARATORS = "/?#@:%= !;,[]&"
USERINFO_URLS = [
    "postgresql+psycopg://cache:{pw}@db.example:5432/cache",
    "postgresql://cache:{pw}@db.example/cache?sslmode=require&connect_timeout=3",
    "postgresql://cache:{pw}@[::1]:5432/cache",
    "postgresql+psycopg://cache:{pw}@/cache?host=/run/postgresql",
    "postgresql://:{pw}@db.example/cache",
    "postgres://cache:{pw}@db.example:5432",
    "postgresql+psycopg://cache:{pw}@db.example:abc/cache",  # too broken to parse
    "postgresql+psycopg:/cache:{pw}@db.example/cache",  # no "://"
    "cache:{pw}@db.example/cache",
]
QUERY_URLS = [
    "postgresql://cache@db.example/cache?password={pw}",
    "postgresql://cache@db.example/cache?sslmode=disable&PASSWORD={pw}",
    "postgresql://cache@db.example/cache?sslpassword={pw}&sslmode=require",
    "postgresql://cache:{pw}@db.example/cache?password={pw}",
]


@pytest.mark.parametrize(
    ("template", "separator"),
    [(url, sep) for url in USERINFO_URLS for sep in SEPARATORS]
    + [(url, sep) for url in QUERY_URLS for sep in SEPARATORS.replace("&", "")],
)
def test_redact_url_never_shows_any_piece_of_a_password(template: str, separator: str) -> None:
    redacted = redact_url(template.format(pw=separator.join(PASSWORD_PIECES)))
    assert "***" in redacted
    assert not any(piece in redacted for piece in PASSWORD_PIECES), redacted


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://cache:s3cr/et@127.0.0.1:1/cache",
            "postgresql+psycopg://cache:***@127.0.0.1:1/cache",
        ),
        ("postgresql+psycopg://u1:p@ss:w/rd%@host/db", "postgresql+psycopg://u1:***@host/db"),
        (
            "postgresql://u2:a/b?c#d@host/db?sslmode=require",
            "postgresql://u2:***@host/db?sslmode=require",
        ),
        (
            "postgresql://u@host/db?password=a#b&port=5",
            "postgresql://u@host/db?password=***&port=5",
        ),
        ("postgresql://u:@host/db", "postgresql://u:***@host/db"),
    ],
)
def test_redact_url_hides_just_the_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://cache@db.example:5432/cache",
        "postgresql+psycopg://cache@/cache?host=/tmp/pg&port=5433",
        "postgresql+psycopg:///cache?host=/tmp/pg",
        "postgresql://cache@[::1]:5432/cache?sslmode=require",
        "sqlite:///relative/cache.db",
        "sqlite:////abs/we:ird@name.db",
        "file:///srv/cache:v2@host",
        "file://relative/folder",
        "diskcache:///srv/dc?size_limit=5GB",
        "memory://",
        "not a url",
    ],
)
def test_redact_url_leaves_urls_without_a_password_unchanged(url: str) -> None:
    assert redact_url(url) == url


def test_the_cli_never_prints_a_password_holding_url_characters() -> None:
    url = "postgresql+psycopg://cache:s3cr/et?x#y@127.0.0.1:1/cache"  # port 1: refused at once
    result = CliRunner().invoke(main, ["stats", "--store", url])
    assert result.exit_code == 1
    assert "cache:***@127.0.0.1:1/cache" in result.stderr
    assert "s3cr" not in result.output and "et?x#y" not in result.output


def test_a_password_holding_an_unescaped_at_is_refused_before_connecting() -> None:
    # The URL's password ends at its first "@", so the rest would be sent as
    # the host name and come back in the driver's "cannot resolve" message.
    for url in (
        "postgresql+psycopg://cache:S3cr@etTail@127.0.0.1/cache",
        "postgresql://cache:a@b@c@localhost:5432/cache",
    ):
        with pytest.raises(InvalidURLError, match="write it as %40") as info:
            open_store(url)
        assert "Tail" not in str(info.value) and "b@c" not in str(info.value)
    result = CliRunner().invoke(main, ["stats", "--store", "postgresql://u:S3cr@etTail@h/db"])
    assert result.exit_code != 0 and "etTail" not in result.output


@pytest.mark.postgres
def test_a_password_holding_url_characters_works_and_is_never_shown(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """SQLAlchemy takes '/', '?' and '#' in a password as they are: so must redaction."""
    password = "s3cr/et?x#y"
    with psycopg.connect(postgres_server.dsn("cachedvec"), autocommit=True) as conn:
        conn.execute(
            f"DROP ROLE IF EXISTS odd; CREATE ROLE odd LOGIN SUPERUSER PASSWORD '{password}'"
        )
    url = postgres_url.replace(
        f"{postgres_server.user}:{postgres_server.password}", f"odd:{password}"
    )
    with open_store(url) as store:
        store.mset([("odd-password", b"v")])
        assert store.mget(["odd-password"]) == [b"v"]
        assert password not in repr(store)
    with pytest.raises(StoreError, match="password authentication failed") as err:
        open_store(url.replace(password, password + "X"))
    assert "odd:***@127.0.0.1" in str(err.value) and "s3cr" not in str(err.value)
