"""Vector search: a FAISS index and its SQLite docstore, saved as one folder.

- :class:`VectorIndex` — the index and docstore kept in step (vector_index.py)
- :class:`FaissIndex` — FAISS with stable int64 ids (faiss_index.py)
- :class:`DocStore` — the SQLite documents table (docstore.py)
- :func:`compile_filter` — LangChain metadata filters (filters.py)
- :class:`CacheReranker` — exact re-ranking from the cache (rerank.py)
- :mod:`~cachedvec.index.persist` — the folder format and atomic saves
"""

from cachedvec.index.docstore import DocStore, Record
from cachedvec.index.faiss_index import METRICS, FaissIndex
from cachedvec.index.filters import Filter, compile_filter
from cachedvec.index.persist import Manifest, check_file_sizes, read_manifest
from cachedvec.index.rerank import CacheReranker
from cachedvec.index.vector_index import DeleteResult, Hit, VectorIndex

__all__ = [
    "METRICS",
    "CacheReranker",
    "DeleteResult",
    "DocStore",
    "FaissIndex",
    "Filter",
    "Hit",
    "Manifest",
    "Record",
    "VectorIndex",
    "check_file_sizes",
    "compile_filter",
    "read_manifest",
]
