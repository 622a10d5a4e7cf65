"""``diskcache:///dir``: a size-limited, evicting cache on top of diskcache.

URL query options map to diskcache settings: ``size_limit`` (bytes; ``1e9``
or ``500MB`` also work; default 1 GiB, at least 1 MiB), ``eviction_policy``
(``least-recently-stored``, the default, ``least-recently-used``,
``least-frequently-used`` or ``none``) and ``cull_limit``. The URL is the
whole configuration: diskcache would otherwise keep a size limit from an
earlier opening of the folder, so an option left out means its default.

Reads are recorded for ``prune`` on every eviction policy, as the SQL store
records them: a read refreshes an entry's access time only when it is older
than :data:`TOUCH_INTERVAL`, so a warm cache reads without writing
(diskcache's own ``get`` records a read time only under
``least-recently-used``, and then on every read). ``mget`` therefore reads
diskcache's table itself, one query per 500 keys, and applies the policy's
own bookkeeping (``least-recently-used``, ``least-frequently-used``) in one
update per call; diskcache's optional hit/miss statistics are not counted.

A value larger than ``size_limit`` is refused: the cache could never hold it
together with anything else.

diskcache unpickles any value or key it did not store raw. A cache folder
can come from anywhere, so :class:`_RawOnlyDisk` refuses every pickled or
out-of-folder record: such entries read as missing and are recomputed.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import diskcache

from cachedvec.errors import ConfigError, InvalidKeyError, InvalidValueError, StoreError
from cachedvec.stores.base import CachedVecStore, check_flag

log = logging.getLogger(__name__)

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
#: A read refreshes an entry's access time when it is older than this
#: (seconds), as in the SQL store's default ``touch_interval``.
TOUCH_INTERVAL = 86_400
_CHUNK = 500  # keys per query, under SQLite's historical 999-variable limit
_SELECT = (
    "SELECT key, mode, filename, value, access_time FROM Cache WHERE raw = 1 AND key IN ({}) "
    "AND (expire_time IS NULL OR expire_time > ?)"
)
_MAX_INTEGER = 2**63 - 1  # diskcache keeps its settings in SQLite integers
# Longest first, so that "mib" is not read as "b".
_UNITS = {
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "b": 1,
    "": 1,
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
    """``"1e9"``, ``"500MB"``, ``"2GiB"`` or a number -> bytes; ``ValueError`` otherwise.

    Refuses a bool, NaN, the infinities and anything that is not a size.
    """
    if isinstance(text, bool) or not isinstance(text, (str, numbers.Real)):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, str):
        digits, suffix = text.strip(), _unit_of(text)
        size = float(digits[: len(digits) - len(suffix)]) * _UNITS[suffix]
    else:
        size = float(text)
    if not math.isfinite(size):
        raise ValueError(f"not a finite size: {text!r}")
    return int(size)


def _unit_of(text: object) -> str:
    """The unit a size ends with (``"mib"``, ``"b"``...), lower-cased; ``""`` for none."""
    if not isinstance(text, str):
        return ""
    low = text.strip().lower()
    return next((unit for unit in _UNITS if unit and low.endswith(unit)), "")


def check_settings(
    url: str,
    *,
    size_limit: Any = DEFAULT_SIZE_LIMIT,
    eviction_policy: Any = "least-recently-stored",
    cull_limit: Any = None,
) -> dict[str, Any]:
    """diskcache's settings for these options, else a :class:`ConfigError` naming one.

    ``url`` only names the store in messages. :func:`~cachedvec.open_store`
    runs it on a URL's own options first, to blame the URL for them.
    """
    try:
        size = parse_size(size_limit)
    except (ValueError, OverflowError):
        raise ConfigError(
            f"size_limit={size_limit} in {url} is not a size: write bytes (1e9) or a number "
            "with a unit (500MB, 2GiB)"
        ) from None
    if size < MIN_SIZE_LIMIT:
        unit = "" if _unit_of(size_limit) else " (a number without a unit counts bytes)"
        raise ConfigError(
            f"size_limit={size_limit} in {url} is {size:,} bytes{unit}, below the minimum "
            f"of 1 MiB ({MIN_SIZE_LIMIT:,} bytes): e.g. size_limit=500MB"
        )
    if size > _MAX_INTEGER:
        raise ConfigError(f"size_limit={size_limit} in {url} is more than 8 EiB, beyond any disk")
    settings: dict[str, Any] = {"size_limit": size, "eviction_policy": eviction_policy}
    if cull_limit is not None:
        culled: Any = cull_limit
        if isinstance(cull_limit, str) and cull_limit.strip().isdecimal():
            culled = int(cull_limit)
        if (
            isinstance(culled, bool)
            or not isinstance(culled, numbers.Integral)
            or not 0 <= int(culled) <= _MAX_INTEGER
        ):
            raise ConfigError(
                f"cull_limit={cull_limit} in {url} must be a whole number of 0 or more "
                "(the entries one write may evict)"
            )
        settings["cull_limit"] = int(culled)
    if eviction_policy not in EVICTION_POLICIES:
        raise ConfigError(
            f"unknown eviction_policy {eviction_policy!r} in {url}: "
            f"use one of {', '.join(EVICTION_POLICIES)}"
        )
    return settings


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
        settings = check_settings(
            self.url, size_limit=size_limit, eviction_policy=eviction_policy, cull_limit=cull_limit
        )
        if not check_flag("create", create) and not os.path.isdir(os.path.expanduser(directory)):
            raise StoreError(
                f"cannot open diskcache store {self.url}: no such folder (no cache has been "
                "written there)"
            )
        # Keep every vector inside SQLite: no value files to manage.
        settings["disk_min_file_size"] = 2**20
        self._size_limit: int = settings["size_limit"]
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
        found, stale = self._fetch(keys)
        if found:
            self._record_reads(found, stale)
        get = found.get
        return [get(k) for k in keys]

    def _fetch(self, keys: Sequence[str]) -> tuple[dict[str, bytes], list[str]]:
        """The stored values of ``keys``, and the keys whose read time is stale.

        What diskcache's ``get`` does for one key, for a whole batch: an
        expired entry, a value this store refuses or a value file deleted
        meanwhile read as missing.
        """
        now = time.time()
        recorded_after = now - TOUCH_INTERVAL
        fetch = self.cache._disk.fetch
        found: dict[str, bytes] = {}
        stale: list[str] = []
        with self._valid_keys("read from"):
            for start in range(0, len(keys), _CHUNK):
                part = keys[start : start + _CHUNK]
                query = _SELECT.format(",".join("?" * len(part)))
                for key, mode, filename, value, read_at in self.cache._sql(query, (*part, now)):
                    try:
                        data = fetch(mode, filename, value, False)
                    except (_Refused, OSError):
                        continue
                    if isinstance(data, bytes):
                        found[key] = data
                        if (read_at or 0) < recorded_after:
                            stale.append(key)
        return found, stale

    def _record_reads(self, found: dict[str, bytes], stale: list[str]) -> None:
        """Refresh the read time of ``stale``; the eviction policy's bookkeeping for ``found``.

        Best effort, as in the SQL store: a read never fails for it.
        """
        policy = diskcache.core.EVICTION_POLICY[self.cache.eviction_policy]["get"]
        updates = [(f"access_time = {time.time()!r}", stale)] if stale else []
        if policy is not None:  # least-recently-used, least-frequently-used
            updates.append((policy.format(now=time.time()), list(found)))
        if not updates:
            return  # the usual warm read: nothing to write
        try:
            with self.cache.transact():
                for assignment, keys in updates:
                    for start in range(0, len(keys), _CHUNK):
                        part = keys[start : start + _CHUNK]
                        marks = ",".join("?" * len(part))
                        self.cache._sql(
                            f"UPDATE Cache SET {assignment} WHERE raw = 1 AND key IN ({marks})",
                            part,
                        )
        except (sqlite3.Error, diskcache.Timeout) as exc:  # busy: the next read tries again
            log.debug("skipped recording reads in %s: %s", self.url, exc)

    def _sizes(self, keys: Sequence[str]) -> list[int | None]:
        found, _ = self._fetch(keys)  # without recording a read
        return [len(found[k]) if k in found else None for k in keys]

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        try:
            # One transaction per batch: one commit instead of one per key.
            with self._valid_keys("write to"), self.cache.transact(retry=True):
                for key, value in key_value_pairs:
                    if not isinstance(value, (bytes, bytearray, memoryview)):
                        raise InvalidValueError(
                            f"diskcache store values must be bytes, got {type(value).__name__}"
                        )
                    data = bytes(value)
                    if len(data) > self._size_limit:
                        raise StoreError(
                            f"cannot write to {self.url}: the value of key {key!r:.80} is "
                            f"{len(data):,} bytes, more than the whole cache (size_limit="
                            f"{self._size_limit:,})"
                        )
                    self.cache.set(key, data, retry=True)
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
