"""The in-process store: a dict, gone when the process ends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from cachedvec.errors import InvalidValueError
from cachedvec.stores.base import CachedVecStore

_BYTES_ONLY = {bytes}


class MemoryStore(CachedVecStore):
    """``memory://``: fastest, unshared, not persistent."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._data: dict[str, bytes] = {}

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(map(self._data.get, keys))

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        batch = dict(key_value_pairs)
        # The usual all-bytes batch is checked at C speed; anything else is
        # copied to bytes (bytearray, memoryview, as the other stores do) or
        # refused before anything is stored, like the file store.
        if {*map(type, batch.values())} - _BYTES_ONLY:
            batch = {key: _as_bytes(value) for key, value in batch.items()}
        self._data.update(batch)

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


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidValueError(f"memory store values must be bytes, got {type(value).__name__}")
