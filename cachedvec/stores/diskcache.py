"""``diskcache:///dir``: a size-limited, evicting cache on top of diskcache.

URL query options map to diskcache settings: ``size_limit`` (bytes; ``1e9``
or ``500MB`` also work; default 1 GiB, at least 1 MiB), ``eviction_policy``
(``least-recently-stored``, the default, ``least-recently-used``,
``least-frequently-used`` or ``none``) and ``cull_limit``. The URL is the
whole configuration: diskcache would otherwise keep a size limit from an
earlier opening of the folder, so an option left out means its default.

diskcache unpickles any value or key it did not store raw. A cache folder
can come from anywhere, so :class:`_RawOnlyDisk` refuses every pickled or
out-of-folder record: such entries read as missing and are recomputed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import diskcache

from cachedvec.errors import InvalidKeyError, InvalidURLError, InvalidValueError, StoreError
from cachedvec.stores.base import CachedVecStore

EVICTION_POLICIES = (
    "least-recently-stored",
    "least-recently-used",
    "least-frequently-used",
    "none",
)
DEFAULT_SIZE_LIMIT = 2**30
# Below this a cache holds a few hundred vectors at most, and a limit smaller
# than one value evicts every write at once: surely a typo for MB or GB.
MIN_SIZE_LIMIT = 2**20
_UNITS = {
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


class _Refused(Exception):
    """A record this store will not decode (pickled, or outside the folder)."""


class _RawOnlyDisk(diskcache.Disk):
    """A diskcache ``Disk`` that never unpickles and never leaves its folder."""

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise _Refused("pickled key")
        return super().get(key, raw)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise _Refused("pickled value")
        if filename is not None:
            root = os.path.realpath(self._directory)
            path = os.path.realpath(os.path.join(root, filename))
            if os.path.commonpath([root, path]) != root:
                raise _Refused("value file outside the cache folder")
        return super().fetch(mode, filename, value, read)


def parse_size(text: str | int | float) -> int:
    """``"1e9"``, ``"500MB"``, ``"2GiB"`` or a number -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    s = text.strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * _UNITS[unit])
    return int(float(s.rstrip("b") or "x"))


class DiskCacheStore(CachedVecStore):
    """A byte store backed by ``diskcache.Cache`` (SQLite index + files).

    ``create=False`` refuses a folder that does not exist instead of making it.
    """

    URL_OPTIONS = ("size_limit", "eviction_policy", "cull_limit")

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        size_limit: str | int | float = DEFAULT_SIZE_LIMIT,
        eviction_policy: str = "least-recently-stored",
        cull_limit: str | int | None = None,
        create: bool = True,
    ) -> None:
        self.url = f"diskcache://{directory}"
        if not create and not os.path.isdir(os.path.expanduser(directory)):
            raise StoreError(
                f"cannot open diskcache store {self.url}: no such folder (no cache has been "
                "written there)"
            )
        settings: dict[str, Any] = {
            # Keep every vector inside SQLite: no value files to manage.
            "disk_min_file_size": 2**20,
            "eviction_policy": eviction_policy,
        }
        try:
            settings["size_limit"] = parse_size(size_limit)
            if cull_limit is not None:
                settings["cull_limit"] = int(cull_limit)
        except (ValueError, OverflowError) as exc:
            raise InvalidURLError(f"bad size option in {self.url}: {exc}") from exc
        if settings["size_limit"] < MIN_SIZE_LIMIT:
            raise InvalidURLError(
                f"size_limit={size_limit} in {self.url} is below 1 MiB: "
                "write it with a unit, e.g. size_limit=500MB"
            )
        if settings.get("cull_limit", 0) < 0:
            raise InvalidURLError(f"cull_limit must be 0 or more in {self.url}")
        if eviction_policy not in EVICTION_POLICIES:
            raise InvalidURLError(
                f"unknown eviction_policy {eviction_policy!r} in {self.url}: "
                f"use one of {', '.join(EVICTION_POLICIES)}"
            )
        try:
            self.cache = diskcache.Cache(os.fspath(directory), disk=_RawOnlyDisk, **settings)
        except Exception as exc:  # sqlite3/OS errors surface in many shapes here
            raise StoreError(f"cannot open diskcache store {self.url}: {exc}") from exc

    @contextmanager
    def _valid_keys(self, action: str) -> Iterator[None]:
        # A Python str may hold lone surrogates, which diskcache's SQLite
        # index cannot; sqlite3 finds out while encoding, before any write.
        try:
            yield
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(
                f"cannot {action} {self.url}: key {exc.object!r:.80} is not valid Unicode"
            ) from exc

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        get = self.cache.get
        with self._valid_keys("read from"):
            for key in keys:
                try:
                    value = get(key, default=None, retry=True)
                except _Refused:
                    value = None
                out.append(value if isinstance(value, bytes) else None)
        return out

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        try:
            # One transaction per batch: one commit instead of one per key.
            with self._valid_keys("write to"), self.cache.transact(retry=True):
                for key, value in key_value_pairs:
                    if not isinstance(value, (bytes, bytearray, memoryview)):
                        raise InvalidValueError(
                            f"diskcache store values must be bytes, got {type(value).__name__}"
                        )
                    self.cache.set(key, bytes(value), retry=True)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot write to {self.url}: {exc}") from exc

    def mdelete(self, keys: Sequence[str]) -> None:
        with self._valid_keys("delete from"), self.cache.transact(retry=True):
            for key in keys:
                self.cache.delete(key, retry=True)

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        # Straight from diskcache's table: its own iterator would unpickle
        # non-raw keys (and stop at the first one we refuse).
        rows = self.cache._sql("SELECT key FROM Cache WHERE raw = 1").fetchall()
        for (key,) in rows:
            if isinstance(key, str) and (prefix is None or key.startswith(prefix)):
                yield key

    def entry_times(self, keys: Sequence[str]) -> list[tuple[float, float]]:
        # diskcache records both times in its own table; read them directly.
        times = {}
        for start in range(0, len(keys), 500):
            part = list(keys[start : start + 500])
            marks = ",".join("?" * len(part))
            sql = (
                f"SELECT key, store_time, access_time FROM Cache WHERE raw = 1 AND key IN ({marks})"
            )
            rows = self.cache._sql(sql, part).fetchall()
            times.update({k: (s or 0.0, a or 0.0) for k, s, a in rows})
        return [times.get(k, (0.0, 0.0)) for k in keys]

    def close(self) -> None:
        self.cache.close()
