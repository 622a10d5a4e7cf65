"""One exception root for everything cachedvec raises on purpose.

Callers catch :class:`CachedVecError` to handle any cachedvec failure; the
subclasses say which boundary rejected the input. Several also derive from
the built-in they specialise (``ValueError``, ``KeyError``...) so code
written against plain Python conventions keeps working. :func:`check_count`
is the one check of a count argument (workers, batch sizes, k...).
"""

from __future__ import annotations

import numbers
from typing import Any


class CachedVecError(Exception):
    """Root of every error cachedvec raises deliberately."""


class ConfigError(CachedVecError, ValueError):
    """An argument or option is invalid (unknown metric, bad batch size...)."""


class InvalidURLError(ConfigError):
    """A store URL has an unknown scheme or a malformed path or query."""


class StoreError(CachedVecError):
    """A byte store cannot be opened, read or written."""


class SchemaError(StoreError):
    """A SQL store's schema is missing, behind or ahead of this code."""


class InvalidKeyError(StoreError, ValueError):
    """A key cannot be stored safely (for example it would escape a folder)."""


class InvalidValueError(StoreError, TypeError):
    """A value given to a byte store is not bytes (``bytearray``/``memoryview`` are)."""


class InvalidTextError(CachedVecError, ValueError):
    """A text cannot be hashed: it holds a lone surrogate, or it is not a ``str``."""


class InvalidTextTypeError(InvalidTextError, TypeError):
    """A text is not a ``str`` (or a single string was given for a list of them)."""


class ModelError(CachedVecError):
    """The embedding model failed or returned unusable output."""


class ModelOutputError(ModelError, ValueError):
    """Wrong count, wrong dimension or non-finite values from a model."""


class CodecError(CachedVecError, ValueError):
    """Bytes are not a valid encoded vector (truncated, garbled, wrong dim)."""


class VectorIndexError(CachedVecError):
    """Base for vector index problems."""


class IndexCorruptError(VectorIndexError):
    """An index folder is damaged: missing file, bad checksum, bad manifest."""


class IndexMismatchError(VectorIndexError):
    """An index was built by another model, dimension or metric."""


class DimensionError(VectorIndexError, ValueError):
    """Vectors of the wrong dimension were given to an index."""


class FilterError(CachedVecError, ValueError):
    """A metadata filter is malformed."""


class MissingVectorsError(CachedVecError):
    """A rebuild needs vectors that the cache does not hold."""

    def __init__(self, message: str, missing: int) -> None:
        super().__init__(message)
        self.missing = missing


class SourceError(CachedVecError):
    """An ingestion source cannot be read (missing, binary, not UTF-8)."""


class ClusterError(CachedVecError):
    """A Ray cluster cannot be reached or used for distributed ingestion."""


def check_count(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``, else a :class:`ConfigError` naming ``name``.

    A bool is refused although Python counts it as an int: ``workers=True``
    is a mistake, not 1. numpy integers are accepted.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"{minimum} or a positive integer"
        raise ConfigError(f"{name} must be {wanted}, got {value!r}")
    return int(value)
