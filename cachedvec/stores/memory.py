"""The in-process store: a dict, gone when the process ends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from cachedvec.stores.base import CachedVecStore


class MemoryStore(CachedVecStore):
    """``memory://``: fastest, unshared, not persistent."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._data: dict[str, bytes] = {}

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(map(self._data.get, keys))

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        self._data.update(key_value_pairs)

    def mdelete(self, keys: Sequence[str]) -> None:
        pop = self._data.pop
        for k in keys:
            pop(k, None)

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        # A snapshot, so callers may delete while iterating.
        for k in list(self._data):
            if prefix is None or k.startswith(prefix):
                yield k

    def __len__(self) -> int:
        return len(self._data)
