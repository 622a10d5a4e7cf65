"""Keys for LangChain's ``LocalFileStore``, which takes only path characters.

``LocalFileStore`` turns each key into a file path and refuses any key with
a character outside ``[A-Za-z0-9_./-]``, so every cachedvec key
(``cv1:<namespace>:<kind>:<digest>``) fails on its colons. :class:`PathSafeKeys`
sits between the two and escapes each other character, and ``_`` itself,
as ``_`` plus two hex digits per UTF-8 byte: ``cv1:ns:doc:ab..`` is stored as
``cv1_3ans_3adoc_3aab..``. The escape is reversible (``yield_keys`` gives
back the original keys). A ``/`` in a namespace
stays a ``/``, so ``sentence-transformers/all-MiniLM-L6-v2`` becomes a
folder, as it would with LangChain's own cache; namespaces never hold
``.`` or ``..`` segments (:func:`cachedvec.keys.check_namespace`).

Other LangChain stores (in memory, Redis, SQL) take any string and get the
keys unchanged, so a cache browsed there reads like cachedvec's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from langchain_core.stores import ByteStore

from cachedvec.errors import InvalidKeyError

_SAFE = re.compile(r"[^A-Za-z0-9./-]")
_ESCAPED = re.compile(r"(?:_[0-9a-f]{2})+")


_MAX_NAME = 255  # bytes in one file name on common file systems


def needs_path_safe_keys(store: ByteStore) -> bool:
    """Whether ``store`` is (a subclass of) LangChain's ``LocalFileStore``, from any package."""
    return any(
        cls.__name__ == "LocalFileStore" and cls.__module__.startswith("langchain")
        for cls in type(store).__mro__
    )


def escape(key: str) -> str:
    return _SAFE.sub(lambda m: "".join(f"_{b:02x}" for b in m[0].encode("utf-8")), key)


def unescape(name: str) -> str:
    """The key ``name`` stores; ``ValueError`` if ``escape`` cannot have made it."""
    key = _ESCAPED.sub(lambda m: bytes.fromhex(m[0].replace("_", "")).decode("utf-8"), name)
    if escape(key) != name:
        raise ValueError(f"{name!r} is not an escaped key")
    return key


def _stored_name(key: str) -> str:
    try:
        name = escape(key)
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(f"store key {key!r} is not valid Unicode") from exc
    if any(len(part) > _MAX_NAME for part in name.split("/")):
        raise InvalidKeyError(
            f"store key {key[:60]!r}... is too long for a file name once escaped "
            f"(over {_MAX_NAME} bytes): use a shorter namespace"
        )
    return name


class PathSafeKeys(ByteStore):
    """A byte store seen through escaped keys (see the module docs)."""

    def __init__(self, store: ByteStore) -> None:
        self.store = store

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.store.mget([_stored_name(k) for k in keys])

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        self.store.mset([(_stored_name(k), v) for k, v in key_value_pairs])

    def mdelete(self, keys: Sequence[str]) -> None:
        self.store.mdelete([_stored_name(k) for k in keys])

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        # LocalFileStore reads a prefix as a folder, not as the start of a
        # key, so the prefix is applied here. Files cachedvec did not name
        # (another cache sharing the folder) are skipped.
        for name in self.store.yield_keys():
            try:
                key = unescape(name)
            except ValueError:  # also UnicodeDecodeError
                continue
            if prefix is None or key.startswith(prefix):
                yield key

    def __repr__(self) -> str:
        return f"PathSafeKeys({self.store!r})"
