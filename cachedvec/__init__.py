"""cachedvec: a cached embedding store with vector search.

Compute each embedding once, keep it in a byte store keyed by the model's
fingerprint and the exact text, and build or rebuild FAISS indexes from the
cache without calling the model again.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cachedvec.errors import (
    CachedVecError,
    ClusterError,
    CodecError,
    ConfigError,
    DimensionError,
    FilterError,
    IndexCorruptError,
    IndexMismatchError,
    InvalidKeyError,
    InvalidTextError,
    InvalidTextTypeError,
    InvalidURLError,
    InvalidValueError,
    MissingVectorsError,
    ModelError,
    ModelOutputError,
    SchemaError,
    SourceError,
    StoreError,
    VectorIndexError,
)
from cachedvec.stores import open_store

__version__ = "0.1.0"

# Heavier parts (numpy-heavy embeddings, FAISS, the model stack) load on first
# use so `import cachedvec` stays cheap for the CLI and for scripts that only
# touch a store.
_LAZY = {
    "CachedEmbeddings": "cachedvec.embeddings",
    "CacheStats": "cachedvec.embeddings",
    "default_model": "cachedvec.models",
    "ModelFingerprint": "cachedvec.keys",
    "CachedVectorStore": "cachedvec.vectorstore",
    "ingest": "cachedvec.ingestion",
    "reindex": "cachedvec.reindexing",
    "query": "cachedvec.search",
}

if TYPE_CHECKING:  # the lazy names, typed for type checkers
    from cachedvec.embeddings import CachedEmbeddings, CacheStats
    from cachedvec.ingestion import ingest
    from cachedvec.keys import ModelFingerprint
    from cachedvec.models import default_model
    from cachedvec.reindexing import reindex
    from cachedvec.search import query
    from cachedvec.vectorstore import CachedVectorStore


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cachedvec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CacheStats",
    "CachedEmbeddings",
    "CachedVecError",
    "CachedVectorStore",
    "ClusterError",
    "CodecError",
    "ConfigError",
    "DimensionError",
    "FilterError",
    "IndexCorruptError",
    "IndexMismatchError",
    "InvalidKeyError",
    "InvalidTextError",
    "InvalidTextTypeError",
    "InvalidValueError",
    "InvalidURLError",
    "MissingVectorsError",
    "ModelError",
    "ModelFingerprint",
    "ModelOutputError",
    "SchemaError",
    "SourceError",
    "StoreError",
    "VectorIndexError",
    "default_model",
    "ingest",
    "open_store",
    "query",
    "reindex",
]
