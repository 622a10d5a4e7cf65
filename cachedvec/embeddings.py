"""``CachedEmbeddings``: compute each vector once, read it back forever after.

For every call the texts are de-duplicated, hashed into keys under the
model's namespace (:mod:`cachedvec.keys`), looked up in the byte store in one
batch, decoded (:mod:`cachedvec.codec`), and only the unique texts that are
missing, or whose stored value fails its checks, go to the model, batch by
batch. Each batch is validated and written before the next one runs, so a
crash loses at most the batch in flight, and a bad batch writes nothing.

The sync and async methods share every step but the I/O: a :class:`_Lookup`
holds one call's state and the two drivers only differ in what they await.

Errors: bad input and unusable model output raise
:class:`~cachedvec.errors.CachedVecError` subclasses before anything is
written. An exception raised *by the model itself* (a provider's rate limit,
a timeout, a CUDA out-of-memory) propagates unchanged, as from LangChain's
``CacheBackedEmbeddings``, so code that catches or retries the provider's
exceptions keeps working; the batches finished before it stay cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.stores import BaseStore, ByteStore

from cachedvec.codec import Dtype, Matrix, VectorCodec
from cachedvec.errors import ConfigError, InvalidTextError, ModelOutputError, check_count
from cachedvec.keys import (
    KeyEncoder,
    Kind,
    ModelFingerprint,
    check_namespace,
    check_text,
    check_texts,
)
from cachedvec.models import EmbeddingModel, _as_matrix, as_model
from cachedvec.stores import open_store
from cachedvec.stores.path_keys import PathSafeKeys, needs_path_safe_keys


@dataclass
class CacheStats:
    """Counters since the embeddings object was created (or :meth:`reset`).

    Counts are of *unique* texts per call: ``hits + misses`` texts were looked
    up, ``duplicates`` more were served from the same call's work.
    """

    hits: int = 0
    misses: int = 0
    computed: int = 0
    corrupt: int = 0
    duplicates: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "hit_rate": self.hit_rate}

    def reset(self) -> None:
        for name in asdict(self):
            setattr(self, name, 0)


class _Lookup:
    """One call's state: unique texts, their keys, and the matrix being filled."""

    __slots__ = ("texts", "unique", "keys", "values", "matrix", "todo", "done", "counted")

    def __init__(self, texts: Sequence[str], encoder: KeyEncoder) -> None:
        texts = check_texts(texts)
        self.texts = texts
        try:
            # dict.fromkeys keeps first-seen order and runs at C speed.
            self.unique = list(dict.fromkeys(texts)) if texts else []
            self.keys = encoder.keys(self.unique)
        except (TypeError, InvalidTextError):
            # An unhashable or invalid text: its error names its position in
            # the caller's list, not in the de-duplicated one.
            encoder.keys(texts)
            raise
        self.values: Sequence[bytes | None] = []  # what the store returned
        self.matrix: Matrix = np.empty((0, 0), np.float32)
        self.todo: list[int] = []  # positions in `unique` to compute, in order
        self.done = 0  # how many of `todo` have gone to the model
        # (hits, misses, corrupt, bytes read) this call added to the stats.
        self.counted: tuple[int, int, int, int] = (0, 0, 0, 0)


class CachedEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` that caches every vector in a byte store.

    Exceptions: invalid arguments and texts raise
    :class:`~cachedvec.errors.CachedVecError` subclasses (a text that is not
    a ``str`` is an :class:`~cachedvec.errors.InvalidTextError` that is also
    a ``TypeError``); model output of the wrong count, dimension or type, or
    with NaN or infinite values, is a :class:`~cachedvec.errors.ModelOutputError`
    and nothing of that batch is cached. Exceptions raised by the model
    itself are not wrapped: they reach the caller unchanged (catch your
    provider's rate-limit error as you would without the cache), and every
    batch finished before them stays cached.

    Args:
        model: ``None`` for the bundled all-MiniLM-L6-v2, a sentence-transformers
            folder or locally cached name, a ``SentenceTransformer``, or any
            LangChain ``Embeddings``.
        store: a byte store, or a URL for :func:`cachedvec.open_store`
            (``memory://``, ``file:///dir``, ``sqlite:///cache.db``,
            ``postgresql+psycopg://...``, ``diskcache:///dir``). A store opened
            from a URL is closed by :meth:`close`.
        namespace: replaces the namespace derived from the model fingerprint.
            Only set it if you manage model changes yourself.
        batch_size: texts per model call (and per store write).
        dtype: ``"float32"`` or ``"float16"`` storage (vectors always come
            back as float32).
        key_algorithm: ``"sha256"`` or ``"blake2b"``.
        cache_queries: cache ``embed_query`` results (in their own namespace).
        query_store: a separate store (or URL) for query vectors.
    """

    def __init__(
        self,
        model: Any = None,
        store: ByteStore | str = "memory://",
        *,
        namespace: str | None = None,
        batch_size: int = 256,
        dtype: Dtype = "float32",
        key_algorithm: str = "sha256",
        cache_queries: bool = True,
        query_store: ByteStore | str | None = None,
    ) -> None:
        check_count("batch_size", batch_size)
        # Every argument is checked before a store is opened: a bad one
        # leaves no connection or file handle behind.
        self.model: EmbeddingModel = as_model(model)
        self.batch_size = batch_size
        self.cache_queries = cache_queries
        fp = self.model.fingerprint
        self.namespace = check_namespace(namespace) if namespace else fp.namespace()
        self._doc_keys = KeyEncoder(self.namespace, "doc", key_algorithm)
        self._query_keys = KeyEncoder(self.namespace, "query", key_algorithm)
        self.codec = VectorCodec(fp.dim, dtype)
        # Whether the codec's dimension is the model's (from its fingerprint
        # or its output), not one learned from a stored value.
        self._dim_settled = fp.dim is not None
        self.stats = CacheStats()
        self._owned: list[Any] = []
        try:
            self.store = self._open(store)
            self.query_store = self.store if query_store is None else self._open(query_store)
        except BaseException:
            self.close()
            raise

    def _open(self, store: ByteStore | str) -> ByteStore:
        if isinstance(store, str):
            opened = open_store(store)
            self._owned.append(opened)
            return opened
        if not isinstance(store, BaseStore):
            raise ConfigError(f"store must be a ByteStore or a URL, got {type(store).__name__}")
        if needs_path_safe_keys(store):
            return PathSafeKeys(store)
        return store

    @classmethod
    def from_bytes_store(
        cls,
        underlying_embeddings: Any,
        document_embedding_cache: ByteStore,
        *,
        namespace: str = "",
        batch_size: int | None = None,
        query_embedding_cache: bool | ByteStore | None = True,
        key_encoder: str = "sha256",
    ) -> CachedEmbeddings:
        """LangChain's ``CacheBackedEmbeddings.from_bytes_store`` arguments.

        ``query_embedding_cache`` is ``True`` (queries cached in the document
        store), ``False`` or ``None`` (not cached), or a store of their own.
        Differences, on purpose: an empty ``namespace`` means "derive it from
        the model" (not "no namespace"), query caching is on by default, and
        the key digest must be ``sha256`` or ``blake2b``.
        """
        if not isinstance(key_encoder, str):
            raise ConfigError(
                "key_encoder must be 'sha256' or 'blake2b'; callables are not "
                "supported because keys must stay tied to the model"
            )
        return cls(
            underlying_embeddings,
            document_embedding_cache,
            namespace=namespace or None,
            batch_size=256 if batch_size is None else batch_size,  # 0 is refused, not 256
            key_algorithm=key_encoder,
            # LangChain's own test: None and False both turn query caching off.
            cache_queries=query_embedding_cache is not False and query_embedding_cache is not None,
            query_store=None if isinstance(query_embedding_cache, bool) else query_embedding_cache,
        )

    # ------------------------------------------------------------------ info
    @property
    def fingerprint(self) -> ModelFingerprint:
        return self.model.fingerprint

    @property
    def dim(self) -> int | None:
        """Vector dimension, or None until known.

        From the fingerprint; without one, the dimension most stored values
        read so far claim, until the model's first output settles it.
        """
        return self.codec.dim

    def document_keys(self, texts: Sequence[str]) -> list[str]:
        """The cache key of each document text (what an index records)."""
        return self._doc_keys.keys(texts)

    def query_keys(self, texts: Sequence[str]) -> list[str]:
        """The cache key of each query text (in the query namespace)."""
        return self._query_keys.keys(texts)

    # ----------------------------------------------------------- shared steps
    def _begin(self, texts: Sequence[str], kind: Kind) -> _Lookup:
        return _Lookup(texts, self._doc_keys if kind == "doc" else self._query_keys)

    def _absorb(self, call: _Lookup, values: Sequence[bytes | None]) -> None:
        """Decode what the store returned; note what must be computed."""
        self.stats.duplicates += len(call.texts) - len(call.unique)
        call.values = values
        self._decode(call)
        if self._dim_settled:
            call.values = ()  # never re-read: free the bytes while the model runs

    def _decode(self, call: _Lookup) -> None:
        """(Re)decode the call's stored values; bring the stats and the to-do list up to date.

        Run again when the model's first output shows that the dimension the
        codec learned from a stored value was not the model's: the values
        are then read under the right one, and those of the wrong one join
        the to-do list as corrupt. Positions already sent to the model stay
        computed and never count as hits.
        """
        matrix, missing, corrupt = self.codec.decode_many(call.values)
        sent = call.todo[: call.done]
        if sent:
            taken = set(sent)
            needed = sorted(i for i in missing + corrupt if i not in taken)
            hits = len(call.values) - len(needed) - len(sent)
        else:
            needed = sorted(missing + corrupt) if corrupt else missing
            hits = len(call.values) - len(needed)
        counted = (hits, len(call.values) - hits, len(corrupt), hits * self.codec.value_size)
        stats, before = self.stats, call.counted
        stats.hits += counted[0] - before[0]
        stats.misses += counted[1] - before[1]
        stats.corrupt += counted[2] - before[2]
        stats.bytes_read += counted[3] - before[3]
        call.counted = counted
        call.matrix = matrix
        call.todo = sent + needed

    def _next_batch(self, call: _Lookup) -> list[int]:
        """The next positions for the model (empty when done); ``todo`` may grow meanwhile."""
        batch = call.todo[call.done : call.done + self.batch_size]
        call.done += len(batch)
        return batch

    def _accept(self, call: _Lookup, batch: list[int], vectors: Any) -> list[tuple[str, bytes]]:
        """Validate one batch of model output, place it, and encode it for the store."""
        settled = self._dim_settled
        vectors = _validated(vectors, len(batch), self.codec.dim if settled else None)
        stored = self.codec.round_trip(vectors)
        if stored is not vectors and not np.isfinite(stored).all():
            raise ModelOutputError(
                "model returned values beyond float16's range (65504); nothing was cached: "
                "use dtype='float32'"
            )
        if not settled:
            # The model's first output fixes the dimension, over any a stored
            # value suggested.
            self.codec.set_dim(stored.shape[1])
            self._dim_settled = True
        if call.matrix.shape[1] != stored.shape[1]:
            # The call's values were read under no or another dimension. This
            # can only be its first batch: from then on the matrix has the
            # model's width, and a settled dimension refuses any other.
            self._decode(call)
        call.matrix[batch] = stored
        values = self.codec.encode_many(stored)
        self.stats.computed += len(batch)
        return [(call.keys[i], v) for i, v in zip(batch, values, strict=True)]

    def _wrote(self, pairs: list[tuple[str, bytes]]) -> None:
        # Counted once the store took them: uncached queries write nothing.
        self.stats.bytes_written += sum(len(v) for _, v in pairs)

    def _result(self, call: _Lookup) -> Matrix:
        if len(call.unique) == len(call.texts):
            return call.matrix
        where = {t: i for i, t in enumerate(call.unique)}
        return call.matrix[[where[t] for t in call.texts]]

    # ------------------------------------------------------------ sync path
    def _embed(self, texts: Sequence[str], kind: Kind) -> Matrix:
        call = self._begin(texts, kind)
        if not call.unique:
            return np.empty((0, self.codec.dim or 0), np.float32)
        use_cache = kind == "doc" or self.cache_queries
        store = self.store if kind == "doc" else self.query_store
        self._absorb(call, store.mget(call.keys) if use_cache else [None] * len(call.keys))
        embed = (
            self.model.embed_documents_array if kind == "doc" else self.model.embed_queries_array
        )
        while batch := self._next_batch(call):
            pairs = self._accept(call, batch, embed([call.unique[i] for i in batch]))
            if use_cache:
                store.mset(pairs)
                self._wrote(pairs)
        return self._result(call)

    def embed_documents_array(self, texts: Sequence[str]) -> Matrix:
        """Embed documents into an ``(n, dim)`` float32 matrix (the fast path)."""
        return self._embed(texts, "doc")

    def embed_queries_array(self, texts: Sequence[str]) -> Matrix:
        """Embed several queries into an ``(n, dim)`` float32 matrix."""
        return self._embed(texts, "query")

    def embed_query_array(self, text: str) -> Matrix:
        """Embed one query into a ``(dim,)`` float32 vector."""
        return self._embed([check_text(text)], "query")[0]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents as lists of floats (LangChain's interface)."""
        return cast("list[list[float]]", self._embed(texts, "doc").tolist())

    def embed_query(self, text: str) -> list[float]:
        """Embed one query as a list of floats (LangChain's interface)."""
        return cast("list[float]", self.embed_query_array(text).tolist())

    def get_vectors(self, keys: Sequence[str]) -> tuple[Matrix, list[int]]:
        """Read cached vectors by key with no model call.

        Returns the matrix and the positions that are missing or corrupt (their
        rows are zero; with no dimension known yet and nothing readable, the
        matrix has no columns). This is how an index is rebuilt from the cache.
        """
        matrix, missing, corrupt = self.codec.decode_many(self.store.mget(list(keys)))
        return matrix, sorted(missing + corrupt)

    # ----------------------------------------------------------- async path
    async def _aembed(self, texts: Sequence[str], kind: Kind) -> Matrix:
        call = self._begin(texts, kind)
        if not call.unique:
            return np.empty((0, self.codec.dim or 0), np.float32)
        use_cache = kind == "doc" or self.cache_queries
        store = self.store if kind == "doc" else self.query_store
        self._absorb(call, await store.amget(call.keys) if use_cache else [None] * len(call.keys))
        embed = _async_embedder(self.model, kind)
        while batch := self._next_batch(call):
            pairs = self._accept(call, batch, await embed([call.unique[i] for i in batch]))
            if use_cache:
                await store.amset(pairs)
                self._wrote(pairs)
        return self._result(call)

    async def aembed_documents_array(self, texts: Sequence[str]) -> Matrix:
        """Async :meth:`embed_documents_array`."""
        return await self._aembed(texts, "doc")

    async def aembed_queries_array(self, texts: Sequence[str]) -> Matrix:
        """Async :meth:`embed_queries_array`."""
        return await self._aembed(texts, "query")

    async def aembed_query_array(self, text: str) -> Matrix:
        """Async :meth:`embed_query_array`."""
        return (await self._aembed([check_text(text)], "query"))[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`."""
        return cast("list[list[float]]", (await self._aembed(texts, "doc")).tolist())

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`."""
        return cast("list[float]", (await self.aembed_query_array(text)).tolist())

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the stores this object opened from URLs."""
        for store in self._owned:
            store.close()
        self._owned.clear()

    def __enter__(self) -> CachedEmbeddings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CachedEmbeddings(model={self.model!r}, store={self.store!r})"


def _async_embedder(model: EmbeddingModel, kind: Kind) -> Callable[[list[str]], Awaitable[Any]]:
    """The model's native async method, or its sync one run in a thread."""
    name = "embed_documents_array" if kind == "doc" else "embed_queries_array"
    native = getattr(model, "a" + name, None)
    if native is not None:
        return cast("Callable[[list[str]], Awaitable[Any]]", native)
    sync = getattr(model, name)

    async def in_thread(texts: list[str]) -> Any:
        return await asyncio.to_thread(sync, texts)

    return in_thread


def _validated(vectors: Any, count: int, dim: int | None) -> Matrix:
    """Model output as an ``(count, dim)`` finite float32 matrix, or a clear error.

    Only real numbers are vectors: strings (even ``"1.5"``), booleans,
    complex numbers and objects are refused rather than converted.
    """
    arr = _as_matrix(vectors)
    if arr.ndim != 2 or arr.shape[0] != count:
        raise ModelOutputError(
            f"model returned {arr.shape[0] if arr.ndim else 0} vectors (shape {arr.shape}) "
            f"for {count} texts"
        )
    if arr.shape[1] == 0 or (dim is not None and arr.shape[1] != dim):
        expected = f", expected {dim}" if dim is not None else ""
        raise ModelOutputError(f"model returned vectors of dim {arr.shape[1]}{expected}")
    if not np.isfinite(arr).all():
        raise ModelOutputError("model returned NaN or infinite values; nothing was cached")
    return arr
