"""The document side of an index: one SQLite table, never pickle.

Each row ties a FAISS vector id (``vector_id``, an int64) to the caller's
document id and what a search returns::

    documents(vector_id INTEGER PRIMARY KEY,  -- the id the vector has in FAISS
              id        TEXT UNIQUE,          -- the caller's (LangChain) id
              text      TEXT,
              metadata  TEXT,                 -- a JSON object
              cache_key TEXT,                 -- where the vector sits in the cache
              source    TEXT)                 -- metadata["source"], indexed

The database lives in memory while an index is open; ``save_to`` copies it to
a file with SQLite's backup API and ``open_copy`` reads a file back into
memory, so a saved folder is never modified by later writes.

The store does not allocate vector ids and does not know FAISS: the owner
(:class:`cachedvec.index.VectorIndex`) wraps each change of both in one
:meth:`transaction`, and rolls the SQL back when FAISS fails.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from cachedvec.errors import ConfigError, IndexCorruptError, InvalidTextError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE documents (
    vector_id INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    cache_key TEXT,
    source TEXT
);
CREATE INDEX documents_source ON documents (source);
"""
_EXPECTED_OBJECTS = {
    ("table", "documents"),
    ("index", "documents_source"),
    ("index", "sqlite_autoindex_documents_1"),
}
# A JSON array parameter keeps each statement's text constant (so SQLite's
# statement cache hits) whatever the number of ids, with no variable limit.
_BY_VECTOR_IDS = (
    "SELECT d.vector_id, d.id, d.text, d.metadata FROM json_each(?) AS j "
    "JOIN documents AS d ON d.vector_id = j.value"
)
_METADATA_BY_VECTOR_IDS = (
    "SELECT d.vector_id, d.metadata FROM json_each(?) AS j "
    "JOIN documents AS d ON d.vector_id = j.value"
)
_KEYS_BY_VECTOR_IDS = (
    "SELECT d.vector_id, d.cache_key FROM json_each(?) AS j "
    "JOIN documents AS d ON d.vector_id = j.value"
)
_VECTOR_IDS_BY_IDS = (
    "SELECT d.id, d.vector_id FROM json_each(?) AS j JOIN documents AS d ON d.id = j.value"
)
_BY_IDS = (
    "SELECT d.vector_id, d.id, d.text, d.metadata, d.cache_key, d.source FROM json_each(?) AS j "
    "JOIN documents AS d ON d.id = j.value"
)


@dataclass(frozen=True)
class Record:
    """One stored document."""

    id: str
    text: str
    metadata: dict[str, Any]
    cache_key: str | None
    source: str | None
    vector_id: int


class DocStore:
    """SQLite table of documents keyed by FAISS vector id, held in memory."""

    def __init__(self, connection: sqlite3.Connection | None = None) -> None:
        if connection is None:
            connection = _connect(":memory:")
            connection.executescript(_SCHEMA)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db = connection
        # One connection serves every thread; SQLite serialises calls but a
        # transaction must not interleave with another thread's reads.
        self._mutex = threading.RLock()

    # -- writes (inside transaction()) -------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all."""
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def insert(
        self,
        vector_ids: Sequence[int] | npt.NDArray[np.int64],
        ids: Sequence[str],
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any]],
        cache_keys: Sequence[str | None],
    ) -> None:
        rows = []
        for i, (vector_id, doc_id, text, metadata, key) in enumerate(
            zip(vector_ids, ids, texts, metadatas, cache_keys, strict=True)
        ):
            encoded = _to_json(metadata, i)
            source = metadata.get("source")
            rows.append(
                (
                    int(vector_id),
                    doc_id,
                    text,
                    encoded,
                    key,
                    source if isinstance(source, str) else None,
                )
            )
        with self._mutex:
            try:
                self._db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", rows)
            except UnicodeEncodeError as exc:
                raise InvalidTextError(
                    "a text, id or cache key is not valid Unicode (lone surrogate)"
                ) from exc

    def delete(self, vector_ids: Iterable[int]) -> None:
        with self._mutex:
            self._db.execute(
                "DELETE FROM documents WHERE vector_id IN (SELECT value FROM json_each(?))",
                (_json_ints(vector_ids),),
            )

    def clear(self) -> None:
        with self._mutex:
            self._db.execute("DELETE FROM documents")

    # -- reads --------------------------------------------------------------

    def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """Rows of a query; a row SQLite cannot decode means a damaged file."""
        with self._mutex:
            try:
                return self._db.execute(sql, parameters).fetchall()
            except sqlite3.DatabaseError as exc:  # e.g. text that is not UTF-8
                raise IndexCorruptError(f"docstore row is damaged: {exc}") from exc

    def vector_ids_of(self, ids: Sequence[str]) -> dict[str, int]:
        """The vector id of each given document id that exists."""
        return dict(self._read(_VECTOR_IDS_BY_IDS, (json.dumps(list(ids)),)))

    def hits(self, vector_ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
        """``vector_id -> (id, text, metadata JSON)`` in one query (search results).

        Metadata stays JSON text: each hit parses its own copy
        (:func:`parse_metadata`), so results never share a mutable dict.
        """
        rows = self._read(_BY_VECTOR_IDS, (_json_ints(vector_ids),))
        return {row[0]: row[1:] for row in rows}

    def metadata_of(self, vector_ids: Sequence[int]) -> dict[int, str]:
        """``vector_id -> metadata JSON`` for filter evaluation."""
        return dict(self._read(_METADATA_BY_VECTOR_IDS, (_json_ints(vector_ids),)))

    def cache_keys_of(self, vector_ids: Sequence[int]) -> dict[int, str | None]:
        """``vector_id -> cache key`` (``None``: added without one), in one query.

        Ids without a document (deleted) are absent from the result.
        """
        return dict(self._read(_KEYS_BY_VECTOR_IDS, (_json_ints(vector_ids),)))

    def iter_metadata(self, batch: int = 10_000) -> Iterator[list[tuple[int, str]]]:
        """Every ``(vector_id, metadata JSON)``, in batches, for full-scan filters."""
        last = -(2**63)
        while rows := self._read(
            "SELECT vector_id, metadata FROM documents WHERE vector_id > ? "
            "ORDER BY vector_id LIMIT ?",
            (last, batch),
        ):
            yield rows
            last = rows[-1][0]

    def records(self, ids: Sequence[str]) -> list[Record]:
        """The records of the given ids that exist, in the order asked, once each."""
        wanted = list(dict.fromkeys(ids))
        found = {row[1]: row for row in self._read(_BY_IDS, (json.dumps(wanted),))}
        return [_record(found[doc_id]) for doc_id in wanted if doc_id in found]

    def iter_records(self, batch: int = 10_000) -> Iterator[Record]:
        """Every record in vector id order (the order ``vector_ids()`` returns)."""
        last = -(2**63)
        while rows := self._read(
            "SELECT vector_id, id, text, metadata, cache_key, source FROM documents "
            "WHERE vector_id > ? ORDER BY vector_id LIMIT ?",
            (last, batch),
        ):
            yield from (_record(row) for row in rows)
            last = rows[-1][0]

    def vector_ids(self) -> np.ndarray:
        """All vector ids, ascending, as int64."""
        rows = self._read("SELECT vector_id FROM documents ORDER BY vector_id")
        return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))

    def ids_of_sources(self, sources: Iterable[str]) -> list[str]:
        """Document ids whose metadata ``source`` is one of ``sources``."""
        rows = self._read(
            "SELECT d.id FROM json_each(?) AS j JOIN documents AS d ON d.source = j.value",
            (json.dumps(list(sources)),),
        )
        return [row[0] for row in rows]

    def sources(self) -> list[str]:
        rows = self._read(
            "SELECT DISTINCT source FROM documents WHERE source IS NOT NULL ORDER BY source"
        )
        return [row[0] for row in rows]

    def __len__(self) -> int:
        return int(self._read("SELECT count(*) FROM documents")[0][0])

    # -- files --------------------------------------------------------------

    def save_to(self, path: str | os.PathLike[str]) -> None:
        """Write a consistent copy to ``path`` (replaced if present) and fsync it."""
        target = _connect(os.fspath(path))
        try:
            # A fresh file that nothing names until the manifest commits needs
            # no journal (one a killed save would leave behind); we fsync below.
            target.execute("PRAGMA journal_mode = OFF")
            target.execute("PRAGMA synchronous = OFF")
            with self._mutex:
                self._db.backup(target)
        finally:
            target.close()
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())

    @classmethod
    def open_copy(cls, path: str | os.PathLike[str]) -> DocStore:
        """Read a saved docstore into memory, refusing anything but our schema."""
        memory = _connect(":memory:")
        try:
            uri = f"file:{quote(Path(path).resolve().as_posix())}?mode=ro"
            source = sqlite3.connect(uri, uri=True)
            try:
                source.backup(memory)
            finally:
                source.close()
            _check_schema(memory)
        except sqlite3.DatabaseError as exc:
            memory.close()
            raise IndexCorruptError(f"docstore {path} is not readable SQLite ({exc})") from exc
        except IndexCorruptError:
            memory.close()
            raise
        return cls(memory)

    def close(self) -> None:
        with self._mutex:
            self._db.close()


def _connect(target: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. trusted_schema=OFF
    # keeps functions named in a hostile file's schema from running.
    connection = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA trusted_schema = OFF")
    return connection


def _check_schema(connection: sqlite3.Connection) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise IndexCorruptError(
            f"docstore schema version {version}, this cachedvec reads {SCHEMA_VERSION}"
        )
    objects = set(connection.execute("SELECT type, name FROM sqlite_master").fetchall())
    if objects != _EXPECTED_OBJECTS:
        unexpected = sorted(f"{kind} {name}" for kind, name in objects - _EXPECTED_OBJECTS)
        missing = sorted(f"{kind} {name}" for kind, name in _EXPECTED_OBJECTS - objects)
        raise IndexCorruptError(
            f"docstore schema differs (unexpected: {unexpected}, missing: {missing})"
        )


def parse_metadata(text: str) -> dict[str, Any]:
    """A stored metadata JSON object; anything else means a damaged docstore."""
    try:
        metadata = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise IndexCorruptError(f"docstore metadata is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise IndexCorruptError("docstore metadata is not a JSON object")
    return metadata


def _record(row: tuple[Any, ...]) -> Record:
    vector_id, doc_id, text, metadata, cache_key, source = row
    return Record(doc_id, text, parse_metadata(metadata), cache_key, source, vector_id)


def _json_ints(values: Iterable[int]) -> str:
    return json.dumps([int(v) for v in values])


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays are common in metadata built with pandas.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# One encoder object: json.dumps(default=...) would build a new one per call.
# ensure_ascii keeps lone surrogates storable (as \u escapes).
_ENCODER = json.JSONEncoder(ensure_ascii=True, default=_json_default)


def _to_json(metadata: Any, position: int) -> str:
    if not isinstance(metadata, dict):
        raise ConfigError(f"metadatas[{position}] must be a dict, got {type(metadata).__name__}")
    if not metadata:
        return "{}"
    try:
        return _ENCODER.encode(metadata)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadatas[{position}] is not JSON serialisable: {exc}") from exc
