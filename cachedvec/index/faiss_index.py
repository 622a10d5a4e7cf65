"""FAISS with stable int64 ids, for any factory string and any of three metrics.

Ids. FAISS numbers vectors 0..n-1 unless told otherwise, and what a removal
does to those numbers depends on the index type (flat indexes shift the ones
after it, IVF lists keep them). So every vector here carries an explicit,
never reused int64 id:

- IVF indexes (also behind a transform such as ``OPQ16,IVF256,PQ16``) store
  ids in their inverted lists, and remove by id natively. They get a
  hash-table direct map so vectors can be read back by id.
- Everything else is wrapped in ``IndexIDMap2``, which keeps an id array next
  to the sub-index and can read vectors back by id.

Removal. Flat, PQ and scalar-quantizer indexes remove for real. Graph
indexes (HNSW, NSG) cannot remove: their ids become *tombstones*, excluded at
search time (an ``IDSelector`` for HNSW, over-fetching otherwise) until the
index is rebuilt. Whether an index removes for real is asked of FAISS itself
once, so new index types need no table here.

Metrics: ``cosine`` normalises every vector and query and uses inner product;
``ip`` is raw inner product; ``l2`` returns squared Euclidean distances, as
FAISS computes them (lower is closer).

Exact search on flat indexes skips FAISS's own search: numpy multiplies the
queries by a zero-copy view of the stored vectors, a block of a few thousand
stored vectors at a time so each block of scores is still in the CPU cache
when FAISS's heaps pick the top k from it. The results are the same; the
speed is not. FAISS scans for a lone query on one thread where numpy's
matrix-vector product uses every core, and its batches synchronise OpenMP
threads that lose badly to other processes on a shared machine, where
numpy's BLAS threads degrade gently (bench/index_bench.py).

Training on fewer vectors than k-means wants (39 per centroid) is allowed,
as in FAISS, but reported as one warning on the ``cachedvec`` logger
instead of FAISS's stderr line per clustering (hundreds for OPQ).

Threads: FAISS's OpenMP threads make one-query searches slower (they split
too little work, and fight other processes for the cores), so a search of a
single query runs on one thread; batches use them all. ``omp_set_num_threads``
acts on the calling thread only, so concurrent searches do not disturb each
other.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np
import numpy.typing as npt

from cachedvec.errors import ConfigError, DimensionError, VectorIndexError

Matrix = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]

log = logging.getLogger(__name__)

METRICS: dict[str, int] = {
    "cosine": faiss.METRIC_INNER_PRODUCT,
    "ip": faiss.METRIC_INNER_PRODUCT,
    "l2": faiss.METRIC_L2,
}
# Defaults chosen so recall@10 >= 0.95 on clustered 384-d embeddings
# (tests/test_index.py checks it); FAISS's own (efSearch 16, nprobe 1) miss it.
DEFAULT_EF_SEARCH = 64
# Scores held at once in an exact flat search: 16 MiB, queries x stored vectors.
# Cache-sized blocks let the heaps read scores the product just wrote; on 1,000
# queries over 100k vectors, 4,096-vector blocks took 0.33 s where whole rows
# of 100k scores took 0.46 s. A lone query still gets one matrix-vector product.
_SCORE_BLOCK = 1 << 22
_MIN_COLUMNS = 4096
_FAISS_MESSAGE = re.compile(r" at \S+:\d+: (?:Error: )?(.*)$")
# A failed FAISS assertion that goes on to explain itself: "'!(d % M == 0)' failed: <why>".
_ASSERTION = re.compile(r"^'[^']*' failed: (?=\S)")
# index_factory's one metric check (FAISS builds LSH for l2 only), unexplained.
_L2_ONLY = re.compile(r"^'metric == METRIC_L2' failed$")


def default_nprobe(nlist: int) -> int:
    """Probe 1/16 of the lists, at least 32 (or all of them if fewer).

    Recall follows the number of lists probed more than their share: on the
    synthetic embeddings of bench/scale_bench.py, 32 probes gave 10-recall@10
    0.94-0.95 with 128 and with 256 lists (8 gave 0.72-0.75, 16 0.86), and
    64 of 1,024 lists gave 0.975 at 1M vectors.
    """
    return min(nlist, max(32, nlist // 16))


def check_metric(metric: str) -> str:
    # isinstance first: an unhashable value (a list) would fail the lookup with a TypeError.
    if not isinstance(metric, str) or metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    return metric


class FaissIndex:
    """A FAISS index addressed by int64 ids, with add, remove and search.

    Not thread-safe for writes: :class:`~cachedvec.index.VectorIndex` holds a
    lock around it. Searches may run concurrently with each other.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "cosine",
        factory: str = "Flat",
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> None:
        # numpy integers (an array's shape, a model's config) are dimensions too.
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ConfigError(f"dim must be a positive integer, got {dim!r}")
        dim = int(dim)
        check_metric(metric)
        if not isinstance(factory, str) or not factory.strip():
            raise ConfigError(f"factory must be a FAISS factory string, got {factory!r}")
        try:
            base = faiss.index_factory(dim, factory, METRICS[metric])
        except RuntimeError as exc:
            raise ConfigError(_factory_error(factory, dim, metric, exc)) from exc
        if isinstance(faiss.downcast_index(base), faiss.IndexIDMap):
            raise ConfigError(f"factory {factory!r}: drop 'IDMap', cachedvec manages ids itself")
        inner = _innermost(base)
        if isinstance(inner, faiss.IndexIVF):
            inner.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
            index = base
        else:
            index = faiss.IndexIDMap2(base)
        self._setup(index, metric, factory, ef_search, nprobe)

    @classmethod
    def from_faiss(
        cls,
        index: faiss.Index,
        metric: str,
        factory: str,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> FaissIndex:
        """Adopt an index as ``faiss.read_index`` returns it (built by this class).

        The object itself is kept: a ``downcast_index`` proxy would not own
        the C++ index, which would be freed with the original proxy.
        """
        expected = _layers(cls(int(index.d), metric, factory)._index)
        found = _layers(index)
        # isinstance, not equality: FAISS reads a flat index back as its
        # metric-specific subclass (IndexFlatIP for an IndexFlat).
        if (
            len(found) != len(expected)
            or index.metric_type != METRICS[metric]
            or not all(isinstance(f, type(e)) for f, e in zip(found, expected, strict=True))
        ):
            names = " > ".join(type(layer).__name__ for layer in found)
            raise ConfigError(f"the FAISS file holds {names}, not a {metric} {factory!r} index")
        adopted = cls.__new__(cls)
        adopted._setup(index, metric, factory, ef_search, nprobe)
        return adopted

    def _setup(
        self,
        index: faiss.Index,
        metric: str,
        factory: str,
        ef_search: int | None,
        nprobe: int | None,
    ) -> None:
        self._index = index
        self.metric = check_metric(metric)
        self.factory = factory
        self.dim = int(index.d)
        inner = _innermost(index.index if isinstance(index, faiss.IndexIDMap2) else index)
        # SWIG proxies into ``index`` (which owns them); typed loosely.
        self._hnsw: Any = inner.hnsw if isinstance(inner, faiss.IndexHNSW) else None
        self._ivf: Any = inner if isinstance(inner, faiss.IndexIVF) else None
        # A flat index right under the id map (not behind a transform such as
        # PCA, which queries would need to pass through) is searched exactly
        # by numpy; see the module doc.
        child = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
        flat_metrics = (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2)
        self._flat: Any = (
            child
            if isinstance(child, faiss.IndexFlat) and child.metric_type in flat_metrics
            else None
        )
        if ef_search is not None and self._hnsw is None:
            raise ConfigError(f"ef_search applies to HNSW indexes, not {factory!r}")
        if nprobe is not None and self._ivf is None:
            raise ConfigError(f"nprobe applies to IVF indexes, not {factory!r}")
        # Only None means "the default": 0 is refused like any other bad value.
        if self._hnsw is not None:
            self.ef_search = DEFAULT_EF_SEARCH if ef_search is None else ef_search
        if self._ivf is not None:
            self.nprobe = default_nprobe(self._ivf.nlist) if nprobe is None else nprobe
        # Inverted lists memory-mapped from a lists file (an on-disk build,
        # see builder.py) are for serving: a write would change the committed
        # file in place, and FAISS aborts the process on a read-only one.
        lists = self._ivf.invlists if self._ivf is not None else None
        on_disk = faiss.downcast_InvertedLists(lists) if lists is not None else None
        #: The memory-mapped lists file of an on-disk build, by absolute path
        #: (as the FAISS file names it), else None.
        self.lists_file = (
            Path(on_disk.filename) if isinstance(on_disk, faiss.OnDiskInvertedLists) else None
        )
        self.read_only = self.lists_file is not None
        self._selector = None if self.read_only else _removal_selector(index)
        self._tombstones: set[int] = set()
        self._exclusion: Any = None  # IDSelector over the tombstones, built lazily

    # -- settings -------------------------------------------------------------

    @property
    def ef_search(self) -> int | None:
        return int(self._hnsw.efSearch) if self._hnsw is not None else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self._hnsw is None:
            raise ConfigError(f"ef_search applies to HNSW indexes, not {self.factory!r}")
        self._hnsw.efSearch = _positive("ef_search", value)

    @property
    def nprobe(self) -> int | None:
        return int(self._ivf.nprobe) if self._ivf is not None else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._ivf is None:
            raise ConfigError(f"nprobe applies to IVF indexes, not {self.factory!r}")
        self._ivf.nprobe = min(_positive("nprobe", value), self._ivf.nlist)

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying FAISS object (for saving and inspection)."""
        return self._index

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def ntotal(self) -> int:
        """Vectors held by FAISS, tombstones included."""
        return int(self._index.ntotal)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def removes_for_real(self) -> bool:
        """False for graph indexes, whose deletions are tombstones."""
        return self._selector is not None

    # -- vectors ----------------------------------------------------------------

    def prepare(self, vectors: Any, what: str = "vectors") -> Matrix:
        """Validate and convert to the float32 C-ordered rows FAISS wants.

        Returns a new array when anything changes (always for cosine, which
        normalises), so the caller's array is never modified.
        """
        try:
            array = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what} must be numeric arrays: {exc}") from exc
        if array.ndim == 1:
            # An empty list is no rows (an empty batch), not one row of no values.
            array = array.reshape(1, -1) if array.size else array.reshape(0, self.dim)
        if array.ndim != 2 or array.shape[1] != self.dim:
            shape = "x".join(map(str, array.shape)) or "() (a single number)"
            raise DimensionError(f"{what} have shape {shape}, the index holds {self.dim}-d vectors")
        if not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
            raise ConfigError(f"{what}[{bad}] contains NaN or infinite values")
        if self.metric == "cosine":
            array = np.array(array, dtype=np.float32, order="C", copy=True)
            faiss.normalize_L2(array)
        else:
            array = np.ascontiguousarray(array)
        return array

    def train(self, vectors: Matrix) -> None:
        """Train (IVF centroids, PQ codebooks, PCA...) on prepared vectors."""
        try:
            with _one_warning_for_few_training_vectors(self._index, self.factory, len(vectors)):
                self._index.train(vectors)
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot train {self.factory!r} on {len(vectors)} vectors: {_reason(exc)}"
            ) from exc

    def add(self, vectors: Matrix, ids: Ids) -> None:
        """Add prepared vectors under new ids (the caller never reuses an id).

        All or nothing: if FAISS fails part way, what it took is removed.
        """
        self._check_writable()
        if not self._index.is_trained:
            self.train(vectors)
        before = self.ntotal
        try:
            self._index.add_with_ids(vectors, ids)
        except BaseException:
            if self.ntotal != before:
                with suppress(Exception):
                    self.remove(ids)
            raise

    def remove(self, ids: Ids) -> None:
        """Remove ids for real, or tombstone them where FAISS cannot remove."""
        if len(ids) == 0:
            return
        self._check_writable()
        if self._selector is not None:
            selected = np.ascontiguousarray(ids, np.int64)  # held: a selector keeps a pointer
            self._index.remove_ids(self._selector(selected))
        else:
            self._tombstones.update(int(i) for i in ids)
            self._exclusion = None

    def _check_writable(self) -> None:
        if self.read_only:
            raise VectorIndexError(
                f"this {self.factory!r} index keeps its inverted lists in a memory-mapped file "
                "(an on-disk build) and is read-only: rebuild it in memory to change it "
                "(cachedvec reindex --layout memory)"
            )

    def reconstruct(self, ids: Ids) -> Matrix:
        """The stored vectors of ``ids`` (normalised for cosine; decoded for PQ)."""
        if len(ids) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        try:
            return self._index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
        except RuntimeError as exc:
            raise ConfigError(f"{self.factory!r} cannot give vectors back: {_reason(exc)}") from exc

    def stored_ids(self) -> Ids:
        """Every id FAISS holds, tombstones included (order unspecified)."""
        if isinstance(self._index, faiss.IndexIDMap2):
            return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)
        lists = self._ivf.invlists
        parts = [np.empty(0, dtype=np.int64)]
        for number in range(lists.nlist):
            size = lists.list_size(number)
            if size:
                pointer = lists.get_ids(number)
                parts.append(faiss.rev_swig_ptr(pointer, size).copy())
                lists.release_ids(number, pointer)
        return np.concatenate(parts)

    # -- search -----------------------------------------------------------------

    def search(self, queries: Matrix, k: int) -> tuple[Matrix, Ids]:
        """Top ``k`` of prepared queries: ``(scores, ids)``, id -1 where none.

        Tombstones never come back. Scores are similarities for cosine and ip
        (higher is closer) and squared distances for l2 (lower is closer).
        """
        n = len(queries)
        extra = 0
        params = None
        if self._tombstones:
            params = self._exclusion_params()
            if params is None:
                extra = len(self._tombstones)
        fetch = min(k + extra, self.ntotal)
        if fetch <= 0 or n == 0:
            return (np.empty((n, 0), dtype=np.float32), np.empty((n, 0), dtype=np.int64))
        if self._flat is not None:  # flat indexes remove for real: no tombstones
            # numpy's BLAS threads do the product; FAISS's heaps are faster on
            # one thread than split over OpenMP's (measured: 0.09 s against
            # 0.17 s for 1,000 queries over 100k vectors).
            with _one_thread():
                return self._exact_flat_search(queries, fetch)
        if n == 1:
            with _one_thread():
                scores, ids = self._index.search(queries, fetch, params=params)
        else:
            scores, ids = self._index.search(queries, fetch, params=params)
        if extra:
            scores, ids = self._drop_tombstones(scores, ids, k)
        return scores, ids

    def _exact_flat_search(self, queries: Matrix, k: int) -> tuple[Matrix, Ids]:
        """What ``IndexIDMap2(IndexFlat).search`` returns, computed faster (module doc)."""
        count = int(self._flat.ntotal)
        stored = faiss.rev_swig_ptr(self._flat.get_xb(), count * self.dim).reshape(count, -1)
        l2 = self.metric == "l2"
        # Squared L2 distance = |q|^2 - 2 q.x + |x|^2; |q|^2 does not change
        # the ranking, so it is added to the k winners only.
        norms = np.einsum("ij,ij->i", stored, stored) if l2 else None
        n = len(queries)
        scores = np.empty((n, k), dtype=np.float32)
        positions = np.empty((n, k), dtype=np.int64)
        columns = min(count, max(_MIN_COLUMNS, _SCORE_BLOCK // n))
        rows = max(1, _SCORE_BLOCK // columns)
        buffer = np.empty(min(rows, n) * columns, dtype=np.float32)
        for start in range(0, n, rows):
            block = slice(start, start + rows)
            part = queries[block]
            heaps = _TopK(scores[block], positions[block], smallest=l2)
            for first in range(0, count, columns):
                vectors = stored[first : first + columns]
                products = buffer[: len(part) * len(vectors)].reshape(len(part), -1)
                np.matmul(part, vectors.T, out=products)
                if norms is not None:
                    products *= -2
                    products += norms[first : first + columns]
                heaps.add(products, first)
            heaps.finish()
        if l2:
            scores += np.einsum("ij,ij->i", queries, queries)[:, None]
            np.maximum(scores, 0, out=scores)  # rounding can dip just below zero
        id_map = faiss.rev_swig_ptr(cast(faiss.IndexIDMap2, self._index).id_map.data(), count)
        return scores, id_map[positions]

    def _exclusion_params(self) -> Any:
        """Search parameters hiding tombstones, where the index honours them."""
        if self._hnsw is None:
            return None  # NSG and refine indexes ignore selectors: over-fetch instead
        exclusion = self._exclusion
        if exclusion is None:  # two searches may both build it: harmless
            dead = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
            exclusion = self._exclusion = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
        # A fresh parameter object per call: IndexIDMap2 rewrites its selector
        # during a search, so sharing one between threads would race. It keeps
        # a reference to the selector for as long as it lives.
        return faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
            sel=exclusion, efSearch=self._hnsw.efSearch
        )

    def _drop_tombstones(self, scores: Matrix, ids: Ids, k: int) -> tuple[Matrix, Ids]:
        dead = np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))
        out_scores = np.full((len(ids), k), np.nan, dtype=np.float32)
        out_ids = np.full((len(ids), k), -1, dtype=np.int64)
        for row, (row_scores, row_ids) in enumerate(zip(scores, ids, strict=True)):
            keep = ~np.isin(row_ids, dead) & (row_ids >= 0)
            kept = row_ids[keep][:k]
            out_ids[row, : len(kept)] = kept
            out_scores[row, : len(kept)] = row_scores[keep][:k]
        return out_scores, out_ids


class _TopK:
    """Each row's best ``top.shape[1]`` scores and column numbers, best first.

    FAISS's heaps, the ones its own flat search uses: C++ over all rows at
    once, fed one block of columns at a time, written into ``top`` and
    ``positions`` by :meth:`finish`.
    """

    def __init__(self, top: Matrix, positions: Ids, *, smallest: bool) -> None:
        heaps = faiss.float_maxheap_array_t() if smallest else faiss.float_minheap_array_t()
        heaps.nh, heaps.k = top.shape
        heaps.val = faiss.swig_ptr(top)
        heaps.ids = faiss.swig_ptr(positions)
        heaps.heapify()
        self._heaps = heaps

    def add(self, scores: Matrix, first_column: int) -> None:
        """Offer a C-contiguous block of scores for columns ``first_column...``."""
        # faiss's stubs omit the offsets the C++ addn(nj, vin, j0, i0, ni) takes.
        self._heaps.addn(  # type: ignore[call-arg]
            scores.shape[1], faiss.swig_ptr(scores), first_column, 0, scores.shape[0]
        )

    def finish(self) -> None:
        self._heaps.reorder()


@contextmanager
def _one_thread() -> Iterator[None]:
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _innermost(index: faiss.Index) -> faiss.Index:
    """The index behind any chain of transforms (PCA, OPQ...)."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def _layers(index: faiss.Index) -> list[faiss.Index]:
    """The wrappers and transforms from the outside in, then the innermost index."""
    layers = [faiss.downcast_index(index)]
    while isinstance(layers[-1], (faiss.IndexIDMap2, faiss.IndexPreTransform)):
        layers.append(faiss.downcast_index(layers[-1].index))
    return layers


def _layers_and_transforms(index: faiss.Index) -> Iterator[Any]:
    for layer in _layers(index):
        yield layer
        if isinstance(layer, faiss.IndexPreTransform):
            chain: Any = layer.chain  # a SWIG vector, not the list the stubs say
            for i in range(chain.size()):
                yield faiss.downcast_VectorTransform(chain.at(i))


def _removal_selector(index: faiss.Index) -> Any:
    """The IDSelector type FAISS removes ids from ``index`` with, or None (tombstones).

    Ask FAISS: an empty removal raises exactly where a selector is refused.
    IDSelectorBatch (hashed) comes first, since most indexes test every stored
    id against it. An IVF index with a hash-table direct map (ours, for
    reconstruction) looks each id up instead and takes only IDSelectorArray;
    graph indexes take neither.
    """
    empty = np.empty(0, dtype=np.int64)
    for selector in (faiss.IDSelectorBatch, faiss.IDSelectorArray):
        try:
            index.remove_ids(selector(empty))
        except RuntimeError:
            continue
        return selector
    return None


def _positive(name: str, value: Any) -> int:
    # FAISS stores these settings in a C int: anything larger overflows there.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value < 2**31:
        raise ConfigError(f"{name} must be a positive integer below 2**31, got {value!r}")
    return int(value)


@contextmanager
def _one_warning_for_few_training_vectors(
    index: faiss.Index, factory: str, n: int
) -> Iterator[None]:
    """Say once, through logging, what FAISS's k-means prints once per clustering.

    With fewer than ``min_points_per_centroid`` training vectors per
    centroid, FAISS writes a warning straight to stderr for every k-means
    run and trains anyway: one line per PQ sub-quantizer (48 for PQ48), and
    for OPQ that again for each of its 50 rotation steps. The parameter does
    nothing else, so lowering it silences FAISS without changing the result
    (an OPQ rotation gets its own quantizer, with the settings FAISS's
    default one would have, lent for the training only).
    """
    lent: list[tuple[Any, faiss.ProductQuantizer]] = []
    try:
        clusterings: list[tuple[str, Any, int]] = []
        for layer in _layers_and_transforms(index):
            if isinstance(layer, faiss.OPQMatrix) and layer.pq is None:
                lent.append((layer, faiss.ProductQuantizer(layer.d_out, layer.M, 8)))
                layer.pq = lent[-1][1]
            pq = getattr(layer, "pq", None)
            if isinstance(pq, faiss.ProductQuantizer):
                clusterings.append(("PQ centroids per sub-vector", pq.cp, int(pq.ksub)))
            if isinstance(layer, faiss.IndexIVF):
                clusterings.append(("inverted lists", layer.cp, int(layer.nlist)))
        short = {}
        for what, params, centroids in clusterings:
            wanted = centroids * params.min_points_per_centroid
            if n < wanted:
                short[f"{centroids:,} {what}"] = wanted
            params.min_points_per_centroid = 1
        # Fewer vectors than centroids is an error from FAISS, reported on its own.
        if short and all(n >= centroids for _, _, centroids in clusterings):
            log.warning(
                "training %s on only %s vectors: k-means wants %s; search recall "
                "may suffer (train on more vectors, or ask for fewer lists or "
                "centroids)",
                factory,
                f"{n:,}",
                ", ".join(f"{wanted:,} for {what}" for what, wanted in short.items()),
            )
        yield
    finally:
        for opq, _ in lent:
            opq.pq = None  # FAISS's own default; the lent quantizer dies with ``lent``


def _factory_error(factory: str, dim: int, metric: str, exc: BaseException) -> str:
    """Why FAISS would not build ``factory``: a string it cannot parse, or a valid
    one it refuses for this dimension or metric (``PQ7`` for 384-d, ``LSH`` for cosine)."""
    reason = _ASSERTION.sub("", _reason(exc))
    if "could not parse" in reason:
        return f"unknown FAISS factory string {factory!r}: {reason}"
    if "stoi" in reason:  # std::stoi: a number FAISS reads as a C int
        return f"unknown FAISS factory string {factory!r}: a number in it is too large"
    if _L2_ONLY.match(reason):
        kind = "LSH" if "LSH" in factory else "this index type"
        reason = f"{kind} supports only the l2 metric"
    return (
        f"FAISS factory string {factory!r} is valid, but FAISS refuses it for {dim}-d "
        f"{metric} vectors: {reason}"
    )


def _reason(exc: BaseException) -> str:
    """The readable tail of a FAISS C++ error ("Error in <signature> at <file>:<line>: ...")."""
    text = " ".join(str(exc).split())
    match = _FAISS_MESSAGE.search(text)
    return match.group(1) if match else text or type(exc).__name__
