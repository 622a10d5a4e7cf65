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

from types import TracebackType

from langchain_core.stores import ByteStore


class CachedVecStore(ByteStore):
    """Base class of the bundled stores."""

    url: str = ""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release files, connections or pools; safe to call twice."""

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
