"""Rebuild an index from cached vectors: a new index type without the model.

The docstore records each document's cache key, so a rebuild reads every
vector back from the byte store and never calls a model. If some vectors are
not in the cache (pruned, or a store that was replaced) the rebuild stops and
says how many, unless ``compute_missing`` is set.

From the cache, the rebuild *streams*: the documents stay in their docstore,
IVF/PQ and transforms such as ``PCA128,HNSW32`` are trained on a random
sample of ``train_size`` cached vectors, and the vectors are then read and
added ``batch_size`` at a time, so the float32 matrix of the whole corpus is
never in memory (1M 384-d vectors would be 1.5 GB). ``layout="ondisk"``
writes IVF inverted lists to a memory-mapped file beside the index instead
of keeping them in RAM (see :mod:`cachedvec.index.builder`).

With ``model=...`` (or ``compute_missing``) the documents go through
:class:`CachedEmbeddings` instead: only vectors that the model's namespace
lacks are computed, and the new index is built in memory.

The new index is written with the same atomic folder swap as every save: a
reader or a crash sees the old index or the new one.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cachedvec.embeddings import CachedEmbeddings
from cachedvec.errors import ConfigError, IndexMismatchError, MissingVectorsError, check_count
from cachedvec.index import DocStore, Record, VectorIndex, read_manifest
from cachedvec.index.builder import (
    DEFAULT_BLOCK_SIZE,
    IndexBuilder,
    open_docstore,
    save_rebuilt,
)
from cachedvec.index.rerank import CacheReader, check_rerank, needless_rerank
from cachedvec.jobs import (
    DEFAULT_INDEX,
    DEFAULT_STORE,
    embed_in_slices,
    index_job,
    progress,
    record_run,
)
from cachedvec.keys import ModelFingerprint
from cachedvec.stores import open_store

DEFAULT_BATCH_SIZE = 20_000
#: Training vectors when ``train_size`` is not given: enough for PQ codebooks
#: (256 centroids per sub-quantizer) and at least 40 per IVF list.
DEFAULT_TRAIN_SIZE = 65_536
_VECTORS_PER_LIST = 40
#: Candidates per result that PQ indexes re-rank from the cache by default
#: (``reindex(rerank=None)``); measured in docs/scaling.md.
DEFAULT_PQ_RERANK = 4
# A PQ code stage anywhere in a factory ("IVF1024,PQ192np", "OPQ16,IVF256,PQ16",
# "HNSW32_PQ16"); OPQ alone is a rotation, not codes.
_PQ_STAGE = re.compile(r"(?:^|[,_])PQ\d")


@dataclass
class ReindexReport:
    documents: int = 0
    factory: str = ""
    metric: str = ""
    model: str = ""
    cache_hits: int = 0
    computed: int = 0
    #: With a model: documents whose exact text another document also has,
    #: looked up once, so ``documents == cache_hits + computed + duplicates``
    #: (a plain rebuild reads every document's vector: ``cache_hits == documents``).
    duplicates: int = 0
    seconds: float = 0.0
    index: str = ""
    streamed: bool = False  # built batch by batch from the cache
    layout: str = "memory"
    trained_on: int = 0  # vectors in the training sample (0: nothing to train)
    rerank: int | None = None  # candidates per result re-ranked from the cache (None: off)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ivf_lists(n: int) -> int:
    """About ``sqrt(n)`` inverted lists, a power of two, at least 16."""
    return max(16, 1 << round(np.log2(max(n, 1)) / 2))


def large_index_factory(n: int) -> str:
    """The factory we recommend for a streaming rebuild of ``n`` vectors (docs/scaling.md).

    IVF with about ``sqrt(n)`` lists, each vector stored as 8-bit scalar
    codes (one byte per dimension, 4x smaller than float32). On the
    1M-vector benchmark (``bench/scale_bench.py``) it kept 10-recall@10 at
    0.975 with the default nprobe, where the finest 8-bit IVF-PQ
    (:func:`ivf_pq_factory`, half the size) reached 0.897 alone: PQ's error
    reorders near-tied neighbours, and probing more lists does not help
    (re-ranked from the cache, PQ's default, it reached 0.988). It also
    built and searched faster than the PQ index.
    """
    return f"IVF{_ivf_lists(n)},SQ8"


def ivf_pq_factory(n: int, dim: int) -> str:
    """The most compact IVF-PQ factory we measured for ``n`` vectors of ``dim``.

    The lists of :func:`large_index_factory` and one PQ byte per two
    dimensions (8x smaller than float32). On the 1M-vector benchmark it
    found the true nearest neighbour in the top 10 for 99.6% of queries,
    but alone only 0.897-0.900 of the exact top 10 (the 0.90 target); use
    it when the index must be half the size of :func:`large_index_factory`'s.
    ``np``:
    no polysemous training, which costs minutes and only helps a search mode
    cachedvec does not use.

    :func:`reindex` gives PQ indexes exact re-ranking from the cache by
    default (``DEFAULT_PQ_RERANK`` candidates per result, read back from the
    cache when a store is attached, see :mod:`cachedvec.index.rerank`); with
    it the same benchmark reached 0.988 at 220 queries/s, against 0.900 at
    251 without (docs/scaling.md).
    """
    m = dim // 2 if dim % 2 == 0 else dim
    return f"IVF{_ivf_lists(n)},PQ{m}np"


def _rerank_for(rerank: int | bool | None, factory: str, exact: bool) -> int | None:
    """``reindex``'s ``rerank`` argument, resolved for the factory being built.

    ``exact``: the new index already scores with the float32 vectors (flat
    storage), so re-ranking would change nothing. A factor asked for such an
    index is refused, as ``nprobe`` is for a non-IVF one: saved and reported,
    it would claim a re-ranking that no search does.
    """
    if rerank is None:
        return default_rerank(factory)
    if rerank is False:
        return None
    factor = check_rerank(rerank)
    if exact:
        raise needless_rerank(factory)
    return factor


def default_rerank(factory: str) -> int | None:
    """The re-rank factor a rebuild into ``factory`` gets unless told otherwise.

    PQ codes reorder near-tied neighbours (the reason :func:`ivf_pq_factory`
    missed 0.90), so PQ indexes re-rank ``DEFAULT_PQ_RERANK`` candidates per
    result from the cache; other indexes do not re-rank.
    """
    return DEFAULT_PQ_RERANK if _PQ_STAGE.search(factory) else None


def reindex(
    index: str | os.PathLike[str] = DEFAULT_INDEX,
    *,
    factory: str | None = None,
    metric: str | None = None,
    store: str = DEFAULT_STORE,
    model: Any = None,
    compute_missing: bool = False,
    show_progress: bool | None = None,
    layout: str = "memory",
    batch_size: int = DEFAULT_BATCH_SIZE,
    train_size: int | None = None,
    nprobe: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    rerank: int | bool | None = None,
) -> ReindexReport:
    """Rebuild the index at ``index`` from the cache (see the module docs).

    ``factory``/``metric`` default to the current ones. ``model`` switches
    the index to another model. Raises :class:`MissingVectorsError` when
    vectors are missing and ``compute_missing`` is false (nothing changes).

    Streaming options (rebuilds from the cache only): ``layout`` is
    ``"memory"`` or ``"ondisk"`` (IVF only: inverted lists in a memory-mapped
    file, written in blocks of ``block_size`` vectors); ``batch_size``
    vectors are read from the store at a time; ``train_size`` vectors
    (default: 65,536, or 40 per IVF list if more) are sampled for training;
    ``nprobe`` sets the IVF lists searched per query.

    ``rerank``: candidates per result that searches re-score exactly from
    the cache (saved with the index; used when the index is opened with its
    store, as ``cachedvec query`` and :class:`CachedVectorStore` do).
    ``None``: :func:`default_rerank` of the new factory (PQ indexes re-rank);
    ``False``: no re-ranking. A factor for a factory that already scores
    exactly (``Flat``, ``IVF...,Flat``, ``HNSW32``) raises :class:`ConfigError`.
    """
    started = time.perf_counter()
    index_dir = Path(index)
    if rerank is not False:
        check_rerank(rerank)  # refuse a bad factor before any work
    for name, value in (("batch_size", batch_size), ("train_size", train_size), ("nprobe", nprobe)):
        if value is not None:
            check_count(name, value)
    if (model is not None or compute_missing) and layout != "memory":
        raise ConfigError(
            "the on-disk layout streams vectors from the cache: first rebuild with "
            "--model/--compute-missing, then again with --layout ondisk"
        )
    if not (index_dir / "manifest.json").exists():
        read_manifest(index_dir)  # its error, before the job lock leaves a file beside the folder
    with index_job(index_dir):
        if model is not None or compute_missing:
            report = _rebuild_with_model(
                index_dir,
                factory,
                metric,
                store,
                model,
                compute_missing,
                nprobe,
                show_progress,
                rerank,
            )
        else:
            report = _stream_from_cache(
                index_dir,
                factory,
                metric,
                store,
                layout,
                batch_size,
                train_size,
                nprobe,
                block_size,
                show_progress,
                rerank,
            )
    report.seconds = round(time.perf_counter() - started, 3)
    report.index = str(index_dir)
    record_run(index_dir, "reindex", report.as_dict())
    return report


def _stream_from_cache(
    index_dir: Path,
    factory: str | None,
    metric: str | None,
    store_url: str,
    layout: str,
    batch_size: int,
    train_size: int | None,
    nprobe: int | None,
    block_size: int,
    show_progress: bool | None,
    rerank: int | bool | None,
) -> ReindexReport:
    """Keep the docstore; build a new FAISS index from cached vectors, batch by batch."""
    docstore, manifest = open_docstore(index_dir)
    try:
        factory, metric = factory or manifest.factory, metric or manifest.metric
        n = len(docstore)
        with (
            IndexBuilder(
                manifest.dim,
                metric=metric,
                factory=factory,
                layout=layout,
                folder=index_dir,
                block_size=block_size,
                nprobe=nprobe,
            ) as builder,
            # Only read from: a mistyped URL must not become a new, empty cache.
            open_store(store_url, create=False) as store,
        ):
            factor = _rerank_for(rerank, factory, builder.scores_exactly)
            reader = _CacheReader(store, manifest.dim)
            trained_on = 0
            if builder.needs_training and n:
                wanted = train_size or max(DEFAULT_TRAIN_SIZE, _VECTORS_PER_LIST * builder.nlist)
                sample = reader.sample(docstore, min(wanted, n))
                if not reader.missing:
                    builder.train(sample)
                    trained_on = len(sample)
                del sample
            # A miss means nothing will be saved: the rest is only read to count
            # the misses (so the error says how many), never added.
            complete, reader.missing = not reader.missing, 0
            batches = progress(
                _key_batches(docstore, batch_size),
                total=-(-n // batch_size),
                desc="indexing",
                unit="batch",
                enabled=show_progress,
            )
            for vector_ids, keys in batches:
                vectors = reader.read(keys)
                if complete and not reader.missing:
                    builder.add(vectors, vector_ids)
            if reader.missing:
                _raise_missing(reader.missing, n, store_url)
            built = builder.finish()
            save_rebuilt(
                index_dir,
                built,
                docstore,
                fingerprint=manifest.fingerprint,
                lists_file=builder.lists_file,
                rerank=factor,
            )
    finally:
        docstore.close()
    fingerprint = manifest.fingerprint or {}
    return ReindexReport(
        documents=n,
        factory=factory,
        metric=metric,
        model=str(fingerprint.get("model", "")),
        cache_hits=n,
        computed=0,
        streamed=True,
        layout=layout,
        trained_on=trained_on,
        rerank=factor,
    )


class _CacheReader(CacheReader):
    """The index package's cache reader, plus a random training sample."""

    def sample(self, docstore: DocStore, size: int, seed: int = 0) -> np.ndarray:
        """``size`` vectors of documents drawn uniformly at random (one docstore pass)."""
        chosen = np.sort(np.random.default_rng(seed).choice(len(docstore), size, replace=False))
        keys: list[str] = []
        position = 0
        for _vector_ids, batch_keys in _key_batches(docstore, 50_000):
            end = position + len(batch_keys)
            left, right = np.searchsorted(chosen, [position, end])
            keys += [batch_keys[i - position] for i in chosen[left:right]]
            position = end
        return self.read(keys)


def _key_batches(docstore: DocStore, size: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """``(vector ids, cache keys)`` of every document, ``size`` at a time, in id order."""
    ids: list[int] = []
    keys: list[str] = []
    for record in docstore.iter_records():
        ids.append(record.vector_id)
        keys.append(record.cache_key or "")  # no key: never in the cache, so missing
        if len(ids) == size:
            yield np.array(ids, dtype=np.int64), keys
            ids, keys = [], []
    if ids:
        yield np.array(ids, dtype=np.int64), keys


def _raise_missing(missing: int, total: int, store_url: str) -> None:
    raise MissingVectorsError(
        f"{missing} of {total} vectors are not in the cache {store_url}; "
        "nothing was changed. Pass --compute-missing to embed them again "
        "(this needs the model), or point --store at the cache the index was built from",
        missing,
    )


def _rebuild_with_model(
    index_dir: Path,
    factory: str | None,
    metric: str | None,
    store: str,
    model: Any,
    compute_missing: bool,
    nprobe: int | None,
    show_progress: bool | None,
    rerank: int | bool | None,
) -> ReindexReport:
    """Vectors through the model's cache (computing what it lacks), built in memory."""
    old = VectorIndex.load(index_dir)
    try:
        records = list(old.records())
        factory, metric = factory or old.factory, metric or old.metric
        vectors, keys, fingerprint, hits, computed = _embedded(
            records, model, old.fingerprint, store, model is not None, show_progress
        )
        fresh = VectorIndex(
            vectors.shape[1] if len(vectors) else old.dim,
            metric=metric,
            factory=factory,
            fingerprint=fingerprint,
            nprobe=nprobe,
        )
    finally:
        old.close()
    try:
        fresh.rerank = factor = _rerank_for(rerank, factory, fresh.scores_exactly)
        trained_on = 0
        if records:
            if fresh.needs_training:  # IVF/PQ/transforms: on every vector, in memory
                fresh.train(vectors)
                trained_on = len(vectors)
            starts = range(0, len(records), 50_000)
            for start in progress(starts, desc="indexing", unit="batch", enabled=show_progress):
                stop = start + 50_000
                rows = records[start:stop]
                fresh.add(
                    vectors[start:stop],
                    [r.text for r in rows],
                    [r.metadata for r in rows],
                    ids=[r.id for r in rows],
                    cache_keys=keys[start:stop],
                )
        fresh.save(index_dir)
    finally:
        fresh.close()
    return ReindexReport(
        documents=len(records),
        factory=factory,
        metric=metric,
        model=fingerprint.model,
        cache_hits=hits,
        computed=computed,
        duplicates=len(records) - hits - computed,
        trained_on=trained_on,
        rerank=factor,
    )


def _embedded(
    records: list[Record],
    model: Any,
    current: ModelFingerprint | None,
    store_url: str,
    switching: bool,
    show_progress: bool | None,
) -> tuple[np.ndarray, list[str | None], ModelFingerprint, int, int]:
    """Vectors through CachedEmbeddings: cache first, the model for the rest."""
    with CachedEmbeddings(model, store_url) as emb:
        if not switching and current is not None and emb.fingerprint != current:
            raise IndexMismatchError(
                f"the index was built with model {current.model}; pass that model with "
                "--model to compute missing vectors"
            )
        texts = [r.text for r in records]
        vectors = embed_in_slices(emb, texts, 1024, show_progress)
        keys: list[str | None] = list(emb.document_keys(texts))
        return vectors, keys, emb.fingerprint, emb.stats.hits, emb.stats.computed
