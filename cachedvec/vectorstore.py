"""``CachedVectorStore``: LangChain's ``VectorStore`` over a :class:`VectorIndex`.

Searches, filters, MMR and retrievers as with
``langchain_community.vectorstores.FAISS``, without its defects: no pickle
on disk (:meth:`CachedVectorStore.save` and :meth:`CachedVectorStore.load`
write and read a folder; there is no ``save_local``), deletes that are
correct for every index type, upserts that cannot leave an orphan vector,
filters that return ``k`` results whenever ``k`` documents match, and a
batch search.

With a :class:`cachedvec.CachedEmbeddings` the store takes numpy arrays
straight from the cache (``embed_documents_array``) and records each text's
cache key in the docstore, so ``cachedvec reindex`` can rebuild the index
without the model. Any other LangChain ``Embeddings`` works too; its lists
of floats are converted once.

Scores. ``similarity_search_with_score`` returns the index's raw score:
cosine similarity (``metric="cosine"``, the default), inner product
(``"ip"``), or squared Euclidean distance (``"l2"``, lower is closer, as
LangChain's FAISS reports it). Relevance scores (``..._with_relevance_scores``)
are on one scale for all three: the cosine similarity of unit-length
embeddings (for l2, ``1 - d²/2``), clipped to ``[0, 1]``. With embeddings
that are not unit length, ip and l2 scores leave that range; the store then
logs one warning, since the clipped values no longer rank anything.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore

from cachedvec.errors import ConfigError
from cachedvec.index import Filter, Hit, Manifest, VectorIndex
from cachedvec.index.faiss_index import check_metric
from cachedvec.index.rerank import check_rerank
from cachedvec.index.vector_index import check_mmr_options, check_search_options
from cachedvec.keys import ModelFingerprint

logger = logging.getLogger(__name__)

_SEARCH_OPTIONS = frozenset({"filter", "score_threshold", "fetch_k"})
_MMR_OPTIONS = frozenset({"filter"})


class CachedVectorStore(VectorStore):
    """A LangChain vector store backed by FAISS and a SQLite docstore.

    Args:
        embedding: a :class:`cachedvec.CachedEmbeddings` (recommended) or any
            LangChain ``Embeddings``.
        metric: ``"cosine"`` (default), ``"ip"`` or ``"l2"``.
        factory: a FAISS factory string: ``"Flat"`` (exact, default),
            ``"HNSW32"``, ``"IVF1024,Flat"``, ``"OPQ16,IVF1024,PQ16"``...
        ef_search, nprobe: search-time accuracy of HNSW and IVF indexes.
        rerank: candidates per result re-scored exactly with the vectors of
            the embeddings' cache (``embedding.store``, as
            :class:`CachedEmbeddings` has), for compressed (PQ, SQ) indexes;
            at least 32 per query (``k * rerank`` when larger), so ``k=1``
            answers as the first result of a larger search. An index saved
            with the setting re-ranks when loaded with such embeddings.
        dim: the vector dimension, when the embeddings do not tell it; the
            index is otherwise created on the first add.
        index: an existing :class:`VectorIndex` to wrap (see :meth:`load`).

    A context manager: ``with CachedVectorStore.load(path, emb) as store:``
    closes the store (its index and docstore, not the embeddings) at the end.
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        metric: str = "cosine",
        factory: str = "Flat",
        ef_search: int | None = None,
        nprobe: int | None = None,
        dim: int | None = None,
        index: VectorIndex | None = None,
        rerank: int | None = None,
    ) -> None:
        self._embedding = embedding
        self._options: dict[str, Any] = {
            "metric": check_metric(metric),
            "factory": factory,
            "ef_search": ef_search,
            "nprobe": nprobe,
            "rerank": check_rerank(rerank),
        }
        self._index = index
        self._creating = threading.Lock()
        self._warned_relevance = False
        self._closed = False
        if index is not None:
            if rerank is not None:
                index.rerank = rerank
            self._attach_cache(index)
        known_dim = dim if dim is not None else getattr(embedding, "dim", None)
        # With the dimension known the factory string is checked now; otherwise
        # on the first add (a factory's validity depends on the dimension).
        if index is None and isinstance(known_dim, int) and not isinstance(known_dim, bool):
            self._index = self._new_index(known_dim)
        elif index is not None and dim is not None and dim != index.dim:
            raise ConfigError(f"dim={dim} but the index holds {index.dim}-d vectors")

    def _new_index(self, dim: int) -> VectorIndex:
        fingerprint = getattr(self._embedding, "fingerprint", None)
        index = VectorIndex(
            dim,
            fingerprint=fingerprint if isinstance(fingerprint, ModelFingerprint) else None,
            **self._options,
        )
        self._attach_cache(index)
        return index

    def _attach_cache(self, index: VectorIndex) -> None:
        # The documents' vectors sit in the embeddings' document store under
        # the keys the docstore records; without such a store (embeddings
        # that do not cache) searches go without re-ranking.
        store = getattr(self._embedding, "store", None)
        if callable(getattr(store, "mget", None)):
            index.attach_cache(store)

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def index(self) -> VectorIndex | None:
        """The underlying :class:`VectorIndex` (``None`` until the first vectors)."""
        return self._index

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else 0

    # -- embedding ------------------------------------------------------------------

    def _embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        as_array = getattr(self._embedding, "embed_documents_array", None)
        if as_array is not None:
            return np.asarray(as_array(texts), dtype=np.float32)
        return np.asarray(self._embedding.embed_documents(texts), dtype=np.float32)

    async def _aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        as_array = getattr(self._embedding, "aembed_documents_array", None)
        if as_array is not None:
            return np.asarray(await as_array(texts), dtype=np.float32)
        return np.asarray(await self._embedding.aembed_documents(texts), dtype=np.float32)

    def _embed_query(self, text: str) -> npt.NDArray[np.float32]:
        as_array = getattr(self._embedding, "embed_query_array", None)
        if as_array is not None:
            return np.asarray(as_array(text), dtype=np.float32)
        return np.asarray(self._embedding.embed_query(text), dtype=np.float32)

    async def _aembed_query(self, text: str) -> npt.NDArray[np.float32]:
        as_array = getattr(self._embedding, "aembed_query_array", None)
        if as_array is not None:
            return np.asarray(await as_array(text), dtype=np.float32)
        return np.asarray(await self._embedding.aembed_query(text), dtype=np.float32)

    def _cache_keys(self, texts: list[str]) -> list[str] | None:
        keys_of = getattr(self._embedding, "document_keys", None)
        return list(keys_of(texts)) if keys_of is not None else None

    # -- writes -----------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and add texts; an id that exists is replaced (upsert)."""
        _no_extra(kwargs, frozenset(), "add_texts")
        self._check_open()
        texts = list(texts)
        if not texts:
            return []
        return self.add_vectors(
            texts, self._embed_texts(texts), metadatas, ids=ids, cache_keys=self._cache_keys(texts)
        )

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        _no_extra(kwargs, frozenset(), "aadd_texts")
        self._check_open()
        texts = list(texts)
        if not texts:
            return []
        vectors = await self._aembed_texts(texts)
        keys = self._cache_keys(texts)
        return await run_in_executor(
            None, self.add_vectors, texts, vectors, metadatas, ids=ids, cache_keys=keys
        )

    def add_vectors(
        self,
        texts: Sequence[str],
        vectors: npt.ArrayLike,
        metadatas: Sequence[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        cache_keys: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Add texts whose vectors are already computed (no embedding call)."""
        self._check_open()
        if len(texts) == 0:
            return []
        matrix = np.asarray(vectors, dtype=np.float32)
        if self._index is None:
            if matrix.ndim != 2:
                raise ConfigError(f"vectors must be a 2-d array, got shape {matrix.shape}")
            # Concurrent first adds (threads, or aadd_texts gathered) must
            # share one index: each making its own would keep only the last.
            with self._creating:
                if self._index is None:
                    self._index = self._new_index(matrix.shape[1])
        return self._index.add(matrix, texts, metadatas, ids=ids, cache_keys=cache_keys)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete by id. Returns ``False`` if some ids were not there (a no-op for them).

        ``index.delete(ids)`` returns the full report (deleted and missing ids).
        """
        _no_extra(kwargs, frozenset(), "delete")
        self._check_open()
        if ids is None:
            raise ConfigError("delete needs the ids to delete")
        if self._index is None:
            return not ids
        result = self._index.delete(ids)
        if result.missing:
            logger.debug("delete: %d ids were not in the store", len(result.missing))
        return not result.missing

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Documents of the ids that exist, in the order asked, each once."""
        self._check_open()
        if self._index is None:
            return []
        return [Document(r.text, metadata=r.metadata, id=r.id) for r in self._index.get(ids)]

    # -- search -----------------------------------------------------------------------

    def similarity_search(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents and raw scores (see the module doc) for a text query.

        Keyword options: ``score_threshold`` (on the raw score) and
        ``fetch_k`` (first candidate count when filtering).
        """
        _no_extra(kwargs, _SEARCH_OPTIONS, "similarity_search")
        self._check_open()
        if self._index is None:
            return _nothing_found(k, filter, kwargs)
        return self.similarity_search_with_score_by_vector(
            self._embed_query(query), k, filter, **kwargs
        )

    def similarity_search_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [
            doc
            for doc, _ in self.similarity_search_with_score_by_vector(
                embedding, k, filter, **kwargs
            )
        ]

    def similarity_search_with_score_by_vector(
        self,
        embedding: Sequence[float] | npt.NDArray[np.float32],
        k: int = 4,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The fast path: one query vector, one FAISS call, one SQLite query."""
        _no_extra(kwargs, _SEARCH_OPTIONS, "similarity_search")
        self._check_open()
        if self._index is None:
            return _nothing_found(k, filter, kwargs)
        hits = self._index.search(embedding, k, filter=filter, **kwargs)
        return [(_document(hit), hit.score) for hit in hits]

    def similarity_search_by_vectors(
        self,
        vectors: npt.ArrayLike,
        k: int = 4,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[list[Document]]:
        """Batch search: one list of documents per query vector, in one FAISS call."""
        return [
            [doc for doc, _ in row]
            for row in self.similarity_search_with_score_by_vectors(vectors, k, filter, **kwargs)
        ]

    def similarity_search_with_score_by_vectors(
        self,
        vectors: npt.ArrayLike,
        k: int = 4,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[list[tuple[Document, float]]]:
        _no_extra(kwargs, _SEARCH_OPTIONS, "similarity_search_by_vectors")
        self._check_open()
        matrix = np.asarray(vectors, dtype=np.float32)
        if self._index is None:
            _nothing_found(k, filter, kwargs)
            return [[] for _ in range(len(matrix))]
        rows = self._index.search_batch(matrix, k, filter=filter, **kwargs)
        return [[(_document(hit), hit.score) for hit in hits] for hits in rows]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        """Diverse results: MMR over the ``fetch_k`` nearest (filtered) documents."""
        _no_extra(kwargs, _MMR_OPTIONS, "max_marginal_relevance_search")
        self._check_open()
        if self._index is None:
            return _nothing_found_mmr(k, fetch_k, lambda_mult, kwargs)
        return self.max_marginal_relevance_search_by_vector(
            self._embed_query(query), k, fetch_k, lambda_mult, **kwargs
        )

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: Sequence[float] | npt.NDArray[np.float32],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        _no_extra(kwargs, _MMR_OPTIONS, "max_marginal_relevance_search")
        self._check_open()
        if self._index is None:
            return _nothing_found_mmr(k, fetch_k, lambda_mult, kwargs)
        hits = self._index.mmr_search(
            embedding, k, fetch_k=fetch_k, lambda_mult=lambda_mult, filter=kwargs.get("filter")
        )
        return [_document(hit) for hit in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        metric = self._options["metric"]

        def relevance(score: float) -> float:
            # For unit vectors |a - b|² = 2 - 2 cos(a, b): l2 gives the cosine too.
            value = 1.0 - score / 2.0 if metric == "l2" else score
            # Outside [-1, 1] the embeddings are not unit length, and the
            # clipped value says nothing; say so once rather than mislead.
            if not -1.001 <= value <= 1.001 and not self._warned_relevance:
                self._warned_relevance = True
                logger.warning(
                    "relevance scores assume unit-length embeddings, but this %s index "
                    "holds longer ones, so its relevance scores are clipped and "
                    "unreliable: normalise the embeddings or use metric='cosine'",
                    metric,
                )
            return min(1.0, max(0.0, value))

        return relevance

    # -- async twins (embedding awaited natively, index work in a thread) --------------

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        pairs = await self.asimilarity_search_with_score(query, k, filter, **kwargs)
        return [doc for doc, _ in pairs]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        _no_extra(kwargs, _SEARCH_OPTIONS, "asimilarity_search")
        self._check_open()
        if self._index is None:
            return _nothing_found(k, filter, kwargs)
        vector = await self._aembed_query(query)
        return await run_in_executor(
            None, self.similarity_search_with_score_by_vector, vector, k, filter, **kwargs
        )

    async def asimilarity_search_by_vectors(
        self, vectors: npt.ArrayLike, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[list[Document]]:
        return await run_in_executor(
            None, self.similarity_search_by_vectors, vectors, k, filter, **kwargs
        )

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        _no_extra(kwargs, _MMR_OPTIONS, "amax_marginal_relevance_search")
        self._check_open()
        if self._index is None:
            return _nothing_found_mmr(k, fetch_k, lambda_mult, kwargs)
        vector = await self._aembed_query(query)
        return await run_in_executor(
            None,
            self.max_marginal_relevance_search_by_vector,
            vector,
            k,
            fetch_k,
            lambda_mult,
            **kwargs,
        )

    # -- construction and files ----------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> CachedVectorStore:
        """A new store holding ``texts``; ``kwargs`` go to the constructor."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> CachedVectorStore:
        store = cls(embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store

    def save(self, path: str | os.PathLike[str]) -> Manifest:
        """Save to a folder (FAISS file, SQLite docstore, JSON manifest), atomically."""
        self._check_open()
        if self._index is None:
            raise ConfigError(
                "nothing to save yet: add documents first, or pass dim= to the constructor"
            )
        return self._index.save(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        embedding: Embeddings,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        rerank: int | None = None,
    ) -> CachedVectorStore:
        """Open a saved folder for these embeddings.

        A saved re-rank setting (or ``rerank``) re-ranks from the embeddings'
        store when they have one (:class:`CachedEmbeddings` does).

        Raises :class:`cachedvec.IndexMismatchError` when the folder was built
        by another model (both sides have fingerprints and they differ) or for
        another dimension, and :class:`cachedvec.IndexCorruptError` when it is
        damaged. Nothing in the folder is unpickled or executed.
        """
        fingerprint = getattr(embedding, "fingerprint", None)
        dim = getattr(embedding, "dim", None)
        index = VectorIndex.load(
            path,
            fingerprint=fingerprint if isinstance(fingerprint, ModelFingerprint) else None,
            dim=dim if isinstance(dim, int) and not isinstance(dim, bool) else None,
        )
        if ef_search is not None:
            index.ef_search = ef_search
        if nprobe is not None:
            index.nprobe = nprobe
        return cls(
            embedding, metric=index.metric, factory=index.factory, index=index, rerank=rerank
        )

    def close(self) -> None:
        """Close its index (and the index's SQLite docstore), also one given as ``index=``.

        The store is unusable afterwards (``ConfigError``); closing again does
        nothing. The embeddings are the caller's, and their cache stays open
        (close a :class:`CachedEmbeddings` itself, or use it in ``with``).
        """
        if self._closed:
            return
        self._closed = True
        if self._index is not None:
            self._index.close()

    def __enter__(self) -> CachedVectorStore:
        """``with CachedVectorStore(...) as store:`` closes it on the way out, error or not."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        # Checked here too: a store closed before its first add has no index
        # to refuse, and would otherwise quietly start a new one.
        if self._closed:
            raise ConfigError("this vector store is closed: load it again to use it")

    def __repr__(self) -> str:
        return f"CachedVectorStore({self._index!r})"


def _nothing_found(k: int, filter: Filter | None, options: dict[str, Any]) -> list[Any]:
    # No index yet, so nothing matches; but the options are checked as an
    # index would check them, so k=0 fails before the first add as after it.
    check_search_options(k, filter, options.get("fetch_k"), options.get("score_threshold"))
    return []


def _nothing_found_mmr(
    k: int, fetch_k: int, lambda_mult: float, options: dict[str, Any]
) -> list[Document]:
    check_mmr_options(k, fetch_k, lambda_mult, options.get("filter"))
    return []


def _document(hit: Hit) -> Document:
    return Document(hit.text, metadata=hit.metadata, id=hit.id)


def _no_extra(kwargs: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"{where} got unknown options {unknown} (known: {known})")
