"""Distributed ingestion on Ray Data, with one cache shared by every worker.

The embedding step runs where our users already run it: ``map_batches``
with a class-based callable on a fixed pool of N actors. Each actor
holds one :class:`CachedEmbeddings` bound to the same store URL
(PostgreSQL across machines, SQLite on one), so every worker checks the
shared cache first and only missing vectors are computed anywhere in the
cluster. The index is built afterwards
on the driver from the cache (no vector travels back through Ray).

Building blocks, for your own pipelines:

- :func:`read_sources`: files -> a Dataset of chunks with the same ids
  :func:`cachedvec.ingest` gives them;
- :func:`embed_dataset`: a Dataset with a text column -> the same rows plus
  ``cache_key`` (where the vector now is) and ``computed`` (this run called
  the model for it); lazy, like any Dataset;
- :func:`build_index`: such rows -> an index folder, vectors read from the
  cache in batches.

:func:`ingest` is ``cachedvec ingest --engine ray``: the driver reads and
chunks the sources and skips unchanged ones exactly as the single-process
job does, sends each unique text that the cache lacks to the actor pool
once (only then is Ray started or joined), then runs the single-process
job, which now finds every vector in the cache and calls no model. The
index, its ids and vectors, and the records are therefore those of the
single-process path.

Failure handling. Everything that needs no cluster is checked before Ray
is contacted: the sources (missing, binary), the chunk settings, the model,
worker, batch and retry counts (positive integers; ``retries`` may be 0),
a factory or metric other than the existing index's, an index of another
model, and the store: a ``memory://`` or ``sqlite:///:memory:`` store (each
worker would get an empty cache of its own) is refused. When the cache
already holds every vector, no cluster is started or joined at all.
Otherwise :func:`connect` joins ``address`` (``None``: ``RAY_ADDRESS`` if
set, else a new local Ray; ``"local"``: always a new local Ray): an address
that does not answer, or answers but not as a Ray cluster (no HTTP/2, which
Ray's gRPC speaks), is a :class:`ClusterError` within seconds instead of
Ray's long wait, and a ``ray://`` address needs ``ray[client]``. Once
connected, local file, SQLite and diskcache stores are refused when the
cluster has several nodes. A worker that dies mid-batch is restarted and
its task retried by Ray (``retries`` times). Nothing is lost: vectors are
written to the cache batch by batch, writes are idempotent (a key is stored
once, whoever writes it), and the retried batch finds what its predecessor
wrote.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urlsplit

import numpy as np
from langchain_core.embeddings import Embeddings

from cachedvec.embeddings import CachedEmbeddings
from cachedvec.errors import (
    CachedVecError,
    ClusterError,
    ConfigError,
    InvalidURLError,
    MissingVectorsError,
    check_count,
)
from cachedvec.index import VectorIndex
from cachedvec.index.persist import check_expectations, read_manifest
from cachedvec.ingestion import (
    CLEANUP_MODES,
    IngestReport,
    Paths,
    _identified,
    _version,
    as_paths,
    check_index_type,
    check_new_index,
    load_records,
)
from cachedvec.jobs import DEFAULT_INDEX, DEFAULT_STORE
from cachedvec.models import EmbeddingModel, as_model
from cachedvec.sources import Chunker, Source, find_files, read_source
from cachedvec.stores import open_store, redact_url
from cachedvec.stores.sql import _normalise_url

if TYPE_CHECKING:
    from ray.data import Dataset

#: ``None`` (the bundled model), a model folder or cached name, or a
#: zero-argument callable that builds the model: each worker builds its own.
ModelSpec = Union[None, str, "os.PathLike[str]", Callable[[], Any]]

DEFAULT_WORKERS = 2
DEFAULT_RETRIES = 3
_LOCAL_STORES = ("file", "sqlite", "diskcache")
_CONNECT_TIMEOUT = 5.0
_LOOKUP_BATCH = 10_000
_RAY_CLIENT_PORT = 10001
_RAY_ADDRESS_VARIABLE = "RAY_ADDRESS"
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HTTP2_SETTINGS = 0x04  # the frame type every HTTP/2 server sends first
_HTTP2_EMPTY_SETTINGS = bytes([0, 0, 0, _HTTP2_SETTINGS, 0, 0, 0, 0, 0])


# -- checks before work starts -------------------------------------------------------


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the Ray engine needs Ray: pip install 'cachedvec[ray]'") from exc
    return ray


def connect(address: str | None = None, *, workers: int = DEFAULT_WORKERS) -> bool:
    """Join the Ray cluster at ``address``, or start a local one with ``workers`` CPUs at least.

    ``address``: ``None`` joins the cluster that the ``RAY_ADDRESS``
    environment variable names (Ray Jobs and head nodes set it), or starts a
    local Ray when it is unset; ``"local"`` always starts a local Ray;
    ``"auto"`` joins a cluster started with ``ray start`` on this machine;
    ``host:port`` joins that head node (its GCS port, 6379 by default);
    ``ray://host:port`` needs the Ray client (``pip install "ray[client]"``).
    An address that is not reachable, or does not answer as a Ray cluster, is
    a :class:`ClusterError` within seconds instead of Ray's long wait.

    Returns True when this call connected (the caller then shuts Ray down),
    False when Ray was already initialised in this process.
    """
    check_count("workers", workers)
    ray = _ray()
    target, where = _resolve_address(address)
    if target not in ("auto", "local"):
        _check_reachable(target, where)
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "address": target,
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if target == "local":
        # "local", not None: Ray would read RAY_ADDRESS (or a cluster that
        # `ray start` left on this machine) and then refuse num_cpus.
        options["num_cpus"] = max(workers, os.cpu_count() or 1)
        # A cluster of our own, in this process's lifetime: Ray's notice that
        # it turned token authentication on is not news to act on.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot join the Ray cluster at {where}: {exc}") from exc
    return True


def _resolve_address(address: str | None) -> tuple[str, str]:
    """The address for ``ray.init`` and how errors name it; a bad one fails here.

    Needs no network and no Ray: a malformed address, or a ``ray://`` one
    without the Ray client installed, is refused even by a run that ends up
    not connecting (nothing to compute).
    """
    from_env = os.environ.get(_RAY_ADDRESS_VARIABLE, "").strip()
    if address in (None, "auto") and from_env:
        # Ray itself would read the variable; we read it first to check it.
        target, where = from_env, f"{from_env} (from {_RAY_ADDRESS_VARIABLE})"
    elif address is None:
        return "local", "local"
    else:
        target = where = address
    if target in ("auto", "local"):
        return target, where
    _host_port(target, where)
    if target.lower().startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise ClusterError(
            f"{where} is a Ray Client address, which needs the Ray client: "
            'pip install "ray[client]" (or give the head node\'s GCS address, host:6379)'
        )
    return target, where


def _host_port(address: str, where: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host = parts.hostname
        port = parts.port or (_RAY_CLIENT_PORT if parts.scheme.lower() == "ray" else None)
    except ValueError:
        host = port = None
    if parts.scheme.lower() not in ("", "ray") or not host or not port:
        hint = (
            "; http:// addresses are the dashboard's, for `ray job submit`"
            if parts.scheme.lower() in ("http", "https")
            else ""
        )
        from_env = where[len(address) :]  # " (from RAY_ADDRESS)", or nothing
        if from_env:
            hint += "; unset RAY_ADDRESS, or pass --address local for a Ray of this run's own"
        raise ConfigError(
            f"Ray address {address!r}{from_env} is not host:port: give the head node's GCS "
            f"address, host:6379 by default{hint}"
        )
    return host, port


def _check_reachable(address: str, where: str) -> None:
    """Fail fast: ``ray.init`` waits minutes, printing C++ log lines, for a head node
    that does not answer, or for a port where something else listens."""
    host, port = _host_port(address, where)
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT) as sock:
            # Ray's GCS (and its client server) speak gRPC, so HTTP/2; with
            # Ray's TLS on, the handshake comes first and is not ours to make.
            speaks_grpc = _tls_on() or _speaks_http2(sock)
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {where}: {exc.strerror or exc}; check the "
            "head node's address (host:6379) and that it is running"
        ) from exc
    if not speaks_grpc:
        raise ClusterError(
            f"{where} does not answer as a Ray cluster (something else listens there): "
            "give the head node's GCS address, host:6379 by default (8265 is the dashboard)"
        )


def _tls_on() -> bool:
    return os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true")


def _speaks_http2(sock: socket.socket) -> bool:
    """Whether the server answers an HTTP/2 client preface with its SETTINGS frame."""
    try:
        sock.sendall(_HTTP2_PREFACE + _HTTP2_EMPTY_SETTINGS)
        header = b""
        while len(header) < 9:  # a frame header: length (3), type, flags, stream id (4)
            part = sock.recv(9 - len(header))
            if not part:
                return False
            header += part
    except OSError:  # a timeout, or a server that hung up on the preface
        return False
    stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
    return header[3] == _HTTP2_SETTINGS and stream == 0


def shared_store_url(url: str) -> str:
    """The store URL every worker can open, or a :class:`ConfigError` if none can share it.

    Needs a connected Ray. Local paths are made absolute, since Ray workers
    do not run in the driver's working folder.
    """
    url, family = _absolute_store_url(url)
    if family not in _LOCAL_STORES:
        return url
    nodes = [node for node in _ray().nodes() if node.get("Alive")]
    here = _ray().get_runtime_context().get_node_id()
    if len(nodes) != 1 or nodes[0].get("NodeID") != here:
        raise ConfigError(
            f"{redact_url(url)} is a file on this machine, but the Ray cluster has "
            f"{len(nodes)} node(s) and workers elsewhere would each write a cache of their own. "
            "Use a store every node reaches, e.g. postgresql+psycopg://user@host/db"
        )
    return url


def refuse_private_store(url: str) -> str:
    """Refuse a store that lives inside one process; returns the URL's scheme family."""
    family = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    if family == "memory" or (family == "sqlite" and ":memory:" in url):
        raise ConfigError(
            f"{url} lives inside one process: each Ray worker would fill a cache of its own "
            "and the index could not be built from it. Use a shared store, e.g. "
            "postgresql+psycopg://user@host/db (or sqlite:///cache.db on one machine)"
        )
    return family


def _absolute_store_url(url: str) -> tuple[str, str]:
    """``url`` with a local path made absolute (no Ray needed), and its scheme family."""
    family = refuse_private_store(url)
    if family not in _LOCAL_STORES:
        return url, family
    scheme, path, query = _split_local(url, family)
    absolute = os.path.abspath(os.path.expanduser(path))
    sep = "/" if family == "sqlite" else ""
    return f"{scheme}://{sep}{absolute}" + (f"?{query}" if query else ""), family


def _split_local(url: str, family: str) -> tuple[str, str, str]:
    """Scheme, path and query of a local store URL; an empty path is refused."""
    scheme, rest = url.split("://", 1)
    if family == "sqlite":  # sqlite:///relative.db, sqlite:////absolute.db
        _normalise_url(url)  # the store's own refusals (a host, a bad driver) come first
        path, _, query = rest[1:].partition("?")
    else:  # file:///absolute, file://relative
        path, _, query = rest.partition("?")
    if not path:
        # As the local engine says: the empty path would become the current folder.
        if family == "sqlite":
            raise InvalidURLError(
                f"{redact_url(url)!r} names no file: use sqlite:///relative.db or "
                "sqlite:////absolute.db (memory:// is the in-process store)"
            )
        raise InvalidURLError(f"{redact_url(url)!r} names no folder: use {scheme}:///absolute/path")
    return scheme, path, query


def _store_exists(url: str, family: str) -> bool:
    """False for a local store not created yet (reading it must not create it)."""
    if family not in _LOCAL_STORES:
        return True
    return os.path.exists(_split_local(url, family)[1])


def _check_model_spec(model: ModelSpec) -> None:
    if model is None or isinstance(model, (str, os.PathLike)):
        return
    if isinstance(model, (Embeddings, EmbeddingModel)) or not callable(model):
        raise ConfigError(
            f"with Ray, pass the model as a name, a folder or a zero-argument callable that "
            f"builds it (e.g. functools.partial({type(model).__name__}, ...)), not a "
            "built model: each worker builds its own"
        )


def _build_model(model: ModelSpec) -> EmbeddingModel:
    if model is None or isinstance(model, (str, os.PathLike)):
        return as_model(model)
    return as_model(model())


# -- the actor pool --------------------------------------------------------------------


class _Recording:
    """The model, noting which texts it embedded (so rows can say they were computed)."""

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model
        self.fingerprint = model.fingerprint
        self.embedded: set[str] = set()

    def embed_documents_array(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded.update(texts)
        return self.model.embed_documents_array(texts)

    def embed_queries_array(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.embed_queries_array(texts)


class CachedEmbedder:
    """The class-based callable of the actor pool: one CachedEmbeddings per worker.

    The model is built and the store opened once, when Ray starts the
    actor; each batch is then one cache lookup and, for the misses only,
    model calls whose vectors are written before the next batch starts.
    """

    def __init__(self, model: ModelSpec, store: str, batch_size: int, text_column: str) -> None:
        self._model = _Recording(_build_model(model))
        self._embeddings = CachedEmbeddings(self._model, store, batch_size=batch_size)
        self._column = text_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._column not in batch:
            raise ConfigError(
                f"the dataset has no {self._column!r} column (columns: {', '.join(batch)})"
            )
        texts = [str(text) for text in batch[self._column]]
        self._model.embedded.clear()
        self._embeddings.embed_documents_array(texts)
        embedded, computed = self._model.embedded, np.zeros(len(texts), dtype=bool)
        for row, text in enumerate(texts):
            if text in embedded:  # the first row of each computed text counts it
                computed[row] = True
                embedded.discard(text)
        batch["cache_key"] = np.array(self._embeddings.document_keys(texts), dtype=object)
        batch["computed"] = computed
        return batch


def embed_dataset(
    dataset: Dataset,
    *,
    store: str,
    model: ModelSpec = None,
    workers: int = DEFAULT_WORKERS,
    batch_size: int = 256,
    text_column: str = "text",
    num_cpus: float = 1,
    num_gpus: float = 0,
    retries: int = DEFAULT_RETRIES,
) -> Dataset:
    """Embed the ``text_column`` of ``dataset`` on ``workers`` actors sharing ``store``.

    Returns the rows with ``cache_key`` and ``computed`` added (lazily: the
    work runs when the result is consumed). ``model`` is a name, a folder or
    a zero-argument callable building the model in each worker. A worker
    that dies is restarted and its batch retried up to ``retries`` times.
    Call :func:`connect` first (or ``ray.init``); the store is checked here.
    """
    check_count("workers", workers)
    check_count("batch_size", batch_size)
    check_count("retries", retries, minimum=0)  # Ray reads -1 as "retry forever"
    _check_model_spec(model)
    store = shared_store_url(store)
    open_store(store).close()  # a wrong password or missing schema fails here, not in a worker
    with warnings.catch_warnings():
        # Ray 2.60 deprecates free-form remote args but names no replacement for
        # these two; its own default retries forever, which would loop on a
        # batch that kills every worker it reaches.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return dataset.map_batches(
            CachedEmbedder,
            fn_constructor_kwargs={
                "model": model,
                "store": store,
                "batch_size": batch_size,
                "text_column": text_column,
            },
            batch_size=batch_size * 4,
            batch_format="numpy",
            # Ray 2.51 deprecates concurrency= for this (older Rays take it too).
            compute=_ray().data.ActorPoolStrategy(size=workers),
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            max_restarts=retries,
            max_task_retries=retries,
        )


# -- sources in, index out ----------------------------------------------------------------


def read_sources(
    paths: Paths,
    *,
    chunk_size: int = 1000,
    chunk_overlap: int = 150,
    text_field: str = "text",
) -> Dataset:
    """The chunks of the files under ``paths`` (one or several): rows ``id``, ``text``,
    ``metadata`` (JSON).

    Files are found and checked on the driver (a binary or non-UTF-8 file
    fails here, before any work) and shipped to the cluster with the
    Dataset, so workers need no shared filesystem; they are chunked by Ray
    tasks, with the ids :func:`cachedvec.ingest` gives. For corpora larger
    than the driver's memory, read them with Ray's own readers instead.

    The chunks are materialized: an actor pool downstream that takes every
    CPU of a small cluster would otherwise starve the chunking tasks.
    """
    ray = _ray()
    chunker = Chunker(chunk_size, chunk_overlap, text_field)  # bad settings fail here
    sources = [read_source(path) for path in find_files(as_paths(paths))]
    rows = [
        {"path": str(s.path), "kind": s.kind, "content_hash": s.content_hash, "data": s.data}
        for s in sources
    ]
    settings = chunker.options
    blocks = max(1, min(len(rows), 64))
    return (
        ray.data.from_items(rows, override_num_blocks=blocks)
        .flat_map(_chunk_rows, fn_kwargs={"settings": settings})
        .materialize()
    )


def _chunk_rows(row: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    source = Source(Path(row["path"]), row["kind"], row["content_hash"], bytes(row["data"]))
    chunks = _identified(source.name, Chunker(**settings).chunks(source))
    return [
        {"id": chunk_id, "text": chunk.text, "metadata": json.dumps(chunk.metadata)}
        for chunk_id, chunk in chunks.items()
    ]


def build_index(
    dataset: Dataset,
    index: str | os.PathLike[str],
    *,
    store: str,
    model: ModelSpec = None,
    factory: str = "Flat",
    metric: str = "cosine",
    batch_size: int = 20_000,
) -> int:
    """Build an index folder from rows of :func:`embed_dataset`; returns the document count.

    Rows need ``text`` and ``cache_key``; ``id`` and ``metadata`` (a JSON
    object or dict) are kept when present. Vectors are read from ``store``
    ``batch_size`` at a time (zero model calls); IVF/PQ train on the first
    batch. ``model`` only names the model in the index (its fingerprint).
    Replaces any index at ``index`` atomically.
    """
    _check_model_spec(model)
    vindex: VectorIndex | None = None
    try:
        with CachedEmbeddings(_build_model(model), store) as emb:
            for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
                keys = [str(key) for key in batch["cache_key"]]
                vectors, missing = emb.get_vectors(keys)
                if missing:
                    raise MissingVectorsError(
                        f"{len(missing)} vectors of this batch are not in the cache "
                        f"{redact_url(store)}: embed the dataset into this store first",
                        len(missing),
                    )
                if vindex is None:
                    vindex = VectorIndex(
                        vectors.shape[1],
                        metric=metric,
                        factory=factory,
                        fingerprint=emb.fingerprint,
                    )
                vindex.add(
                    vectors,
                    [str(text) for text in batch["text"]],
                    list(_metadata(batch)),
                    ids=_ids(batch),
                    cache_keys=keys,
                )
        if vindex is None:
            raise ConfigError("the dataset has no rows: nothing to index")
        vindex.save(index)
        return len(vindex)
    finally:
        if vindex is not None:
            vindex.close()


def _metadata(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    for value in batch.get("metadata", [None] * len(batch["text"])):
        yield json.loads(value) if isinstance(value, str) else dict(value or {})


def _ids(batch: dict[str, np.ndarray]) -> list[str | None] | None:
    return [str(i) for i in batch["id"]] if "id" in batch else None


# -- the ingest job ---------------------------------------------------------------------


def ingest(
    paths: Paths,
    *,
    index: str | os.PathLike[str] = DEFAULT_INDEX,
    store: str = DEFAULT_STORE,
    model: ModelSpec = None,
    address: str | None = None,
    workers: int = DEFAULT_WORKERS,
    retries: int = DEFAULT_RETRIES,
    chunk_size: int = 1000,
    chunk_overlap: int = 150,
    text_field: str = "text",
    cleanup: str = "incremental",
    factory: str | None = None,
    metric: str | None = None,
    batch_size: int = 64,
    show_progress: bool | None = None,
) -> IngestReport:
    """:func:`cachedvec.ingest` with the model calls fanned out over a Ray actor pool.

    Same arguments and report, plus ``address`` (as in :func:`connect`:
    ``None`` is ``RAY_ADDRESS`` if set, else a local Ray), ``workers``
    (actors) and ``retries``. ``model`` as in :func:`embed_dataset`.
    ``computed`` counts vectors the workers computed.

    Sources, chunk settings, model, index and the store URL's form (and an
    existing store itself) are checked before Ray is contacted; the options
    of a store that does not exist yet are checked by the workers that
    create it. When the cache already holds every vector the run needs no
    cluster at all (nor checks that ``address`` answers).
    """
    from cachedvec.ingestion import ingest as ingest_locally

    started = time.perf_counter()
    paths = as_paths(paths)
    # Every mistake that needs no cluster fails here, before Ray starts (seconds).
    # The counts too: Ray meets them only when some text needs embedding, so a
    # bad one would pass unnoticed on other runs or fail mid-job.
    check_count("workers", workers)
    check_count("batch_size", batch_size)
    check_count("retries", retries, minimum=0)  # Ray reads -1 as "retry forever"
    if cleanup not in CLEANUP_MODES:
        raise ConfigError(f"cleanup must be one of {', '.join(CLEANUP_MODES)}, got {cleanup!r}")
    _check_model_spec(model)
    if importlib.util.find_spec("ray") is None:
        _ray()  # the error saying how to install it
    _resolve_address(address)  # its form; whether it answers is checked on connecting
    store, family = _absolute_store_url(store)  # memory:// and friends refused
    check_index_type(Path(index), factory, metric)
    chunker = Chunker(chunk_size, chunk_overlap, text_field)
    said: set[str] = set()  # warnings given in this run
    with _each_warning_once("cachedvec.sources", said):
        files = find_files(paths)
    driver_model = _build_model(model)
    check_new_index(Path(index), factory, metric, driver_model.fingerprint.dim)
    if (Path(index) / "manifest.json").exists():  # an index of another model: not after Ray
        check_expectations(
            read_manifest(index), index, fingerprint=driver_model.fingerprint.to_dict(), dim=None
        )
    missing = _missing_texts(files, chunker, index, store, family, driver_model)
    computed = 0
    if missing:  # else the local pass below does all there is: no cluster at all
        owns_ray = connect(address, workers=workers)
        try:
            store = shared_store_url(store)  # a file store on several nodes is refused
            computed = _embed_on_cluster(
                missing, store, model, workers, retries, batch_size, show_progress
            )
        finally:
            if owns_ray:
                _ray().shutdown()
    with _each_warning_once("cachedvec.sources", said):  # the local pass finds them again
        report = ingest_locally(
            paths,
            index=index,
            store=store,
            model=driver_model,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            text_field=text_field,
            cleanup=cleanup,
            factory=factory,
            metric=metric,
            batch_size=batch_size,
            show_progress=show_progress,
        )
    # The local pass found the workers' vectors in the cache: count them as computed.
    looked_up = report.cache_hits + report.computed
    report.computed += computed
    report.cache_hits = max(0, looked_up - report.computed)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


@contextmanager
def _each_warning_once(logger_name: str, said: set[str]) -> Iterator[None]:
    """Drop a message ``logger_name`` logs if it is in ``said``, and add the others.

    The Ray path finds the files before the cluster works and the local pass
    finds them again: a warning about one (a folder with nothing to read, a
    pipe skipped) is worth one line, not two. Only repeats are dropped, so
    other threads' warnings pass.
    """

    def first_time(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in said:
            return False
        said.add(message)
        return True

    logger = logging.getLogger(logger_name)
    logger.addFilter(first_time)
    try:
        yield
    finally:
        logger.removeFilter(first_time)


def _missing_texts(
    files: Sequence[Path],
    chunker: Chunker,
    index: str | os.PathLike[str],
    store: str,
    family: str,
    model: EmbeddingModel,
) -> list[str]:
    """Unique chunk texts of new or changed sources whose vectors the cache lacks.

    Every file is read (a binary one fails here, before Ray), one at a time:
    only the chunk texts of changed files are kept. A local store that does
    not exist yet lacks them all, and is not created here: a file store is
    refused on several nodes only once Ray is up.
    """
    index_dir = Path(index)
    records = load_records(index_dir) if (index_dir / "manifest.json").exists() else {}
    texts: dict[str, None] = {}
    for file in files:
        source = read_source(file)
        if records.get(source.name, {}).get("version") != _version(source, chunker):
            texts.update(dict.fromkeys(chunk.text for chunk in chunker.chunks(source)))
    unique = list(texts)
    if not unique or not _store_exists(store, family):
        return unique
    missing: list[str] = []
    with CachedEmbeddings(model, store) as emb:
        for start in range(0, len(unique), _LOOKUP_BATCH):
            part = unique[start : start + _LOOKUP_BATCH]
            _, absent = emb.get_vectors(emb.document_keys(part))
            missing += [part[i] for i in absent]
    return missing


def _embed_on_cluster(
    texts: list[str],
    store: str,
    model: ModelSpec,
    workers: int,
    retries: int,
    batch_size: int,
    show_progress: bool | None,
) -> int:
    """Embed ``texts`` on the actor pool; returns how many vectors the workers computed."""
    if not texts:
        return 0  # nothing to compute: do not even start the actors
    ray = _ray()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = bool(show_progress)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Turned off on purpose (not a terminal, or asked): no advice to turn them on.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    blocks = max(workers, min(len(texts) // max(batch_size, 1), workers * 8))
    dataset = ray.data.from_items([{"text": text} for text in texts], override_num_blocks=blocks)
    embedded = embed_dataset(
        dataset, store=store, model=model, workers=workers, batch_size=batch_size, retries=retries
    )
    try:
        total: Any = embedded.sum("computed")
        return int(total or 0)
    except ray.exceptions.RayError as exc:
        raise _unwrapped(exc) from exc


def _unwrapped(exc: BaseException) -> BaseException:
    """Our own error behind Ray's wrappers, or a ClusterError naming the failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, CachedVecError):
            return seen
        seen = seen.__cause__ or getattr(seen, "cause", None)
    return ClusterError(f"the Ray embedding job failed: {str(exc).splitlines()[0]}")


__all__ = [
    "CachedEmbedder",
    "build_index",
    "connect",
    "embed_dataset",
    "ingest",
    "read_sources",
    "refuse_private_store",
    "shared_store_url",
]
