"""Exact re-ranking of approximate candidates with vectors read from the cache.

A compressed index (IVF-PQ stores one byte per two dimensions) ranks by
approximate scores, and its code error reorders near-tied neighbours: on
the 1M-vector benchmark IVF-PQ found 0.897 of the exact top 10, and probing
more lists did not help (docs/scaling.md). The exact float32 vector of every
document is still in the embedding cache under the cache key the docstore
records, so :class:`~cachedvec.index.VectorIndex` can ask FAISS for
``k * factor`` candidates (at least :data:`MIN_CANDIDATES`, at most every
document: :func:`candidate_pool`), read their vectors back from the cache,
score them exactly and keep the best ``k`` (FAISS's ``IndexRefine`` does
the same with the float32 vectors held in RAM, which is what a compressed
index is meant to avoid). The minimum matters for small ``k``: ``k=1``
with the default factor 4 would otherwise re-score only 4 candidates.

A candidate whose vector the cache does not hold (pruned, another store) or
holds damaged keeps the vector the index reconstructs from its codes, so
re-ranking never loses a result, it only scores that one approximately.
Errors of the store itself (a lost connection) are raised: a search that
quietly degrades would hide them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import faiss
import numpy as np

from cachedvec.codec import VectorCodec
from cachedvec.errors import ConfigError

Matrix = np.ndarray
Ids = np.ndarray

log = logging.getLogger(__name__)

#: The fewest candidates a re-ranked search scores exactly, whatever ``k``:
#: ``k * factor`` alone gives a one-result search only ``factor`` of them
#: (4 by default), too few to hold the exact best when PQ's code error
#: reorders near ties. Reading 32 vectors from the cache is one small batch.
MIN_CANDIDATES = 32

_READ_BATCH = 4096
# Candidate rows gathered per scoring step (rows x dim floats): bounds the
# memory of a large batch of queries to ~25 MB at 384 dimensions.
_SCORE_ROWS = 16_384


def candidate_pool(k: int, factor: int, count: int) -> int:
    """Candidates a re-ranked search of ``k`` results fetches per query.

    ``k * factor`` (the factor is "candidates per result"), but at least
    :data:`MIN_CANDIDATES`, and never more than the ``count`` documents held.
    So ``k=1`` sees as many candidates as ``k=8`` with the default factor 4,
    and its answer is the first result of that larger search.
    """
    return min(max(k * factor, MIN_CANDIDATES), count)


def check_rerank(value: Any) -> int | None:
    """A re-rank factor: ``None`` (off) or an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(
            f"rerank must be a positive integer (candidates per result), got {value!r}"
        )
    return int(value)


def needless_rerank(factory: str) -> ConfigError:
    """The error for a re-rank factor asked of an index that scores exactly.

    Accepted, it would be saved or reported as a re-ranking no search does.
    """
    return ConfigError(
        f"rerank applies to compressed indexes (PQ, SQ...), not {factory!r}, which "
        "already scores exactly; drop the rerank factor (--rerank)"
    )


def scores_exactly(index: faiss.Index) -> bool:
    """True when FAISS already scores with the exact float32 vectors (flat storage).

    Re-ranking such an index would read the same vectors again from the
    cache and reproduce its ranking, so it is skipped.
    """
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    return isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexHNSWFlat))


class CacheReader:
    """Reads vectors by cache key from a byte store, counting the ones it lacks."""

    def __init__(self, store: Any, dim: int) -> None:
        self._store = store
        self._codec = VectorCodec(dim)
        self.missing = 0

    def read(self, keys: Sequence[str]) -> Matrix:
        """One row per key; rows of missing or damaged values are zero (and counted)."""
        matrix, found = self.read_found(keys)
        self.missing += int(len(found) - found.sum())
        return matrix

    def read_found(self, keys: Sequence[str]) -> tuple[Matrix, np.ndarray]:
        """``(rows, found)``: ``found[i]`` is False where key ``i`` gave no usable vector."""
        parts, flags = [], []
        for start in range(0, len(keys), _READ_BATCH):
            chunk = list(keys[start : start + _READ_BATCH])
            block, absent, corrupt = self._codec.decode_many(self._store.mget(chunk))
            ok = np.ones(len(chunk), dtype=bool)
            ok[absent] = False
            ok[corrupt] = False
            parts.append(block)
            flags.append(ok)
        if not parts:
            return np.empty((0, self._codec.dim or 0), np.float32), np.empty(0, dtype=bool)
        if len(parts) == 1:
            return parts[0], flags[0]
        return np.concatenate(parts), np.concatenate(flags)


class CacheReranker:
    """Re-scores candidates exactly with vectors read from ``store`` (any byte store).

    ``dim``: the index's dimension. The re-rank factor (candidates fetched
    per result) is a setting of the index, not of this object.
    """

    def __init__(self, store: Any, dim: int) -> None:
        if not callable(getattr(store, "mget", None)):
            raise ConfigError(
                f"re-ranking needs a byte store with mget, got {type(store).__name__}"
            )
        self.store = store
        self._reader = CacheReader(store, dim)
        self.dim = dim
        #: Candidates scored from their index reconstruction (no usable cache entry).
        self.fallbacks = 0

    def vectors(
        self,
        vector_ids: Ids,
        keys: Mapping[int, str | None],
        metric: str,
        reconstruct: Callable[[Ids], Matrix],
    ) -> Matrix:
        """Exact vectors of ``vector_ids``: from the cache, else reconstructed."""
        keyed = [(i, key) for i, v in enumerate(vector_ids.tolist()) if (key := keys.get(v))]
        with_key = [i for i, _ in keyed]
        out = np.empty((len(vector_ids), self.dim), dtype=np.float32)
        found = np.zeros(len(vector_ids), dtype=bool)
        if with_key:
            rows, ok = self._reader.read_found([key for _, key in keyed])
            ok &= np.isfinite(rows).all(axis=1)
            positions = np.asarray(with_key, dtype=np.int64)[ok]
            out[positions] = rows[ok]
            found[positions] = True
            if metric == "cosine" and len(positions):
                # The index holds unit vectors for cosine; the cache, the
                # model's output, which need not be normalised.
                norms = np.linalg.norm(out[positions], axis=1, keepdims=True)
                out[positions] /= np.where(norms > 0, norms, 1)
        lacking = np.flatnonzero(~found)
        if len(lacking):
            if not self.fallbacks:
                # Once per store: the usual cause (an index opened with another
                # or an emptied cache) silently turns re-ranking off.
                log.warning(
                    "re-ranking: %d of %d candidates have no usable vector in the cache, so "
                    "they keep the index's approximate scores (is this the cache the index "
                    "was built from?)",
                    len(lacking),
                    len(vector_ids),
                )
            self.fallbacks += len(lacking)
            out[lacking] = reconstruct(vector_ids[lacking])  # already as the index stores
        return out

    def rerank(
        self,
        queries: Matrix,
        ids: Ids,
        keys_of: Callable[[Sequence[int]], Mapping[int, str | None]],
        k: int,
        metric: str,
        reconstruct: Callable[[Ids], Matrix],
    ) -> tuple[Matrix, Ids]:
        """The best ``k`` of each row's candidates (``ids``, -1 padded), scored exactly.

        ``queries`` are prepared as the index prepares them (unit vectors for
        cosine). Returns ``(scores, ids)`` of width ``min(k, ids.shape[1])``,
        -1/NaN padded: similarities for cosine and ip, squared distances for l2.
        """
        width = min(k, ids.shape[1])
        out_scores = np.full((len(ids), width), np.nan, dtype=np.float32)
        out_ids = np.full((len(ids), width), -1, dtype=np.int64)
        valid = ids >= 0
        if width == 0 or not valid.any():
            return out_scores, out_ids
        unique, inverse = np.unique(ids[valid], return_inverse=True)
        vectors = self.vectors(unique, keys_of(unique.tolist()), metric, reconstruct)
        position = np.zeros(ids.shape, dtype=np.int64)
        position[valid] = inverse
        l2 = metric == "l2"
        scores = np.empty(ids.shape, dtype=np.float32)
        rows = max(1, _SCORE_ROWS // ids.shape[1])
        for start in range(0, len(ids), rows):
            block = slice(start, start + rows)
            gathered = vectors[position[block]]  # (queries, candidates, dim)
            if l2:
                difference = gathered - queries[block, None, :]
                scores[block] = np.einsum("qcd,qcd->qc", difference, difference)
            else:
                scores[block] = np.einsum("qcd,qd->qc", gathered, queries[block])
        # Padding sorts last; a stable sort keeps FAISS's order among exact ties.
        ranked = np.where(valid, scores if l2 else -scores, np.inf)
        order = np.argsort(ranked, axis=1, kind="stable")[:, :width]
        chosen_ids = np.take_along_axis(ids, order, axis=1)
        chosen_scores = np.take_along_axis(scores, order, axis=1)
        keep = chosen_ids >= 0
        out_ids[keep] = chosen_ids[keep]
        out_scores[keep] = chosen_scores[keep]
        return out_scores, out_ids
