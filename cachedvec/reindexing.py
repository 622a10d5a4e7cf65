"""Rebuild an index from cached vectors: a new index type without the model.

The docstore records each document's cache key, so a rebuild reads every
vector back from the byte store and never calls a model. IVF/PQ and
transforms such as ``PCA128,HNSW32`` are trained on those cached vectors. If
some vectors are not in the cache (pruned, or a store that was replaced) the
rebuild stops and says how many, unless ``compute_missing`` is set.

With ``model=...`` the documents are re-embedded under another model: only
vectors that model's namespace lacks are computed.

The new index is written with the same atomic folder swap as every save: a
reader or a crash sees the old index or the new one.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cachedvec.codec import VectorCodec
from cachedvec.embeddings import CachedEmbeddings
from cachedvec.errors import IndexMismatchError, MissingVectorsError
from cachedvec.index import Record, VectorIndex
from cachedvec.jobs import DEFAULT_INDEX, DEFAULT_STORE, progress, record_run, slices
from cachedvec.keys import ModelFingerprint
from cachedvec.stores import open_store

_READ_BATCH = 4096


@dataclass
class ReindexReport:
    documents: int = 0
    factory: str = ""
    metric: str = ""
    model: str = ""
    cache_hits: int = 0
    computed: int = 0
    seconds: float = 0.0
    index: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reindex(
    index: str | os.PathLike[str] = DEFAULT_INDEX,
    *,
    factory: str | None = None,
    metric: str | None = None,
    store: str = DEFAULT_STORE,
    model: Any = None,
    compute_missing: bool = False,
    show_progress: bool | None = None,
) -> ReindexReport:
    """Rebuild the index at ``index`` from the cache (see the module docs).

    ``factory``/``metric`` default to the current ones. ``model`` switches
    the index to another model. Raises :class:`MissingVectorsError` when
    vectors are missing and ``compute_missing`` is false (nothing changes).
    """
    started = time.perf_counter()
    index_dir = Path(index)
    old = VectorIndex.load(index_dir)
    try:
        records = list(old.records())
        factory, metric = factory or old.factory, metric or old.metric
        switching = model is not None
        if switching or compute_missing:
            vectors, keys, fingerprint, hits, computed = _embedded(
                records, model, old.fingerprint, store, switching, show_progress)
        else:
            vectors, hits = _from_cache(records, store, old.dim, show_progress)
            keys = [r.cache_key for r in records]
            fingerprint, computed = old.fingerprint, 0
        fresh = VectorIndex(vectors.shape[1] if len(vectors) else old.dim, metric=metric,
                            factory=factory, fingerprint=fingerprint)
    finally:
        old.close()
    try:
        if records:
            fresh.train(vectors)
            for part in progress(list(slices(range(len(records)), 50_000)), desc="indexing",
                                 unit="batch", enabled=show_progress):
                rows = [records[i] for i in part]
                fresh.add(vectors[part.start:part.stop], [r.text for r in rows],
                          [r.metadata for r in rows], ids=[r.id for r in rows],
                          cache_keys=keys[part.start:part.stop])
        fresh.save(index_dir)
    finally:
        fresh.close()
    report = ReindexReport(
        documents=len(records), factory=factory, metric=metric,
        model=fingerprint.model if fingerprint else "", cache_hits=hits, computed=computed,
        seconds=round(time.perf_counter() - started, 3), index=str(index_dir))
    record_run(index_dir, "reindex", report.as_dict())
    return report


def _from_cache(records: list[Record], store_url: str, dim: int,
                show_progress: bool | None) -> tuple[np.ndarray, int]:
    """Every record's vector from the byte store, with zero model calls."""
    codec = VectorCodec(dim)
    matrix = np.empty((len(records), dim), np.float32)
    missing = 0
    with open_store(store_url) as store:
        for part in progress(list(slices(range(len(records)), _READ_BATCH)), desc="reading",
                             unit="batch", enabled=show_progress):
            keys = [records[i].cache_key or "" for i in part]
            block, absent, corrupt = codec.decode_many(store.mget(keys))
            missing += len(absent) + len(corrupt)
            matrix[part.start:part.stop] = block
    if missing:
        raise MissingVectorsError(
            f"{missing} of {len(records)} vectors are not in the cache {store_url}; "
            "nothing was changed. Pass --compute-missing to embed them again "
            "(this needs the model), or point --store at the cache the index was built from",
            missing,
        )
    return matrix, len(records)


def _embedded(records: list[Record], model: Any, current: ModelFingerprint | None,
              store_url: str, switching: bool, show_progress: bool | None,
              ) -> tuple[np.ndarray, list[str | None], ModelFingerprint, int, int]:
    """Vectors through CachedEmbeddings: cache first, the model for the rest."""
    with CachedEmbeddings(model, store_url) as emb:
        if not switching and current is not None and emb.fingerprint != current:
            raise IndexMismatchError(
                f"the index was built with model {current.model}; pass that model with "
                "--model to compute missing vectors"
            )
        texts = [r.text for r in records]
        parts = [emb.embed_documents_array(p) for p in progress(
            list(slices(texts, 1024)), desc="embedding", unit="batch", enabled=show_progress)]
        vectors = np.concatenate(parts) if parts else np.empty((0, emb.dim or 0), np.float32)
        keys: list[str | None] = list(emb.document_keys(texts))
        return vectors, keys, emb.fingerprint, emb.stats.hits, emb.stats.computed
