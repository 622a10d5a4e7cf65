"""An index folder on disk: native FAISS file, SQLite docstore, JSON manifest.

Layout::

    my-index/
      manifest.json                  the only file read first; names the others
      index-<token>.faiss            faiss.write_index output
      docstore-<token>.sqlite        the documents table (see docstore.py)
      .lock                          serialises concurrent savers

Atomic swap. A save writes the two data files under fresh random names,
fsyncs them, writes the manifest to a temporary name, fsyncs it and the
folder, and ``os.replace``-s it over ``manifest.json``: the rename is the
commit. A crash before it leaves the previous manifest, which still names
the previous files, intact; a crash after it leaves the new one. Only then
are files of older saves (and leftovers of crashed ones) deleted. Readers never see a
half-written folder.

Manifest (format version 2)::

    {
      "format": "cachedvec-index",
      "format_version": 2,
      "created": "2025-01-01T00:00:00Z",
      "dim": 384, "metric": "cosine", "factory": "HNSW32",
      "search": {"ef_search": 64},               # or {"nprobe": 16, "rerank": 4}, or {}
      "fingerprint": {...} | null,               # keys.ModelFingerprint.to_dict()
      "counts": {"documents": 1000, "vectors": 1003, "tombstones": 3},
      "files": {
        "index": {"name": "index-3f...faiss", "bytes": 1536045, "xxh3_128": "..."},
        "docstore": {"name": "docstore-3f...sqlite", "bytes": 204800, "xxh3_128": "..."}
      },
      "manifest_sha256": "..."   # sha256 of the canonical JSON of all other fields
    }

Loading checks, in order: the manifest parses and its own checksum holds (any
edit or bit flip fails), the format version is one this code reads (a newer
one raises :class:`IndexMismatchError`), the fingerprint and dimension match
what the caller expects (:class:`IndexMismatchError`), then each data file's
size and checksum before FAISS or SQLite read a byte of it. Anything else in
the folder is ignored: nothing is unpickled, imported or executed.

Data file checksums are xxh3-128 (format version 2): they guard against
damage, not against an attacker, who could rewrite the manifest's own digest
as easily. sha256 (version 1, still read) took 0.13 s of a 0.25 s load of
100k vectors; xxh3-128 takes 0.015 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import xxhash

from cachedvec.errors import IndexCorruptError, IndexMismatchError, VectorIndexError
from cachedvec.index.docstore import DocStore
from cachedvec.index.faiss_index import METRICS

try:  # POSIX advisory locks; elsewhere concurrent savers are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

FORMAT = "cachedvec-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
_LOCK = ".lock"
_MAX_MANIFEST_BYTES = 1 << 20
_DATA_FILE = re.compile(r"^(index|docstore)-[0-9a-f]{16}\.(faiss|sqlite)$")
# What a killed save can leave: our data files, SQLite's journals of them,
# and temporary manifests. Only names we create are ever deleted.
_LEFTOVER = re.compile(
    r"^((index|docstore)-[0-9a-f]{16}\.(faiss|sqlite(-journal|-wal|-shm)?)"
    r"|manifest\.json\.[0-9a-f]{16}\.tmp)$"
)
# Data file checksum per format version: hex digest length and constructor.
_DIGESTS: dict[str, tuple[int, Any]] = {
    "xxh3_128": (32, xxhash.xxh3_128),
    "sha256": (64, hashlib.sha256),  # format version 1
}
_FILE_DIGEST = "xxh3_128"
_CHUNK = 1 << 22
# Reads of a folder that saves keep replacing; each retry follows a commit.
_LOAD_ATTEMPTS = 5


@dataclass(frozen=True)
class Manifest:
    """The parsed, verified ``manifest.json`` of an index folder."""

    dim: int
    metric: str
    factory: str
    search: dict[str, int]
    fingerprint: dict[str, Any] | None
    counts: dict[str, int]
    files: dict[str, dict[str, Any]]
    created: str
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        body = {
            "format": FORMAT,
            "format_version": self.format_version,
            "created": self.created,
            "dim": self.dim,
            "metric": self.metric,
            "factory": self.factory,
            "search": self.search,
            "fingerprint": self.fingerprint,
            "counts": self.counts,
            "files": self.files,
        }
        body["manifest_sha256"] = _body_digest(body)
        return body


def save_folder(
    path: str | os.PathLike[str],
    *,
    index: faiss.Index,
    docstore: DocStore,
    dim: int,
    metric: str,
    factory: str,
    search: Mapping[str, int],
    fingerprint: Mapping[str, Any] | None,
    counts: Mapping[str, int],
) -> Manifest:
    """Write an index folder and swap it in atomically (see the module doc)."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(folder):
            return _save_locked(
                folder, index, docstore, dim, metric, factory, search, fingerprint, counts
            )
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        # FAISS reports I/O failures (full disk, too many open files) as
        # RuntimeError, SQLite's backup as sqlite3.Error: all mean the same.
        raise VectorIndexError(f"cannot save index to {folder}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    """FAISS messages carry a C++ stack trace after the first line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _save_locked(
    folder: Path,
    index: faiss.Index,
    docstore: DocStore,
    dim: int,
    metric: str,
    factory: str,
    search: Mapping[str, int],
    fingerprint: Mapping[str, Any] | None,
    counts: Mapping[str, int],
) -> Manifest:
    token = secrets.token_hex(8)
    index_file = folder / f"index-{token}.faiss"
    docstore_file = folder / f"docstore-{token}.sqlite"
    temp_manifest = folder / f"{MANIFEST}.{token}.tmp"
    try:
        faiss.write_index(index, str(index_file))
        # Hash the index file (from the page cache) while the docstore is
        # written: both release the GIL, so two cores share the work.
        with ThreadPoolExecutor(max_workers=1) as pool:
            index_digest = pool.submit(_describe, index_file)
            _fsync_file(index_file)
            docstore.save_to(docstore_file)
            docstore_entry = _describe(docstore_file)
            index_entry = index_digest.result()
        manifest = Manifest(
            dim=dim,
            metric=metric,
            factory=factory,
            search=dict(search),
            fingerprint=dict(fingerprint) if fingerprint is not None else None,
            counts=dict(counts),
            files={"index": index_entry, "docstore": docstore_entry},
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        temp_manifest.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        _fsync_file(temp_manifest)
        # The data files' names must be durable before the manifest that
        # names them: no filesystem promises to keep renames in order.
        _fsync_dir(folder)
        os.replace(temp_manifest, folder / MANIFEST)  # the commit point
    except BaseException:
        # An interrupt (Ctrl-C) can land after the rename took effect: then
        # the new files are the index and must stay.
        if not _names(folder, index_file.name):
            for leftover in (index_file, docstore_file, temp_manifest):
                leftover.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    _remove_stale(folder, keep={index_file.name, docstore_file.name})
    return manifest


def load_folder(
    path: str | os.PathLike[str],
    *,
    fingerprint: Mapping[str, Any] | None = None,
    dim: int | None = None,
) -> tuple[faiss.Index, DocStore, Manifest]:
    """Read and verify an index folder: ``(faiss index, docstore, manifest)``."""
    folder = Path(path)
    # A save running meanwhile may delete the files the manifest we read
    # names; the new manifest then names new ones, so read again.
    for _attempt in range(_LOAD_ATTEMPTS):
        manifest = read_manifest(folder)
        check_expectations(manifest, folder, fingerprint=fingerprint, dim=dim)
        try:
            return _load_files(folder, manifest)
        except FileNotFoundError:
            if read_manifest(folder).files == manifest.files:
                raise IndexCorruptError(
                    f"index folder {folder} is missing a file its manifest names"
                ) from None
        except OSError as exc:  # a directory where a file should be, permissions...
            raise IndexCorruptError(f"cannot read index folder {folder}: {exc}") from exc
    raise IndexCorruptError(f"index folder {folder} kept changing while being read")


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """Parse and verify ``manifest.json`` (no data file is touched)."""
    path = Path(folder) / MANIFEST
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise IndexCorruptError(f"no cachedvec index in {folder} ({MANIFEST} not found)") from None
    except OSError as exc:
        raise IndexCorruptError(f"cannot read {path}: {exc}") from exc
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise IndexCorruptError(f"{path} is larger than any manifest cachedvec writes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IndexCorruptError(f"{path} is not valid JSON ({exc})") from exc
    return _parse_manifest(data, path)


def check_expectations(
    manifest: Manifest,
    folder: str | os.PathLike[str],
    *,
    fingerprint: Mapping[str, Any] | None,
    dim: int | None,
) -> None:
    """Refuse an index built for another model or dimension."""
    if dim is not None and manifest.dim != dim:
        raise IndexMismatchError(
            f"index {folder} holds {manifest.dim}-d vectors, the embeddings give {dim}-d"
        )
    if fingerprint is not None and manifest.fingerprint is not None:
        if dict(fingerprint) != manifest.fingerprint:
            raise IndexMismatchError(
                f"index {folder} was built by model {manifest.fingerprint.get('model')!r} "
                f"({_short(manifest.fingerprint)}), not by {fingerprint.get('model')!r} "
                f"({_short(fingerprint)}); rebuild it with `cachedvec reindex --model`"
            )


def _load_files(folder: Path, manifest: Manifest) -> tuple[faiss.Index, DocStore, Manifest]:
    # Our saves never rewrite a data file in place (each save uses new
    # names), so a file verified here is the file FAISS reads next.
    # A file verified here can still be deleted before it is opened again (a
    # save committing meanwhile): then FileNotFoundError makes the caller
    # re-read the manifest, instead of calling a vanished file corrupt.
    index_path = folder / manifest.files["index"]["name"]
    _verify_file(folder, manifest.files["index"])
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        if not index_path.exists():
            raise FileNotFoundError(index_path) from exc
        raise IndexCorruptError(f"FAISS cannot read the index in {folder}: {exc}") from exc
    docstore_path = folder / manifest.files["docstore"]["name"]
    _verify_file(folder, manifest.files["docstore"])
    try:
        docstore = DocStore.open_copy(docstore_path)
    except IndexCorruptError:
        if not docstore_path.exists():
            raise FileNotFoundError(docstore_path) from None
        raise
    return index, docstore, manifest


def _parse_manifest(data: Any, path: Path) -> Manifest:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexCorruptError(f"{path} is not a cachedvec index manifest")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise IndexMismatchError(
            f"{path} has format version {version}; this cachedvec reads up to "
            f"{FORMAT_VERSION}: upgrade cachedvec to open it"
        )
    body = {key: value for key, value in data.items() if key != "manifest_sha256"}
    if data.get("manifest_sha256") != _body_digest(body):
        raise IndexCorruptError(f"{path} fails its checksum: it was edited or damaged")
    try:
        manifest = Manifest(
            dim=_int(data["dim"], 1),
            metric=_known_metric(data["metric"]),
            factory=_text(data["factory"]),
            search={str(key): _int(value, 1) for key, value in data["search"].items()},
            fingerprint=data["fingerprint"],
            counts={name: _int(data["counts"][name], 0) for name in _COUNTS},
            files={
                role: _file_entry(data["files"][role], _int(version, 1))
                for role in ("index", "docstore")
            },
            created=str(data["created"]),
            format_version=_int(version, 1),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise IndexCorruptError(f"{path} is malformed: {exc!r}") from exc
    if manifest.fingerprint is not None and not isinstance(manifest.fingerprint, dict):
        raise IndexCorruptError(f"{path} has a malformed fingerprint")
    return manifest


_COUNTS = ("documents", "vectors", "tombstones")


def _file_entry(entry: Any, version: int) -> dict[str, Any]:
    algorithm = _FILE_DIGEST if version >= 2 else "sha256"
    name, size, digest = entry["name"], entry["bytes"], entry[algorithm]
    # Only our own file names: a manifest must not point outside its folder.
    if not isinstance(name, str) or not _DATA_FILE.match(name):
        raise ValueError(f"bad data file name {name!r}")
    length = _DIGESTS[algorithm][0]
    if not isinstance(digest, str) or not re.fullmatch(f"[0-9a-f]{{{length}}}", digest):
        raise ValueError(f"bad {algorithm} {digest!r}")
    return {"name": name, "bytes": _int(size, 0), algorithm: digest}


def _known_metric(value: Any) -> str:
    if not isinstance(value, str) or value not in METRICS:
        raise ValueError(f"unknown metric {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _int(value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"expected an integer >= {minimum}, got {value!r}")
    return value


def _body_digest(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _short(fingerprint: Mapping[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(dict(fingerprint), sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()[:16]


def _describe(path: Path) -> dict[str, Any]:
    size, digest = _digest_file(path, _FILE_DIGEST)
    return {"name": path.name, "bytes": size, _FILE_DIGEST: digest}


def _algorithm(entry: Mapping[str, Any]) -> str:
    return next(name for name in _DIGESTS if name in entry)


def _digest_file(path: Path, algorithm: str) -> tuple[int, str]:
    digest = _DIGESTS[algorithm][1]()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _verify_file(folder: Path, entry: Mapping[str, Any]) -> None:
    path = folder / entry["name"]
    _check(path, entry, *_digest_file(path, _algorithm(entry)))


def check_file_sizes(folder: str | os.PathLike[str], manifest: Manifest) -> None:
    """The cheap half of a load's checks: each data file is there, at its recorded size.

    For describing an index (``cachedvec stats``) without reading gigabytes
    to checksum it; a truncated or missing file still fails.
    """
    for entry in manifest.files.values():
        path = Path(folder) / entry["name"]
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise IndexCorruptError(f"{path}: {exc.strerror or exc}") from exc
        _check_size(path, entry, size)


def _check_size(path: Path, entry: Mapping[str, Any], size: int) -> None:
    if size != entry["bytes"]:
        raise IndexCorruptError(
            f"{path} has {size} bytes, its manifest says {entry['bytes']}: the file is damaged"
        )


def _check(path: Path, entry: Mapping[str, Any], size: int, digest: str) -> None:
    _check_size(path, entry, size)
    algorithm = _algorithm(entry)
    if digest != entry[algorithm]:
        raise IndexCorruptError(f"{path} fails its {algorithm} checksum: the file is damaged")


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(folder / _LOCK, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _names(folder: Path, file_name: str) -> bool:
    """Whether the committed manifest names ``file_name``."""
    try:
        return file_name in (folder / MANIFEST).read_text(errors="replace")
    except OSError:
        return False


def _remove_stale(folder: Path, keep: set[str]) -> None:
    for entry in folder.iterdir():
        if entry.name not in keep and _LEFTOVER.match(entry.name):
            entry.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
