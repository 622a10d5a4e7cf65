"""What every cachedvec byte store adds to LangChain's ``ByteStore``.

A store maps ``str`` keys to ``bytes`` values with LangChain's batch
interface (``mget``/``mset``/``mdelete``/``yield_keys``, their async twins):
a missing key reads as ``None`` and deleting a missing key is a no-op. On top
of that every cachedvec store

- knows the URL it was opened from (``url``, password hidden), so errors can
  name it;
- releases what it holds on ``close()`` and works as a context manager.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Collection, Sequence
from types import TracebackType
from typing import Any, NamedTuple

from langchain_core.stores import ByteStore

from cachedvec.errors import ConfigError

_HEX = "0123456789abcdef"
OTHER_KEYS = "(other keys)"


class NamespaceStats(NamedTuple):
    """What one key namespace (``cv1:<slug>:<fingerprint>:<kind>:``) holds."""

    entries: int
    bytes: int
    #: Unix seconds of the newest write and the newest recorded read (0: unknown).
    last_written: int
    last_read: int


def namespace_of(key: str) -> str:
    """``cv1:<slug>:<fp>:<kind>:`` for a cachedvec key, :data:`OTHER_KEYS` otherwise."""
    return key.rstrip(_HEX) if key.startswith("cv1:") else OTHER_KEYS


def check_seconds(name: str, value: Any, *, maximum: int, zero: bool = True) -> float:
    """``value`` as a float of seconds, else a :class:`ConfigError` naming ``name``.

    A store option counts seconds from 0 (above 0 with ``zero=False``) up to
    ``maximum``. A bool (``busy_timeout=True`` is a mistake, not one second),
    a string, NaN and the infinities are refused; numpy numbers are fine.
    """
    try:
        seconds = float(value) if isinstance(value, numbers.Real) else math.nan
    except OverflowError:  # an int beyond any float
        seconds = math.inf
    if (
        isinstance(value, bool)
        or not math.isfinite(seconds)
        or not (seconds >= 0 if zero else seconds > 0)
        or seconds > maximum
    ):
        span = f"from 0 to {maximum:,}" if zero else f"above 0, at most {maximum:,}"
        raise ConfigError(f"{name} must be a number of seconds {span}, got {value!r:.60}")
    return seconds


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else a :class:`ConfigError` naming ``name``.

    A string such as ``"no"`` would otherwise count as true.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r:.60}")
    return value


def prune_cutoff(older_than: float) -> float | None:
    """The Unix time before which an entry is older than ``older_than`` seconds.

    ``None`` when no entry can be that old (an age reaching back before 1970,
    or infinite): prune has nothing to do. A negative or NaN age is a
    :class:`ConfigError`.
    """
    if not older_than >= 0:  # also catches NaN, which fails every comparison
        raise ConfigError(f"older_than must be >= 0 seconds, got {older_than}")
    now = time.time()
    if older_than >= now:  # compared before subtracting: a huge int would overflow a float
        return None
    return now - older_than


class CachedVecStore(ByteStore):
    """Base class of the bundled stores."""

    url: str = ""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release files, connections or pools; safe to call twice."""

    def entry_times(self, keys: Sequence[str]) -> list[tuple[float, float]]:
        """``(written, last read)`` Unix times per key; ``(0, 0)`` where unknown.

        Backends that record times override this; the default knows nothing,
        so every entry counts as old.
        """
        return [(0.0, 0.0)] * len(keys)

    def namespace_stats(self) -> dict[str, NamespaceStats]:
        """Entries, bytes and newest write/read time per key namespace.

        The default scans every key; SQL stores answer with one query.
        """
        totals: dict[str, list[float]] = {}
        keys = list(self.yield_keys())
        for start in range(0, len(keys), 1024):
            part = keys[start : start + 1024]
            for key, size, (written, read) in zip(
                part, self._sizes(part), self.entry_times(part), strict=True
            ):
                if size is None:
                    continue  # deleted meanwhile
                t = totals.setdefault(namespace_of(key), [0, 0, 0.0, 0.0])
                t[0] += 1
                t[1] += size
                t[2], t[3] = max(t[2], written), max(t[3], read)
        return {
            ns: NamespaceStats(int(a), int(b), int(c), int(d))
            for ns, (a, b, c, d) in sorted(totals.items())
        }

    def _sizes(self, keys: Sequence[str]) -> list[int | None]:
        """Each value's size in bytes (``None``: missing), for :meth:`namespace_stats`.

        Stores that record reads override it: looking at the statistics
        must not count as using every entry, or ``prune`` would keep them all.
        """
        return [None if value is None else len(value) for value in self.mget(keys)]

    def prune(
        self,
        older_than: float,
        *,
        prefix: str | None = None,
        keep: Collection[str] | None = None,
        dry_run: bool = False,
    ) -> int:
        """Delete entries neither written nor read in the last ``older_than`` seconds.

        ``older_than=0`` selects every entry; ``keep`` lists keys never to
        delete (those an index uses); ``prefix`` limits it to one namespace.
        Returns how many entries were deleted (or would be, with ``dry_run``).
        """
        cutoff = prune_cutoff(older_than)
        if cutoff is None:
            return 0
        candidates = [k for k in self.yield_keys(prefix=prefix) if not keep or k not in keep]
        doomed = []
        for start in range(0, len(candidates), 1024):
            part = candidates[start : start + 1024]
            times = self.entry_times(part)
            doomed += [k for k, (w, r) in zip(part, times, strict=True) if max(w, r) < cutoff]
        if not dry_run:
            for start in range(0, len(doomed), 1024):
                self.mdelete(doomed[start : start + 1024])
        return len(doomed)

    def __enter__(self) -> CachedVecStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
