"""``CachedEmbeddings``: compute each vector once, read it back forever after.

For every call the texts are de-duplicated, hashed into keys under the
model's namespace (:mod:`cachedvec.keys`), looked up in the byte store in one
batch, decoded (:mod:`cachedvec.codec`), and only the unique texts that are
missing, or whose stored value fails its checks, go to the model, batch by
batch. Each batch is validated and written before the next one runs, so a
crash loses at most the batch in flight, and a bad batch writes nothing.

The sync and async methods share every step but the I/O: a :class:`_Lookup`
holds one call's state and the two drivers only differ in what they await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.stores import BaseStore, ByteStore

from cachedvec.codec import Dtype, Matrix, VectorCodec
from cachedvec.errors import ConfigError, ModelOutputError, check_count
from cachedvec.keys import KeyEncoder, Kind, ModelFingerprint, check_namespace
from cachedvec.models import EmbeddingModel, as_model
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

    __slots__ = ("texts", "unique", "keys", "matrix", "todo")

    def __init__(self, texts: Sequence[str], encoder: KeyEncoder) -> None:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        if not isinstance(texts, Sequence):
            texts = list(texts)  # a generator, as LangChain's cache also takes
        self.texts = texts
        # dict.fromkeys keeps first-seen order and runs at C speed.
        self.unique = list(dict.fromkeys(texts)) if texts else []
        self.keys = encoder.keys(self.unique)
        self.matrix: Matrix = np.empty((0, 0), np.float32)
        self.todo: list[int] = []  # positions in `unique` still to compute


class CachedEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` that caches every vector in a byte store.

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
        self.model: EmbeddingModel = as_model(model)
        self.batch_size = batch_size
        self.cache_queries = cache_queries
        self._owned: list[Any] = []
        self.store = self._open(store)
        self.query_store = self.store if query_store is None else self._open(query_store)
        fp = self.model.fingerprint
        self.namespace = check_namespace(namespace) if namespace else fp.namespace()
        self._doc_keys = KeyEncoder(self.namespace, "doc", key_algorithm)
        self._query_keys = KeyEncoder(self.namespace, "query", key_algorithm)
        self.codec = VectorCodec(fp.dim, dtype)
        self.stats = CacheStats()

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
        query_embedding_cache: bool | ByteStore = True,
        key_encoder: str = "sha256",
    ) -> CachedEmbeddings:
        """LangChain's ``CacheBackedEmbeddings.from_bytes_store`` arguments.

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
            cache_queries=query_embedding_cache is not False,
            query_store=None if isinstance(query_embedding_cache, bool) else query_embedding_cache,
        )

    # ------------------------------------------------------------------ info
    @property
    def fingerprint(self) -> ModelFingerprint:
        return self.model.fingerprint

    @property
    def dim(self) -> int | None:
        """Vector dimension, once known (from the fingerprint or a first vector)."""
        return self.codec.dim

    def document_keys(self, texts: Sequence[str]) -> list[str]:
        """The cache key of each document text (what an index records)."""
        return self._doc_keys.keys(texts)

    def query_keys(self, texts: Sequence[str]) -> list[str]:
        return self._query_keys.keys(texts)

    # ----------------------------------------------------------- shared steps
    def _begin(self, texts: Sequence[str], kind: Kind) -> _Lookup:
        return _Lookup(texts, self._doc_keys if kind == "doc" else self._query_keys)

    def _absorb(self, call: _Lookup, values: Sequence[bytes | None]) -> None:
        """Decode what the store returned; note what must be computed."""
        matrix, missing, corrupt = self.codec.decode_many(values)
        hits = len(values) - len(missing) - len(corrupt)
        stats = self.stats
        stats.hits += hits
        stats.misses += len(missing) + len(corrupt)
        stats.corrupt += len(corrupt)
        stats.duplicates += len(call.texts) - len(call.unique)
        stats.bytes_read += hits * self.codec.value_size
        call.matrix = matrix
        call.todo = sorted(missing + corrupt) if corrupt else missing

    def _batches(self, call: _Lookup) -> Iterator[list[int]]:
        todo, size = call.todo, self.batch_size
        for start in range(0, len(todo), size):
            yield todo[start : start + size]

    def _accept(self, call: _Lookup, batch: list[int], vectors: Any) -> list[tuple[str, bytes]]:
        """Validate one batch of model output, place it, and encode it for the store."""
        vectors = self.codec.round_trip(_validated(vectors, len(batch), self.codec.dim))
        if call.matrix.shape[1] != vectors.shape[1]:
            # First vectors ever seen: the matrix is only now sized.
            call.matrix = np.zeros((len(call.unique), vectors.shape[1]), np.float32)
        call.matrix[batch] = vectors
        values = self.codec.encode_many(vectors)
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
        for batch in self._batches(call):
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
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}, expected str")
        return self._embed([text], "query")[0]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return cast("list[list[float]]", self._embed(texts, "doc").tolist())

    def embed_query(self, text: str) -> list[float]:
        return cast("list[float]", self.embed_query_array(text).tolist())

    def get_vectors(self, keys: Sequence[str]) -> tuple[Matrix, list[int]]:
        """Read cached vectors by key with no model call.

        Returns the matrix and the positions that are missing or corrupt (their
        rows are zero). This is how an index is rebuilt from the cache.
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
        for batch in self._batches(call):
            pairs = self._accept(call, batch, await embed([call.unique[i] for i in batch]))
            if use_cache:
                await store.amset(pairs)
                self._wrote(pairs)
        return self._result(call)

    async def aembed_documents_array(self, texts: Sequence[str]) -> Matrix:
        return await self._aembed(texts, "doc")

    async def aembed_query_array(self, text: str) -> Matrix:
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}, expected str")
        return (await self._aembed([text], "query"))[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return cast("list[list[float]]", (await self._aembed(texts, "doc")).tolist())

    async def aembed_query(self, text: str) -> list[float]:
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
    """Model output as an ``(count, dim)`` finite float32 matrix, or a clear error."""
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ModelOutputError(f"model output is not a matrix of numbers: {exc}") from exc
    if arr.ndim != 2 or arr.shape[0] != count:
        raise ModelOutputError(
            f"model returned {arr.shape[0] if arr.ndim else 0} vectors (shape {arr.shape}) "
            f"for {count} texts"
        )
    if arr.shape[1] == 0 or (dim is not None and arr.shape[1] != dim):
        raise ModelOutputError(f"model returned vectors of dim {arr.shape[1]}, expected {dim}")
    if not np.isfinite(arr).all():
        raise ModelOutputError("model returned NaN or infinite values; nothing was cached")
    return arr
