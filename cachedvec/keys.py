"""Cache keys: which model made a vector, for which kind of text, of which text.

Key format (documented in ``docs/architecture.md``)::

    cv1:<model-slug>:<fingerprint>:<kind>:<digest>

- ``cv1`` is the key format version.
- ``<model-slug>`` is a readable, lower-case form of the model name (only
  ``[a-z0-9._-]``), there for people browsing a store; it plays no part in
  correctness.
- ``<fingerprint>`` is the first 16 hex digits of a sha256 over a canonical
  JSON of everything that changes a model's output: identity, weights digest
  or revision, dimension, normalisation, prompts, pooling and API parameters
  (such as OpenAI's ``dimensions=512``). Change any of them and every key
  changes, so vectors of two models can never mix.
- ``<kind>`` is ``doc`` or ``query``: asymmetric models (E5, BGE) embed a
  question differently from a passage, so the two never share keys.
- ``<digest>`` is the sha256 (default) or blake2b hex digest of the exact
  UTF-8 text: no normalisation, so two texts share a key only if identical.

A user-given namespace replaces ``<model-slug>:<fingerprint>`` verbatim.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from cachedvec.errors import ConfigError, InvalidTextError, InvalidTextTypeError

KEY_VERSION = "cv1"
Kind = Literal["doc", "query"]
KINDS: tuple[Kind, ...] = ("doc", "query")
_SLUG_STRIP = re.compile(r"[^a-z0-9._-]+")
# "/" is allowed (LangChain users name namespaces after models, such as
# "sentence-transformers/all-MiniLM-L6-v2"), but not as an empty, "." or
# ".." path segment, for stores that map keys to files.
_NAMESPACE_OK = re.compile(r"[A-Za-z0-9._:@+=/-]{1,200}")  # used with fullmatch: no "\n" slips by
_NAMESPACE_BAD_SEGMENT = re.compile(r"(^|/)(\.{1,2})?(/|$)")


@dataclass(frozen=True)
class ModelFingerprint:
    """Everything about a model that changes the vectors it produces."""

    model: str
    revision: str | None = None
    dim: int | None = None
    normalize: bool | None = None
    document_prompt: str | None = None
    query_prompt: str | None = None
    pooling: str | None = None
    # Left out of the hash (a dict has none), so a fingerprint can be a dict
    # key or a set member; equality still compares it.
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def canonical(self) -> str:
        """Stable JSON text of the fingerprint (sorted keys, no spaces).

        A ``params`` value that is not JSON counts by its text (``str``); a
        set by its sorted items, so the text is the same in every process.
        An object with no text of its own (Python's default ``<... at 0x...>``
        names a memory address, different each run) is a :class:`ConfigError`:
        it would give the model a new namespace, and miss the cache, every run.
        """
        data = {
            "model": self.model,
            "revision": self.revision,
            "dim": self.dim,
            "normalize": self.normalize,
            "document_prompt": self.document_prompt,
            "query_prompt": self.query_prompt,
            "pooling": self.pooling,
            "params": dict(self.params),
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"), default=_as_text)

    @property
    def digest(self) -> str:
        """The 16 hex digits of the key's ``<fingerprint>`` part."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def namespace(self) -> str:
        """The ``<model-slug>:<fingerprint>`` part of every key."""
        return f"{slug(self.model)}:{self.digest}"

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON as a dict (what an index manifest records)."""
        return cast("dict[str, Any]", json.loads(self.canonical()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelFingerprint:
        """The fingerprint :meth:`to_dict` gave; :class:`ConfigError` if malformed."""
        try:
            return cls(
                model=str(data["model"]),
                revision=data.get("revision"),
                dim=data.get("dim"),
                normalize=data.get("normalize"),
                document_prompt=data.get("document_prompt"),
                query_prompt=data.get("query_prompt"),
                pooling=data.get("pooling"),
                params=dict(data.get("params") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed model fingerprint: {exc}") from exc


_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _as_text(value: Any) -> str:
    """JSON's fallback for a ``params`` value: its ``str()``, the same every run.

    This was plain ``str()`` when fingerprints began, so values whose text
    never varied keep it (and their namespace). Two kinds of text did vary:
    a set holding strings, whose order follows the process's hash seed, is
    sorted; a text naming a memory address (a function, a default
    ``repr``) is refused.
    """
    text = _set_text(value) if isinstance(value, (set, frozenset)) else str(value)
    if _MEMORY_ADDRESS.search(text):
        raise ConfigError(
            f"a fingerprint parameter ({type(value).__name__}) has a text naming a memory "
            "address, so the namespace would change every run: pass a JSON value (or an "
            "object whose str() describes it) instead"
        )
    return text


def _set_text(value: set[Any] | frozenset[Any]) -> str:
    """``str()`` of a set, in an order that does not depend on the hash seed."""
    if all(map(_hash_is_stable, value)):
        return str(value)  # numbers iterate in the same order every run
    items = sorted(_set_text(v) if isinstance(v, frozenset) else repr(v) for v in value)
    text = "{" + ", ".join(items) + "}"
    return f"frozenset({text})" if isinstance(value, frozenset) else text


def _hash_is_stable(value: Any) -> bool:
    """Whether ``hash(value)`` is the same in every process (no str or bytes in it)."""
    if isinstance(value, (tuple, frozenset)):
        return all(map(_hash_is_stable, value))
    return value is None or isinstance(value, (int, float, complex))


def slug(name: str) -> str:
    """A readable, key-safe form of a model name (last path part, lower case)."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    return _SLUG_STRIP.sub("-", base).strip("-")[:48] or "model"


def check_namespace(namespace: str) -> str:
    """Validate a user-given namespace so keys stay safe for every store."""
    if not isinstance(namespace, str):
        raise ConfigError(f"namespace must be a str, got {type(namespace).__name__}")
    if not _NAMESPACE_OK.fullmatch(namespace) or _NAMESPACE_BAD_SEGMENT.search(namespace):
        raise ConfigError(
            f"namespace {namespace!r} must be 1-200 characters of letters, digits and "
            "._:@+=-/ (with no empty, '.' or '..' part between slashes)"
        )
    return namespace


# Hash constructors, called inline per text: a wrapper function per text costs
# a Python frame, a measurable share of a fully cached pass.
Digest = Callable[[bytes], Any]

DIGESTS: dict[str, Digest] = {
    "sha256": hashlib.sha256,
    "blake2b": functools.partial(hashlib.blake2b, digest_size=32),
}


def check_texts(texts: Any) -> Sequence[str]:
    """``texts`` as a sequence, a one-shot iterable (a generator) made a list.

    A single ``str`` (a common slip for ``[text]``) or a non-iterable is an
    :class:`~cachedvec.errors.InvalidTextError` that is also a ``TypeError``.
    """
    if type(texts) is list:  # the common case, checked first: it runs per call
        return texts
    if isinstance(texts, (str, bytes, bytearray)):
        raise InvalidTextTypeError("texts must be a list of strings, not a single string")
    if isinstance(texts, Sequence):
        return texts
    try:
        return list(texts)  # a generator, as LangChain's cache also takes
    except TypeError:
        raise InvalidTextTypeError(
            f"texts must be a list of strings, got {type(texts).__name__}"
        ) from None


def check_text(text: Any, where: str = "text") -> str:
    """``text`` if it is a ``str``, else the error :func:`check_texts` raises."""
    if not isinstance(text, str):
        raise InvalidTextTypeError(f"{where} is {type(text).__name__}, expected str")
    return text


class KeyEncoder:
    """Turns texts into store keys under one namespace and kind."""

    __slots__ = ("prefix", "_digest")

    def __init__(self, namespace: str, kind: Kind, algorithm: str = "sha256") -> None:
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
        if algorithm not in DIGESTS:
            raise ConfigError(
                f"unknown key digest {algorithm!r}: use one of {sorted(DIGESTS)}"
                + (" (SHA-1 is not collision-resistant)" if algorithm == "sha1" else "")
            )
        self.prefix = f"{KEY_VERSION}:{namespace}:{kind}:"
        self._digest = DIGESTS[algorithm]

    def keys(self, texts: Iterable[str]) -> list[str]:
        """One key per text, in order.

        A text that is not a ``str`` or not valid Unicode (a lone surrogate)
        is an :class:`~cachedvec.errors.InvalidTextError` naming its position
        (for a non-``str``, one that is also a ``TypeError``).
        """
        texts = check_texts(texts)
        prefix, digest = self.prefix, self._digest
        try:
            return [prefix + digest(t.encode("utf-8")).hexdigest() for t in texts]
        except (AttributeError, UnicodeEncodeError):
            pass
        # Slow path only to build a precise error message.
        for i, t in enumerate(texts):
            check_text(t, f"texts[{i}]")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidTextError(
                    f"texts[{i}] is not valid Unicode (lone surrogate at {exc.start})"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def key(self, text: str) -> str:
        """The key of one text (errors as :meth:`keys`)."""
        return self.keys([check_text(text)])[0]
