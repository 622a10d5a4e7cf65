"""A FAISS index and its SQLite docstore, kept in step as one object.

Every change runs in one docstore transaction that also covers the FAISS
call: rows are written first, FAISS second, and if FAISS fails the rows roll
back (and any vectors it took are taken out again), so the two never
disagree. Vector ids come from a counter that only grows, so an id is never
reused, not even one rolled back or tombstoned.

Upsert: adding an id that exists replaces it: the new vector gets a new
vector id and the old one is removed (or tombstoned) in the same step.

Filtered search over-fetches: it asks FAISS for more candidates than ``k``,
keeps those whose metadata match, and grows the request from the observed
match rate until ``k`` match. When a filter is so selective that this would
mean scanning a large part of the index anyway, it evaluates the filter on
every document and scores the matches exactly. Either way ``k`` results
come back whenever ``k`` documents match.

Re-ranking from the cache (opt in: ``rerank=N`` and :meth:`attach_cache`):
FAISS is asked for ``k * N`` candidates (at least 32, at most every
document), in the one place both search paths go through
(:meth:`_candidates`), and :mod:`cachedvec.index.rerank` scores
them exactly with the vectors the cache holds under their cache keys. The
factor is saved with the index; the store is not: an index opened without
one (a bare :meth:`VectorIndex.load`) searches without re-ranking.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from cachedvec.errors import ConfigError, IndexCorruptError, check_count
from cachedvec.index import persist
from cachedvec.index.docstore import DocStore, Record, parse_metadata
from cachedvec.index.faiss_index import FaissIndex, Ids, Matrix
from cachedvec.index.filters import Filter, Predicate, compile_filter
from cachedvec.index.mmr import mmr_select
from cachedvec.index.rerank import (
    CacheReranker,
    candidate_pool,
    check_rerank,
    scores_exactly,
)
from cachedvec.index.rwlock import ReadWriteLock
from cachedvec.keys import ModelFingerprint

_EXACT_CHUNK = 16_384


class Hit(NamedTuple):
    """One search result. ``score``: similarity (cosine, ip) or squared distance (l2;
    bits apart for LSH, docs/index.md).

    A named tuple: built for every result of every search, it must be cheap.
    """

    id: str
    text: str
    metadata: dict[str, Any]
    score: float


@dataclass(frozen=True)
class DeleteResult:
    """What a delete did: ids removed, and ids that were not there (a no-op)."""

    deleted: list[str]
    missing: list[str]


class VectorIndex:
    """Vectors in FAISS, documents in SQLite, one consistent whole.

    ``metric`` is ``"cosine"`` (default), ``"ip"`` or ``"l2"``; ``factory``
    any FAISS factory string (``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``,
    ``"OPQ16,IVF1024,PQ16"``...). Indexes that need training are trained on
    the first batch added (or call :meth:`train` with a sample first).
    ``ef_search`` (HNSW) and ``nprobe`` (IVF) trade speed for recall.
    ``rerank``: candidates per result re-scored exactly from the cache once a
    store is attached (:meth:`attach_cache`), at least 32 per query
    (``rerank.MIN_CANDIDATES``, so ``k=1`` is not left with a handful); for
    compressed (PQ, SQ) indexes, ignored by flat ones, which already score
    exactly.
    """

    def __init__(
        self,
        dim: int,
        *,
        metric: str = "cosine",
        factory: str = "Flat",
        fingerprint: ModelFingerprint | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        rerank: int | None = None,
    ) -> None:
        self._faiss = FaissIndex(dim, metric, factory, ef_search=ef_search, nprobe=nprobe)
        self._rerank = check_rerank(rerank)
        self._reranker: CacheReranker | None = None
        self._docs = DocStore()
        self._count = 0
        self._next_vector_id = 0
        self.fingerprint = fingerprint
        self._lock = ReadWriteLock()
        self._closed = False

    # -- properties --------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._faiss.dim

    @property
    def metric(self) -> str:
        return self._faiss.metric

    @property
    def factory(self) -> str:
        return self._faiss.factory

    @property
    def ef_search(self) -> int | None:
        return self._faiss.ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._faiss.ef_search = value

    @property
    def nprobe(self) -> int | None:
        return self._faiss.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._faiss.nprobe = value

    @property
    def rerank(self) -> int | None:
        """Candidates fetched per result for exact re-ranking (``None``: off); saved."""
        return self._rerank

    @rerank.setter
    def rerank(self, value: int | None) -> None:
        self._rerank = check_rerank(value)

    def attach_cache(self, store: Any) -> None:
        """Re-rank from this byte store (the cache the vectors were stored in); None detaches.

        Only the store's ``mget`` is used; the caller keeps owning (and closes) it.
        """
        self._reranker = None if store is None else CacheReranker(store, self.dim)

    @property
    def scores_exactly(self) -> bool:
        """Whether FAISS already scores with the exact vectors (flat storage): never re-ranked."""
        return scores_exactly(self._faiss.faiss_index)

    @property
    def reranking(self) -> bool:
        """Whether searches re-rank now: a factor, a store, and an index that is not exact."""
        return self._active_reranker() is not None

    def _active_reranker(self) -> CacheReranker | None:
        if self._rerank is None or self._reranker is None or self.scores_exactly:
            return None
        return self._reranker

    @property
    def needs_training(self) -> bool:
        """True until IVF/PQ/transforms are trained (by :meth:`train` or the first add)."""
        return not self._faiss.is_trained

    @property
    def tombstones(self) -> int:
        """Deleted vectors still inside a graph index; :meth:`compact` drops them."""
        return self._faiss.tombstones

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"VectorIndex(dim={self.dim}, metric={self.metric!r}, factory={self.factory!r}, "
            f"documents={self._count})"
        )

    # -- writes ------------------------------------------------------------------

    def train(self, vectors: npt.ArrayLike) -> None:
        """Train IVF/PQ/transforms on a sample, before the first add.

        Refused once the index holds vectors: FAISS would retrain the
        codebooks under codes already stored with the old ones, and searches
        would silently return the wrong documents. :meth:`rebuild` retrains.
        """
        matrix = self._faiss.prepare(vectors, "training vectors")
        with self._lock.write():
            self._check_open()
            if self._faiss.ntotal:
                raise ConfigError(
                    f"train before the first add: this index already holds "
                    f"{self._faiss.ntotal} vectors, whose codes new training would garble; "
                    "rebuild() retrains on the stored vectors"
                )
            self._faiss.train(matrix)

    def add(
        self,
        vectors: npt.ArrayLike,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        cache_keys: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Add or replace documents with their vectors; returns their ids.

        Ids that exist are replaced (upsert); missing ids (``None``) get a
        random 128-bit hex id. On any error nothing changes.
        """
        texts = _strings("texts", texts)
        n = len(texts)
        matrix = self._faiss.prepare(vectors)
        if len(matrix) != n:
            raise ConfigError(f"got {len(matrix)} vectors for {n} texts")
        if self.metric == "cosine":
            zero = _directionless(matrix)
            if len(zero):
                text = texts[zero[0]]
                raise ConfigError(
                    f"vectors[{zero[0]}] (for text {text[:40]!r}{'...' if len(text) > 40 else ''}) "
                    "is a zero vector (or too small to normalise): cosine cannot compare it "
                    "with anything; leave the text out or use metric 'ip' or 'l2'"
                )
        metadata_list = [m or {} for m in _same_length("metadatas", metadatas, n, default={})]
        key_list = _same_length("cache_keys", cache_keys, n, default=None)
        for i, key in enumerate(key_list):
            if key is not None and not isinstance(key, str):
                raise ConfigError(f"cache_keys[{i}] is {type(key).__name__}, expected str or None")
        id_list = _document_ids(ids, n)
        if n == 0:
            return []
        with self._lock.write():
            self._check_open()
            if not self._faiss.is_trained:
                self._faiss.train(matrix)
            new_ids = np.arange(self._next_vector_id, self._next_vector_id + n, dtype=np.int64)
            self._next_vector_id += n
            with self._docs.transaction():
                replaced = self._docs.vector_ids_of(id_list)
                old_ids = np.fromiter(replaced.values(), dtype=np.int64, count=len(replaced))
                self._docs.delete(old_ids)
                self._docs.insert(new_ids, id_list, texts, metadata_list, key_list)
                self._faiss.add(matrix, new_ids)  # on error FAISS holds none of them
                try:
                    self._faiss.remove(old_ids)
                except BaseException:
                    self._forget(new_ids)
                    raise
            self._count += n - len(replaced)
        return id_list

    def delete(self, ids: Sequence[str]) -> DeleteResult:
        """Delete documents by id; ids not present are reported, not an error."""
        wanted = list(dict.fromkeys(_strings("ids", ids)))
        with self._lock.write():
            self._check_open()
            found = self._docs.vector_ids_of(wanted)
            if found:
                vector_ids = np.fromiter(found.values(), dtype=np.int64, count=len(found))
                with self._docs.transaction():
                    self._docs.delete(vector_ids)
                    self._faiss.remove(vector_ids)
                self._count -= len(found)
        return DeleteResult(
            deleted=[i for i in wanted if i in found],
            missing=[i for i in wanted if i not in found],
        )

    def delete_sources(self, sources: Sequence[str]) -> DeleteResult:
        """Delete every document whose metadata ``source`` is one of ``sources``."""
        wanted = _strings("sources", sources)
        with self._lock.read():
            self._check_open()
            ids = self._docs.ids_of_sources(wanted)
        return self.delete(ids)

    def compact(self) -> None:
        """Rebuild FAISS without tombstones (graph indexes); same factory, same ids."""
        self.rebuild()

    def rebuild(
        self,
        *,
        factory: str | None = None,
        metric: str | None = None,
        vectors: npt.ArrayLike | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> None:
        """Build a fresh FAISS index over the documents, and swap it in.

        ``vectors`` (one row per document, in :meth:`records` order) comes
        from the cache when re-indexing; without it the vectors are read back
        from the current index, which is exact for flat, HNSW and IVF-Flat
        storage but lossy for PQ. IVF/PQ are trained on these vectors. With
        the same factory, ``ef_search``/``nprobe`` default to the current
        ones. On any error the current index stays.
        """
        if factory is None or factory == self.factory:
            factory = self.factory
            ef_search = self.ef_search if ef_search is None else ef_search
            nprobe = self.nprobe if nprobe is None else nprobe
        with self._lock.write():
            self._check_open()
            vector_ids = self._docs.vector_ids()
            fresh = FaissIndex(
                self.dim, metric or self.metric, factory, ef_search=ef_search, nprobe=nprobe
            )
            matrix = fresh.prepare(
                self._faiss.reconstruct(vector_ids) if vectors is None else vectors
            )
            if len(matrix) != len(vector_ids):
                raise ConfigError(
                    f"rebuild got {len(matrix)} vectors for {len(vector_ids)} documents"
                )
            if len(matrix):
                fresh.add(matrix, vector_ids)  # trains first where needed
            self._faiss = fresh

    def clear(self) -> None:
        """Delete every document."""
        with self._lock.write():
            self._check_open()
            fresh = FaissIndex(
                self.dim,
                self.metric,
                self.factory,
                ef_search=self._faiss.ef_search,
                nprobe=self._faiss.nprobe,
            )
            with self._docs.transaction():
                self._docs.clear()
            self._faiss = fresh
            self._count = 0

    def _forget(self, vector_ids: Ids) -> None:
        # Best effort on the error path: the original error is what matters.
        with suppress(Exception):
            self._faiss.remove(vector_ids)

    # -- reads -------------------------------------------------------------------

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records of the ids that exist, in the order asked (each once)."""
        wanted = _strings("ids", ids)
        with self._lock.read():
            self._check_open()
            return self._docs.records(wanted)

    def get_vectors(self, ids: Sequence[str]) -> tuple[Matrix, list[int]]:
        """``(vectors of the ids found, positions of the ids not found)``.

        Vectors are as stored: normalised for cosine, decoded for PQ.
        """
        ids = _strings("ids", ids)
        with self._lock.read():
            self._check_open()
            found = self._docs.vector_ids_of(ids)
            positions = [p for p, i in enumerate(ids) if i in found]
            vector_ids = np.array([found[ids[p]] for p in positions], dtype=np.int64)
            matrix = self._faiss.reconstruct(vector_ids)
        missing = [p for p, i in enumerate(ids) if i not in found]
        return matrix, missing

    def records(self) -> Iterator[Record]:
        """Every record, in vector id order (the order :meth:`rebuild` expects).

        Streamed in batches, so a change made while iterating may or may not
        show; re-indexing jobs iterate while nothing else writes.
        """
        self._check_open()
        return self._docs.iter_records()

    def sources(self) -> list[str]:
        """Distinct metadata ``source`` values."""
        with self._lock.read():
            self._check_open()
            return self._docs.sources()

    # -- search -------------------------------------------------------------------

    def search(
        self,
        query: npt.ArrayLike,
        k: int = 4,
        *,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        fetch_k: int | None = None,
    ) -> list[Hit]:
        """The ``k`` nearest documents to one query vector, closest first."""
        matrix = self._queries(query, "query")
        if len(matrix) != 1:
            raise ConfigError(f"search takes one query vector, got {len(matrix)}")
        return self._search(matrix, k, filter, score_threshold, fetch_k)[0]

    def search_batch(
        self,
        queries: npt.ArrayLike,
        k: int = 4,
        *,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        fetch_k: int | None = None,
    ) -> list[list[Hit]]:
        """One result list per query row, computed in one FAISS call."""
        matrix = self._queries(queries, "queries")
        return self._search(matrix, k, filter, score_threshold, fetch_k)

    def mmr_search(
        self,
        query: npt.ArrayLike,
        k: int = 4,
        *,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | None = None,
    ) -> list[Hit]:
        """Maximal marginal relevance over the ``fetch_k`` nearest matches."""
        fetch_k, predicate = check_mmr_options(k, fetch_k, lambda_mult, filter)
        matrix = self._queries(query, "query")
        if len(matrix) != 1:
            raise ConfigError(f"mmr_search takes one query vector, got {len(matrix)}")
        with self._lock.read():
            self._check_open()
            scores, vector_ids = self._candidates(matrix, fetch_k, predicate, None)
            valid = vector_ids[0] >= 0
            vector_ids, scores = vector_ids[:, valid], scores[:, valid]
            picks = mmr_select(matrix[0], self._faiss.reconstruct(vector_ids[0]), k, lambda_mult)
            return self._hits(scores[:, picks], vector_ids[:, picks], None)[0]

    def _queries(self, queries: npt.ArrayLike, what: str) -> Matrix:
        """Query rows prepared for FAISS; under cosine a zero row is refused.

        A zero vector has no direction, so every cosine score is 0 and the
        "nearest" documents would be arbitrary. Normalising leaves such a row
        (or one too small to normalise in float32) short of unit length.
        """
        matrix = self._faiss.prepare(queries, what)
        if self.metric == "cosine":
            short = _directionless(matrix)
            if len(short):
                raise ConfigError(
                    f"{what}[{short[0]}] is a zero vector (or too small to normalise): it has no "
                    "direction to compare by cosine"
                )
        return matrix

    def _search(
        self,
        matrix: Matrix,
        k: int,
        filter: Filter | None,
        score_threshold: float | None,
        fetch_k: int | None,
    ) -> list[list[Hit]]:
        predicate = check_search_options(k, filter, fetch_k, score_threshold)
        with self._lock.read():
            self._check_open()
            scores, vector_ids = self._candidates(matrix, k, predicate, fetch_k)
            return self._hits(scores, vector_ids, score_threshold)

    def _candidates(
        self, matrix: Matrix, k: int, predicate: Predicate | None, fetch_k: int | None
    ) -> tuple[Matrix, Ids]:
        """Top-k ``(scores, vector ids)`` per query, -1 padded; under the read lock.

        With re-ranking, both paths collect ``k * factor`` candidates, at
        least ``MIN_CANDIDATES`` (matching the filter, if any; see
        :func:`~cachedvec.index.rerank.candidate_pool`), and the exact scores
        pick the ``k``.
        """
        if self._count == 0:
            empty = np.empty((len(matrix), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        reranker = self._active_reranker()
        # Never more than exist: result arrays are allocated k wide, and a
        # huge k (``k=len(everything)`` on a guess) must not become terabytes.
        if reranker is None or not self._rerank:
            wanted = min(k, self._count)
        else:
            wanted = candidate_pool(k, self._rerank, self._count)
        if predicate is None:
            scores, ids = self._unfiltered(matrix, wanted)
        else:
            scores, ids = self._filtered(matrix, wanted, predicate, fetch_k)
        if reranker is None:
            return scores, ids
        return reranker.rerank(
            matrix, ids, self._docs.cache_keys_of, k, self.metric, self._faiss.reconstruct
        )

    def _unfiltered(self, matrix: Matrix, k: int) -> tuple[Matrix, Ids]:
        scores, ids = self._faiss.search(matrix, k)
        # A graph walk among many tombstones, or IVF probes over short lists,
        # can come back with fewer than k: score those queries exactly.
        short = np.flatnonzero((ids < 0).any(axis=1))
        if len(short):
            scores[short], ids[short] = self._exact(matrix[short], k, self._docs.vector_ids())
        return scores, ids

    def _filtered(
        self, matrix: Matrix, k: int, predicate: Predicate, fetch_k: int | None
    ) -> tuple[Matrix, Ids]:
        live = self._count
        out_scores = np.full((len(matrix), k), np.nan, dtype=np.float32)
        out_ids = np.full((len(matrix), k), -1, dtype=np.int64)
        verdicts: dict[int, bool] = {}
        pending = np.arange(len(matrix))
        # Candidates are cheap next to the scan that finds them (a flat index
        # reads every vector whatever k is), so the first round asks for
        # enough that a filter matching one document in ten needs no second.
        fetch = min(live, max(fetch_k or 0, 16 * k, 100))
        # Past this many candidates, testing every document's metadata once
        # costs about as much as another round, and is exact.
        scan_limit = max(4 * k, live // 8)
        while True:
            scores, ids = self._faiss.search(matrix[pending], fetch)
            passed = self._judge(ids, predicate, verdicts)
            matched = passed.sum(axis=1)
            done = matched >= k
            if fetch >= live:  # a search that asked for everything and got it is complete
                done |= (ids >= 0).all(axis=1)
            for row in np.flatnonzero(done):
                columns = np.flatnonzero(passed[row])[:k]
                out_ids[pending[row], : len(columns)] = ids[row, columns]
                out_scores[pending[row], : len(columns)] = scores[row, columns]
            short = ~done
            pending = pending[short]
            if len(pending) == 0:
                return out_scores, out_ids
            if fetch >= live:  # asked for every vector and still short: go exact
                break
            seen = int((ids[short] >= 0).sum())
            rate = max(int(matched[short].sum()), 1) / max(seen, 1)
            fetch = min(live, max(2 * fetch, math.ceil(1.5 * k / rate)))
            if fetch > scan_limit:
                break
        scores, ids = self._exact(matrix[pending], k, self._matching(predicate))
        out_scores[pending, : ids.shape[1]] = scores
        out_ids[pending, : ids.shape[1]] = ids
        return out_scores, out_ids

    def _judge(
        self, ids: Ids, predicate: Predicate, verdicts: dict[int, bool]
    ) -> npt.NDArray[np.bool_]:
        """Which candidates pass the filter; metadata read once per vector id."""
        flat = ids.ravel().tolist()
        unknown = list({v for v in flat if v >= 0 and v not in verdicts})
        if unknown:
            metadata = self._docs.metadata_of(unknown)
            for vector_id in unknown:
                text = metadata.get(vector_id)
                verdicts[vector_id] = text is not None and predicate(parse_metadata(text))
        passed = [v >= 0 and verdicts[v] for v in flat]
        return np.array(passed, dtype=bool).reshape(ids.shape)

    def _matching(self, predicate: Predicate) -> Ids:
        """Vector ids of every document whose metadata passes the filter."""
        return np.array(
            [
                vector_id
                for batch in self._docs.iter_metadata()
                for vector_id, text in batch
                if predicate(parse_metadata(text))
            ],
            dtype=np.int64,
        )

    def _exact(self, queries: Matrix, k: int, candidates: Ids) -> tuple[Matrix, Ids]:
        """Brute-force top-k of ``queries`` among ``candidates``, -1 padded to k."""
        best_scores = np.empty((len(queries), 0), dtype=np.float32)
        best_ids = np.empty((len(queries), 0), dtype=np.int64)
        closer_is_lower = self.metric == "l2"
        for start in range(0, len(candidates), _EXACT_CHUNK):
            chunk_ids = candidates[start : start + _EXACT_CHUNK]
            vectors = self._faiss.reconstruct(chunk_ids)
            if closer_is_lower:
                chunk = (
                    (queries**2).sum(1)[:, None]
                    - 2 * queries @ vectors.T
                    + (vectors**2).sum(1)[None, :]
                )
            else:
                chunk = queries @ vectors.T
            scores = np.concatenate([best_scores, chunk.astype(np.float32)], axis=1)
            ids = np.concatenate([best_ids, np.broadcast_to(chunk_ids, chunk.shape)], axis=1)
            order = np.argsort(scores if closer_is_lower else -scores, axis=1, kind="stable")
            order = order[:, :k]
            best_scores = np.take_along_axis(scores, order, axis=1)
            best_ids = np.take_along_axis(ids, order, axis=1)
        missing = k - best_ids.shape[1]
        if missing > 0:
            best_scores = np.pad(best_scores, ((0, 0), (0, missing)), constant_values=np.nan)
            best_ids = np.pad(best_ids, ((0, 0), (0, missing)), constant_values=-1)
        return best_scores, best_ids

    def _hits(
        self, scores: Matrix, vector_ids: Ids, score_threshold: float | None
    ) -> list[list[Hit]]:
        keep = vector_ids >= 0
        if score_threshold is not None:
            keep &= scores <= score_threshold if self.metric == "l2" else scores >= score_threshold
        found = vector_ids[keep].tolist()
        rows = self._docs.hits(found) if found else {}
        loads = parse_metadata
        results = []
        for row_scores, row_ids, row_keep in zip(
            scores.tolist(), vector_ids.tolist(), keep.tolist(), strict=True
        ):
            hits = []
            for score, vector_id, kept in zip(row_scores, row_ids, row_keep, strict=True):
                row = rows.get(vector_id) if kept else None
                if row is not None:  # None only for padding or a failed threshold
                    hits.append(Hit(row[0], row[1], loads(row[2]), score))
            results.append(hits)
        return results

    # -- files ---------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> persist.Manifest:
        """Write the folder (FAISS file, SQLite, manifest) and swap it in atomically."""
        with self._lock.read():
            self._check_open()
            faiss_index = self._faiss
            lists = faiss_index.lists_file
            if lists is not None and lists.parent.resolve() != Path(path).resolve():
                # The FAISS file names its lists file by absolute path: a copy
                # saved elsewhere would depend on this folder, and break when
                # a rebuild here deletes that file.
                raise ConfigError(
                    f"an on-disk index can only be saved to its own folder {lists.parent}, "
                    f"not {path}: its inverted lists stay in {lists.name} there; "
                    "rebuild it into the new folder instead"
                )
            return persist.save_folder(
                path,
                index=faiss_index.faiss_index,
                docstore=self._docs,
                dim=self.dim,
                metric=self.metric,
                factory=self.factory,
                search=_search_settings(faiss_index, self._rerank),
                fingerprint=self.fingerprint.to_dict() if self.fingerprint else None,
                counts={
                    "documents": self._count,
                    "vectors": faiss_index.ntotal,
                    "tombstones": faiss_index.tombstones,
                },
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        fingerprint: ModelFingerprint | None = None,
        dim: int | None = None,
        cache: Any = None,
    ) -> VectorIndex:
        """Open a saved folder, verified; refuses another model or dimension.

        ``cache``: the byte store holding the documents' vectors; with it, a
        saved ``rerank`` setting re-ranks searches (:meth:`attach_cache`).
        Without it the index searches without re-ranking.

        Raises :class:`IndexCorruptError` for a damaged folder and
        :class:`IndexMismatchError` for one built by another model, another
        dimension, or a newer cachedvec.
        """
        index, docstore, manifest = persist.load_folder(
            path, fingerprint=fingerprint.to_dict() if fingerprint else None, dim=dim
        )
        try:
            opened = cls._adopt(index, docstore, manifest, path)
            opened.attach_cache(cache)
            return opened
        except BaseException:
            docstore.close()
            raise

    @classmethod
    def _adopt(
        cls, index: Any, docstore: DocStore, manifest: persist.Manifest, path: Any
    ) -> VectorIndex:
        search = manifest.search
        try:
            faiss_index = FaissIndex.from_faiss(
                index,
                manifest.metric,
                manifest.factory,
                ef_search=search.get("ef_search"),
                nprobe=search.get("nprobe"),
            )
        except ConfigError as exc:
            raise IndexCorruptError(f"index {path} does not match its manifest: {exc}") from exc
        if faiss_index.dim != manifest.dim:
            raise IndexCorruptError(
                f"index {path}: FAISS holds {faiss_index.dim}-d vectors, manifest says "
                f"{manifest.dim}"
            )
        stored = np.sort(faiss_index.stored_ids())
        live = docstore.vector_ids()  # ascending
        counts = manifest.counts
        # Every live id must be stored: find each in the sorted stored ids.
        where = np.searchsorted(stored, live)
        if (
            len(stored) != counts["vectors"]
            or len(live) != counts["documents"]
            or (len(live) and (where[-1] >= len(stored) or not (stored[where] == live).all()))
        ):
            raise IndexCorruptError(f"index {path}: FAISS and docstore disagree on ids")
        is_live = np.zeros(len(stored), dtype=bool)
        is_live[where] = True
        dead = stored[~is_live]
        if len(dead) != counts["tombstones"]:
            raise IndexCorruptError(f"index {path}: unexpected vectors without documents")
        # Tombstones again, or removed for real now: IVF folders saved before
        # 2026-12-05 tombstoned their deletes too, and load without them.
        faiss_index.remove(dead)
        opened = cls.__new__(cls)
        opened._faiss = faiss_index
        try:
            opened._rerank = check_rerank(search.get("rerank"))
        except ConfigError as exc:
            raise IndexCorruptError(f"index {path}: {exc}") from exc
        opened._reranker = None  # the store is not saved: the opener attaches one
        opened._docs = docstore
        opened._count = len(live)
        opened._next_vector_id = int(max(stored.max(initial=-1), live.max(initial=-1))) + 1
        try:
            opened.fingerprint = (
                ModelFingerprint.from_dict(manifest.fingerprint) if manifest.fingerprint else None
            )
        except ConfigError as exc:
            raise IndexCorruptError(f"index {path}: {exc}") from exc
        opened._lock = ReadWriteLock()
        opened._closed = False
        return opened

    def close(self) -> None:
        """Release the docstore; the object is unusable afterwards (ConfigError)."""
        # Under the write lock, so a search or add in flight finishes first.
        with self._lock.write():
            self._closed = True
            self._docs.close()

    def _check_open(self) -> None:
        # Without this a closed docstore surfaces as "docstore row is damaged"
        # or a raw sqlite3 error: the index is fine, the caller closed it.
        if self._closed:
            raise ConfigError("this index is closed: load it again to use it")

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _search_settings(faiss_index: FaissIndex, rerank: int | None) -> dict[str, int]:
    settings = {}
    if rerank is not None:
        settings["rerank"] = rerank
    if faiss_index.ef_search is not None:
        settings["ef_search"] = faiss_index.ef_search
    if faiss_index.nprobe is not None:
        settings["nprobe"] = faiss_index.nprobe
    return settings


def check_search_options(
    k: Any, filter: Filter | None, fetch_k: Any, score_threshold: Any = None
) -> Predicate | None:
    """Validate a search's options (an empty store checks them too); the compiled filter."""
    _check_k(k)
    if fetch_k is not None:
        _check_k(fetch_k, "fetch_k")
    # Compared with numpy scores: a string would fail deep inside numpy, and
    # NaN would quietly drop every result.
    if score_threshold is not None and (
        isinstance(score_threshold, bool)
        or not isinstance(score_threshold, (int, float, np.integer, np.floating))
        or math.isnan(score_threshold)
    ):
        raise ConfigError(f"score_threshold must be a real number, got {score_threshold!r}")
    return compile_filter(filter)


def check_mmr_options(
    k: Any, fetch_k: Any, lambda_mult: Any, filter: Filter | None
) -> tuple[int, Predicate | None]:
    """Validate an MMR search's options; ``(candidates to fetch, compiled filter)``."""
    _check_k(k)
    fetch_k = max(_check_k(fetch_k, "fetch_k"), k)
    if (
        not isinstance(lambda_mult, numbers.Real)
        or isinstance(lambda_mult, bool)
        or not 0.0 <= float(lambda_mult) <= 1.0
    ):
        raise ConfigError(f"lambda_mult must be a number from 0 to 1, got {lambda_mult!r}")
    return fetch_k, compile_filter(filter)


def _check_k(k: Any, name: str = "k") -> int:
    return check_count(name, k)


def _check_id(value: Any, position: int) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"ids[{position}] is {type(value).__name__}, expected str")
    return value


def _strings(name: str, values: Any) -> list[str]:
    """A list of strings; a lone string is refused, not read as its characters.

    ``delete("doc-1")`` would otherwise delete the documents "d", "o", "c"...
    """
    if isinstance(values, (str, bytes)) or values is None:
        raise ConfigError(f"{name} must be a list of strings, got {type(values).__name__}")
    try:
        items = list(values)
    except TypeError as exc:
        raise ConfigError(f"{name} must be a list of strings: {exc}") from exc
    for position, value in enumerate(items):
        if not isinstance(value, str):
            raise ConfigError(f"{name}[{position}] is {type(value).__name__}, expected str")
    return items


def _directionless(matrix: Matrix) -> npt.NDArray[np.intp]:
    """Rows that normalising left short of unit length: zero, or too small for float32."""
    return np.flatnonzero(np.einsum("ij,ij->i", matrix, matrix) < 0.5)


def _random_ids(n: int) -> list[str]:
    """``n`` random 128-bit ids as 32 hex digits (uuid4().hex costs 5x more)."""
    digits = os.urandom(16 * n).hex()
    return [digits[i : i + 32] for i in range(0, 32 * n, 32)]


def _document_ids(ids: Sequence[str | None] | None, n: int) -> list[str]:
    if ids is None:
        return _random_ids(n)
    if isinstance(ids, (str, bytes)):
        raise ConfigError(f"ids must be a list of strings, got {type(ids).__name__}")
    ids = list(ids)
    if len(ids) != n:
        raise ConfigError(f"got {len(ids)} ids for {n} texts")
    fresh = iter(_random_ids(sum(i is None for i in ids)))
    chosen = [next(fresh) if i is None else _check_id(i, p) for p, i in enumerate(ids)]
    if len(set(chosen)) != n:
        repeated = sorted({i for i in chosen if chosen.count(i) > 1})[:5]
        raise ConfigError(f"ids repeat within one call: {repeated}")
    return chosen


def _same_length(name: str, values: Sequence[Any] | None, n: int, default: Any) -> list[Any]:
    if values is None:
        return [default] * n
    if isinstance(values, (str, bytes, dict)):
        raise ConfigError(
            f"{name} must be a list with one entry per text, got {type(values).__name__}"
        )
    values = list(values)
    if len(values) != n:
        raise ConfigError(f"got {len(values)} {name} for {n} texts")
    return values
