"""``file:///dir``: one file per key, in hashed sub-folders, written atomically.

Layout: ``<root>/<aa>/<escaped key>`` where ``aa`` is the first byte of a
blake2b digest of the key (256 folders: ten million keys leave ~40,000 files
per folder, which ext4's and XFS's hashed directories handle well; deeper
trees cost a 4 KiB directory block per leaf folder, which for small stores
doubled the disk used per vector) and the file name is the key
percent-escaped down to ``[A-Za-z0-9_.~-]``. Escaping is reversible, so ``yield_keys`` reads
keys back from names; a leading ``.`` is escaped too, so a key can never
name ``.``, ``..`` or one of our hidden temporary files, and a name can never
hold a path separator. Nothing a key says can leave the root.

Writes go to a hidden temporary file in the target folder and are moved into
place with ``os.replace``, which is atomic on POSIX: a reader or a crashed
writer sees the old value or the new one, never half of one, and two writers
of the same key simply race to an identical result. Files are not fsynced by
default (a killed process loses nothing the kernel already has); pass
``durable=True`` to survive power loss at the cost of a sync per batch file.
Timestamps come free from the file system: mtime is when an entry was
written, atime (under the usual ``relatime``) roughly when it was last read.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote, unquote

from cachedvec.errors import InvalidKeyError, InvalidValueError, StoreError
from cachedvec.stores.base import CachedVecStore, check_flag

_MAX_NAME = 240  # stay under the common 255-byte file name limit
_TMP_PREFIX = ".tmp-"


_PLAIN = re.compile(r"[A-Za-z0-9_.~:-]+")


def _escape(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"store keys must be non-empty strings, got {key!r}")
    if _PLAIN.fullmatch(key):
        # cachedvec's own keys: only ':' needs escaping (quote() would walk
        # the key a character at a time in Python).
        name = key.replace(":", "%3A")
    else:
        try:
            name = quote(key, safe="")
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(f"key {key!r} is not valid Unicode") from exc
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        raise InvalidKeyError(f"key is too long for a file store ({len(name)} bytes escaped)")
    return name


class FileStore(CachedVecStore):
    """A byte store on a local folder (see the module docs for the layout).

    ``durable=True`` fsyncs every value; ``create=False`` refuses a folder
    that does not exist instead of making it.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, durable: bool = False, create: bool = True
    ) -> None:
        self.root = Path(root).expanduser()
        self.url = f"file://{self.root}"
        self.durable = check_flag("durable", durable)
        check_flag("create", create)
        self._root = str(self.root)
        self._shards_made: set[str] = set()  # saves a mkdir call per write
        if not create and not self.root.is_dir():
            raise StoreError(
                f"cannot open file store {self.url}: no such folder (no cache has been "
                "written there)"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open file store {self.url}: {exc.strerror or exc}") from exc
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StoreError(f"cannot open file store {self.url}: folder is not readable")

    def _path(self, key: str) -> str:
        name = _escape(key)
        shard = hashlib.blake2b(key.encode("utf-8"), digest_size=1).hexdigest()
        return f"{self._root}/{shard}/{name}"

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            try:
                with open(self._path(key), "rb") as f:
                    out.append(f.read())
            except FileNotFoundError:
                out.append(None)
            except IsADirectoryError:
                out.append(None)
            except OSError as exc:
                raise StoreError(f"cannot read {self.url}: {exc.strerror or exc}") from exc
        return out

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        # Every pair is checked before the first file is written: a bad key
        # or value anywhere in a batch writes nothing.
        writes = []
        for key, value in key_value_pairs:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise InvalidValueError(
                    f"file store values must be bytes, got {type(value).__name__}"
                )
            writes.append((self._path(key), bytes(value)))
        for path, value in writes:
            self._write(path, value)

    def _write(self, path: str, value: bytes) -> None:
        tmp = None
        shard = os.path.dirname(path)
        try:
            if shard not in self._shards_made:
                os.makedirs(shard, exist_ok=True)
                self._shards_made.add(shard)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=shard)
            with os.fdopen(fd, "wb") as f:
                f.write(value)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            raise StoreError(f"cannot write to {self.url}: {exc.strerror or exc}") from exc
        finally:
            if tmp is not None:
                # Never leave a half-written temp file behind (full disk...).
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def mdelete(self, keys: Sequence[str]) -> None:
        for path in [self._path(key) for key in keys]:  # a bad key deletes nothing
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot delete from {self.url}: {exc.strerror or exc}") from exc

    def entry_times(self, keys: Sequence[str]) -> list[tuple[float, float]]:
        out = []
        for key in keys:
            try:
                st = os.stat(self._path(key))
                out.append((st.st_mtime, st.st_atime))
            except OSError:
                out.append((0.0, 0.0))
        return out

    def _sizes(self, keys: Sequence[str]) -> list[int | None]:
        # From the inode: reading the files would refresh their atimes, the
        # read times prune goes by.
        out: list[int | None] = []
        for key in keys:
            try:
                out.append(os.stat(self._path(key)).st_size)
            except OSError:
                out.append(None)
        return out

    def _files(self) -> Iterator[os.DirEntry[str]]:
        """Every entry file in the shard folders, skipping anything foreign."""
        for shard in _subdirs(self.root):
            with os.scandir(shard.path) as it:
                for entry in it:
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                        yield entry

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        for entry in self._files():
            key = unquote(entry.name)
            if (prefix is None or key.startswith(prefix)) and self._path(key) == entry.path:
                yield key  # (a file whose name does not hash to its folder is foreign)


def _subdirs(folder: Path) -> list[os.DirEntry[str]]:
    """Shard folders: exactly two lower-case hex digits, real directories."""
    try:
        with os.scandir(folder) as it:
            return [
                e
                for e in it
                if len(e.name) == 2
                and all(c in "0123456789abcdef" for c in e.name)
                and e.is_dir(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return []
