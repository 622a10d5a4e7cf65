"""Byte stores and the factory that opens one from a URL.

=====================================  ======================================
URL                                    store
=====================================  ======================================
``memory://``                          :class:`~cachedvec.stores.memory.MemoryStore`
``file:///abs/dir``, ``file://rel``    :class:`~cachedvec.stores.file.FileStore`
``sqlite:///rel.db``, ``sqlite:////abs.db``  :class:`~cachedvec.stores.sql.SQLStore`
``postgresql+psycopg://user@host/db``  :class:`~cachedvec.stores.sql.SQLStore`
``diskcache:///abs/dir?size_limit=1e9``  :class:`~cachedvec.stores.diskcache.DiskCacheStore`
=====================================  ======================================
"""

from __future__ import annotations

import inspect
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cachedvec.errors import CachedVecError, ConfigError, InvalidURLError, StoreError
from cachedvec.stores.base import CachedVecStore, check_flag
from cachedvec.stores.memory import MemoryStore

__all__ = ["CachedVecStore", "MemoryStore", "open_store", "redact_url"]

SCHEMES = ("memory", "file", "sqlite", "postgresql", "diskcache")


# password=... in a query (sslpassword=, libpq's key passphrase, too): the
# value runs to the next "&", as the drivers split it; a "#" is part of it.
_QUERY_PASSWORD = re.compile(r"[?&](?:ssl)?password=([^&]*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for messages and logs.

    In ``scheme://user:password@host...`` the password is everything from the
    first ``:`` after ``://`` to the *last* ``@``: SQLAlchemy accepts
    passwords holding ``/``, ``?`` or ``#``, and one holding an unescaped
    ``@`` must not show its tail. An ``@`` further on (in a query value) can
    only hide more than the password, never less. Index arithmetic rather
    than a URL parser, so that even a URL too broken to parse never leaks
    its password into an error message.
    """
    spans = [match.span(1) for match in _QUERY_PASSWORD.finditer(url)]
    userinfo = _userinfo_password(url)
    if userinfo is not None:
        spans.append(userinfo)
    return _hide(url, spans)


def _userinfo_password(url: str) -> tuple[int, int] | None:
    """Where the password of ``scheme://user:password@host`` is, if there is one."""
    scheme_end = url.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0  # no "://": a mangled URL, still hidden
    if url.startswith("/", start):
        return None  # a path (sqlite:////abs.db, file:///dir), not user:password@host
    at = url.rfind("@", start)
    colon = url.find(":", start, at) if at >= 0 else -1
    return (colon + 1, at) if colon >= 0 else None


def _hide(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each span replaced by ``***``; overlapping spans become one."""
    pieces: list[str] = []
    done = 0
    for start, stop in sorted(spans):
        if start < done:  # overlaps the span hidden last: a query inside the password
            done = max(done, stop)
        else:
            pieces += [text[done:start], "***"]
            done = stop
    return "".join(pieces) + text[done:]


def _local_path(url: str, scheme: str) -> str:
    """The path after ``scheme://``: ``file:///abs`` -> ``/abs``, ``file://rel`` -> ``rel``."""
    path = url[len(scheme) + 3 :].split("?", 1)[0]
    if not path:
        raise InvalidURLError(f"{url!r} names no folder: use {scheme}:///absolute/path")
    return path


def open_store(url: str, **options: Any) -> CachedVecStore:
    """Open the byte store a URL names; see the module docs for the schemes.

    Keyword options go to the store's constructor; ``create=False``, which
    every persistent store takes, refuses a store that does not exist yet
    instead of starting an empty one (memory stores ignore it). Raises
    :class:`InvalidURLError` for an unknown scheme or malformed URL and
    :class:`StoreError` when the store cannot be opened; both name the URL
    with any password hidden. An option the store does not take is a
    :class:`ConfigError` naming it.
    """
    if not isinstance(url, str):
        raise InvalidURLError(f"a store URL must be a string, got {type(url).__name__}")
    if "://" not in url:
        raise InvalidURLError(
            f"{redact_url(url)!r} is not a store URL: expected one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    try:
        return _open(url, options)
    except CachedVecError:
        raise
    except (ValueError, TypeError, OverflowError, LookupError) as exc:
        # The URL's parts reached a parser (pathlib, SQLAlchemy, a driver)
        # that rejected them: the URL is at fault.
        raise InvalidURLError(f"bad store URL {redact_url(url)!r}: {exc}") from exc
    except Exception as exc:
        raise StoreError(f"cannot open store {redact_url(url)!r}: {exc}") from exc


def _open(url: str, options: dict[str, Any]) -> CachedVecStore:
    scheme = url.split("://", 1)[0].lower()
    family = scheme.split("+", 1)[0]
    if family == "memory":
        _check_options(options, ("create",), "memory")
        check_flag("create", options.get("create", True))  # ignored, but never a typo
        return MemoryStore()
    if family == "file":
        from cachedvec.stores.file import FileStore

        _check_options(options, _keyword_options(FileStore), "file")
        return FileStore(_local_path(url, scheme), **options)
    if family == "diskcache":
        from cachedvec.stores.diskcache import DiskCacheStore, check_settings

        query: dict[str, Any] = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        unknown = sorted(set(query) - set(DiskCacheStore.URL_OPTIONS))
        if unknown:
            raise InvalidURLError(
                f"unknown option {unknown[0]!r} in {redact_url(url)!r}: "
                f"diskcache URLs take {', '.join(DiskCacheStore.URL_OPTIONS)}"
            )
        _check_options(options, _keyword_options(DiskCacheStore), "diskcache")
        twice = sorted(set(query) & set(options))
        if twice:
            raise ConfigError(
                f"{twice[0]} is given twice, in {redact_url(url)!r} and as a keyword: keep one"
            )
        path = _local_path(url, scheme)
        try:
            check_settings(f"{scheme}://{path}", **query)
        except ConfigError as exc:  # the URL's own options: the URL is at fault
            raise InvalidURLError(str(exc)) from exc
        return DiskCacheStore(path, **query, **options)
    if family in ("sqlite", "postgresql", "postgres"):
        from cachedvec.stores.sql import SQLStore

        _check_options(options, _keyword_options(SQLStore), family)
        return SQLStore(url, **options)
    raise InvalidURLError(
        f"unknown store scheme {scheme!r} in {redact_url(url)!r}: expected one of "
        + ", ".join(f"{s}://" for s in SCHEMES)
    )


def _keyword_options(store_class: type) -> tuple[str, ...]:
    """The keyword-only parameters of a store's constructor (its options)."""
    parameters = inspect.signature(store_class).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _check_options(options: dict[str, Any], known: tuple[str, ...], store_type: str) -> None:
    # Checked before the constructor runs: its TypeError would otherwise be
    # taken for a URL problem (see open_store).
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} for a {store_type} store: it takes " + ", ".join(known)
        )
