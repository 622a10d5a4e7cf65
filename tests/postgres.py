"""pytest plugin: a throwaway PostgreSQL server for the test session.

Enable it with ``pytest_plugins = ["tests.postgres"]`` in ``tests/conftest.py``.
The server is PostgreSQL 15 from ``/usr/lib/postgresql/15/bin`` (override
with ``CACHEDVEC_PG_BIN``), started with ``initdb`` and ``pg_ctl`` in a
temporary folder on a free loopback port, as the ``postgres`` user when the
tests run as root (PostgreSQL refuses to run as root). It uses password
authentication over TCP, so tests can also try a wrong password. It is
stopped and its folder removed at the end of the session, also after a
failure.

Fixtures:

- ``postgres_server``: the running :class:`PostgresServer` (session).
- ``postgres_url``: ``postgresql+psycopg://...`` of a database migrated to
  cachedvec's newest schema (session).
- ``postgres_store_url``: the same URL, its cache table emptied before the
  test, for store conformance suites.
- ``fresh_postgres_url``: a new database without cachedvec's tables, dropped
  after the test, for migration tests.

Tests using them skip when the binaries are missing, except under
``CI=true`` where that is a failure: CI must run the PostgreSQL tests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("CACHEDVEC_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: Test-only speed-ups: durability does not matter for a throwaway server.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1."""

    user = "postgres"

    def __init__(self, bin_dir: Path = PG_BIN, settings: Mapping[str, str] | None = None):
        self.bin_dir = bin_dir
        self.settings = dict(settings or {})
        self.password = secrets.token_hex(12)
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="cachedvec-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        self._running = False

    @staticmethod
    def available(bin_dir: Path = PG_BIN) -> bool:
        return all((bin_dir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n"
                + self.log_tail()
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> PostgresServer:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        self._run(
            "initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        # A free port can be taken between choosing and binding it: retry.
        for _attempt in range(5):
            self.port = _free_port()
            options = " ".join(
                f"-c {name}={value}"
                for name, value in {
                    "listen_addresses": "127.0.0.1",
                    "port": str(self.port),
                    "unix_socket_directories": str(self.root),
                    "max_connections": "100",
                    **self.settings,
                }.items()
            )
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                    "-w", "-t", "60", "start",
                )  # fmt: skip
            except RuntimeError:
                if "could not bind" in self.log_tail() or "in use" in self.log_tail():
                    continue
                raise
            self._running = True
            self._wait_ready()
            return self
        raise RuntimeError("could not find a free port for PostgreSQL\n" + self.log_tail())

    def _wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        try:
            if self._running:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
                self._running = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str) -> str:
        """A libpq connection string (for psycopg directly)."""
        return (
            f"host=127.0.0.1 port={self.port} user={self.user} "
            f"password={self.password} dbname={database}"
        )

    def url(self, database: str, password: str | None = None) -> str:
        """A cachedvec / SQLAlchemy URL for ``database``."""
        secret = self.password if password is None else password
        return f"postgresql+psycopg://{self.user}:{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name."""
        import psycopg

        name = name or f"db_{secrets.token_hex(6)}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the PostgreSQL tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if not PostgresServer.available():
        _skip_or_fail(f"no PostgreSQL binaries in {PG_BIN}")
    with PostgresServer(settings=FAST_SETTINGS) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    from cachedvec import migrate

    url = postgres_server.url(postgres_server.create_database("cachedvec"))
    migrate.upgrade(url)
    return url


@pytest.fixture
def postgres_store_url(postgres_server: PostgresServer, postgres_url: str) -> str:
    import psycopg

    with psycopg.connect(postgres_server.dsn("cachedvec"), autocommit=True) as conn:
        conn.execute("TRUNCATE cachedvec_entries")
    return postgres_url


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
